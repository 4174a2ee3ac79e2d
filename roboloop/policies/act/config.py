"""Config of the ACT policy (Action Chunking with Transformers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from roboloop.core.errors import ConfigError
from roboloop.core.policy import PolicyConfig
from roboloop.policies.encoders import VisionConfig


@dataclass
class ACTConfig(PolicyConfig):
    """A transformer that regresses the whole action chunk, conditioned on a CVAE latent (Zhao et al. 2023).

    The latent carries what the observation does not decide (which of several demonstrated ways to solve the
    task): training infers it from the demonstrated chunk, inference sets it to the prior mean 0, or draws it
    from N(0, I) for diverse candidates. Sizes are CPU-sized; ACT's own are dim_model 512, dim_feedforward
    3200, 4 encoder layers and horizon 100 at 50 Hz.

    Attributes:
        dim_model: Width of every transformer token.
        n_heads: Attention heads (must divide ``dim_model``).
        dim_feedforward: Hidden width of the transformer feed-forward blocks.
        n_encoder_layers: Layers of the encoder over [latent, observation tokens].
        n_decoder_layers: Layers of the decoder whose ``horizon`` queries become the chunk (ACT's original code
            ran only the first of its decoder layers, so 1 reproduces it).
        dropout: Dropout in the transformer layers.
        pre_norm: LayerNorm before (True) or after (False, as in ACT) each attention and feed-forward block.
        use_vae: Train with the CVAE posterior over the latent; without it the latent token is a learned
            constant and the policy is a deterministic chunk regressor.
        latent_dim: Size of the latent z.
        n_vae_encoder_layers: Layers of the posterior encoder over [CLS, state, action chunk] (training only).
        kl_weight: Weight of KL(posterior || N(0, I)) in the loss.
        loss: Reconstruction loss of the normalized chunk, ``l1`` (ACT) or ``mse``. Scripted demonstrations leave
            some action dimensions exactly 0 on most steps (Lift: dx on 72% of them, dyaw on 75%); L1's per-state
            median then holds those outputs at a constant 0, and ``mse`` learns them (Lift, 100 clean demos, 3000
            steps: 5/20 episodes with ``l1``, 15/20 with ``mse``).
        vision: Camera encoder (one token per camera per step), used when ``obs_keys`` has images.
    """

    n_obs_steps: int = 1
    horizon: int = 16
    n_action_steps: int = 8
    dim_model: int = 128
    n_heads: int = 4
    dim_feedforward: int = 512
    n_encoder_layers: int = 4
    n_decoder_layers: int = 1
    dropout: float = 0.1
    pre_norm: bool = False
    use_vae: bool = True
    latent_dim: int = 32
    n_vae_encoder_layers: int = 4
    kl_weight: float = 10.0
    loss: str = "l1"
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("dim_model", "n_heads", "dim_feedforward", "n_encoder_layers", "n_decoder_layers",
                     "latent_dim", "n_vae_encoder_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"act {name} must be >= 1, got {getattr(self, name)}")
        if self.dim_model % self.n_heads:
            raise ConfigError(f"act dim_model ({self.dim_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"act dropout must be in [0, 1), got {self.dropout}")
        if self.kl_weight < 0:
            raise ConfigError(f"act kl_weight must be >= 0, got {self.kl_weight}")
        if self.loss not in ("l1", "mse"):
            raise ConfigError(f"act loss must be 'l1' or 'mse', got {self.loss!r}")
