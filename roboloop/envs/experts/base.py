"""Scripted experts: closed-loop state machines that read ``observation.state`` and emit actions.

Experts see exactly what a policy sees (no privileged simulator access), so they run unchanged in
vector envs, under randomization, and on a real robot exposing the same observations.

The quality knob is ``noise``: at each step, with that probability, the expert's action is replaced
by a uniformly random one. These are gross mistakes (a lurch, a grip that opens) which the
closed-loop expert then has to recover from, so success falls smoothly as ``noise`` goes from 0 to
about 0.7, on precise tasks as on coarse ones. Plain Gaussian action noise does not: on PegInsert
(0.5 mm per side) success drops from 100% to 0% between std 0.01 and 0.04, which is why it is only
offered as an extra ``jitter``. The executed (noisy) action is what gets recorded.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import numpy as np

from roboloop.core.errors import ConfigError


def wrap_to(angle: float, period: float) -> float:
    """``angle`` wrapped into ``[-period/2, period/2)`` (for symmetric objects: period pi/2 for a square)."""
    return (angle + period / 2) % period - period / 2


def toward(error: np.ndarray, max_delta: float, gain: float = 1.0, limit: float = 1.0) -> np.ndarray:
    """Action that moves a setpoint by ``gain * error`` this step, saturated at ``limit`` (in action units)."""
    return np.clip(gain * np.asarray(error, dtype=float) / max_delta, -limit, limit)


class ScriptedExpert(abc.ABC):
    """Base of every scripted expert.

    Args:
        env: The (unwrapped) env, read once for geometry and control scales; never for its state.
        noise: Probability per step of a uniformly random action instead of the expert's (0 = clean).
        jitter: Std of Gaussian noise added to every action dimension, in action units.
        seed: Seeds the noise and any random choice the expert makes (e.g. which way round).
    """

    action_dim: int = 5

    def __init__(self, env: Any, *, noise: float = 0.0, jitter: float = 0.0, seed: int | None = None) -> None:
        if not (math.isfinite(noise) and 0.0 <= noise <= 1.0):
            raise ConfigError(f"expert noise is a probability and must be in [0, 1], got {noise!r}")
        if not (math.isfinite(jitter) and jitter >= 0):
            raise ConfigError(f"expert jitter must be a finite number >= 0, got {jitter!r}")
        self.noise = float(noise)
        self.jitter = float(jitter)
        self.rng = np.random.default_rng(seed)
        self._configure(env)
        self.reset()

    def _configure(self, env: Any) -> None:  # noqa: B027  (an optional hook, not abstract)
        """Read geometry and scales from the env (once)."""

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (and optionally reseed)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self._reset_plan()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The next action, (action_dim,) float32 in [-1, 1]."""
        # Always plan, so the state machine keeps tracking the episode through the random steps.
        action = np.asarray(self._plan(np.asarray(obs["observation.state"], dtype=float)), dtype=float)
        if self.noise > 0 and self.rng.random() < self.noise:
            action = self.rng.uniform(-1.0, 1.0, action.shape)
        if self.jitter > 0:
            action = action + self.rng.normal(0.0, self.jitter, action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    @abc.abstractmethod
    def _reset_plan(self) -> None: ...

    @abc.abstractmethod
    def _plan(self, state: np.ndarray) -> np.ndarray:
        """Clean action from ``observation.state`` (float64)."""


class GripperExpert(ScriptedExpert):
    """Shared helpers for experts of roboloop's own tasks (5-D gripper actions)."""

    def _configure(self, env: Any) -> None:
        self.max_delta_pos = float(env.max_delta_pos)
        self.max_delta_yaw = float(env.max_delta_yaw)

    @staticmethod
    def proprio(state: np.ndarray) -> tuple[np.ndarray, float, float]:
        """``(eef_pos (3,), eef_yaw, finger_gap)`` from ``observation.state``."""
        return state[0:3], math.atan2(state[4], state[3]), float(state[5])

    def action(self, pos_error: np.ndarray, yaw_error: float, grip: float, *, gain: float = 1.0,
               limit: float = 1.0) -> np.ndarray:
        out = np.empty(5)
        out[0:3] = toward(pos_error, self.max_delta_pos, gain, limit)
        out[3] = float(toward(np.array([yaw_error]), self.max_delta_yaw, 1.0)[0])
        out[4] = grip
        return out
