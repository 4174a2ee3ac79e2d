"""Config of the unimodal MLP baseline."""

from __future__ import annotations

from dataclasses import dataclass, field

from roboloop.core.errors import ConfigError
from roboloop.core.policy import PolicyConfig
from roboloop.policies.encoders import VisionConfig


@dataclass
class MLPConfig(PolicyConfig):
    """An MLP from the observation history to the whole action chunk: the unimodal reference.

    With ``loss=mse`` it regresses the mean of the demonstrated chunks, so two equally likely ways of
    solving a task average into one that solves neither; ``gaussian`` learns a diagonal Gaussian per action
    (still one mode). Multimodal policies (diffusion, ACT with its latent) are measured against it.

    Attributes:
        hidden_dims: Widths of the hidden layers.
        loss: ``mse`` or ``gaussian`` (negative log-likelihood; ``act(deterministic=False)`` samples).
        dropout: Dropout after each hidden layer.
        min_log_std: Lower bound of the Gaussian's log std (normalized action units).
        vision: Camera encoder, used when ``obs_keys`` has images.
    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    hidden_dims: list[int] = field(default_factory=lambda: [512, 512, 512])
    loss: str = "mse"
    dropout: float = 0.0
    min_log_std: float = -5.0
    vision: VisionConfig = field(default_factory=VisionConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("mse", "gaussian"):
            raise ConfigError(f"mlp loss must be 'mse' or 'gaussian', got {self.loss!r}")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ConfigError(f"hidden_dims must be positive, got {self.hidden_dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
