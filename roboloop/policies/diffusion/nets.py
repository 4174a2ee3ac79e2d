"""Denoisers of the Diffusion Policy, written here after real-stanford/diffusion_policy: a 1D temporal UNet with
FiLM conditioning (``ConditionalUnet1D``) and a time-series transformer (``TransformerForDiffusion``).

Both take a noised, normalized action chunk and return the predicted noise (or clean chunk), and both split
their forward pass in two so that sampling conditions every denoising step in one batched call before the loop:

* ``condition(timestep (N,), obs_features (N, To, F)) -> cond (N, ...)``: everything that does not depend
  on the noised chunk (the diffusion-step embedding and the observation features);
* ``denoise(sample (N, Tp, Da), cond) -> (N, Tp, Da)``;
* ``forward(sample, timestep, obs_features)`` is ``denoise(sample, condition(timestep, obs_features))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SinusoidalPosEmb(nn.Module):
    """Diffusion steps (N,) -> (N, dim): sines and cosines at geometrically spaced frequencies."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, timestep: Tensor) -> Tensor:
        args = timestep.to(self.freqs.dtype)[:, None] * self.freqs
        return torch.cat([args.sin(), args.cos()], dim=-1)


# ------------------------------------------------------------------------------------------------ UNet
class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish over the horizon axis: (B, C_in, T) -> (B, C_out, T).

    The forward pass calls the functional ops directly: at batch 1 a module call costs about as much as
    one of these small ops, and sampling runs this block dozens of times per denoising step.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        conv, norm = self.conv, self.norm
        x = F.conv1d(x, conv.weight, conv.bias, padding=conv.padding)
        return F.mish(F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps))


