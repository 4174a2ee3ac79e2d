"""``DiffusionPolicy``: action chunks sampled by iterative denoising, conditioned on the observation history.

Training (DDPM): noise a normalized action chunk to a random diffusion step and regress the noise (or the
clean chunk) over the whole chunk; padded actions repeat the episode's edge action and are not masked
(Diffusion Policy's convention). Inference: start from Gaussian noise and run ``num_inference_steps`` DDIM or
DDPM steps. Only the schedulers come from ``diffusers``; nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from roboloop.core.errors import InputError
from roboloop.core.policy import ACTION_KEY, Batch, LossOutput, Policy
from roboloop.core.spec import PolicySpec
from roboloop.policies.diffusion.config import DiffusionConfig, check_inference_steps
from roboloop.policies.diffusion.nets import ConditionalUnet1D, Denoiser, TransformerForDiffusion
from roboloop.policies.encoders import ObservationEncoder
from roboloop.policies.mlp.policy import mlp

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DDPMScheduler


def make_scheduler(config: DiffusionConfig, sampler: str) -> DDPMScheduler | DDIMScheduler:
    """A fresh ``diffusers`` scheduler (``ddpm`` or ``ddim``) over the config's noise schedule."""
    # Imported here, not at module level: diffusers takes about a second to import, which every command that
    # lists the registered policies would pay.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    from diffusers import DDIMScheduler, DDPMScheduler

    common = {"num_train_timesteps": config.num_train_timesteps, "beta_schedule": config.beta_schedule,
              "clip_sample": config.clip_sample, "prediction_type": config.prediction_type}
    if sampler == "ddpm":
        return DDPMScheduler(variance_type="fixed_small", **common)
    return DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **common)


class DiffusionPolicy(Policy):
    """Diffusion Policy with a 1D-UNet or transformer denoiser (``config.denoiser``).

    Randomness comes from the global torch RNG (training noise and steps, the initial sampling noise, DDPM's
    per-step noise), so ``torch.manual_seed`` makes every call reproducible. EMA weights belong to the trainer.
    """

    name = "diffusion"
    config_cls = DiffusionConfig
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig, spec: PolicySpec) -> None:
        super().__init__(config, spec)
        self.encoder = ObservationEncoder(spec, config.vision)
        feature_dim = self.encoder.feature_dim
        if config.obs_mlp_dims:
            self.obs_mlp: nn.Module = mlp(feature_dim, config.obs_mlp_dims[:-1], config.obs_mlp_dims[-1])
            feature_dim = config.obs_mlp_dims[-1]
        else:
            self.obs_mlp = nn.Identity()
        self.denoiser: Denoiser
        if config.denoiser == "unet":
            self.denoiser = ConditionalUnet1D(spec.action_dim, feature_dim, spec.n_obs_steps,
                                              config.down_dims, config.kernel_size, config.n_groups,
                                              config.step_embed_dim, config.blocks_per_level)
        else:
            self.denoiser = TransformerForDiffusion(
                spec.action_dim, feature_dim, spec.n_obs_steps, spec.horizon, config.n_layer,
                config.n_head, config.n_emb, config.n_cond_layers, config.p_drop_emb, config.p_drop_attn,
                config.causal_attn)
        self.noise_scheduler = make_scheduler(config, "ddpm")  # training: the forward (noising) process
        self.set_sampler(config.sampler, config.num_inference_steps)

    def set_sampler(self, sampler: str, num_inference_steps: int) -> None:
        """Sample with ``ddim`` or ``ddpm`` and ``num_inference_steps`` (1 .. num_train_timesteps) from now on.

        Needs no retraining: both samplers walk the noise schedule the denoiser was trained on. The config is
        updated too, so a checkpoint saved afterwards samples the same way.
        """
        check_inference_steps(sampler, num_inference_steps, self.config.num_train_timesteps)
        self.config = replace(self.config, sampler=sampler, num_inference_steps=num_inference_steps)
        self.sampler = make_scheduler(self.config, sampler)
        self.sampler.set_timesteps(num_inference_steps)

    def encode(self, obs: Batch) -> Tensor:
        """Raw observations ``{key: (B, To, ...)}`` -> conditioning features (B, To, F)."""
        return self.obs_mlp(self.encoder(self.normalize_obs(obs)))

    # ------------------------------------------------------------------------------ training
    def compute_loss(self, batch: Batch) -> LossOutput:
        self.check_batch(batch)
        obs_features = self.encode(batch)  # (B, To, F)
        chunk = self.normalize_action(batch[ACTION_KEY])  # (B, Tp, Da), in [-1, 1] with min_max
        noise = torch.randn_like(chunk)
        timestep = torch.randint(0, self.config.num_train_timesteps, (chunk.shape[0],), device=chunk.device)
        noisy = self.noise_scheduler.add_noise(chunk, noise, timestep)
        pred = self.denoiser(noisy, timestep, obs_features)
        mse = F.mse_loss(pred, noise if self.config.prediction_type == "epsilon" else chunk)
        return LossOutput(mse, {"mse": mse.item()})

    # ------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """obs: raw ``{key: (B, To, *shape)}`` -> raw actions (B, Ta, Da).

        A diffusion policy always samples: the chunk is denoised from Gaussian noise drawn from ``generator``
        (None: the global torch RNG), whatever ``deterministic`` says. With DDIM (eta = 0) the result is a
        deterministic function of that noise, so seeding the generator (``torch.manual_seed``) before the call
        reproduces it; DDPM also draws noise at every step.
        """
        chunk = self.sample_chunks(self.encode(obs), generator)
        return self.unnormalize_action(self.executed(chunk))

    @torch.no_grad()
    def sample_actions(self, obs: Batch, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` candidate chunks per observation (e.g. for value-guided steering), sampled as one batch of B * n
        from ``generator`` (None: the global torch RNG).

        obs: raw ``{key: (B, To, *shape)}`` -> raw actions (B, n, Ta, Da).
        """
        if n < 1:
            raise InputError(f"sample_actions needs n >= 1 candidates, got {n}")
        obs_features = self.encode(obs)  # (B, To, F), encoded once per observation
        chunk = self.sample_chunks(obs_features.repeat_interleave(n, dim=0), generator)
        actions = self.unnormalize_action(self.executed(chunk))
        return actions.view(obs_features.shape[0], n, *actions.shape[1:])

    @torch.no_grad()
    def sample_chunks(self, obs_features: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """obs_features (N, To, F) -> normalized action chunks (N, Tp, Da), one per row, with the current sampler
        and noise from ``generator`` (None: the global torch RNG).

        The sampler is shared, so concurrent calls (env groups planning on their own threads) must not change its
        state: ``step`` only reads the timesteps ``set_sampler`` fixed."""
        n = obs_features.shape[0]
        timesteps = self.sampler.timesteps.tolist()
        # Condition every denoising step in one batched call; the loop then only runs the denoiser and the update.
        steps = torch.tensor(timesteps, device=obs_features.device).repeat_interleave(n)  # (K * N,)
        conds = self.denoiser.condition(steps, obs_features.repeat(len(timesteps), 1, 1)).chunk(len(timesteps))
        chunk = torch.randn(n, self.spec.horizon, self.spec.action_dim, generator=generator,
                            device=obs_features.device)
        for t, cond in zip(timesteps, conds, strict=True):
            chunk = self.sampler.step(self.denoiser.denoise(chunk, cond), t, chunk, generator=generator).prev_sample
        return chunk
