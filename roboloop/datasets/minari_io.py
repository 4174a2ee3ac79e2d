"""Minari interop: export an episode file as a Minari dataset, and read a Minari dataset into a replay buffer.

Export keeps the env's own spaces (roboloop's Dict observation, Box action) and its id, so Minari's
``recover_environment`` rebuilds the env (after ``import roboloop``), and ``terminations``/``truncations`` stay
apart. Import accepts what roboloop's replay buffers hold: a ``Box`` observation space, or a ``Dict`` of ``Box``
spaces (flattened in sorted key order, as gymnasium's ``FlattenObservation`` does), and a ``Box`` action space;
anything else (discrete actions, images, nested or tuple spaces) is refused with an error naming the space.
Minari keeps its datasets under ``MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``); ``root`` sets it for
one call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from roboloop import __version__
from roboloop.core.errors import ConfigError, DatasetError
from roboloop.datasets.store import EpisodeStore
from roboloop.offline_rl.replay import ReplayBuffer, discounted_returns


def _minari() -> Any:
    try:
        import minari
    except ImportError as err:
        raise ConfigError("Minari interop needs the minari package: pip install -c constraints.txt "
                          "-e '.[minari]'") from err
    return minari


@contextlib.contextmanager
def datasets_root(root: str | Path | None) -> Iterator[None]:
    """Point Minari at ``root`` (its datasets directory) inside the block; None leaves it as it is."""
    if root is None:
        yield
        return
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def export_minari(path: str | Path, dataset_id: str, *, root: str | Path | None = None,
                  description: str | None = None) -> Any:
    """Write every episode of the episode file ``path`` as the Minari dataset ``dataset_id``
    (``namespace/name-v0``); returns the ``MinariDataset``. Image observations are left out."""
    minari = _minari()
    from minari.data_collector import EpisodeBuffer

    with EpisodeStore(path) as store:
        env_args = store.env_args
        keys = [k for k in store.obs_keys if "images" not in k]
        env = gym.make(env_args["env_name"], **env_args.get("env_kwargs", {}))
        observation_space = gym.spaces.Dict({k: env.observation_space[k] for k in keys})
        buffers = []
        for index, demo in enumerate(store.demos):
            episode = store.episode(demo, obs_keys=keys)
            buffers.append(EpisodeBuffer(
                id=index, seed=episode.attrs.get("seed"),
                observations={k: episode.observations[k].astype(observation_space[k].dtype) for k in keys},
                actions=episode.actions.astype(env.action_space.dtype), rewards=list(episode.rewards.astype(float)),
                terminations=list(episode.terminated.astype(bool)), truncations=list(episode.truncated.astype(bool)),
                infos={"success": np.full(len(episode) + 1, bool(episode.attrs.get("success", False)))}))
    with datasets_root(root):
        dataset = minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env.spec, eval_env=env.spec, observation_space=observation_space,
            action_space=env.action_space,
            algorithm_name=f"roboloop export of {Path(path).name}", author="roboloop",
            code_permalink=f"roboloop {__version__}",
            description=description or f"exported by roboloop from {Path(path).name}")
    env.close()
    return dataset


def _check_spaces(dataset: Any, dataset_id: str) -> None:
    obs_space, action_space = dataset.observation_space, dataset.action_space
    boxes = isinstance(obs_space, gym.spaces.Dict) and all(isinstance(s, gym.spaces.Box)
                                                           for s in obs_space.spaces.values())
    flat = isinstance(obs_space, gym.spaces.Box) or boxes
    if not flat:
        raise DatasetError(f"Minari dataset {dataset_id!r} has observation space {obs_space}; replay buffers take a "
                           f"Box or a Dict of Box spaces")
    if not isinstance(action_space, gym.spaces.Box):
        raise DatasetError(f"Minari dataset {dataset_id!r} has action space {action_space}; replay buffers take a Box")


def _flatten(space: gym.Space, observations: Any) -> np.ndarray:
    """(T + 1, D) float32 from a Box's array or a Dict of Boxes' dict of arrays (sorted keys)."""
    if isinstance(space, gym.spaces.Box):
        return np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)
    parts = [np.asarray(observations[k], dtype=np.float32) for k in sorted(space.spaces)]
    return np.concatenate([p.reshape(len(p), -1) for p in parts], axis=1)


def _load(minari: Any, dataset_id: str) -> Any:
    try:
        return minari.load_dataset(dataset_id)
    except Exception as err:  # minari raises FileNotFoundError / ValueError for unknown ids
        raise DatasetError(f"cannot load Minari dataset {dataset_id!r}: {err}") from err


def minari_env_id(dataset_id: str, *, root: str | Path | None = None) -> str | None:
    """The id of the env a local Minari dataset was recorded in (None when it records none)."""
    minari = _minari()
    with datasets_root(root):
        env_spec = _load(minari, dataset_id).spec.env_spec
    return None if env_spec is None else env_spec.id


def replay_from_minari(dataset_id: str, *, root: str | Path | None = None, gamma: float | None = 0.99,
                       reward_scale: float = 1.0, reward_bias: float = 0.0) -> ReplayBuffer:
    """Every transition of a local Minari dataset in a ``ReplayBuffer`` (returns-to-go discounted by ``gamma``),
    rewards as ``reward_scale * r + reward_bias`` (as ``replay_from_store``). A ``Dict`` dataset's buffer records
    its keys (sorted, the order they are concatenated in) as ``obs_keys``; a ``Box`` dataset's records none."""
    minari = _minari()
    with datasets_root(root):
        dataset = _load(minari, dataset_id)
        _check_spaces(dataset, dataset_id)
        space = dataset.observation_space
        keys = sorted(space.spaces) if isinstance(space, gym.spaces.Dict) else None
        buffer: ReplayBuffer | None = None
        for episode in dataset.iterate_episodes():
            obs = _flatten(space, episode.observations)
            actions = np.asarray(episode.actions, dtype=np.float32).reshape(len(episode.rewards), -1)
            if buffer is None:
                buffer = ReplayBuffer(obs.shape[1], actions.shape[1], dataset.total_steps, keys,
                                      reward_scale=reward_scale, reward_bias=reward_bias, returns_gamma=gamma)
            rewards = buffer.env_rewards(episode.rewards)
            if not np.isfinite(rewards).all():
                raise DatasetError(f"Minari dataset {dataset_id!r}: episode {episode.id}'s rewards contain NaN or "
                                   f"inf; RL learns from rewards")
            mc = discounted_returns(rewards, gamma) if gamma is not None else None
            buffer.add(obs[:-1], actions, rewards, obs[1:], np.asarray(episode.terminations, dtype=bool),
                       np.asarray(episode.truncations, dtype=bool), mc)
    if buffer is None:
        raise DatasetError(f"Minari dataset {dataset_id!r} has no episodes")
    return buffer