class FiLMResBlock(nn.Module):
    """Two conv blocks with a residual connection; FiLM modulates the first block's output per channel.

    ``forward(x (B, C_in, T), scale (B, C_out, 1), bias (B, C_out, 1)) -> (B, C_out, T)``:
    ``block2(scale * block1(x) + bias) + residual(x)``. The scale and bias come from the condition (diffusion
    step and observations); the UNet computes those of all its blocks with one linear layer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        out = self.block2(torch.addcmul(bias, scale, self.block1(x)))
        return out + (x if self.residual is None else self.residual(x))


class ConditionalUnet1D(nn.Module):
    """1D temporal UNet over the action chunk, conditioned by FiLM on ``[step embedding, To observation features]``.

    Levels ``down_dims = [C_1, ..., C_L]``, each with ``blocks_per_level`` residual blocks. Down path: the blocks
    of each level, then (except at the last level) a strided conv halving the horizon. Bottom: ``blocks_per_level``
    blocks. Up path (L - 1 levels, deepest first): concatenate the output of the matching down level (the skip
    connection), run the blocks, double the horizon with a transposed conv. Then a conv block and a 1x1 conv back
    to Da channels. This is Diffusion Policy's topology (which uses 2 blocks per level; as there, the first level's
    output is not used as a skip). A horizon that is not a multiple of 2 ** (L - 1) is zero-padded at the end
    inside the network and cropped again, so any Tp works.

    Args:
        action_dim: Da.
        obs_feature_dim: F, features per observation step.
        n_obs_steps: To.
        down_dims: Channels per level.
        kernel_size: Temporal kernel (odd).
        n_groups: GroupNorm groups (divides every entry of ``down_dims``).
        step_embed_dim: Size of the diffusion-step embedding (even).
        blocks_per_level: Residual blocks per level and at the bottom.
    """

    def __init__(self, action_dim: int, obs_feature_dim: int, n_obs_steps: int, down_dims: list[int],
                 kernel_size: int = 5, n_groups: int = 8, step_embed_dim: int = 128, blocks_per_level: int = 2) -> None:
        super().__init__()
        dim = step_embed_dim
        self.step_encoder = nn.Sequential(SinusoidalPosEmb(dim), nn.Linear(dim, 4 * dim), nn.Mish(),
                                          nn.Linear(4 * dim, dim))

        def level(c_in: int, c_out: int) -> nn.ModuleList:
            return nn.ModuleList(FiLMResBlock(c_in if i == 0 else c_out, c_out, kernel_size, n_groups)
                                 for i in range(blocks_per_level))

        in_out = list(zip([action_dim, *down_dims[:-1]], down_dims))  # (C_in, C_out) of each level
        self.down_blocks = nn.ModuleList(level(c_in, c_out) for c_in, c_out in in_out)
        self.downsample = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in down_dims[:-1])
        self.mid_blocks = level(down_dims[-1], down_dims[-1])
        self.up_blocks = nn.ModuleList(level(2 * c_out, c_in) for c_in, c_out in reversed(in_out[1:]))
        self.upsample = nn.ModuleList(nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
                                      for c_in, _ in reversed(in_out[1:]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))
        # One linear layer gives the FiLM scale and bias of every block, in the order denoise() runs them: one
        # matrix product per denoising step instead of one per block.
        blocks = [*(b for lvl in self.down_blocks for b in lvl), *self.mid_blocks,
                  *(b for lvl in self.up_blocks for b in lvl)]
        self.film_sizes = [c for block in blocks for c in (block.out_channels, block.out_channels)]
        cond_dim = step_embed_dim + n_obs_steps * obs_feature_dim
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, sum(self.film_sizes)))
        self.multiple = 2 ** (len(down_dims) - 1)

    def condition(self, timestep: Tensor, obs_features: Tensor) -> Tensor:
        """timestep (B,) diffusion steps, obs_features (B, To, F) -> global condition (B, step_embed_dim + To * F)."""
        return torch.cat([self.step_encoder(timestep), obs_features.flatten(1)], dim=-1)

    def denoise(self, sample: Tensor, cond: Tensor) -> Tensor:
        """sample (B, Tp, Da) noised chunk, cond (B, C) from ``condition`` -> (B, Tp, Da)."""
        horizon = sample.shape[1]
        x = sample.transpose(1, 2)  # (B, Da, Tp): convolutions run over the horizon
        if pad := -horizon % self.multiple:
            x = F.pad(x, (0, pad))
        films = self.film(cond).unsqueeze(-1).split(self.film_sizes, dim=1)  # scale, bias, scale, ... (B, C, 1)
        film = iter(zip(films[0::2], films[1::2]))
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for block in blocks:
                x = block(x, *next(film))
            skips.append(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        for block in self.mid_blocks:
            x = block(x, *next(film))
        for blocks, upsample in zip(self.up_blocks, self.upsample, strict=True):
            x = torch.cat([x, skips.pop()], dim=1)
            for block in blocks:
                x = block(x, *next(film))
            x = upsample(x)
        return self.final(x)[..., :horizon].transpose(1, 2)

    def forward(self, sample: Tensor, timestep: Tensor, obs_features: Tensor) -> Tensor:
        """sample (B, Tp, Da), timestep (B,), obs_features (B, To, F) -> (B, Tp, Da)."""
        return self.denoise(sample, self.condition(timestep, obs_features))


# ------------------------------------------------------------------------------------------------ transformer
class TransformerForDiffusion(nn.Module):
    """Time-series transformer denoiser: Tp action tokens decode against [diffusion-step token, To obs tokens].

    The condition tokens (step: sinusoidal embedding; observations: a linear map of each step's features) get
    learned positional embeddings and go through a transformer encoder (``n_cond_layers > 0``) or an MLP; the
    result is the memory of a pre-norm ``nn.TransformerDecoder`` over the noised action tokens (linear embedding
    plus learned positions). With ``causal_attn`` action token i attends to action tokens <= i and, in the memory,
    to the step token and the observations up to its own time (observation j sits at chunk index j).

    Args:
        action_dim: Da.
        obs_feature_dim: F, features per observation step.
        n_obs_steps: To.
        horizon: Tp.
        n_layer: Decoder layers.
        n_head: Attention heads.
        n_emb: Token width.
        n_cond_layers: Encoder layers over the condition tokens (0: an MLP).
        p_drop_emb: Dropout on the token embeddings.
        p_drop_attn: Dropout inside the transformer layers.
        causal_attn: Use the causal self-attention and memory masks.
    """

    def __init__(self, action_dim: int, obs_feature_dim: int, n_obs_steps: int, horizon: int, n_layer: int = 4,
                 n_head: int = 4, n_emb: int = 128, n_cond_layers: int = 0, p_drop_emb: float = 0.0,
                 p_drop_attn: float = 0.1, causal_attn: bool = True) -> None:
        super().__init__()
        self.input_emb = nn.Linear(action_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(obs_feature_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, n_emb))
        self.encoder: nn.Module
        if n_cond_layers > 0:
            layer = nn.TransformerEncoderLayer(n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_cond_layers, enable_nested_tensor=False)
        else:
            self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        layer = nn.TransformerDecoderLayer(n_emb, n_head, 4 * n_emb, p_drop_attn, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, n_layer)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        # Boolean masks, True = may not attend; None without causal_attn.
        tgt_mask = memory_mask = None
        if causal_attn:
            t = torch.arange(horizon)[:, None]
            tgt_mask = torch.arange(horizon)[None, :] > t  # (Tp, Tp)
            # memory token s: 0 is the step token (always visible), s >= 1 is observation s - 1 (at chunk index s - 1)
            memory_mask = torch.arange(1 + n_obs_steps)[None, :] - 1 > t  # (Tp, 1 + To)
        self.register_buffer("tgt_mask", tgt_mask, persistent=False)
        self.register_buffer("memory_mask", memory_mask, persistent=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-style initialization, as in Diffusion Policy: N(0, 0.02) weights, zero biases."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            nn.init.normal_(module.in_proj_weight, std=0.02)
            nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def condition(self, timestep: Tensor, obs_features: Tensor) -> Tensor:
        """timestep (B,), obs_features (B, To, F) -> memory (B, 1 + To, n_emb)."""
        tokens = torch.cat([self.time_emb(timestep)[:, None], self.cond_obs_emb(obs_features)], dim=1)
        return self.encoder(self.drop(tokens + self.cond_pos_emb))

    def denoise(self, sample: Tensor, memory: Tensor) -> Tensor:
        """sample (B, Tp, Da) noised chunk, memory (B, 1 + To, n_emb) from ``condition`` -> (B, Tp, Da)."""
        x = self.drop(self.input_emb(sample) + self.pos_emb)
        x = self.decoder(x, memory, tgt_mask=self.tgt_mask, memory_mask=self.memory_mask)
        return self.head(self.ln_f(x))

    def forward(self, sample: Tensor, timestep: Tensor, obs_features: Tensor) -> Tensor:
        """sample (B, Tp, Da), timestep (B,), obs_features (B, To, F) -> (B, Tp, Da)."""
        return self.denoise(sample, self.condition(timestep, obs_features))


Denoiser = ConditionalUnet1D | TransformerForDiffusion

__all__ = ["ConditionalUnet1D", "Conv1dBlock", "Denoiser", "FiLMResBlock", "SinusoidalPosEmb",
           "TransformerForDiffusion"]
