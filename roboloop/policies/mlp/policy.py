"""``MLPPolicy``: observation history -> action chunk with one MLP (MSE or Gaussian)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from roboloop.core.policy import ACTION_KEY, Batch, LossOutput, Policy, randn_like
from roboloop.core.spec import PolicySpec
from roboloop.policies.encoders import ObservationEncoder
from roboloop.policies.mlp.config import MLPConfig


def mlp(in_dim: int, hidden_dims: list[int], out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.Mish()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class MLPPolicy(Policy):
    name = "mlp"
    config_cls = MLPConfig

    def __init__(self, config: MLPConfig, spec: PolicySpec) -> None:
        super().__init__(config, spec)
        self.encoder = ObservationEncoder(spec, config.vision)
        chunk = spec.horizon * spec.action_dim
        out = 2 * chunk if config.loss == "gaussian" else chunk
        self.net = mlp(self.encoder.feature_dim * spec.n_obs_steps, config.hidden_dims, out, config.dropout)

    def _predict(self, obs_norm: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """-> mean (B, Tp, Da) and log std (B, Tp, Da) or None, in normalized action units."""
        features = self.encoder(obs_norm).flatten(1)  # (B, To * F)
        out = self.net(features).view(features.shape[0], self.spec.horizon, -1)
        if self.config.loss == "mse":
            return out, None
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(self.config.min_log_std, 2.0)

    @torch.no_grad()
    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        mean, log_std = self._predict(self.normalize_obs(obs))
        if not deterministic and log_std is not None:
            mean = mean + log_std.exp() * randn_like(mean, generator)
        return self.unnormalize_action(self.executed(mean))

    def compute_loss(self, batch: Batch) -> LossOutput:
        self.check_batch(batch)
        target = self.normalize_action(batch[ACTION_KEY])
        mean, log_std = self._predict(self.normalize_obs(batch))
        mse = (mean - target).pow(2).mean()
        if log_std is None:
            return LossOutput(mse, {"mse": mse.item()})
        nll = (0.5 * ((target - mean) / log_std.exp()).pow(2) + log_std + 0.5 * math.log(2 * math.pi)).mean()
        return LossOutput(nll, {"nll": nll.item(), "mse": mse.item(), "std": log_std.exp().mean().item()})
