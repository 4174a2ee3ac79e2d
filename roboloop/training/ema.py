"""Exponential moving average of a policy's weights (the weights Diffusion Policy evaluates and deploys)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from roboloop.core.errors import ConfigError


@dataclass
class EMAConfig:
    """Attributes:
        enabled: Keep an EMA copy; checkpoints and evaluation then use it.
        power: Warm-up exponent: decay = 1 - (1 + step / inv_gamma) ** -power (Diffusion Policy uses 0.75).
        inv_gamma: Warm-up time scale (steps).
        max_decay: Upper bound of the decay.
        min_decay: Lower bound of the decay.
    """

    enabled: bool = True
    power: float = 0.75
    inv_gamma: float = 1.0
    max_decay: float = 0.9999
    min_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_decay <= self.max_decay < 1.0:
            raise ConfigError(f"ema needs 0 <= min_decay <= max_decay < 1, got {self.min_decay}, {self.max_decay}")
        if self.power <= 0 or self.inv_gamma <= 0:
            raise ConfigError("ema.power and ema.inv_gamma must be > 0")


class EMA:
    """Holds ``averaged``, a frozen copy of ``model`` in eval mode, updated by ``update(model)``.

    Floating-point parameters and buffers are averaged; other buffers (counters) are copied.
    """

    def __init__(self, model: nn.Module, cfg: EMAConfig) -> None:
        self.cfg = cfg
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def decay(self) -> float:
        value = 1.0 - (1.0 + self.updates / self.cfg.inv_gamma) ** -self.cfg.power
        return float(min(max(value, self.cfg.min_decay), self.cfg.max_decay))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.decay()
        ema_state = self.averaged.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.detach(), 1.0 - decay)
            else:
                target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"weights": self.averaged.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
