"""Cal-QL against plain CQL on a contextual bandit: calibration stops the conservative push on the policy's
actions at the data's returns, so its values end higher than CQL's and not below the returns; both extract the
behavior's mode; state round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from roboloop.core.errors import ConfigError
from roboloop.offline_rl import ReplayBuffer
from roboloop.offline_rl.calql import CalQL, CalQLConfig
from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.policies.tanh_gaussian import TanhGaussianMLP


def bandit_data(n: int = 2000, seed: int = 0) -> ReplayBuffer:
    """One-step episodes: s in [-1, 1], behavior a = s + noise, reward 1 - (a - s)^2 (its own return-to-go)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    a = np.clip(s + rng.normal(0, 0.3, (n, 1)), -1, 1).astype(np.float32)
    reward = 1.0 - ((a - s) ** 2)[:, 0]
    buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=n)
    buffer.add(s, a, reward, s, np.ones(n, bool), np.zeros(n, bool), mc_returns=reward)
    return buffer


def train(calibrated: bool, steps: int = 400, bc_alpha: float | None = None,
          extraction: str = "sac") -> tuple[CalQL, torch.Tensor]:
    torch.manual_seed(0)
    agent = CalQL(TanhGaussianMLP(1, 1, hidden_dims=(32, 32)), 1, 1,
                  CalQLConfig(calibrated=calibrated, cql_alpha=5.0, n_actions=4, hidden_dims=[32, 32],
                              actor_lr=1e-3, critic_lr=1e-3, bc_alpha=bc_alpha, extraction=extraction))
    data, generator = bandit_data(), torch.Generator().manual_seed(0)
    for _ in range(steps):
        metrics = agent.update(data.sample(128, generator))
    assert all(np.isfinite(v) for v in metrics.values())
    s = torch.linspace(-0.9, 0.9, 19)[:, None]
    with torch.no_grad():
        q_policy = agent.critic(s, agent.actor.mode(s)).min(dim=0).values
    return agent, q_policy


def test_calibration_keeps_the_policy_values_at_the_data_returns() -> None:
    calql, q_calibrated = train(calibrated=True)
    cql, q_conservative = train(calibrated=False)
    # The data's returns average about 0.91. With the same push-up on the data's actions, CQL also pushes the
    # policy's own actions down (measured: 1.20 against Cal-QL's 1.70 at this seed).
    assert q_calibrated.mean() > q_conservative.mean() + 0.2
    assert q_calibrated.min() > 0.9
    s = torch.linspace(-0.9, 0.9, 19)[:, None]
    for agent in (calql, cql):  # both extract a policy that tracks s (the behavior's mean action)
        assert (agent.actor.mode(s) - s).abs().mean().item() < 0.3


def test_the_behavior_term_holds_the_actor_near_the_data_from_the_first_updates() -> None:
    s = torch.linspace(-0.9, 0.9, 19)[:, None]
    # After 150 updates the critic is still learning which actions are good, and Cal-QL's actor lags behind the
    # data's mode (measured: 0.25 off on average); the behavior term pulls it there directly (0.15).
    errors = {bc: (train(calibrated=True, steps=150, bc_alpha=bc)[0].actor.mode(s) - s).abs().mean().item()
              for bc in (None, 1.0)}
    assert errors[1.0] < 0.75 * errors[None]
    with pytest.raises(ConfigError, match="bc_alpha"):
        CalQLConfig(bc_alpha=0.0)


def test_ddpg_bc_extraction_climbs_the_critics_at_the_mode() -> None:
    s = torch.linspace(-0.9, 0.9, 19)[:, None]
    agent, q_mode = train(calibrated=True, steps=400, bc_alpha=1.0, extraction="ddpg_bc")
    assert (agent.actor.mode(s) - s).abs().mean().item() < 0.3  # the reward's peak, a = s
    assert q_mode.min() > 0.9  # still calibrated
    with pytest.raises(ConfigError, match="needs calql.bc_alpha"):
        CalQLConfig(extraction="ddpg_bc")
    with pytest.raises(ConfigError, match="extraction"):
        CalQLConfig(extraction="awr")


def test_state_round_trips_and_the_actor_must_be_squashed() -> None:
    agent, _ = train(calibrated=True, steps=2)
    other = CalQL(TanhGaussianMLP(1, 1, hidden_dims=(32, 32)), 1, 1, CalQLConfig(hidden_dims=[32, 32]))
    other.load_state_dict(agent.state_dict())
    assert other.alpha.item() == pytest.approx(agent.alpha.item())
    for a, b in zip(agent.critic_target.parameters(), other.critic_target.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="TanhGaussianMLP"):
        CalQL(GaussianMLP(1, 1), 1, 1, CalQLConfig())  # type: ignore[arg-type]


def test_the_max_backup_takes_the_best_of_the_sampled_next_actions() -> None:
    """With target critics Q_e(s', a) = 10 a + e, the backup is the min over e (10 a) at the best of n_actions
    draws of a' ~ pi(s'): far above a single draw's value on average, never above the best action's 10."""
    torch.manual_seed(0)
    actor = TanhGaussianMLP(1, 1, hidden_dims=(8,))  # its initial std, about 1 before the tanh, spreads the draws
    next_obs = torch.zeros(512, 1)
    values = {}
    for max_backup in (False, True):
        agent = CalQL(actor, 1, 1, CalQLConfig(n_actions=8, hidden_dims=[8], max_target_backup=max_backup))
        agent.critic_target = lambda obs, actions: torch.stack([10 * actions[:, 0], 10 * actions[:, 0] + 1])
        values[max_backup] = agent.backup_value(next_obs)
    single, best = values[False], values[True]
    assert single.shape == best.shape == (512,)
    # Measured at this seed: means 0.46 (one draw) and 8.3 (the best of 8).
    assert best.mean() > single.mean() + 5.0 and best.max() <= 10.0
