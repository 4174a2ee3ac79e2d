"""``TanhGaussianMLP``: the squashed Gaussian actor of SAC, IQL, Cal-QL and RLPD on flat observation vectors.

``a = low + (tanh(u) + 1) / 2 * (high - low)`` with ``u ~ N(mu(s), sigma(s))``; the log-probability carries the
change of variables ``-sum log(1 - tanh(u)^2)`` (computed as ``2 (log 2 - u - softplus(-2u))``, stable for large
``|u|``) and the affine scale. The std depends on the state (SAC) and its log is clamped to
``[log_std_min, log_std_max]``. It implements the ``Actor`` protocol (``sample`` / ``evaluate`` /
``trainable_parameters``) and adds ``rsample`` for the reparameterized actor losses of SAC and Cal-QL.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import ActorOutput, randn_like
from roboloop.policies.gaussian_mlp import check_flat, hidden_layers

_LOG_2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class TanhGaussianMLP(nn.Module):
    """A state-dependent squashed Gaussian over actions in ``[low, high]`` (default ``[-1, 1]``).

    Args:
        obs_dim: Width of the flat observation.
        action_dim: Da.
        hidden_dims: Widths of the hidden layers (SAC, IQL: 2 x 256).
        activation: ``relu`` or ``tanh``.
        log_std_min, log_std_max: Clamp of the log std.
        low, high: Action bounds (Da,) or scalars; the tanh output is mapped onto them.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int] = (256, 256),
                 activation: str = "relu", log_std_min: float = -5.0, log_std_max: float = 2.0,
                 low: float | np.ndarray = -1.0, high: float | np.ndarray = 1.0) -> None:
        super().__init__()
        if obs_dim < 1 or action_dim < 1:
            raise ConfigError(f"obs_dim and action_dim must be >= 1, got {obs_dim} and {action_dim}")
        if not log_std_min < log_std_max:
            raise ConfigError(f"log_std_min must be below log_std_max, got {log_std_min}, {log_std_max}")
        low_t = torch.tensor(np.broadcast_to(low, (action_dim,)).copy(), dtype=torch.float32)
        high_t = torch.tensor(np.broadcast_to(high, (action_dim,)).copy(), dtype=torch.float32)
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all() and (high_t > low_t).all()):
            raise ConfigError(f"action bounds must be finite with high > low, got {low_t.tolist()}, {high_t.tolist()}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.trunk, width = hidden_layers(obs_dim, hidden_dims, activation)
        self.mean_layer = nn.Linear(width, action_dim)
        self.log_std_layer = nn.Linear(width, action_dim)
        self.register_buffer("action_center", (high_t + low_t) / 2)
        self.register_buffer("action_half_range", (high_t - low_t) / 2)

    @property
    def device(self) -> torch.device:
        return self.action_center.device

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs (B, obs_dim) -> (mean of u (B, Da), log std of u (B, Da))."""
        check_flat(obs, self.obs_dim, "observation")
        features = self.trunk(obs)
        log_std = self.log_std_layer(features).clamp(self.log_std_min, self.log_std_max)
        return self.mean_layer(features), log_std

    def _squash(self, u: Tensor, z: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-tanh value u (B, Da) and its standard score z = (u - mean) / std (B, Da) -> (action (B, Da),
        log-probability (B,))."""
        gaussian = (-0.5 * z.square() - _HALF_LOG_2PI) - log_std
        log_det = 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))  # log(1 - tanh(u)^2)
        log_prob = (gaussian - log_det - torch.log(self.action_half_range)).sum(-1)
        return self.squash(u), log_prob

    def rsample(self, obs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A reparameterized sample for obs (B, obs_dim): (action (B, Da), log_prob (B,)), both differentiable;
        the noise comes from ``generator`` (None: the global torch RNG)."""
        return self.rsample_at(*self(obs), generator=generator)

    def rsample_at(self, mean: Tensor, log_std: Tensor,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``rsample`` from ``forward``'s outputs (B, Da) (either may be detached to keep its gradient out)."""
        noise = randn_like(mean, generator)
        # A sample's standard score is its noise: taken from there rather than as (u - mean) / std, the density
        # puts no ops on the graph whose gradients only cancel (49 ops for a sample's forward and backward, not 67).
        return self._squash(mean + log_std.exp() * noise, noise, log_std)

    def mode(self, obs: Tensor) -> Tensor:
        """The deterministic action ``center + half_range * tanh(mean)`` (B, Da)."""
        return self.squash(self(obs)[0])

    def squash(self, mean: Tensor) -> Tensor:
        """``forward``'s pre-tanh mean (B, Da) -> the mode ``center + half_range * tanh(mean)`` (B, Da)."""
        return self.action_center + self.action_half_range * torch.tanh(mean)

    @torch.no_grad()
    def sample(self, obs: Tensor, *, deterministic: bool = False,
               generator: torch.Generator | None = None) -> ActorOutput:
        """``Actor.sample``: env_action = actor_action (B, Da) in the bounds, actor_obs = obs, log_prob (B,)."""
        if deterministic:
            action = self.mode(obs)
            log_prob, _ = self.evaluate(obs, action)
        else:
            action, log_prob = self.rsample(obs, generator)
        return ActorOutput(env_action=action, actor_obs=obs, actor_action=action, log_prob=log_prob)

    def evaluate(self, actor_obs: Tensor, actor_action: Tensor) -> tuple[Tensor, Tensor]:
        """(log_prob (B,), entropy estimate (B,) = -log_prob) of stored actions (B, Da), differentiable. Actions
        on the bounds are pulled 1e-6 inside (tanh never reaches them)."""
        check_flat(actor_action, self.action_dim, "actor_action")
        if actor_action.shape[0] != actor_obs.shape[0]:
            raise InputError(f"actor_obs has {actor_obs.shape[0]} rows but actor_action has {actor_action.shape[0]}")
        mean, log_std = self(actor_obs)
        y = ((actor_action - self.action_center) / self.action_half_range).clamp(-1 + 1e-6, 1 - 1e-6)
        u = torch.atanh(y)
        _, log_prob = self._squash(u, (u - mean) / log_std.exp(), log_std)
        return log_prob, -log_prob

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.parameters()
