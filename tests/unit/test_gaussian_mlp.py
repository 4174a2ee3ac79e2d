"""GaussianMLP: the zero-initialized residual head is an exact no-op, its log-probabilities and entropies are
those of a diagonal Normal, ``learn_std`` decides what is trainable, and bad input is refused by name."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import Actor
from roboloop.policies.gaussian_mlp import GaussianMLP

OBS, ACT = 5, 3


def test_zero_init_mean_is_exactly_zero_and_deterministic_sample_returns_it() -> None:
    torch.manual_seed(0)
    head = GaussianMLP(OBS, ACT, hidden_dims=(16, 16), last_layer_init_std=0.0)
    assert isinstance(head, Actor)
    assert head.mean_layer.bias is None
    obs = torch.randn(7, OBS) * 10
    mean, log_std = head(obs)
    assert mean.shape == (7, ACT) and log_std.shape == (7, ACT)
    assert torch.equal(mean, torch.zeros(7, ACT))
    out = head.sample(obs, deterministic=True)
    assert torch.equal(out.env_action, torch.zeros(7, ACT))
    assert out.actor_action is out.env_action and out.actor_obs is obs
    assert out.log_prob.shape == (7,)
    # Stochastic samples spread around the mean with the initial std.
    samples = head.sample(obs.repeat(500, 1)).actor_action
    assert samples.mean().abs() < 0.05
    assert samples.std().item() == pytest.approx(math.exp(-1.0), rel=0.05)


def test_hidden_layers_are_orthogonal() -> None:
    head = GaussianMLP(OBS, ACT, hidden_dims=(4, 4), activation="tanh")
    first = head.trunk[0].weight  # (4, OBS): orthogonal rows with gain sqrt(2)
    torch.testing.assert_close(first @ first.T, 2.0 * torch.eye(4), atol=1e-5, rtol=0)
    assert torch.equal(head.trunk[0].bias, torch.zeros(4))


@pytest.mark.parametrize("learn_std", [False, True])
def test_log_prob_and_entropy_match_torch_normal(learn_std: bool) -> None:
    torch.manual_seed(1)
    head = GaussianMLP(OBS, ACT, hidden_dims=(8,), init_logstd=-0.5, learn_std=learn_std, last_layer_init_std=1.0)
    obs, action = torch.randn(6, OBS), torch.randn(6, ACT)
    mean, _ = head(obs)
    reference = Normal(mean, torch.full_like(mean, math.exp(-0.5)))
    log_prob, entropy = head.evaluate(obs, action)
    torch.testing.assert_close(log_prob, reference.log_prob(action).sum(-1))
    torch.testing.assert_close(entropy, reference.entropy().sum(-1))
    out = head.sample(obs)
    torch.testing.assert_close(out.log_prob, reference.log_prob(out.actor_action).sum(-1))
    assert not out.log_prob.requires_grad  # sampling is inference; evaluate carries the gradient
    log_prob.sum().backward()
    assert head.mean_layer.weight.grad is not None
    assert (head.log_std.grad is not None) == learn_std


def test_learn_std_decides_whether_log_std_is_trainable() -> None:
    fixed = GaussianMLP(OBS, ACT, hidden_dims=(8, 8))
    learned = GaussianMLP(OBS, ACT, hidden_dims=(8, 8), learn_std=True)
    fixed_params = list(fixed.trainable_parameters())
    learned_params = list(learned.trainable_parameters())
    assert all(p is not fixed.log_std for p in fixed_params) and not fixed.log_std.requires_grad
    assert any(p is learned.log_std for p in learned_params) and learned.log_std.requires_grad
    assert len(learned_params) == len(fixed_params) + 1 == 6  # 2 hidden (W, b), the bias-free mean layer, log_std
    assert fixed.state_dict().keys() == learned.state_dict().keys()


def test_bad_input_is_refused_with_a_clear_error() -> None:
    head = GaussianMLP(OBS, ACT, hidden_dims=(8,))
    with pytest.raises(InputError, match=r"shape \(4, 6\), expected \(B, 5\)"):
        head.sample(torch.zeros(4, OBS + 1))
    with pytest.raises(InputError, match=r"expected \(B, 5\)"):
        head.sample(torch.zeros(OBS))
    bad = torch.zeros(3, OBS)
    bad[1, 2] = float("nan")
    with pytest.raises(InputError, match=r"NaN or inf \(rows \[1\]\)"):
        head.sample(bad)
    bad[1, 2], bad[2, 0] = 0.0, -float("inf")
    with pytest.raises(InputError, match=r"NaN or inf \(rows \[2\]\)"):
        head.sample(bad)
    head.sample(torch.full((2, OBS), 3e38))  # finite, though its sum overflows: not an error
    with pytest.raises(InputError, match="actor_action"):
        head.evaluate(torch.zeros(3, OBS), torch.zeros(3, ACT + 1))
    with pytest.raises(InputError, match="rows"):
        head.evaluate(torch.zeros(3, OBS), torch.zeros(2, ACT))
    with pytest.raises(InputError, match="torch.Tensor"):
        head.sample([[0.0] * OBS])  # type: ignore[arg-type]


def test_bad_construction_arguments_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="activation"):
        GaussianMLP(OBS, ACT, activation="gelu")
    with pytest.raises(ConfigError, match="hidden_dims"):
        GaussianMLP(OBS, ACT, hidden_dims=(8, 0))
    with pytest.raises(ConfigError, match="last_layer_init_std"):
        GaussianMLP(OBS, ACT, last_layer_init_std=-0.1)
