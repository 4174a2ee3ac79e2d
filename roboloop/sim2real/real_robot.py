"""The real-robot side of sim-to-real: the protocol a physical arm implements, and the real proxy that stands in
for one here.

``RealRobot`` is what hardware provides: Gymnasium's ``reset``/``step``/``close`` and spaces, with the task's Dict
observations and ``info["is_success"]`` from a success detector. ``RealRobotEnv`` wraps any ``RealRobot`` into what
the sim-to-real loops use: a Gymnasium env with an **episode budget** (real episodes cost time and wear; a reset
past the budget raises :class:`BudgetExceededError`), and a **log** that appends every finished episode to an
episode file with ``source="real"`` (no simulator states: a real robot has none). A physical arm plugs in by
implementing ``RealRobot`` (the adapter point: reset to a start configuration, send one action, read the
observation and the success detector) and passing it to ``RealRobotEnv``. A policy trained with the env's
``hold_steps`` (``roboloop sim2real`` sets it to the identified action latency) expects the arm to hold its pose for
that many control periods after each action before it observes; an adapter honours the policy's
``env_kwargs.hold_steps``, as the proxy does through its own ``env_kwargs``.

``RealProxy`` is the stand-in: a roboloop task simulated under hidden "true" parameters outside the nominal
simulation (friction, object mass, actuator gain and damping, action latency, observation noise, camera pose,
lighting, colours), drawn once from a secret seed. Nothing it returns carries them: its ``info`` holds only
``is_success``, it offers no simulator state, and the parameters live in a private attribute that only the
evaluation of identification (``reveal_parameters``, for benchmarks and tests, never for training code) reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from roboloop.core.errors import ConfigError, InputError, RoboloopError
from roboloop.datasets.collection import EpisodeRecording, env_args_for
from roboloop.datasets.store import EpisodeWriter
from roboloop.envs import task_info
from roboloop.envs.scene import WORLD_CAMERAS

REAL_SOURCE = "real"
#: The physical parameters a real proxy hides, and how far from nominal (1.0) each scale is drawn: a relative
#: offset uniform in [MIN_SHIFT, MAX_SHIFT], either sign (outside the nominal simulation, inside what a sensible
#: randomization range would cover).
HIDDEN_SCALES = ("friction_scale", "object_mass_scale", "actuator_gain_scale", "actuator_damping_scale")
MIN_SHIFT, MAX_SHIFT = 0.15, 0.35


class BudgetExceededError(RoboloopError):
    """A real-robot episode was requested after the episode budget was spent."""


@runtime_checkable
class RealRobot(Protocol):
    """What a physical robot (or the real proxy) provides: Gymnasium's API on the task's spaces."""

    observation_space: gym.spaces.Dict
    action_space: gym.spaces.Box
    task: str

    def reset(self, *, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class HiddenParameters:
    """A real proxy's true physics and visuals (what system identification tries to recover).

    Attributes:
        friction_scale, object_mass_scale, actuator_gain_scale, actuator_damping_scale: Multipliers of the nominal
            values (1.0 is the nominal simulation).
        action_latency_steps: Control steps an action takes to arrive.
        obs_noise_std: Std of the sensor noise on ``observation.state`` (0.2-0.5 mm in positions: a motion-capture or
            well-calibrated pose estimate; PegInsert's clearance is 0.5 mm per side).
        light_intensity_scale: Multiplier of the key light's intensity.
        camera_pos_offset: (3,) metres every world camera is moved by.
        camera_rotation: (4,) quaternion every world camera is turned by.
        object_rgb_offset, table_rgb_offset: (3,) colour shifts.
    """

    friction_scale: float
    object_mass_scale: float
    actuator_gain_scale: float
    actuator_damping_scale: float
    action_latency_steps: int
    obs_noise_std: float
    light_intensity_scale: float
    camera_pos_offset: tuple[float, ...]
    camera_rotation: tuple[float, ...]
    object_rgb_offset: tuple[float, ...]
    table_rgb_offset: tuple[float, ...]

    @classmethod
    def draw(cls, seed: int) -> HiddenParameters:
        """Parameters off the nominal simulation, reproducible from ``seed`` and unknown without it."""
        rng = np.random.default_rng(seed)

        def shifted() -> float:
            return float(1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(MIN_SHIFT, MAX_SHIFT))

        scales = {name: shifted() for name in HIDDEN_SCALES}
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = rng.uniform(0.03, 0.06)  # radians: a camera remounted a few degrees off
        return cls(**scales, action_latency_steps=int(rng.integers(1, 3)),
                   obs_noise_std=float(rng.uniform(0.0002, 0.0005)),
                   light_intensity_scale=float(rng.uniform(0.5, 0.8)),
                   camera_pos_offset=tuple(rng.uniform(-0.02, 0.02, 3).tolist()),
                   camera_rotation=(math.cos(angle / 2), *(math.sin(angle / 2) * axis).tolist()),
                   object_rgb_offset=tuple(rng.uniform(-0.15, 0.15, 3).tolist()),
                   table_rgb_offset=tuple(rng.uniform(-0.1, 0.1, 3).tolist()))

    def randomization(self, camera_names: Sequence[str]) -> dict[str, Any]:
        """These parameters as the entries of an env's randomization sample (poses are the episode's own)."""
        sample: dict[str, Any] = {name: getattr(self, name) for name in HIDDEN_SCALES}
        sample.update(light_intensity_scale=self.light_intensity_scale, action_latency_steps=self.action_latency_steps,
                      obs_noise_std=self.obs_noise_std, object_rgb_offset=list(self.object_rgb_offset),
                      table_rgb_offset=list(self.table_rgb_offset))
        for cam in camera_names:
            sample[f"camera.{cam}.pos_offset"] = list(self.camera_pos_offset)
            sample[f"camera.{cam}.rotation"] = list(self.camera_rotation)
        return sample


def proxy_env_kwargs(env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A policy's env_kwargs as a real proxy takes them: the task's geometry, cameras and pose ranges, without the
    physical and visual randomization it was trained under (the proxy's own hidden values replace those)."""
    kwargs = dict(env_kwargs)
    randomization = dict(kwargs.pop("randomization", None) or {})
    if "poses" in randomization:
        kwargs["randomization"] = {"poses": randomization["poses"]}
    return kwargs


