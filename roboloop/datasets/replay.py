"""Re-simulate stored episodes from their first state and actions; measure how far the replay drifts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from roboloop.core.errors import ConfigError, DatasetError
from roboloop.datasets.store import EpisodeStore
from roboloop.envs import register_all
from roboloop.utils.video import write_mp4


@dataclass
class ReplayConfig:
    """``roboloop replay``: re-simulate stored episodes and report the largest observation mismatch.

    Attributes:
        file: Episode file.
        episodes: Indices of the episodes to replay (``N`` in ``demo_N``); empty: all of them.
        video: mp4 to write (the replayed episodes back to back); empty string: no video.
        render_size: Side of the video frames.
        tolerance: Largest mismatch (per observation value) counted as exact.
    """

    file: str = ""
    episodes: list[int] = field(default_factory=lambda: [0])
    video: str = ""
    render_size: int = 256
    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if not self.file:
            raise ConfigError("replay needs file=<episode file>")
        if self.render_size < 16:
            raise ConfigError(f"render_size must be >= 16, got {self.render_size}")
        if not self.tolerance >= 0:
            raise ConfigError(f"tolerance must be >= 0, got {self.tolerance}")


@dataclass
class ReplayResult:
    episodes: list[str]
    steps: int
    max_obs_error: dict[str, float]  # per observation key, over all replayed steps
    max_state_error: float
    video: Path | None

    @property
    def worst(self) -> float:
        return max(self.max_obs_error.values(), default=0.0)


def make_env_from_args(env_args: dict[str, Any], **overrides: Any) -> gym.Env:
    """The env an episode file was recorded in (its ``env_args``), with ``overrides`` on top."""
    register_all()
    name = env_args.get("env_name")
    if name not in gym.registry:
        raise DatasetError(f"episode file was recorded in env {name!r}, which is not registered here")
    return gym.make(name, **{**env_args.get("env_kwargs", {}), **overrides})


def replay(cfg: ReplayConfig) -> ReplayResult:
    with EpisodeStore(cfg.file) as store:
        demos = store.demos if not cfg.episodes else [f"demo_{i}" for i in cfg.episodes]
        env = make_env_from_args(store.env_args, render_mode="rgb_array" if cfg.video else None,
                                 **({"render_size": cfg.render_size} if cfg.video else {}))
        fps = env.metadata.get("render_fps", 10)
        errors: dict[str, float] = {}
        state_error, steps, frames = 0.0, 0, []
        try:
            for demo in demos:
                episode = store.episode(demo)
                if episode.states is None:
                    raise DatasetError(f"{cfg.file!r}: {demo} has no 'states'; it cannot be replayed")
                randomization = episode.attrs.get("randomization")
                obs, _ = env.reset(options={"state": episode.states[0], "randomization": randomization})
                _accumulate(errors, obs, episode.observations, 0)
                if cfg.video:
                    frames.append(env.render())
                for t, action in enumerate(episode.actions):
                    obs, *_ = env.step(action)
                    _accumulate(errors, obs, episode.observations, t + 1)
                    if t + 1 < len(episode.states):
                        state = env.unwrapped.get_state()
                        state_error = max(state_error, float(np.max(np.abs(state - episode.states[t + 1]))))
                    if cfg.video:
                        frames.append(env.render())
                steps += len(episode)
        finally:
            env.close()
    video = write_mp4(cfg.video, frames, fps) if cfg.video else None
    return ReplayResult(demos, steps, errors, state_error, video)


def _accumulate(errors: dict[str, float], obs: dict[str, np.ndarray], stored: dict[str, np.ndarray], t: int) -> None:
    for key, value in obs.items():
        if key not in stored:
            continue
        diff = np.max(np.abs(np.asarray(value, dtype=np.float64) - np.asarray(stored[key][t], dtype=np.float64)))
        errors[key] = max(errors.get(key, 0.0), float(diff))
