"""IQL learns a better-than-behavior policy offline on a contextual bandit, with either extraction; its state
round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from roboloop.core.errors import ConfigError
from roboloop.offline_rl import ReplayBuffer
from roboloop.offline_rl.iql import IQL, IQLConfig
from roboloop.offline_rl.networks import QEnsemble, soft_update
from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.policies.tanh_gaussian import TanhGaussianMLP


def bandit_data(n: int = 2000, seed: int = 0) -> ReplayBuffer:
    """One-step episodes: state s in [-1, 1], behavior action uniform in [-1, 1], reward -(a - s)^2."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    a = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=n)
    buffer.add(s, a, -((a - s) ** 2)[:, 0], s, np.ones(n, bool), np.zeros(n, bool))
    return buffer


def test_iql_extracts_a_policy_better_than_the_behavior() -> None:
    torch.manual_seed(0)
    actor = GaussianMLP(1, 1, hidden_dims=(32, 32), init_logstd=-0.5, learn_std=True, last_layer_init_std=0.01)
    iql = IQL(actor, 1, 1, IQLConfig(expectile=0.9, temperature=10.0, hidden_dims=[32, 32], actor_lr=1e-3,
                                     critic_lr=1e-3, value_lr=1e-3))
    data, generator = bandit_data(), torch.Generator().manual_seed(0)
    for _ in range(1500):
        metrics = iql.update(data.sample(256, generator))
    assert all(np.isfinite(v) for v in metrics.values())
    s = torch.linspace(-0.9, 0.9, 19)[:, None]
    chosen = actor.sample(s, deterministic=True).env_action
    # The behavior's expected |a - s| is about 0.67 (uniform actions); the extracted policy tracks s.
    assert (chosen - s).abs().mean().item() < 0.25


def test_ddpg_bc_extraction_follows_the_critic_away_from_the_data_mean() -> None:
    torch.manual_seed(0)
    actor = GaussianMLP(1, 1, hidden_dims=(32, 32), init_logstd=0.0, learn_std=True, last_layer_init_std=0.01)
    iql = IQL(actor, 1, 1, IQLConfig(hidden_dims=[32, 32], actor_lr=1e-3, critic_lr=1e-3, value_lr=1e-3,
                                     extraction="ddpg_bc", bc_alpha=2.5),
              action_low=torch.tensor([-1.0]), action_high=torch.tensor([1.0]))
    data, generator = bandit_data(), torch.Generator().manual_seed(0)
    for _ in range(1500):
        metrics = iql.update(data.sample(256, generator))
    assert all(np.isfinite(v) for v in metrics.values()) and "bc_distance" in metrics
    s = torch.linspace(-0.9, 0.9, 19)[:, None]
    chosen = actor.sample(s, deterministic=True).env_action
    # Cloning the uniform behavior alone gives a mean of 0 everywhere (|a - s| about 0.5 on this grid); the Q term
    # pulls the mean onto s.
    assert (chosen - s).abs().mean().item() < 0.15
    # The std (1 at first) fits the data's spread around the mean: with a = U(-1, 1) and the mean at s = U(-1, 1),
    # sqrt(E (a - s)^2) = sqrt(2/3) = 0.82 (measured: 0.81).
    assert 0.5 < actor.log_std.exp().item() < 0.9


def test_extraction_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="extraction"):
        IQLConfig(extraction="cloning")
    with pytest.raises(ConfigError, match="bc_alpha"):
        IQLConfig(bc_alpha=0.0)
    with pytest.raises(ConfigError, match="GaussianMLP"):
        IQL(TanhGaussianMLP(1, 1, hidden_dims=(8,)), 1, 1, IQLConfig(extraction="ddpg_bc"))


def test_state_round_trips_and_targets_track_the_critics() -> None:
    torch.manual_seed(0)
    iql = IQL(GaussianMLP(1, 1, hidden_dims=(8,)), 1, 1, IQLConfig(hidden_dims=[8]))
    iql.update(bandit_data(64).sample(32, torch.Generator().manual_seed(1)))
    other = IQL(GaussianMLP(1, 1, hidden_dims=(8,)), 1, 1, IQLConfig(hidden_dims=[8]))
    other.load_state_dict(iql.state_dict())
    for a, b in zip(iql.critic.parameters(), other.critic.parameters(), strict=True):
        assert torch.equal(a, b)
    source, target = QEnsemble(2, 1, [4]), QEnsemble(2, 1, [4])
    before = [p.clone() for p in target.parameters()]
    soft_update(target, source, 0.25)
    for t, b, s in zip(target.parameters(), before, source.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s)
