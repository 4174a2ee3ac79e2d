"""Run a policy on a real robot: one episode at a time, through the same chunk executor as evaluation in simulation.

A real robot is one env, not a vector of them, and takes no reset options, so ``evaluate``'s vector envs do not fit
it. :func:`deploy` drives a :class:`~roboloop.sim2real.real_robot.RealRobotEnv` with a
:class:`~roboloop.envs.executor.ChunkExecutor` of one env: the same observation history, action chunking and
per-step residual correction as in simulation. Every episode is logged by the ``RealRobotEnv`` and spends its budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from roboloop.core.metrics import format_rate, wilson_interval
from roboloop.core.policy import Policy
from roboloop.datasets.collection import Actor
from roboloop.envs.executor import ChunkExecutor
from roboloop.sim2real.real_robot import RealRobotEnv


class PolicyActor:
    """One env's view of a policy (the ``Actor`` of ``collect``): its own chunk executor of one env, so its
    observation history, action queue and per-step residual correction are those of evaluation."""

    def __init__(self, policy: Policy, *, deterministic: bool = True) -> None:
        self.executor = ChunkExecutor(policy, 1, deterministic=deterministic)

    def reset(self, seed: int | None = None) -> None:
        self.executor.reset()

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.executor.act({k: np.asarray(v)[None] for k, v in obs.items()})[0]


@dataclass
class DeployResult:
    """Per-episode outcomes of a deployment (``{"seed", "success", "length", "return"}`` each)."""

    episodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return sum(e["success"] for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / max(len(self.episodes), 1)

    @property
    def success_ci(self) -> tuple[float, float]:
        return wilson_interval(self.successes, len(self.episodes))

    def summary(self) -> str:
        return f"real success: {format_rate(self.successes, len(self.episodes))}"


def run_episodes(robot: RealRobotEnv, actor: Actor, n_episodes: int, *, seed: int | None = None) -> DeployResult:
    """Run ``n_episodes`` episodes of ``actor`` on ``robot``; episode k resets both with ``seed + k`` (a real robot
    may ignore it; the real proxy draws its start from it, so two actors can face the same starts)."""
    result = DeployResult()
    for k in range(n_episodes):
        episode_seed = None if seed is None else seed + k
        obs, info = robot.reset(seed=episode_seed)
        actor.reset(seed=episode_seed)
        success, length, ret, done = bool(info.get("is_success", False)), 0, 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = robot.step(actor.act(obs))
            success |= bool(info.get("is_success", False))
            length, ret, done = length + 1, ret + float(reward), terminated or truncated
        result.episodes.append({"seed": episode_seed, "success": success, "length": length, "return": ret})
    return result


def deploy(policy: Policy, robot: RealRobotEnv, n_episodes: int, *, seed: int | None = None,
           deterministic: bool = True) -> DeployResult:
    """Run ``n_episodes`` episodes of ``policy`` on ``robot`` (in eval mode, restored after); see
    :func:`run_episodes` for the seeds. A policy that reads what the robot does not provide is refused first."""
    robot.check_observations(list(policy.spec.obs_shapes))
    was_training = policy.training
    policy.eval()
    try:
        return run_episodes(robot, PolicyActor(policy, deterministic=deterministic), n_episodes, seed=seed)
    finally:
        policy.train(was_training)
