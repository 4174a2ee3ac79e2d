from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from roboloop.core.errors import DatasetError
from roboloop.datasets import EpisodeStore, EpisodeWriter
from roboloop.datasets.store import PENDING_PREFIX
from tests.conftest import ENV_ARGS, synthetic_episode, write_synthetic, write_with_success_mask


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    episode = synthetic_episode(3, 7, image_size=8)
    path = tmp_path / "one.hdf5"
    with EpisodeWriter(path, env_args=ENV_ARGS) as writer:
        assert writer.append(episode) == "demo_0"
    with EpisodeStore(path) as store:
        assert store.demos == ["demo_0"] and len(store) == 1 and store.total_steps == 7
        back = store.episode(0)
        assert store.env_args == ENV_ARGS
        assert store.attrs(0)["randomization"] == {"a": 3}
        assert store.attrs(0)["num_samples"] == 7
    for key, frames in episode.observations.items():
        np.testing.assert_array_equal(back.observations[key], frames)
    for name in ("actions", "rewards", "terminated", "truncated", "states"):
        np.testing.assert_array_equal(getattr(back, name), getattr(episode, name))


def test_robomimic_layout(synthetic_image_file: Path) -> None:
    with h5py.File(synthetic_image_file, "r") as f:
        data = f["data"]
        assert data.attrs["total"] == 6 + 9
        assert "env_name" in data.attrs["env_args"]
        demo = data["demo_1"]
        assert demo.attrs["num_samples"] == 9
        for key in ("actions", "rewards", "dones", "states", "obs/observation.state", "next_obs/observation.state"):
            assert demo[key].shape[0] == 9, key
        # next_obs is obs shifted by one, images stored once through a virtual dataset.
        assert demo["next_obs/observation.images.front"].is_virtual
        images = demo["obs/observation.images.front"]
        np.testing.assert_array_equal(demo["next_obs/observation.images.front"][:-1], images[1:])
        np.testing.assert_array_equal(demo["next_obs/observation.state"][:-1], demo["obs/observation.state"][1:])
        assert demo["obs/observation.images.front"].chunks[0] == 1  # one frame per chunk: lazy random reads


def test_append_mode_continues_numbering_and_checks_env_args(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "f.hdf5", [3, 4])
    with EpisodeWriter(path, env_args=ENV_ARGS, mode="a") as writer:
        assert writer.append(synthetic_episode(9, 5)) == "demo_2"
    with EpisodeStore(path) as store:
        assert store.demos == ["demo_0", "demo_1", "demo_2"] and store.total_steps == 12
    with pytest.raises(DatasetError, match="different env_args"):
        EpisodeWriter(path, env_args={**ENV_ARGS, "env_name": "other"}, mode="a")


def test_unfinished_append_is_invisible_and_cleaned_up(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "f.hdf5", [3])
    with h5py.File(path, "a") as f:  # what a run killed in the middle of an append leaves behind
        f["data"].create_group(f"{PENDING_PREFIX}demo_1").create_dataset("actions", data=np.zeros((2, 2)))
    with EpisodeStore(path) as store:
        assert store.demos == ["demo_0"]
    with EpisodeWriter(path, mode="a") as writer:
        assert writer.num_episodes == 1
    with h5py.File(path, "r") as f:
        assert not [n for n in f["data"] if n.startswith(PENDING_PREFIX)]


def test_superblock_written_before_its_metadata_is_repaired(tmp_path: Path) -> None:
    """A kill inside ``flush()`` leaves metadata past the superblock's end-of-allocation (HDF5: "addr overflow")."""
    path = write_synthetic(tmp_path / "f.hdf5", [3, 4, 5], image_size=8)
    raw = bytearray(path.read_bytes())
    assert raw[8] == 0  # h5py's default: a version 0 superblock, end-of-allocation at byte 40
    raw[40:48] = (len(raw) // 2).to_bytes(8, "little")
    path.write_bytes(raw)
    with pytest.raises(Exception, match="addr overflow"), h5py.File(path, "r") as f:
        [f["data"][name]["actions"][:] for name in f["data"]]
    with EpisodeStore(path) as store:  # read-only: repaired in a view, the file is untouched
        assert store.demos == ["demo_0", "demo_1", "demo_2"]
        np.testing.assert_array_equal(store.read(2, "actions"), synthetic_episode(2, 5).actions)
        frames = store.read(1, "obs/observation.images.front")
        np.testing.assert_array_equal(store.read(1, "next_obs/observation.images.front")[:-1], frames[1:])
    assert path.read_bytes() == raw
    with EpisodeWriter(path, mode="a") as writer:  # the writer repairs the file itself
        assert writer.append(synthetic_episode(7, 2)) == "demo_3"
    with h5py.File(path, "r") as f:
        assert len(f["data"]) == 4


def test_masks(tmp_path: Path) -> None:
    path = write_with_success_mask(tmp_path / "m.hdf5", [True, False, True])
    with EpisodeStore(path) as store:
        assert store.masks() == {"success": ["demo_0", "demo_2"]}
        assert store.success_rate() == pytest.approx(2 / 3)


def test_invalid_episodes_are_rejected_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "bad.hdf5"
    with EpisodeWriter(path, env_args=ENV_ARGS) as writer:
        episode = synthetic_episode(0, 4)
        episode.actions[1, 0] = np.nan
        with pytest.raises(DatasetError, match="NaN"):
            writer.append(episode)
        short = synthetic_episode(0, 4)
        short.observations["observation.state"] = short.observations["observation.state"][:-1]
        with pytest.raises(DatasetError, match="observation.state.*T \\+ 1"):
            writer.append(short)
        assert writer.num_episodes == 0


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nope.hdf5.*does not exist"):
        EpisodeStore(tmp_path / "nope.hdf5")


def test_corrupt_file_errors(tmp_path: Path, synthetic_file: Path) -> None:
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"\x00not hdf5" * 100)
    with pytest.raises(DatasetError, match="garbage.hdf5.*not a readable HDF5"):
        EpisodeStore(garbage)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(synthetic_file.read_bytes()[:2000])
    with pytest.raises(DatasetError, match="truncated.hdf5"), EpisodeStore(truncated) as store:
        for demo in store.demos:
            store.episode(demo)
    plain = tmp_path / "plain.hdf5"
    with h5py.File(plain, "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(DatasetError, match="no 'data' group"):
        EpisodeStore(plain)


def test_missing_key_error_lists_what_exists(synthetic_file: Path) -> None:
    with EpisodeStore(synthetic_file) as store:
        with pytest.raises(DatasetError, match="demo_0 has no 'obs/observation.nope'.*obs/observation.state"):
            store.read(0, "obs/observation.nope")
        with pytest.raises(DatasetError, match="no episode 'demo_7'"):
            store.read(7, "actions")


def test_writer_reopens_to_bound_its_metadata_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import roboloop.datasets.store as store_module

    monkeypatch.setattr(store_module, "_MAX_METADATA_CACHE_BYTES", 1)  # reopen after every append
    path = tmp_path / "r.hdf5"
    with EpisodeWriter(path, env_args=ENV_ARGS) as writer:
        for i in range(5):
            assert writer.append(synthetic_episode(i, 4, image_size=4)) == f"demo_{i}"
    with EpisodeStore(path) as store:
        assert len(store) == 5 and store.total_steps == 20
        np.testing.assert_array_equal(store.episode(4).actions, synthetic_episode(4, 4).actions)
