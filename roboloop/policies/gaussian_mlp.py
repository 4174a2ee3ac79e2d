"""``GaussianMLP``: a diagonal Gaussian actor over flat observation vectors (the ``Actor`` protocol).

It is the trainable part RL algorithms update: a policy on a plain vector env, or the residual head of a
``ResidualPolicy`` (whose vector-env wrapper puts the frozen base's action into the observation). The
mean comes from an MLP; the log standard deviation is one state-independent vector, learned or fixed.
There is no tanh squashing: actions are an unbounded Gaussian sample, and bounding them is the
environment's (or PPO's env-side clipping's) job, as in CleanRL and stable-baselines3.

With ``last_layer_init_std=0`` the mean layer starts at exactly zero and has no bias, so the initial mean is
0 for every observation: a residual head that starts as a no-op (ResiP initializes it at std 0.01, also
without a bias).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import ActorOutput, randn_like

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def hidden_layers(in_dim: int, hidden_dims: Sequence[int], activation: str) -> tuple[nn.Sequential, int]:
    """Linear + activation layers with orthogonal weights (gain sqrt(2)) and zero biases, the CleanRL /
    stable-baselines3 initialization for PPO networks. Returns the stack and its output width."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if any(int(width) < 1 for width in hidden_dims):
        raise ConfigError(f"hidden_dims must be positive, got {list(hidden_dims)}")
    layers: list[nn.Module] = []
    for width in hidden_dims:
        linear = nn.Linear(in_dim, int(width))
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, ACTIVATIONS[activation]()]
        in_dim = int(width)
    return nn.Sequential(*layers), in_dim


def check_flat(x: Tensor, width: int, what: str) -> None:
    """Raise ``InputError`` unless ``x`` is a finite (B, width) tensor."""
    if not isinstance(x, Tensor):
        raise InputError(f"{what} must be a torch.Tensor of shape (B, {width}), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != width:
        raise InputError(f"{what} has shape {tuple(x.shape)}, expected (B, {width})")
    # A sum is finite only if every entry is: two ops on the hot path (a SAC update checks twice) instead of
    # isfinite's six; a non-finite sum gets the exact check, which an overflow alone passes.
    if not math.isfinite(x.sum().item()):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            raise InputError(f"{what} contains NaN or inf (rows {bad[:10]})")


class GaussianMLP(nn.Module):
    """Diagonal Gaussian policy ``N(mean(obs), exp(log_std)^2)`` on (B, obs_dim) observations.

    Args:
        obs_dim: Width of the flat observation.
        action_dim: Da, width of the action.
        hidden_dims: Widths of the hidden layers of the mean network.
        activation: ``relu`` or ``tanh``.
        init_logstd: Initial log standard deviation of every action dimension.
        learn_std: Learn the log std (then it is one of ``trainable_parameters()``); otherwise it stays fixed.
        last_layer_init_std: Orthogonal-init gain of the bias-free mean layer; 0 makes its weights zero, so the
            initial mean is exactly 0.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int] = (256, 256),
                 activation: str = "relu", init_logstd: float = -1.0, learn_std: bool = False,
                 last_layer_init_std: float = 0.0) -> None:
        super().__init__()
        if obs_dim < 1 or action_dim < 1:
            raise ConfigError(f"obs_dim and action_dim must be >= 1, got {obs_dim} and {action_dim}")
        if last_layer_init_std < 0:
            raise ConfigError(f"last_layer_init_std must be >= 0, got {last_layer_init_std}")
        if not math.isfinite(init_logstd):
            raise ConfigError(f"init_logstd must be finite, got {init_logstd}")
        self.obs_dim, self.action_dim, self.learn_std = obs_dim, action_dim, learn_std
        self.trunk, width = hidden_layers(obs_dim, hidden_dims, activation)
        # No bias: a zero mean layer then gives a mean of exactly 0 whatever the hidden features are.
        self.mean_layer = nn.Linear(width, action_dim, bias=False)
        if last_layer_init_std == 0:
            nn.init.zeros_(self.mean_layer.weight)
        else:
            nn.init.orthogonal_(self.mean_layer.weight, gain=last_layer_init_std)
        # A parameter either way, so the state_dict has the same keys whether or not the std is learned.
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_logstd)), requires_grad=learn_std)

    @property
    def device(self) -> torch.device:
        return self.log_std.device

    def with_extra_inputs(self, n: int) -> GaussianMLP:
        """A copy that reads ``n`` more observation features, appended after the current ones, through zero
        weights: its outputs are unchanged until it is trained (a trained actor given a new input)."""
        if n < 1:
            raise ConfigError(f"with_extra_inputs needs n >= 1, got {n}")
        wider = copy.deepcopy(self)
        first = wider.trunk[0] if len(wider.trunk) else wider.mean_layer
        grown = nn.Linear(first.in_features + n, first.out_features, bias=first.bias is not None,
                          device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            grown.weight.zero_()
            grown.weight[:, : first.in_features] = first.weight
            if first.bias is not None:
                grown.bias.copy_(first.bias)
        if len(wider.trunk):
            wider.trunk[0] = grown
        else:
            wider.mean_layer = grown
        wider.obs_dim = self.obs_dim + n
        return wider

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs (B, obs_dim) -> (mean (B, Da), log_std (B, Da))."""
        mean = self.mean_layer(self.trunk(obs))
        return mean, self.log_std.expand_as(mean)

    def distribution(self, obs: Tensor) -> Normal:
        """The action distribution for obs (B, obs_dim): batch shape (B, Da)."""
        check_flat(obs, self.obs_dim, "observation")
        mean, log_std = self(obs)
        return Normal(mean, log_std.exp(), validate_args=False)

    @torch.no_grad()
    def sample(self, obs: Tensor, *, deterministic: bool = False,
               generator: torch.Generator | None = None) -> ActorOutput:
        """obs (B, obs_dim) -> ``ActorOutput`` with env_action = actor_action (B, Da), actor_obs = obs
        (B, obs_dim) and log_prob (B,). ``deterministic`` returns the mean (with its log-probability); otherwise
        the draw comes from ``generator`` (None: the global torch RNG)."""
        dist = self.distribution(obs)
        action = dist.mean if deterministic else dist.mean + dist.stddev * randn_like(dist.mean, generator)
        return ActorOutput(env_action=action, actor_obs=obs, actor_action=action,
                           log_prob=dist.log_prob(action).sum(-1))

    def evaluate(self, actor_obs: Tensor, actor_action: Tensor) -> tuple[Tensor, Tensor]:
        """actor_obs (B, obs_dim), actor_action (B, Da) -> (log_prob (B,), entropy (B,)), differentiable."""
        dist = self.distribution(actor_obs)
        check_flat(actor_action, self.action_dim, "actor_action")
        if actor_action.shape[0] != actor_obs.shape[0]:
            raise InputError(f"actor_obs has {actor_obs.shape[0]} rows but actor_action has {actor_action.shape[0]}")
        return dist.log_prob(actor_action).sum(-1), dist.entropy().sum(-1)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The mean network's parameters, and ``log_std`` when it is learned."""
        yield from self.trunk.parameters()
        yield from self.mean_layer.parameters()
        if self.learn_std:
            yield self.log_std
