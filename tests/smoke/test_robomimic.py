"""Files written by roboloop load in robomimic 0.3.0's own SequenceDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from roboloop.datasets import EpisodeStore

pytest.importorskip("six")  # robomimic imports it without declaring it
ObsUtils = pytest.importorskip("robomimic.utils.obs_utils")
RobomimicSequenceDataset = pytest.importorskip("robomimic.utils.dataset").SequenceDataset


def test_robomimic_reads_collected_demos(lift_demos: Path) -> None:
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {
        "low_dim": ["observation.state"], "rgb": ["observation.images.front"],
    }})
    dataset = RobomimicSequenceDataset(
        hdf5_path=str(lift_demos),
        obs_keys=("observation.state", "observation.images.front"),
        dataset_keys=("actions", "rewards", "dones"),
        frame_stack=2,
        seq_length=4,
        pad_frame_stack=True,
        pad_seq_length=True,
        get_pad_mask=True,
        hdf5_cache_mode="low_dim",
        hdf5_use_swmr=False,
        filter_by_attribute="success",
    )
    with EpisodeStore(lift_demos) as store:
        assert len(dataset) == store.total_steps
        first_actions = store.read(0, "actions")
        first_state = store.read(0, "obs/observation.state")
    item = dataset[0]
    # robomimic prepends frame_stack - 1 history steps to every sequence, padded at the episode start
    # by repeating the first step: 1 + 4 entries, the first a copy of step 0.
    assert item["actions"].shape == (5, 5)
    np.testing.assert_allclose(item["actions"][1:], first_actions[:4])
    np.testing.assert_allclose(item["actions"][0], first_actions[0])
    state = item["obs"]["observation.state"]
    np.testing.assert_allclose(state[1:], first_state[:4])
    np.testing.assert_allclose(state[0], first_state[0])
    np.testing.assert_allclose(item["next_obs"]["observation.state"][1:], first_state[1:5])
    assert item["obs"]["observation.images.front"].shape[0] == 5
    assert item["obs"]["observation.images.front"].shape[-3:] in ((32, 32, 3), (3, 32, 32))
