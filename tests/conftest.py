"""Shared fixtures: tiny synthetic episode files and a tiny collected dataset."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

import roboloop  # noqa: F401  (registers the envs)
from roboloop.datasets import Episode, EpisodeWriter

ENV_ARGS = {"env_name": "roboloop/Lift-v0", "env_type": 2, "env_kwargs": {}}


def synthetic_episode(index: int, length: int, *, obs_dim: int = 3, action_dim: int = 2, image_size: int | None = None,
                      success: bool = True) -> Episode:
    """An episode whose values encode (episode, step): obs[t] = 1000 * index + t, action[t] = obs[t] + 0.5.

    Lets tests check exactly which rows a sampler returned.
    """
    steps = np.arange(length + 1, dtype=np.float32) + 1000 * index
    observations = {"observation.state": np.repeat(steps[:, None], obs_dim, axis=1)}
    if image_size is not None:
        frames = (np.arange(length + 1) % 251).astype(np.uint8)
        observations["observation.images.front"] = np.broadcast_to(
            frames[:, None, None, None], (length + 1, image_size, image_size, 3)).copy()
    terminated = np.zeros(length, dtype=bool)
    terminated[-1] = success
    return Episode(
        observations=observations,
        actions=np.repeat(steps[:-1, None] + 0.5, action_dim, axis=1),
        rewards=terminated.astype(np.float32),
        terminated=terminated,
        truncated=~terminated & (np.arange(length) == length - 1),
        states=np.repeat(steps[:-1, None].astype(np.float64), 4, axis=1),
        attrs={"success": success, "source": "synthetic", "seed": index, "randomization": {"a": index}},
    )


def write_synthetic(path: Path, lengths: list[int], **kwargs: object) -> Path:
    with EpisodeWriter(path, env_args=ENV_ARGS) as writer:
        for i, length in enumerate(lengths):
            writer.append(synthetic_episode(i, length, **kwargs))  # type: ignore[arg-type]
    return path


def write_with_success_mask(path: Path, successes: list[bool], length: int = 6) -> Path:
    """Episodes 0..n-1 of ``length`` steps with the given success flags, and the ``success`` filter key."""
    with EpisodeWriter(path, env_args=ENV_ARGS) as writer:
        for i, success in enumerate(successes):
            writer.append(synthetic_episode(i, length, success=success))
        writer.update_success_mask()
    return path


@pytest.fixture
def synthetic_file(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "synthetic.hdf5", [5, 12, 30])


@pytest.fixture
def synthetic_image_file(tmp_path: Path) -> Path:
    return write_synthetic(tmp_path / "images.hdf5", [6, 9], image_size=8)


@pytest.fixture(scope="session")
def lift_demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five real Lift demonstrations with a front camera (collected once per test session)."""
    from roboloop.datasets.collection import CollectConfig, collect

    path = tmp_path_factory.mktemp("lift") / "lift.hdf5"
    collect(CollectConfig(task="Lift", n_episodes=5, cameras=["front"], image_size=32, output=str(path),
                          progress=False))
    return path
