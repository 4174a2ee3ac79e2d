"""A 1-D point mass that must reach 0: the smallest continuous-control task PPO tests can learn in seconds
(stable-baselines3's IdentityEnv idea), shared by the PPO unit, resume and learning tests; and a replay buffer of
its random-action transitions for the off-policy trainer's tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from roboloop.offline_rl import ReplayBuffer

STEP_SIZE = 0.2
GOAL_RADIUS = 0.1


class PointMass(gym.Env):
    """Observation ``[x, t / max_steps]`` (the time feature lets the critic see the time limit); action
    ``a`` in [-1, 1] moves ``x`` by ``STEP_SIZE * a``; reward ``-|x|`` after the move. The episode is
    truncated after ``max_steps`` steps; with ``terminate_at_goal`` it terminates once ``|x| < GOAL_RADIUS``.
    ``info["is_success"]`` on the last step. ``nan_reward_at`` (a step index) returns a NaN reward there."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, max_steps: int = 20, terminate_at_goal: bool = False, nan_reward_at: int | None = None):
        self.max_steps, self.terminate_at_goal, self.nan_reward_at = max_steps, terminate_at_goal, nan_reward_at
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x, self.t = 0.0, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.x, self.t / self.max_steps], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.x, self.t = float(self.np_random.uniform(-1.0, 1.0)), 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.x += STEP_SIZE * float(np.clip(action[0], -1.0, 1.0))
        self.t += 1
        reward = -abs(self.x) if self.t != self.nan_reward_at else float("nan")
        at_goal = abs(self.x) < GOAL_RADIUS
        terminated = self.terminate_at_goal and at_goal
        truncated = not terminated and self.t >= self.max_steps
        info = {"is_success": at_goal} if terminated or truncated else {}
        return self._obs(), reward, terminated, truncated, info


def make_envs(n_envs: int = 2, *, autoreset_mode: AutoresetMode = AutoresetMode.SAME_STEP,
              asynchronous: bool = False, **kwargs: Any) -> VectorEnv:
    fns: list[Callable[[], gym.Env]] = [lambda: PointMass(**kwargs) for _ in range(n_envs)]
    if asynchronous:
        return AsyncVectorEnv(fns, autoreset_mode=autoreset_mode)
    return SyncVectorEnv(fns, autoreset_mode=autoreset_mode)


def mean_return(act: Callable[[np.ndarray], np.ndarray], n_episodes: int = 30) -> float:
    """Mean return of ``act`` (observation -> action) over seeded point-mass episodes (seeds 10000, ...)."""
    env = PointMass()
    returns = []
    for episode in range(n_episodes):
        obs, _ = env.reset(seed=10_000 + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def random_point_mass_data(n: int = 400, seed: int = 0) -> ReplayBuffer:
    """Random-action transitions of the point mass (reward -|x'|), cut every 20 steps (truncated)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    t = np.tile(np.arange(20), n // 20)[:n]
    a = rng.uniform(-1, 1, n)
    x_next = x + STEP_SIZE * a
    obs = np.stack([x, t / 20], 1).astype(np.float32)
    next_obs = np.stack([x_next, (t + 1) / 20], 1).astype(np.float32)
    buffer = ReplayBuffer(obs_dim=2, action_dim=1, capacity=n)
    buffer.add(obs, a[:, None].astype(np.float32), -np.abs(x_next), next_obs, np.zeros(n, bool), t == 19)
    return buffer
