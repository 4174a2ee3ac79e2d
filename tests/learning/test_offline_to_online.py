"""Offline-to-online finetuning on the point mass: Cal-QL learned offline from a weak behavior improves online
without the unlearning dip (every online evaluation stays near or above the offline one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from roboloop.offline_rl import ReplayBuffer, discounted_returns
from roboloop.offline_rl.calql import CalQL, CalQLConfig
from roboloop.offline_rl.trainer import OffPolicyConfig, OffPolicyTrainer
from roboloop.policies.tanh_gaussian import TanhGaussianMLP
from tests.point_mass import PointMass, make_envs, mean_return

pytestmark = pytest.mark.slow
GAMMA = 0.9


def weak_behavior(n_episodes: int = 50) -> tuple[ReplayBuffer, float]:
    """A behavior that drifts toward 0 under heavy noise; returns its data and its mean return."""
    rng, env = np.random.default_rng(0), PointMass()
    buffer, returns = ReplayBuffer(2, 1, n_episodes * 20), []
    for episode in range(n_episodes):
        obs, _ = env.reset(seed=episode)
        rows: list[tuple] = []
        done = False
        while not done:
            action = np.clip(-0.3 * np.sign(obs[:1]) + rng.normal(0, 0.8, 1), -1, 1).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            rows.append((obs, action, reward, next_obs, terminated, truncated))
            obs, done = next_obs, terminated or truncated
        o, a, r, n, te, tr = (np.array(x) for x in zip(*rows, strict=True))
        buffer.add(o, a, r, n, te, tr, discounted_returns(r, GAMMA))
        returns.append(float(r.sum()))
    return buffer, float(np.mean(returns))


def test_calql_finetunes_online_without_unlearning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data, behavior = weak_behavior()
    agent = CalQL(TanhGaussianMLP(2, 1, (32, 32)), 2, 1,
                  CalQLConfig(hidden_dims=[32, 32], n_actions=4, gamma=GAMMA, actor_lr=1e-3, critic_lr=1e-3,
                              cql_alpha=1.0))
    evaluations: list[tuple[int, float]] = []

    def evaluate(actor: torch.nn.Module, updates: int) -> dict[str, float]:
        deterministic = actor.sample  # type: ignore[operator]
        evaluations.append((updates, mean_return(
            lambda obs: deterministic(torch.as_tensor(obs)[None], deterministic=True).env_action[0].numpy(), 20)))
        return {"return": evaluations[-1][1]}

    cfg = OffPolicyConfig(offline_steps=1000, online_env_steps=3000, batch_size=128, eval_every=250,
                          checkpoint_every=10**6, log_every=10**6, progress=False)
    OffPolicyTrainer(agent, data, cfg, tmp_path, envs=make_envs(1, max_steps=20), evaluate_fn=evaluate).learn()
    offline = dict(evaluations)[1000]
    online = [value for updates, value in evaluations if updates > 1000]
    assert offline > behavior + 2.0  # offline RL beats the data (measured: -1.95 against -5.3)
    assert online[-1] > offline + 0.5  # online finetuning improves on it (measured: -0.82)
    assert min(online) > offline - 0.5  # and never falls far below it on the way
