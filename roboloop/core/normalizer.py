"""``Normalizer``: per-key affine maps whose statistics are buffers, saved and loaded with the weights.

``normalize(key, x) = x * scale + offset``. Modes:

* ``min_max``: the data's [min, max] onto [-1, 1] (diffusion needs bounded targets). A dimension whose
  range is below ``eps`` is only centred, so constant features do not blow up.
* ``mean_std``: zero mean, unit variance (a constant dimension is only centred).
* ``identity``: unchanged (still listed, so every key a policy reads is accounted for).

Statistics of image keys are per channel (3,) and broadcast over the trailing channel axis of
``(..., H, W, 3)`` pixels. A key the normalizer was never fitted on raises instead of silently passing
raw values through (LeRobot #2353), before fitting and after loading a checkpoint without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from roboloop.core.errors import ConfigError, DatasetError, StateError

MODES = ("min_max", "mean_std", "identity")


def _buffer_name(key: str) -> str:
    return key.replace(".", "__")  # module attribute names cannot contain dots


class Normalizer(nn.Module):
    """Args:
        shapes: Per key, the shape of its statistics: the feature shape ``(D,)``, or ``(3,)`` for images.
        modes: Per key, one of ``min_max``, ``mean_std``, ``identity``.
        eps: Smallest range (min_max) or std (mean_std) that is scaled.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], modes: Mapping[str, str], eps: float = 1e-4) -> None:
        super().__init__()
        if set(shapes) != set(modes):
            raise ConfigError(f"normalizer shapes and modes name different keys: {sorted(shapes)} vs {sorted(modes)}")
        bad = {k: m for k, m in modes.items() if m not in MODES}
        if bad:
            raise ConfigError(f"unknown normalization mode(s) {bad}; choose from {MODES}")
        self.modes = dict(modes)
        self.eps = eps
        for key, shape in shapes.items():
            # NaN marks "not fitted"; identity keys need no statistics.
            fill = 0.0 if modes[key] == "identity" else float("nan")
            self.register_buffer(f"{_buffer_name(key)}__scale", torch.full(shape, 1.0 if fill == 0.0 else fill))
            self.register_buffer(f"{_buffer_name(key)}__offset", torch.full(shape, fill))
        self._checked: set[str] = set()

    @property
    def keys(self) -> list[str]:
        return list(self.modes)

    def fit(self, stats: Mapping[str, Mapping[str, Any]]) -> Normalizer:
        """Set every key's scale and offset from ``compute_stats`` output (``min``/``max``/``mean``/``std``)."""
        for key, mode in self.modes.items():
            if mode == "identity":
                continue
            if key not in stats:
                raise DatasetError(f"no statistics for {key!r} (have {sorted(stats)}): cannot fit the normalizer")
            s = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in stats[key].items()}
            scale_buf, offset_buf = self._buffers_of(key)
            if mode == "min_max":
                lo, hi = s["min"], s["max"]
                span = hi - lo
                scale = torch.where(span > self.eps, 2.0 / span.clamp_min(self.eps), torch.ones_like(span))
                offset = -(lo + hi) / 2 * scale
            else:
                std = s["std"]
                scale = torch.where(std > self.eps, 1.0 / std.clamp_min(self.eps), torch.ones_like(std))
                offset = -s["mean"] * scale
            if scale.shape != scale_buf.shape:
                raise DatasetError(f"statistics of {key!r} have shape {tuple(scale.shape)}, the policy expects "
                                   f"{tuple(scale_buf.shape)}")
            if not (torch.isfinite(scale).all() and torch.isfinite(offset).all()):
                raise DatasetError(f"statistics of {key!r} are not finite")
            scale_buf.copy_(scale)
            offset_buf.copy_(offset)
        self._checked.clear()
        return self

    def _buffers_of(self, key: str) -> tuple[Tensor, Tensor]:
        if key not in self.modes:
            raise StateError(f"the normalizer has no key {key!r}; it normalizes {self.keys}")
        name = _buffer_name(key)
        return getattr(self, f"{name}__scale"), getattr(self, f"{name}__offset")

    def _fitted(self, key: str) -> tuple[Tensor, Tensor]:
        scale, offset = self._buffers_of(key)
        if key not in self._checked:  # one check per key (and per load), not one device sync per call
            if torch.isnan(scale).any() or torch.isnan(offset).any():
                raise StateError(f"no normalization statistics for {key!r}: fit the normalizer "
                                 f"(policy.normalizer.fit(compute_stats(dataset))) or load a checkpoint that has them")
            self._checked.add(key)
        return scale, offset

    def normalize(self, key: str, x: Tensor) -> Tensor:
        """``x``: (..., *shape) raw units -> same shape, normalized (a new tensor; ``x`` is not modified)."""
        scale, offset = self._fitted(key)
        return x.to(scale.dtype) * scale + offset

    def unnormalize(self, key: str, y: Tensor) -> Tensor:
        scale, offset = self._fitted(key)
        return (y - offset) / scale

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._checked.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {m}" for k, m in self.modes.items())
