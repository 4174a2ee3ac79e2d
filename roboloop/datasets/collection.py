"""Collect scripted-expert episodes into an episode file, in gymnasium vector envs.

Every episode gets its own seed (``seed + episode index``), recorded with it, so any single
episode can be regenerated; sub-envs are reset explicitly (``AutoresetMode.DISABLED``) to make
that possible. Episodes are appended to the file whole, as they finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv
from tqdm import tqdm

from roboloop import __version__
from roboloop.core.errors import ConfigError
from roboloop.datasets.store import ROBOMIMIC_GYM_ENV_TYPE, Episode, EpisodeWriter
from roboloop.envs import task_info
from roboloop.envs.experts import make_expert

logger = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    """``roboloop collect``: record scripted-expert demonstrations.

    Attributes:
        task: Task name (``Lift``, ``PegInsert``, ``PushAround``, ``FetchPush-v4``, ``FetchPickAndPlace-v4``).
        n_episodes: Episodes to write.
        noise: Expert quality knob: probability per step of a random action instead of the expert's.
        jitter: Gaussian noise std added to every expert action.
        cameras: Cameras to record as ``observation.images.<camera>`` (empty: state only).
        image_size: Camera resolution (square).
        n_envs: Parallel environments.
        vectorization: ``sync`` (one process; fastest for state-only tasks on 2 cores) or ``async``
            (one process per env; pays off when rendering cameras).
        seed: Episode ``k`` is reset with seed ``seed + k``.
        output: Episode file to write; ``{task}`` is replaced by the task name.
        mode: ``w`` replaces the file, ``a`` appends to it.
        success_only: Write only successful episodes (``n_episodes`` still counts written episodes).
        env_kwargs: Extra constructor arguments of the env (e.g. ``clearance``, ``randomization``).
        source: The ``source`` attribute of every written episode (dataset tiers name their parts with it).
        progress: Show a progress bar.
    """

    task: str = "Lift"
    n_episodes: int = 100
    noise: float = 0.0
    jitter: float = 0.0
    cameras: list[str] = field(default_factory=list)
    image_size: int = 84
    n_envs: int = 1
    vectorization: str = "sync"
    seed: int = 0
    output: str = "data/{task}.hdf5"
    mode: str = "w"
    success_only: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "scripted_expert"
    progress: bool = True

    def __post_init__(self) -> None:
        task_info(self.task)  # raises on an unknown task
        if self.n_episodes < 1:
            raise ConfigError(f"n_episodes must be >= 1, got {self.n_episodes}")
        if not 0.0 <= self.noise <= 1.0:
            raise ConfigError(f"noise is a probability and must be in [0, 1], got {self.noise}")
        if self.jitter < 0:
            raise ConfigError(f"jitter must be >= 0, got {self.jitter}")
        if self.n_envs < 1:
            raise ConfigError(f"n_envs must be >= 1, got {self.n_envs}")
        if self.vectorization not in ("sync", "async"):
            raise ConfigError(f"vectorization must be 'sync' or 'async', got {self.vectorization!r}")
        if self.mode not in ("w", "a"):
            raise ConfigError(f"mode must be 'w' (replace) or 'a' (append), got {self.mode!r}")
        if not 8 <= self.image_size <= 640:
            raise ConfigError(f"image_size must be between 8 and 640, got {self.image_size}")
        reserved = {"cameras", "image_size", "render_mode"} & set(self.env_kwargs)
        if reserved:
            raise ConfigError(f"set {sorted(reserved)} with the collect options, not in env_kwargs")

    @property
    def output_path(self) -> Path:
        return Path(self.output.replace("{task}", task_info(self.task).name))

    @property
    def full_env_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.env_kwargs)
        if self.cameras:
            kwargs["cameras"] = list(self.cameras)
            kwargs["image_size"] = self.image_size
        return kwargs


@dataclass
class CollectSummary:
    path: Path
    episodes: int
    steps: int
    successes: int
    attempted: int
    seconds: float
    total_return: float = 0.0  # summed over the written episodes

    @property
    def mean_return(self) -> float:
        return self.total_return / max(self.episodes, 1)

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.attempted, 1)


def env_args_for(task: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """robomimic's ``env_args`` for a roboloop task (``env_type`` 2 = Gym), plus roboloop's own fields."""
    info = task_info(task)
    return {
        "env_name": info.env_id,
        "env_type": ROBOMIMIC_GYM_ENV_TYPE,
        "env_kwargs": env_kwargs,
        "roboloop": {"task": info.name, "version": __version__, "max_episode_steps": info.max_episode_steps},
    }


def make_vector_env(task: str, env_kwargs: dict[str, Any], n_envs: int, vectorization: str) -> VectorEnv:
    env_id = task_info(task).env_id

    def factory() -> Callable[[], gym.Env]:
        return lambda: gym.make(env_id, **env_kwargs)

    fns = [factory() for _ in range(n_envs)]
    if vectorization == "async" and n_envs > 1:
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.DISABLED)


class EpisodeRecording:
    """The steps of one episode in progress, made into an :class:`Episode` when it ends. ``state`` and
    ``randomization`` are the simulator's (a real robot records neither: the episode then has no states)."""

    def __init__(self, obs: dict[str, np.ndarray], *, seed: int | None = None, state: np.ndarray | None = None,
                 randomization: dict[str, Any] | None = None) -> None:
        self.seed, self.randomization = seed, randomization
        self.obs = {k: [v] for k, v in obs.items()}
        self.states: list[np.ndarray] | None = None if state is None else [state]
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terminated: list[bool] = []
        self.truncated: list[bool] = []

    def __len__(self) -> int:
        return len(self.actions)

    def add(self, action: np.ndarray, reward: float, terminated: bool, truncated: bool,
            next_obs: dict[str, np.ndarray], next_state: np.ndarray | None = None) -> None:
        self.actions.append(action)
        self.rewards.append(reward)
        self.terminated.append(terminated)
        self.truncated.append(truncated)
        for k, v in next_obs.items():
            self.obs[k].append(v)
        if self.states is not None:
            self.states.append(next_state)

    def finish(self, success: bool, policy_id: str | None, source: str) -> Episode:
        attrs = {"success": bool(success), "source": source, "policy_id": policy_id, "seed": self.seed,
                 "return": float(np.sum(self.rewards))}
        if self.randomization is not None:
            attrs["randomization"] = self.randomization
        return Episode(
            observations={k: np.stack(v) for k, v in self.obs.items()},
            actions=np.stack(self.actions),
            rewards=np.asarray(self.rewards, dtype=np.float32),
            terminated=np.asarray(self.terminated, dtype=bool),
            truncated=np.asarray(self.truncated, dtype=bool),
            states=None if self.states is None else np.stack(self.states[:-1]),  # the state before each action
            attrs=attrs,
        )


