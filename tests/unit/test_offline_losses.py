"""IQL, CQL / Cal-QL and SAC loss terms against hand computations; the squashed Gaussian actor's density."""

from __future__ import annotations

import math

import pytest
import torch

from roboloop.core.errors import ConfigError, InputError
from roboloop.offline_rl.losses import (
    advantage_weights,
    bc_regularized_actor_loss,
    calibrate,
    conservative_penalty,
    expectile_loss,
    td_target,
    temperature_loss,
    uniform_log_density,
)
from roboloop.policies.tanh_gaussian import TanhGaussianMLP


def test_expectile_loss_weights_the_two_signs() -> None:
    diff = torch.tensor([2.0, -1.0])  # Q - V
    # tau 0.7: 0.7 * 4 for the positive residual, 0.3 * 1 for the negative one, averaged.
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 1) / 2)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1) / 2)  # half the MSE
    with pytest.raises(ConfigError, match="expectile"):
        expectile_loss(diff, 1.0)


def test_an_upper_expectile_is_learned_by_minimizing_the_loss() -> None:
    q = torch.tensor([0.0, 1.0, 2.0, 3.0])
    v = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([v], lr=0.1)
    for _ in range(2000):
        optimizer.zero_grad()
        expectile_loss(q - v, 0.9).backward()
        optimizer.step()
    # The 0.9-expectile m solves 0.9 * sum_{q>m} (q - m) = 0.1 * sum_{q<m} (m - q); for m in (2, 3):
    # 0.9 (3 - m) = 0.1 (3m - 3) -> m = 2.5.
    assert v.item() == pytest.approx(2.5, abs=1e-3)


def test_td_target_bootstraps_truncation_and_not_termination() -> None:
    rewards, next_v = torch.tensor([1.0, 1.0]), torch.tensor([10.0, 10.0])
    terminated = torch.tensor([True, False])  # the second is an ordinary (or truncated) step
    assert td_target(rewards, terminated, next_v, 0.9).tolist() == pytest.approx([1.0, 10.0])
    with pytest.raises(InputError, match="one shape"):
        td_target(rewards, terminated, next_v[:1], 0.9)


def test_advantage_weights_exponentiate_and_clip() -> None:
    weights = advantage_weights(torch.tensor([0.0, 1.0, 10.0]), temperature=3.0, max_weight=100.0)
    assert weights.tolist() == pytest.approx([1.0, math.exp(3.0), 100.0])


def test_bc_regularized_actor_loss_against_a_hand_computation() -> None:
    q = torch.tensor([2.0, -4.0], requires_grad=True)
    policy_actions = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    data_actions = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    # lambda = 1.5 / mean|Q| = 0.5; mean(-Q) = 1; squared distances summed over the action: 1 and 1.
    loss = bc_regularized_actor_loss(-q, q, policy_actions, data_actions, bc_alpha=1.5)
    assert loss.item() == pytest.approx(0.5 * 1.0 + 1.0)
    loss.backward()
    assert q.grad is not None and q.grad.tolist() == pytest.approx([-0.25, -0.25])  # lambda is a constant
    assert policy_actions.grad is not None
    torch.testing.assert_close(policy_actions.grad, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # 2 (mu - a) / B
    with pytest.raises(ConfigError):
        bc_regularized_actor_loss(-q, q, policy_actions, data_actions, bc_alpha=0.0)
    with pytest.raises(InputError):
        bc_regularized_actor_loss(-q, q, policy_actions, data_actions[:1], bc_alpha=1.0)


def test_calibration_lower_bounds_policy_values_by_the_reference() -> None:
    q_policy = torch.tensor([[1.0, 5.0], [0.0, -2.0], [3.0, 4.0]])
    reference = torch.tensor([2.0, -1.0, float("nan")])  # NaN: an online transition, no reference
    assert calibrate(q_policy, reference).tolist() == [[2.0, 5.0], [0.0, -1.0], [3.0, 4.0]]


def test_conservative_penalty_against_a_hand_computation() -> None:
    q_data = torch.tensor([1.0])
    q_sampled = torch.tensor([[2.0, 0.0]])
    log_mu = torch.tensor([[math.log(0.5), math.log(0.25)]])
    expected = math.log(math.exp(2.0) / 0.5 + math.exp(0.0) / 0.25) - 1.0
    assert conservative_penalty(q_data, q_sampled, log_mu).item() == pytest.approx(expected)
    assert uniform_log_density(3) == pytest.approx(-3 * math.log(2.0))


def test_temperature_rises_while_entropy_is_below_target() -> None:
    log_alpha = torch.zeros((), requires_grad=True)
    # log pi = 2 (entropy about -2) against a target entropy of -1: the gradient step must raise alpha.
    temperature_loss(log_alpha, torch.full((4,), 2.0), target_entropy=-1.0).backward()
    assert log_alpha.grad is not None and log_alpha.grad.item() < 0


def test_tanh_gaussian_density_matches_a_change_of_variables() -> None:
    torch.manual_seed(0)
    actor = TanhGaussianMLP(3, 2, hidden_dims=(8,), low=-2.0, high=2.0)
    obs = torch.randn(5, 3)
    action, log_prob = actor.rsample(obs)
    assert (action.abs() < 2).all() and log_prob.requires_grad
    mean, log_std = actor(obs)
    u = torch.atanh(action / 2)
    normal = torch.distributions.Normal(mean, log_std.exp())
    by_hand = (normal.log_prob(u) - torch.log(2 * (1 - torch.tanh(u) ** 2))).sum(-1)
    torch.testing.assert_close(log_prob, by_hand, atol=1e-4, rtol=1e-4)
    evaluated, entropy = actor.evaluate(obs, action.detach())
    torch.testing.assert_close(evaluated, by_hand.detach(), atol=1e-3, rtol=1e-3)
    assert torch.equal(entropy, -evaluated)
    out = actor.sample(obs, deterministic=True)
    torch.testing.assert_close(out.env_action, 2 * torch.tanh(mean))
