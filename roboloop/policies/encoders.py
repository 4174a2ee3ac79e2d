"""Observation encoders shared by every BC policy: state vectors pass through, cameras go through a small
convolutional network written here (no downloaded weights, no torchvision) with random-crop augmentation
and a spatial-softmax keypoint head (as in robomimic and Diffusion Policy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from roboloop.core.errors import ConfigError
from roboloop.core.spec import PolicySpec


@dataclass
class VisionConfig:
    """Camera encoder (one per camera).

    Attributes:
        channels: Output channels of the conv layers; every other layer halves the resolution.
        crop_ratio: Side of the random crop (training) / centre crop (inference) as a fraction of the image.
        num_keypoints: Spatial-softmax keypoints (each gives an expected x, y).
        feature_dim: Size of each camera's feature vector.
    """

    channels: list[int] = field(default_factory=lambda: [32, 64, 64, 128])
    crop_ratio: float = 0.9
    num_keypoints: int = 32
    feature_dim: int = 64

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"vision.channels must be positive, got {self.channels}")
        if not 0.5 <= self.crop_ratio <= 1.0:
            raise ConfigError(f"vision.crop_ratio must be in [0.5, 1], got {self.crop_ratio}")
        if self.num_keypoints < 1 or self.feature_dim < 1:
            raise ConfigError("vision.num_keypoints and vision.feature_dim must be >= 1")


def random_crop(images: Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """An independent random (h, w) crop of each image. images: (N, C, H, W) -> (N, C, h, w)."""
    n, _, height, width = images.shape
    h, w = size
    top = torch.randint(0, height - h + 1, (n,), device=images.device, generator=generator)
    left = torch.randint(0, width - w + 1, (n,), device=images.device, generator=generator)
    rows = (top[:, None] + torch.arange(h, device=images.device))[:, :, None]  # (N, h, 1)
    cols = (left[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (N, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def center_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    height, width = images.shape[-2:]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return images[..., top:top + size[0], left:left + size[1]]


class SpatialSoftmax(nn.Module):
    """(N, C, H, W) feature maps -> (N, 2K): the expected image coordinates of K learned keypoints."""

    def __init__(self, in_channels: int, num_keypoints: int, height: int, width: int) -> None:
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, features: Tensor) -> Tensor:
        maps = self.keypoints(features).flatten(2)  # (N, K, H*W)
        attention = maps.softmax(dim=-1)
        return (attention @ self.grid).flatten(1)  # (N, K, 2) -> (N, 2K)


class ConvEncoder(nn.Module):
    """One camera: normalized (N, 3, H, W) -> (N, feature_dim)."""

    def __init__(self, cfg: VisionConfig, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        height, width = image_shape[0], image_shape[1]
        self.crop = (max(8, int(round(height * cfg.crop_ratio))), max(8, int(round(width * cfg.crop_ratio))))
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(cfg.channels):
            stride = 2 if i % 2 == 0 else 1
            groups = 8 if out_ch % 8 == 0 else 1
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1), nn.GroupNorm(groups, out_ch), nn.ReLU()]
            in_ch = out_ch
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            h, w = self.conv(torch.zeros(1, 3, *self.crop)).shape[-2:]
        self.pool = SpatialSoftmax(in_ch, cfg.num_keypoints, h, w)
        self.out = nn.Sequential(nn.Linear(2 * cfg.num_keypoints, cfg.feature_dim), nn.LayerNorm(cfg.feature_dim))

    def forward(self, images: Tensor) -> Tensor:
        images = random_crop(images, self.crop) if self.training else center_crop(images, self.crop)
        return self.out(self.pool(self.conv(images)))


class ObservationEncoder(nn.Module):
    """Normalized observations ``{key: (B, To, D) or (B, To, 3, H, W)}`` -> per-step features (B, To, F).

    State keys are concatenated as they are; each camera gets its own ``ConvEncoder``.
    """

    def __init__(self, spec: PolicySpec, vision: VisionConfig) -> None:
        super().__init__()
        self.lowdim_keys = spec.lowdim_keys
        self.image_keys = spec.image_keys
        self.cameras = nn.ModuleDict({k.replace(".", "__"): ConvEncoder(vision, spec.obs_shapes[k])
                                      for k in self.image_keys})
        self.feature_dim = sum(spec.obs_shapes[k][0] for k in self.lowdim_keys) + vision.feature_dim * len(
            self.image_keys)

    def forward(self, obs_norm: dict[str, Tensor]) -> Tensor:
        parts = [obs_norm[k] for k in self.lowdim_keys]
        for key in self.image_keys:
            images = obs_norm[key]
            b, t = images.shape[:2]
            features = self.cameras[key.replace(".", "__")](images.flatten(0, 1))
            parts.append(features.view(b, t, -1))
        return torch.cat(parts, dim=-1)


def masked_mean(values: Tensor, is_pad: Tensor | None) -> Tensor:
    """Mean of (B, T, ...) ``values`` over entries whose (B, T) ``is_pad`` is False (all when None)."""
    if is_pad is None:
        return values.mean()
    keep = (~is_pad).to(values.dtype).view(*is_pad.shape, *([1] * (values.ndim - 2)))
    return (values * keep).sum() / (keep.sum() * values[0, 0].numel()).clamp_min(1.0)


__all__ = ["ConvEncoder", "ObservationEncoder", "SpatialSoftmax", "VisionConfig", "center_crop", "masked_mean",
           "random_crop"]
