"""Residual RL (ResiP): a frozen BC policy plus a Gaussian head trained with PPO, the base part of the env."""

from roboloop.residual_rl.buffers import RewardNormalizer, RolloutBatch, RolloutBuffer, RunningMeanStd, compute_gae
from roboloop.residual_rl.env import ResidualVecEnv
from roboloop.residual_rl.policy import ResidualConfig, ResidualPolicy
from roboloop.residual_rl.ppo import PPO, PPOConfig, PPOResult, ValueMLP

__all__ = ["PPO", "PPOConfig", "PPOResult", "ResidualConfig", "ResidualPolicy", "ResidualVecEnv", "RewardNormalizer",
           "RolloutBatch", "RolloutBuffer", "RunningMeanStd", "ValueMLP", "compute_gae"]
