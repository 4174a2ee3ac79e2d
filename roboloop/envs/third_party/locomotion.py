"""Gymnasium's MuJoCo locomotion benchmarks (``Hopper-v5``, ``HalfCheetah-v5``) under roboloop's observation contract.

These are the standard offline-RL benchmarks (D4RL's tasks, on gymnasium's v5 models), so that offline RL is
judged on tasks no one here designed. The adapter changes only what the contract needs:

* Observations become a Dict: ``observation.state`` = the env's own observation vector (float32).
* ``get_state()`` / ``reset(options={"state": ...})`` (MuJoCo's integration state) for replay, and
  ``episode_randomization`` (empty: these envs randomize only their initial joint noise, from the seed).
* ``info["is_success"]`` is always False: locomotion has no success, only return.

Dynamics, rewards and terminations are gymnasium's own; the time limit (1000 steps) is the registration's.
There is no scripted expert: ``roboloop make-tiers`` makes these tasks' tiers from stable-baselines3 agents
trained here (:mod:`roboloop.datasets.agent_tiers`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from roboloop.core.errors import StateError
from roboloop.envs.base import STATE_KEY, check_action, check_reset_options

_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


class LocomotionAdapter(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Base of the locomotion adapters; keyword arguments go to the gymnasium env (``ctrl_cost_weight``, ...)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 125}
    task_name: ClassVar[str]
    _gym_id: ClassVar[str]

    def __init__(self, *, render_mode: str | None = None, **env_kwargs: Any) -> None:
        # The unwrapped env: the registration of the roboloop id applies the time limit once.
        self._inner = gym.make(self._gym_id, render_mode=render_mode, **env_kwargs).unwrapped
        self.render_mode = render_mode
        inner_space = self._inner.observation_space
        self.state_dim = int(np.prod(inner_space.shape))
        self.observation_space = spaces.Dict({STATE_KEY: spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)})
        self.action_space = self._inner.action_space
        self._action_layout = ", ".join(f"torque{i}" for i in range(self.action_space.shape[0]))
        self._state_size = mujoco.mj_stateSize(self.model, _STATE_SPEC)
        self._started = False

    @property
    def model(self) -> mujoco.MjModel:
        return self._inner.model

    @property
    def data(self) -> mujoco.MjData:
        return self._inner.data

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = check_reset_options(options)
        # The inner env draws its initial joint noise from its own generator: seed it from ours.
        obs, _ = self._inner.reset(seed=int(self.np_random.integers(2**31)))
        if options.get("state") is not None:
            self._set_state(np.asarray(options["state"], dtype=np.float64))
            obs = self._inner._get_obs()
        self._started = True
        return self._obs(obs), {"randomization": {}, "is_success": False}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if not self._started:
            raise RuntimeError(f"{self.task_name}: call reset() before step()")
        action = check_action(self.task_name, action, self._action_layout)
        obs, reward, terminated, truncated, info = self._inner.step(action)
        return self._obs(obs), float(reward), bool(terminated), bool(truncated), {**info, "is_success": False}

    def render(self) -> np.ndarray | None:
        return self._inner.render()

    def close(self) -> None:
        self._inner.close()

    @property
    def state_size(self) -> int:
        return self._state_size

    def get_state(self) -> np.ndarray:
        """MuJoCo's integration state (time, qpos, qvel, ...)."""
        state = np.empty(self._state_size)
        mujoco.mj_getState(self.model, self.data, state, _STATE_SPEC)
        return state

    def _set_state(self, state: np.ndarray) -> None:
        if state.ndim != 1 or state.size != self._state_size:
            raise StateError(f"{self.task_name}: state has shape {state.shape}, expected ({self._state_size},)")
        if not np.isfinite(state).all():
            raise StateError(f"{self.task_name}: state contains NaN or inf")
        mujoco.mj_setState(self.model, self.data, state, _STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)

    @property
    def episode_randomization(self) -> dict[str, Any]:
        return {}

    def _obs(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {STATE_KEY: np.asarray(obs, dtype=np.float32).reshape(self.state_dim)}


class HopperAdapter(LocomotionAdapter):
    task_name: ClassVar[str] = "Hopper-v5"
    _gym_id: ClassVar[str] = "Hopper-v5"


class HalfCheetahAdapter(LocomotionAdapter):
    task_name: ClassVar[str] = "HalfCheetah-v5"
    _gym_id: ClassVar[str] = "HalfCheetah-v5"