class RealProxy:
    """A task's simulation under hidden parameters, seen only through what a real robot would report.

    Args:
        task: A roboloop task (``PegInsert``...).
        secret_seed: Draws the hidden parameters (``HiddenParameters.draw``).
        env_kwargs: The task's constructor arguments (cameras, image size...); its randomization keeps its pose
            ranges, every physical and visual factor is replaced by the hidden value.
    """

    def __init__(self, task: str, *, secret_seed: int = 0, env_kwargs: Mapping[str, Any] | None = None) -> None:
        info = task_info(task)
        if info.expert is None:
            raise ConfigError(f"{info.name} has no real proxy: proxies exist for the manipulation tasks")
        self.task = info.name
        self.env_kwargs = dict(env_kwargs or {})
        self.__sim = gym.make(info.env_id, **self.env_kwargs)
        self.__hidden = HiddenParameters.draw(secret_seed)
        self.observation_space = self.__sim.observation_space
        self.action_space = self.__sim.action_space
        self.__rng = np.random.default_rng(secret_seed + 1)

    def reset(self, *, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        sim = self.__sim.unwrapped
        rng = np.random.default_rng(seed) if seed is not None else self.__rng
        sample = sim._sample_episode(rng)  # the episode's poses (and noise seed), drawn as the task draws them
        sample.update(self.__hidden.randomization([c.name for c in WORLD_CAMERAS]))
        if "obs_noise_seed" not in sample:  # the nominal task has no sensor noise, so drew no seed for it
            sample["obs_noise_seed"] = int(rng.integers(2**31))
        obs, info = self.__sim.reset(seed=seed, options={"randomization": sample})
        return obs, {"is_success": bool(info["is_success"])}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.__sim.step(action)
        return obs, float(reward), bool(terminated), bool(truncated), {"is_success": bool(info["is_success"])}

    def close(self) -> None:
        self.__sim.close()

    def reveal_parameters(self) -> HiddenParameters:
        """The hidden truth, for scoring identification in benchmarks and tests; training code must not call it."""
        return self.__hidden

    def __repr__(self) -> str:
        return f"RealProxy(task={self.task!r})"


class RealRobotEnv(gym.Env):
    """A ``RealRobot`` with an episode budget and a log of every episode in an episode file (``source="real"``).

    Args:
        robot: The robot (``RealProxy`` here; a hardware adapter elsewhere).
        episode_budget: Episodes that may be started; one more ``reset`` raises :class:`BudgetExceededError`.
        log_path: Episode file the finished episodes are appended to (None: not logged).
        policy_id: Recorded with each episode (which policy ran it); change it with ``set_policy_id``.
    """

    metadata = {"render_modes": []}

    def __init__(self, robot: RealRobot, *, episode_budget: int, log_path: str | Path | None = None,
                 policy_id: str | None = None) -> None:
        if not isinstance(robot, RealRobot):
            raise ConfigError(f"{type(robot).__name__} does not implement the RealRobot protocol "
                              "(observation_space, action_space, task, reset, step, close)")
        if episode_budget < 1:
            raise ConfigError(f"episode_budget must be >= 1, got {episode_budget}")
        self.robot = robot
        self.observation_space = robot.observation_space
        self.action_space = robot.action_space
        self.episode_budget = int(episode_budget)
        self.episodes_used = 0
        self.policy_id = policy_id
        self._writer = (EpisodeWriter(log_path, env_args=env_args_for(robot.task, {}), mode="a")
                        if log_path is not None else None)
        self._episode: EpisodeRecording | None = None
        self._success = False

    @property
    def episodes_left(self) -> int:
        return self.episode_budget - self.episodes_used

    def set_policy_id(self, policy_id: str | None) -> None:
        self.policy_id = policy_id

    def check_observations(self, obs_keys: Sequence[str]) -> None:
        """Raise :class:`InputError` if a policy reads observations this robot does not provide."""
        missing = sorted(set(obs_keys) - set(self.observation_space.spaces))
        if missing:
            raise InputError(f"the policy reads {missing}, which this {self.robot.task} robot does not provide "
                             f"(it provides {sorted(self.observation_space.spaces)})")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if options:
            raise InputError(f"a real robot takes no reset options (no state or randomization to set), got "
                             f"{sorted(options)}")
        self._finish_episode()  # an episode abandoned before it ended is still logged
        if self.episodes_used >= self.episode_budget:
            raise BudgetExceededError(f"the real robot's budget of {self.episode_budget} episodes is spent "
                                      f"({self.episodes_used} run); raise episode_budget to run more")
        obs, info = self.robot.reset(seed=seed)
        self.episodes_used += 1
        self._episode = EpisodeRecording({k: np.array(v) for k, v in obs.items()}, seed=seed)
        self._success = bool(info.get("is_success", False))
        return obs, info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._episode is None:
            raise InputError("call reset() before step() on a real robot")
        obs, reward, terminated, truncated, info = self.robot.step(action)
        self._episode.add(np.asarray(action, dtype=np.float32), float(reward), bool(terminated), bool(truncated),
                          {k: np.array(v) for k, v in obs.items()})
        self._success |= bool(info.get("is_success", False))
        if terminated or truncated:
            self._finish_episode()
        return obs, reward, terminated, truncated, info

    def _finish_episode(self) -> None:
        episode, self._episode = self._episode, None
        if episode is None or not len(episode) or self._writer is None:
            return
        self._writer.append(episode.finish(self._success, self.policy_id, REAL_SOURCE))

    def close(self) -> None:
        self._finish_episode()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.robot.close()
