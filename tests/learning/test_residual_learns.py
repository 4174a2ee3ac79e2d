"""Residual PPO corrects a deliberately biased base: a chunking proportional controller whose actions carry a
constant offset never reaches the goal (0% success); the residual head learns to cancel the offset (well above
half of the episodes succeed) while the base's own output stays what it was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch import Tensor

from roboloop.core.errors import ConfigError
from roboloop.core.policy import Batch, LossOutput, Policy, PolicyConfig
from roboloop.core.spec import PolicySpec
from roboloop.envs.executor import ChunkExecutor
from roboloop.residual_rl import PPO, PPOConfig, ResidualConfig, ResidualPolicy, ResidualVecEnv

pytestmark = pytest.mark.slow

STEP, GOAL_RADIUS, MAX_STEPS = 0.1, 0.05, 30


class Reach1D(gym.Env):
    """``x`` starts in [0.4, 1]; action ``a`` in [-1, 1] moves it by ``STEP * a``; reaching ``|x| < GOAL_RADIUS``
    terminates with reward 1 (success); otherwise truncated after ``MAX_STEPS`` steps."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict({"observation.state": gym.spaces.Box(-2, 2, (1,), np.float32)})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x, self.t = 0.0, 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"observation.state": np.array([self.x], np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.x, self.t = float(self.np_random.uniform(0.4, 1)), 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.x = float(np.clip(self.x + STEP * float(np.clip(action[0], -1, 1)), -2, 2))
        self.t += 1
        success = abs(self.x) < GOAL_RADIUS
        return self._obs(), float(success), success, self.t >= MAX_STEPS and not success, {"is_success": success}


@dataclass
class BiasedControllerConfig(PolicyConfig):
    gain: float = 2.0
    bias: float = 0.5  # from above, the controller settles at x = bias / gain = 0.25, outside the goal


class BiasedController(Policy):
    """A chunking base with a systematic error: the chunk repeats ``clip(-gain * x + bias)``."""

    name = "biased_controller"
    config_cls = BiasedControllerConfig
    config: BiasedControllerConfig

    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        x = torch.as_tensor(obs["observation.state"], dtype=torch.float32)[:, -1, :]  # (B, 1)
        action = (-self.config.gain * x + self.config.bias).clamp(-1, 1)
        return action[:, None, :].expand(-1, self.spec.n_action_steps, -1).clone()

    def compute_loss(self, batch: Batch) -> LossOutput:
        raise ConfigError("a hand-written controller is not trained")


def make_envs(n: int) -> SyncVectorEnv:
    return SyncVectorEnv([Reach1D for _ in range(n)], autoreset_mode=AutoresetMode.DISABLED)


def success_rate(policy: Policy, n_episodes: int = 40) -> float:
    env, successes = Reach1D(), 0
    for episode in range(n_episodes):
        obs, _ = env.reset(seed=50_000 + episode)
        executor = ChunkExecutor(policy, 1)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(executor.act({k: v[None] for k, v in obs.items()})[0])
            done = terminated or truncated
        successes += bool(info["is_success"])
    return successes / n_episodes


def test_residual_ppo_corrects_a_biased_base(tmp_path: Path) -> None:
    spec = PolicySpec.from_env(make_envs(1), n_obs_steps=1, horizon=4, n_action_steps=4)
    base = BiasedController(BiasedControllerConfig(n_obs_steps=1, horizon=4, n_action_steps=4), spec)
    base.normalizer.fit({"observation.state": {"min": np.array([-1.0]), "max": np.array([1.0])},
                         "action": {"min": np.array([-1.0]), "max": np.array([1.0])}})
    assert success_rate(base) == 0.0

    torch.manual_seed(0)
    residual = ResidualPolicy.from_base(base, ResidualConfig(scale=1.0, hidden_dims=[32, 32], init_logstd=-1.0))
    cfg = PPOConfig(total_env_steps=24_000, n_steps=MAX_STEPS, n_epochs=10, n_minibatches=4, gamma=0.97,
                    actor_lr=1e-3, critic_lr=3e-3, critic_hidden_dims=[32, 32], critic_warmup_iterations=2,
                    reset_each_iteration=True, device="cpu", progress=False, checkpoint_every=1000)
    PPO(residual.head, ResidualVecEnv(make_envs(8), residual), cfg, tmp_path).learn()
    assert success_rate(residual) > 0.6
    assert success_rate(base) == 0.0  # the base itself is unchanged
