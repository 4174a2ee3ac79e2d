"""Building blocks of ACT: transformer stacks and the CVAE posterior over the latent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from roboloop.policies.act.config import ACTConfig


def transformer_encoder(config: ACTConfig, n_layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(config.dim_model, config.n_heads, config.dim_feedforward, config.dropout,
                                       activation="relu", batch_first=True, norm_first=config.pre_norm)
    # Pre-norm leaves the residual stream unnormalized, so the stack ends with one more LayerNorm.
    norm = nn.LayerNorm(config.dim_model) if config.pre_norm else None
    return nn.TransformerEncoder(layer, n_layers, norm=norm, enable_nested_tensor=False)


def transformer_decoder(config: ACTConfig) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(config.dim_model, config.n_heads, config.dim_feedforward, config.dropout,
                                       activation="relu", batch_first=True, norm_first=config.pre_norm)
    return nn.TransformerDecoder(layer, config.n_decoder_layers, norm=nn.LayerNorm(config.dim_model))


def learned_embedding(n_tokens: int, dim: int) -> nn.Parameter:
    """Learned positional embeddings (n_tokens, dim)."""
    return nn.Parameter(torch.randn(n_tokens, dim) * 0.02)


def xavier_init(module: nn.Module) -> None:
    """ACT's initialization of its transformers: Xavier-uniform weight matrices."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class ChunkPosterior(nn.Module):
    """q(z | state, chunk): a transformer encoder over [CLS, current state, demonstrated actions].

    Only training uses it: it tells the decoder which of the demonstrated behaviours the target chunk
    follows, and the KL term keeps q close to the N(0, I) prior that inference samples (or takes the mean of).
    """

    def __init__(self, config: ACTConfig, state_dim: int, action_dim: int, horizon: int) -> None:
        super().__init__()
        d = config.dim_model
        self.cls = learned_embedding(1, d)
        self.state_proj = nn.Linear(state_dim, d) if state_dim else None  # image-only policies have no state
        self.action_proj = nn.Linear(action_dim, d)
        self.pos_embed = learned_embedding(1 + (1 if state_dim else 0) + horizon, d)
        self.encoder = transformer_encoder(config, config.n_vae_encoder_layers)
        self.out = nn.Linear(d, 2 * config.latent_dim)
        xavier_init(self.encoder)

    def forward(self, state_norm: Tensor | None, action_norm: Tensor,
                action_is_pad: Tensor | None) -> tuple[Tensor, Tensor]:
        """state_norm (B, Ds) or None, action_norm (B, Tp, Da), action_is_pad (B, Tp) or None
        -> mean and log variance of z, each (B, latent_dim). Padded actions are masked out of attention."""
        batch = action_norm.shape[0]
        tokens = [self.cls.expand(batch, 1, -1)]
        if self.state_proj is not None:
            tokens.append(self.state_proj(state_norm)[:, None])
        tokens.append(self.action_proj(action_norm))
        x = torch.cat(tokens, dim=1) + self.pos_embed
        mask = None
        if action_is_pad is not None:
            n_free = x.shape[1] - action_is_pad.shape[1]  # CLS (and state) tokens are never padding
            mask = torch.cat([action_is_pad.new_zeros(batch, n_free), action_is_pad], dim=1)
        cls = self.encoder(x, src_key_padding_mask=mask)[:, 0]
        mean, log_var = self.out(cls).chunk(2, dim=-1)
        return mean, log_var
