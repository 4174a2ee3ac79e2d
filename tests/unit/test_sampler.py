from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from roboloop.core.errors import ConfigError, DatasetError
from roboloop.datasets import SequenceDataset, collate, compute_stats
from tests.conftest import write_synthetic, write_with_success_mask


def decode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(episode, step) of synthetic values 1000 * episode + step."""
    return values // 1000, values % 1000


def test_windows_never_cross_episodes_and_pad_at_the_edges(synthetic_file: Path) -> None:
    ds = SequenceDataset(synthetic_file, n_obs_steps=2, horizon=6, n_action_steps=3)
    batch = ds.get_batch(np.arange(len(ds)))
    obs, actions = batch["observation.state"][..., 0], batch["action"][..., 0] - 0.5
    for b in range(len(ds)):
        episodes = np.concatenate([decode(obs[b])[0], decode(actions[b])[0]])
        assert (episodes == episodes[0]).all(), "a window crossed an episode boundary"
    # Sample 0 is step 0 of episode 0: the window starts one step before the episode, so its first
    # observation and first action are padding (copies of step 0).
    assert obs[0].tolist() == [0, 0] and batch["observation.state_is_pad"][0].tolist() == [True, False]
    assert actions[0].tolist() == [0, 0, 1, 2, 3, 4]
    assert batch["action_is_pad"][0].tolist() == [True, False, False, False, False, False]


def test_pad_after_limits_padding_past_the_end(synthetic_file: Path) -> None:
    lengths = [5, 12, 30]
    for pad_after in (0, 2, 5):
        ds = SequenceDataset(synthetic_file, n_obs_steps=2, horizon=6, n_action_steps=3, pad_after=pad_after)
        batch = ds.get_batch(np.arange(len(ds)))
        trailing = batch["action_is_pad"][:, 1:]  # entry 0 (step t - 1) is padded only before the start
        # The current step t is always real, which also caps trailing padding at horizon - n_obs_steps.
        assert trailing.sum(axis=1).max() == min(pad_after, 6 - 2)
        # Last action index t - To + Tp may pass the end (T - 1) by at most pad_after, so t <= T - 1 + pad_after - 4.
        assert len(ds) == sum(min(T - 1, T - 1 + pad_after - 4) + 1 for T in lengths)
        actions = batch["action"][..., 1:, 0] - 0.5
        for b in np.flatnonzero(trailing.any(axis=1)):
            first_pad = np.argmax(trailing[b])
            assert (actions[b, first_pad:] == actions[b, first_pad - 1]).all(), "padding repeats the last action"


def test_default_window_makes_every_step_a_sample(synthetic_file: Path) -> None:
    # Short episodes that end on success must show the policy their final phase too.
    ds = SequenceDataset(synthetic_file, n_obs_steps=2, horizon=8, n_action_steps=4)
    assert len(ds) == ds.num_steps
    batch = ds.get_batch(np.arange(len(ds)))
    assert batch["action_is_pad"][:, 1:].sum(axis=1).max() == 8 - 2  # the last step: only its own action is real


def test_diffusion_policy_window_keeps_executed_actions_real(synthetic_file: Path) -> None:
    ds = SequenceDataset(synthetic_file, n_obs_steps=2, horizon=8, n_action_steps=4, pad_after=4 - 1)
    batch = ds.get_batch(np.arange(len(ds)))
    executed = batch["action_is_pad"][:, 1 : 1 + 4]  # steps t .. t + Ta - 1
    assert not executed.any()


def test_item_access_matches_batch_access(synthetic_file: Path) -> None:
    ds = SequenceDataset(synthetic_file, n_obs_steps=3, horizon=8, n_action_steps=4)
    items = [0, 7, len(ds) - 1]
    batch = ds.get_batch(np.array(items))
    for i, item in enumerate(items):
        single = ds[item]
        for key, value in single.items():
            np.testing.assert_array_equal(value, batch[key][i])
    assert [s["action"].tolist() for s in ds.__getitems__(items)] == [batch["action"][i].tolist() for i in range(3)]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataloader_batches(synthetic_image_file: Path) -> None:
    ds = SequenceDataset(synthetic_image_file, n_obs_steps=2, horizon=4, n_action_steps=2)
    assert ds.image_keys == ["observation.images.front"] and ds.lowdim_keys == ["observation.state"]
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate, generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    assert batch["observation.images.front"].shape == (4, 2, 8, 8, 3)
    assert batch["observation.images.front"].dtype == torch.uint8
    assert batch["action"].shape == (4, 4, 2) and batch["action_is_pad"].dtype == torch.bool
    # Images are read lazily, and each frame matches its step (frame value = step % 251).
    steps = decode(batch["observation.state"][..., 0].numpy())[1]
    np.testing.assert_array_equal(batch["observation.images.front"][..., 0, 0, 0].numpy(), steps % 251)


def test_dataloader_workers_read_images(synthetic_image_file: Path) -> None:
    ds = SequenceDataset(synthetic_image_file, n_obs_steps=2, horizon=4, n_action_steps=2)
    ds.get_batch(np.array([0]))  # opens an h5py handle in this process: workers must open their own
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    assert sum(len(b["action"]) for b in loader) == len(ds)


def test_filter_key_and_demo_selection(tmp_path: Path) -> None:
    path = write_with_success_mask(tmp_path / "f.hdf5", [True, False, True])
    ds = SequenceDataset(path, n_obs_steps=1, horizon=2, n_action_steps=1, filter_key="success")
    assert ds.demos == ["demo_0", "demo_2"]
    assert set(decode(ds.get_batch(np.arange(len(ds)))["observation.state"][:, 0, 0])[0]) == {0, 2}
    with pytest.raises(DatasetError, match="no filter key 'valid'"):
        SequenceDataset(path, filter_key="valid")
    with pytest.raises(DatasetError, match="demo_9"):
        SequenceDataset(path, demos=["demo_9"])


def test_bad_configuration_is_named(synthetic_file: Path) -> None:
    with pytest.raises(ConfigError, match="n_action_steps"):
        SequenceDataset(synthetic_file, n_obs_steps=2, horizon=4, n_action_steps=4)
    with pytest.raises(DatasetError, match="observation.nope"):
        SequenceDataset(synthetic_file, obs_keys=["observation.nope"])
    with pytest.raises(DatasetError, match="shorter than one window"):
        SequenceDataset(synthetic_file, n_obs_steps=1, horizon=40, n_action_steps=1, pad_after=0)


def test_stats_match_numpy(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "s.hdf5", [4, 9, 2], image_size=4)
    stats = compute_stats(path)
    ds = SequenceDataset(path, n_obs_steps=1, horizon=1, n_action_steps=1)
    state = ds.lowdim_array("observation.state")
    for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
        np.testing.assert_allclose(stats["observation.state"][name], fn(state, axis=0), rtol=1e-6)
        np.testing.assert_allclose(stats["action"][name], fn(ds.all_actions(), axis=0), rtol=1e-6)
    assert stats["observation.state"]["count"] == 15
    assert stats["observation.images.front"]["mean"].shape == (3,)


def test_corrupt_image_chunk_is_a_dataset_error(synthetic_image_file: Path) -> None:
    import h5py

    ds = SequenceDataset(synthetic_image_file, n_obs_steps=1, horizon=1, n_action_steps=1)
    with h5py.File(synthetic_image_file, "r") as f:
        offset = f["data/demo_1/obs/observation.images.front"].id.get_chunk_info(2).byte_offset
    with open(synthetic_image_file, "r+b") as raw:  # overwrite one compressed frame with garbage
        raw.seek(offset)
        raw.write(b"\xff" * 16)
    item = ds.episode_starts[1] + 2
    with pytest.raises(DatasetError, match="images.hdf5.*demo_1 obs/observation.images.front"):
        ds.get_batch(np.array([item]))