def _index_obs(obs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: np.array(v[i]) for k, v in obs.items()}


class Actor(Protocol):
    """What ``collect`` runs in each sub-env: a scripted expert, or any other per-env actor (a trained agent)."""

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


def collect(cfg: CollectConfig, actors: Sequence[Actor] | None = None, policy_id: str | None = None
            ) -> CollectSummary:
    """Run the scripted expert of ``cfg.task`` (or ``actors``, one per env, recorded as ``policy_id``) and write
    ``cfg.n_episodes`` episodes to ``cfg.output_path``."""
    env_kwargs = cfg.full_env_kwargs
    if actors is None:
        probe = gym.make(task_info(cfg.task).env_id, **cfg.env_kwargs)  # experts read geometry from it
        experts: Sequence[Actor] = [make_expert(cfg.task, probe, noise=cfg.noise, jitter=cfg.jitter)
                                    for _ in range(cfg.n_envs)]
        probe.close()
        policy_id = f"{type(experts[0]).__name__}(noise={cfg.noise}, jitter={cfg.jitter})"
    else:
        if len(actors) != cfg.n_envs:
            raise ConfigError(f"collect needs one actor per env: got {len(actors)} for n_envs={cfg.n_envs}")
        experts, policy_id = actors, policy_id or type(actors[0]).__name__
    envs = make_vector_env(cfg.task, env_kwargs, cfg.n_envs, cfg.vectorization)
    null_action = np.zeros(envs.single_action_space.shape, dtype=np.float32)

    started = written = successes = attempted = steps = 0
    total_return = 0.0
    recordings: list[EpisodeRecording | None] = [None] * cfg.n_envs
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.n_episodes, desc=f"collect {cfg.task}", unit="ep", disable=not cfg.progress)
    writer = EpisodeWriter(cfg.output_path, env_args=env_args_for(cfg.task, env_kwargs), mode=cfg.mode)
    try:

        def start_episodes(mask: np.ndarray) -> dict[str, np.ndarray]:
            """Reset the masked sub-envs. Each starts a fresh seeded episode while more are needed; the
            rest idle (a finished sub-env must be reset before the vector env steps it again)."""
            nonlocal started
            under_way = sum(r is not None for r in recordings)
            seeds: list[int | None] = [None] * cfg.n_envs
            record = np.zeros(cfg.n_envs, dtype=bool)
            for i in np.flatnonzero(mask):
                if written + under_way + record.sum() < cfg.n_episodes:
                    seeds[i], record[i] = cfg.seed + started, True
                    started += 1
            obs, _ = envs.reset(seed=seeds, options={"reset_mask": mask})
            states = envs.call("get_state")
            samples = envs.call("episode_randomization")
            for i in np.flatnonzero(record):
                experts[i].reset(seed=seeds[i])
                recordings[i] = EpisodeRecording(_index_obs(obs, i), seed=seeds[i], state=states[i],
                                                 randomization=samples[i])
            return obs

        obs = start_episodes(np.ones(cfg.n_envs, dtype=bool))
        while written < cfg.n_episodes:
            actions = np.stack([
                experts[i].act(_index_obs(obs, i)) if recordings[i] is not None else null_action
                for i in range(cfg.n_envs)
            ])
            obs, rewards, terminated, truncated, infos = envs.step(actions)
            states = envs.call("get_state")
            done = terminated | truncated
            for i, rec in enumerate(recordings):
                if rec is None:
                    continue
                rec.add(actions[i], float(rewards[i]), bool(terminated[i]), bool(truncated[i]), _index_obs(obs, i),
                        states[i])
                steps += 1
                if not done[i]:
                    continue
                success = bool(infos["is_success"][i])
                attempted += 1
                successes += success
                if (success or not cfg.success_only) and written < cfg.n_episodes:
                    episode = rec.finish(success, policy_id, cfg.source)
                    writer.append(episode)
                    written += 1
                    total_return += episode.attrs["return"]
                    bar.update(1)
                    bar.set_postfix(success=f"{successes / attempted:.0%}")
                recordings[i] = None
            if done.any() and written < cfg.n_episodes:
                obs = start_episodes(done)
            if attempted >= 20 and cfg.success_only and successes == 0:
                raise RuntimeError(f"success_only: none of the first {attempted} episodes succeeded")
        writer.update_success_mask()
    finally:
        bar.close()
        writer.close()
        envs.close()
    return CollectSummary(cfg.output_path, written, steps, successes, attempted, time.perf_counter() - t0,
                          total_return)
