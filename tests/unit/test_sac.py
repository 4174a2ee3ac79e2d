"""SAC / RLPD: the ensemble target, LayerNorm critics, learning a bandit from offline data, state round-trip."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from roboloop.core.errors import ConfigError
from roboloop.offline_rl.agent_state import FusedAdam, frozen, optimizer_step
from roboloop.offline_rl.losses import sac_actor_loss, temperature_loss
from roboloop.offline_rl.networks import EnsembleLayerNorm
from roboloop.offline_rl.sac import SAC, SACConfig
from roboloop.policies.tanh_gaussian import TanhGaussianMLP
from tests.unit.test_iql import bandit_data


def test_rlpd_learns_a_bandit_from_offline_data() -> None:
    torch.manual_seed(0)
    agent = SAC(TanhGaussianMLP(1, 1, hidden_dims=(32, 32)), 1, 1,
                SACConfig(n_critics=4, target_subset=2, hidden_dims=[32, 32], actor_lr=1e-3, critic_lr=1e-3))
    assert any(isinstance(m, EnsembleLayerNorm) for m in agent.critic.modules())  # RLPD's default
    data, generator = bandit_data(), torch.Generator().manual_seed(0)
    for step in range(600):
        metrics = agent.update(data.sample(128, generator), update_actor=step % 2 == 0, generator=generator)
    assert all(np.isfinite(v) for v in metrics.values())
    s = torch.linspace(-0.9, 0.9, 19)[:, None]
    assert (agent.actor.mode(s) - s).abs().mean().item() < 0.25  # the reward peaks at a = s


def test_critic_only_updates_leave_the_actor_and_state_round_trips() -> None:
    torch.manual_seed(0)
    agent = SAC(TanhGaussianMLP(1, 1, hidden_dims=(8,)), 1, 1, SACConfig(n_critics=3, hidden_dims=[8]))
    before = [p.clone() for p in agent.actor.parameters()]
    agent.update(bandit_data(64).sample(32), update_actor=False)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))
    other = SAC(TanhGaussianMLP(1, 1, hidden_dims=(8,)), 1, 1, SACConfig(n_critics=3, hidden_dims=[8]))
    other.load_state_dict(agent.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(agent.critic.parameters(), other.critic.parameters(), strict=True))
    with pytest.raises(ConfigError, match="target_subset"):
        SACConfig(n_critics=2, target_subset=3)


def test_actor_step_gives_the_critic_no_weight_gradients() -> None:
    torch.manual_seed(0)
    agent = SAC(TanhGaussianMLP(1, 1, hidden_dims=(8,)), 1, 1, SACConfig(n_critics=3, hidden_dims=[8]))
    critic_before = [p.clone() for p in agent.critic.parameters()]
    actor_before = [p.clone() for p in agent.actor.parameters()]
    agent.soft.update(torch.randn(16, 1), agent.critic, lambda q: q.mean(dim=0))
    assert all(p.grad is None and p.requires_grad for p in agent.critic.parameters())  # frozen only inside
    assert all(torch.equal(a, b) for a, b in zip(critic_before, agent.critic.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(actor_before, agent.actor.parameters(), strict=True))


def test_one_backward_for_actor_and_temperature_matches_two_separate_steps() -> None:
    """The actor and temperature share a backward; each must still get only its own loss's gradient."""

    def build() -> SAC:
        torch.manual_seed(0)
        return SAC(TanhGaussianMLP(2, 1, hidden_dims=(8,)), 2, 1, SACConfig(n_critics=2, hidden_dims=[8],
                                                                              init_alpha=0.5))

    obs = torch.randn(16, 2)
    merged, separate = build(), build()
    torch.manual_seed(1)
    merged.soft.update(obs, merged.critic, lambda q: q.mean(dim=0))
    torch.manual_seed(1)
    soft = separate.soft
    actions, log_probs = soft.actor.rsample(obs)
    with frozen(separate.critic):
        q = separate.critic(obs, actions).mean(dim=0)
    optimizer_step(sac_actor_loss(q, log_probs, soft.alpha.detach()), soft.optimizers["actor"])
    optimizer_step(temperature_loss(soft.log_alpha, log_probs, soft.target_entropy), soft.optimizers["alpha"])
    for a, b in zip(merged.actor.parameters(), separate.actor.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(merged.soft.log_alpha, separate.soft.log_alpha, rtol=0, atol=0)
    assert merged.soft.log_alpha.item() != np.log(0.5)  # the temperature did move


def test_q_at_mode_is_ddpg_bc_for_the_mode_and_sac_for_the_spread() -> None:
    """With ``q_at_mode`` the mode climbs the critics' value of the mode, and only the spread sees Q at samples."""

    def build() -> SAC:
        torch.manual_seed(0)
        return SAC(TanhGaussianMLP(2, 2, hidden_dims=(8,)), 2, 2, SACConfig(n_critics=2, hidden_dims=[8],
                                                                              init_alpha=0.5))

    obs, data_actions = torch.randn(16, 2), torch.rand(16, 2) * 2 - 1
    reduce = lambda q: q.min(dim=0).values  # noqa: E731
    results = {}
    for q_at_mode in (True, False):
        agent = build()
        torch.manual_seed(1)
        agent.soft.update(obs, agent.critic, reduce, data_actions=data_actions, bc_alpha=2.0, q_at_mode=q_at_mode)
        results[q_at_mode] = agent
    by_hand = build()
    soft, actor = by_hand.soft, by_hand.actor
    torch.manual_seed(1)
    mean, log_std = actor(obs)
    noise = torch.randn_like(mean)
    u = mean.detach() + log_std.exp() * noise  # the mean gets no gradient through the samples
    samples = actor.squash(u)
    log_probs = (torch.distributions.Normal(mean.detach(), log_std.exp()).log_prob(u)
                 - torch.log(1 - torch.tanh(u) ** 2)).sum(-1)
    mode = actor.squash(mean)
    with frozen(by_hand.critic):
        q_mode, q_samples = reduce(by_hand.critic(obs, mode)), reduce(by_hand.critic(obs, samples))
    loss = 2.0 / q_mode.detach().abs().mean() * (soft.alpha.detach() * log_probs - q_samples - q_mode).mean() \
        + (mode - data_actions).pow(2).sum(-1).mean()
    optimizer_step(loss, soft.optimizers["actor"])
    for a, b in zip(results[True].actor.parameters(), by_hand.actor.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not all(torch.equal(a, b) for a, b in zip(results[False].actor.parameters(), by_hand.actor.parameters(),
                                                     strict=True))
    with pytest.raises(ConfigError, match="needs bc_alpha"):
        by_hand.soft.update(obs, by_hand.critic, reduce, q_at_mode=True)


def test_fused_adam_steps_as_torch_adam_through_a_reload_and_a_missing_gradient() -> None:
    """The kept-list steps must be torch's fused Adam bit for bit, and its checkpoints interchangeable with torch's."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    ours_opt, theirs_opt = FusedAdam(ours, lr=1e-2), torch.optim.Adam(theirs, lr=1e-2, fused=True)
    for step in range(8):
        ours_opt.zero_grad()
        theirs_opt.zero_grad()
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if step == 5 and i == 1:  # no gradient: this parameter and its step counter must stay put
                continue
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        ours_opt.step()
        theirs_opt.step()
        if step == 2:  # a resumed run: the reloaded moments are new tensors, which the next step must use
            ours_opt.load_state_dict(copy.deepcopy(theirs_opt.state_dict()))
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [s["step"].item() for s in ours_opt.state.values()] == [8, 7]
    torch.testing.assert_close(ours_opt.state_dict()["state"], theirs_opt.state_dict()["state"], rtol=0, atol=0)
    ours_opt.zero_grad()
    assert all(p.grad is None for p in ours)
