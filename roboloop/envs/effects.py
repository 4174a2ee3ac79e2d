"""Per-step effects of the randomization spec that live in the env, not the model.

:class:`ActionLatency` delays actions by whole control steps (its queue is part of the env state, so
replay from a mid-episode state is exact); :class:`ObservationNoise` perturbs ``observation.state``
from its own generator, seeded per episode, so a replayed episode sees the same noise.
"""

from __future__ import annotations

import numpy as np


class ActionLatency:
    """A FIFO of pending actions. ``null_action`` fills it at reset (what the robot does before any command)."""

    def __init__(self, null_action: np.ndarray) -> None:
        self.null_action = np.asarray(null_action, dtype=np.float64)
        self.pending = np.zeros((0, self.null_action.size))

    def reset(self, steps: int) -> None:
        self.pending = np.tile(self.null_action, (int(steps), 1))

    @property
    def steps(self) -> int:
        return len(self.pending)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """Queue ``action``; return the one sent ``steps`` steps ago (``action`` itself without latency)."""
        if not len(self.pending):
            return action
        delayed = self.pending[0].copy()
        self.pending[:-1] = self.pending[1:]
        self.pending[-1] = action
        return delayed

    def set_pending(self, flat: np.ndarray) -> None:
        self.pending = np.asarray(flat, dtype=np.float64).reshape(-1, self.null_action.size).copy()


class ObservationNoise:
    """Additive Gaussian noise on the state vector; a no-op when ``std`` is 0."""

    def __init__(self) -> None:
        self.std = 0.0
        self._rng: np.random.Generator | None = None

    def reset(self, std: float, seed: int | None) -> None:
        self.std = float(std)
        self._rng = np.random.default_rng(seed) if self.std > 0 else None

    def __call__(self, state: np.ndarray) -> np.ndarray:
        if self._rng is None:
            return state
        return state + self._rng.normal(0.0, self.std, state.shape)
