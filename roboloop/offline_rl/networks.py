"""Critics of the off-policy algorithms: an ensemble of Q-functions (optionally with LayerNorm, as RLPD needs)
and a state-value MLP (IQL). Shapes: B = batch, E = ensemble members, D = observation dim, A = action dim."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from roboloop.core.errors import ConfigError, InputError


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, *, layer_norm: bool = False) -> nn.Sequential:
    """Linear -> [LayerNorm] -> ReLU per hidden layer, then a linear output (PyTorch's default init)."""
    if in_dim < 1 or out_dim < 1 or not hidden_dims or min(hidden_dims) < 1:
        raise ConfigError(f"mlp needs positive sizes, got in {in_dim}, hidden {list(hidden_dims)}, out {out_dim}")
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in hidden_dims:
        layers.append(nn.Linear(width, hidden))
        if layer_norm:
            layers.append(nn.LayerNorm(hidden))
        layers.append(nn.ReLU())
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class QEnsemble(nn.Module):
    """E independent Q(s, a) MLPs evaluated together: ``forward(obs (B, D), actions (B, A)) -> (E, B)``.

    LayerNorm after every hidden layer is RLPD's fix for value over-estimation with high update-to-data
    ratios on offline data (Ball et al., 2023); IQL and Cal-QL use plain MLPs.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int] = (256, 256), n_critics: int = 2,
                 *, layer_norm: bool = False) -> None:
        super().__init__()
        if n_critics < 1:
            raise ConfigError(f"n_critics must be >= 1, got {n_critics}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.hidden_dims, self.layer_norm = list(hidden_dims), layer_norm  # to rebuild it from a saved critic
        self.members = nn.ModuleList(mlp(obs_dim + action_dim, hidden_dims, 1, layer_norm=layer_norm)
                                     for _ in range(n_critics))

    def forward(self, obs: Tensor, actions: Tensor) -> Tensor:
        if obs.ndim != 2 or actions.ndim != 2 or obs.shape[0] != actions.shape[0] or obs.shape[1] != self.obs_dim \
                or actions.shape[1] != self.action_dim:
            raise InputError(f"QEnsemble takes obs (B, {self.obs_dim}) and actions (B, {self.action_dim}), got "
                             f"{tuple(obs.shape)} and {tuple(actions.shape)}")
        x = torch.cat([obs, actions], dim=-1)
        return torch.stack([member(x).squeeze(-1) for member in self.members])


class StateValue(nn.Module):
    """V(s): ``forward(obs (B, D)) -> (B,)``."""

    def __init__(self, obs_dim: int, hidden_dims: Sequence[int] = (256, 256), *, layer_norm: bool = False) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.net = mlp(obs_dim, hidden_dims, 1, layer_norm=layer_norm)

    def forward(self, obs: Tensor) -> Tensor:
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise InputError(f"StateValue takes obs (B, {self.obs_dim}), got {tuple(obs.shape)}")
        return self.net(obs).squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- (1 - tau) * target + tau * source`` over parameters (buffers copied)."""
    for t, s in zip(target.parameters(), source.parameters(), strict=True):
        t.lerp_(s, tau)
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)
