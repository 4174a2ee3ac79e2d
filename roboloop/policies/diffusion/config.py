"""Config of the Diffusion Policy (Chi et al., 2023): a conditional denoiser over action chunks."""

from __future__ import annotations

from dataclasses import dataclass, field

from roboloop.core.errors import ConfigError
from roboloop.core.policy import PolicyConfig
from roboloop.policies.encoders import VisionConfig

DENOISERS = ("unet", "transformer")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "sample")
SAMPLERS = ("ddim", "ddpm")


@dataclass
class DiffusionConfig(PolicyConfig):
    """Diffusion Policy: DDPM training over the whole action chunk, DDIM (or DDPM) sampling at inference.

    A denoiser predicts the noise (or the clean chunk) of a noised, normalized action chunk (B, Tp, Da) given
    the diffusion step and the To observation features. Sampling starts from Gaussian noise, so repeated
    calls give different chunks from the learned, possibly multimodal, distribution.

    The default UNet is much smaller than the paper's (``down_dims=[256, 512, 1024]``, ``blocks_per_level=2``,
    about 65M parameters): one batch-1 action chunk with 10 DDIM steps must take at most 10 ms on a 2-core CPU
    (``benchmarks/diffusion_latency.py``). At batch 1 the time goes to the number of small ops per denoising
    step more than to their width, so the default has two levels of one residual block each.

    The denoiser predicts the clean chunk (``prediction_type="sample"``), not the noise as in the paper: with a
    network this small, noise prediction learns the observation conditioning far more slowly (Lift, 100 demos:
    ``epsilon`` 15% success after 4000 steps, ``sample`` 90% after 3000 and 95% over 100 episodes after 6000).

    Attributes:
        denoiser: ``unet`` (1D temporal UNet with FiLM conditioning) or ``transformer`` (time-series
            transformer whose action tokens attend to the diffusion step and observation tokens).
        down_dims: UNet channels per resolution level; the horizon is halved between levels (and padded to a
            multiple of 2 ** (levels - 1) inside the network).
        kernel_size: UNet temporal convolution kernel (odd).
        n_groups: GroupNorm groups in the UNet (must divide every entry of ``down_dims``).
        step_embed_dim: Size of the UNet's diffusion-step embedding (sinusoidal, then an MLP; even).
        blocks_per_level: FiLM residual blocks per UNet level and at its bottom (Diffusion Policy uses 2; at
            batch 1 on a 2-core CPU each block adds roughly 0.1 ms per denoising step).
        n_layer: Transformer decoder layers.
        n_head: Attention heads (must divide ``n_emb``).
        n_emb: Transformer token width (even).
        n_cond_layers: Transformer encoder layers over the condition tokens; 0 uses an MLP instead.
        p_drop_emb: Dropout on the transformer's token embeddings.
        p_drop_attn: Dropout inside the transformer layers.
        causal_attn: Action token i attends only to action tokens <= i and observation tokens up to its time.
        num_train_timesteps: Diffusion steps of the forward (noising) process.
        beta_schedule: Noise schedule: ``linear``, ``scaled_linear`` or ``squaredcos_cap_v2``.
        prediction_type: What the denoiser predicts: ``sample`` (the clean chunk) or ``epsilon`` (the noise,
            Diffusion Policy's choice with its 65M-parameter UNet).
        clip_sample: Clip the predicted clean chunk to [-1, 1] (the normalized action range) while sampling.
        sampler: ``ddim`` (deterministic given the initial noise) or ``ddpm`` (adds noise at every step).
        num_inference_steps: Denoising steps at inference, 1 .. ``num_train_timesteps``
            (``DiffusionPolicy.set_sampler`` changes it without retraining).
        obs_mlp_dims: Hidden widths of an MLP applied to each step's observation features before they
            condition the denoiser (empty: the features condition it directly, as in Diffusion Policy). The
            UNet's FiLM layers map the condition linearly, so without it the observation enters the
            denoiser only through one affine map. (Measured on Lift: [256, 256] did not make the default
            [32, 64] UNet fit; widening the UNet did more.)
        vision: Camera encoder, used when ``obs_keys`` has images.
    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    denoiser: str = "unet"
    # UNet
    down_dims: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    blocks_per_level: int = 1
    # transformer
    n_layer: int = 4
    n_head: int = 4
    n_emb: int = 128
    n_cond_layers: int = 0
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.1
    causal_attn: bool = True
    # diffusion
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"
    clip_sample: bool = True
    sampler: str = "ddim"
    num_inference_steps: int = 10
    obs_mlp_dims: list[int] = field(default_factory=list)
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(width < 1 for width in self.obs_mlp_dims):
            raise ConfigError(f"obs_mlp_dims must be positive widths (or empty), got {self.obs_mlp_dims}")
        for name, allowed in (("denoiser", DENOISERS), ("beta_schedule", BETA_SCHEDULES),
                              ("prediction_type", PREDICTION_TYPES), ("sampler", SAMPLERS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"diffusion {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        self._check_unet()
        self._check_transformer()
        if self.num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        check_inference_steps(self.sampler, self.num_inference_steps, self.num_train_timesteps)

    def _check_unet(self) -> None:
        if not self.down_dims or min(self.down_dims) < 1:
            raise ConfigError(f"down_dims must be a non-empty list of positive channel counts, got {self.down_dims}")
        if self.n_groups < 1 or any(d % self.n_groups for d in self.down_dims):
            raise ConfigError(f"n_groups ({self.n_groups}) must be >= 1 and divide every entry of down_dims "
                              f"{self.down_dims} (GroupNorm)")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd number, got {self.kernel_size}")
        if self.step_embed_dim < 2 or self.step_embed_dim % 2:
            raise ConfigError(f"step_embed_dim must be even and >= 2, got {self.step_embed_dim}")
        if self.blocks_per_level < 1:
            raise ConfigError(f"blocks_per_level must be >= 1, got {self.blocks_per_level}")

    def _check_transformer(self) -> None:
        if self.n_layer < 1 or self.n_head < 1 or self.n_cond_layers < 0:
            raise ConfigError(f"n_layer and n_head must be >= 1 and n_cond_layers >= 0, got {self.n_layer}, "
                              f"{self.n_head}, {self.n_cond_layers}")
        if self.n_emb < 2 or self.n_emb % 2 or self.n_emb % self.n_head:
            raise ConfigError(f"n_emb must be even and divisible by n_head ({self.n_head}), got {self.n_emb}")
        for name in ("p_drop_emb", "p_drop_attn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")


def check_inference_steps(sampler: str, num_inference_steps: int, num_train_timesteps: int) -> None:
    """Both samplers take 1 .. num_train_timesteps steps (DDPM with fewer steps skips along the same chain)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"diffusion sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ConfigError(f"num_inference_steps must be in 1 .. num_train_timesteps ({num_train_timesteps}) for "
                          f"the {sampler} sampler, got {num_inference_steps}")
