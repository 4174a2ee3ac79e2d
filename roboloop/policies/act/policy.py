"""``ACTPolicy``: Action Chunking with Transformers (Zhao et al. 2023), a CVAE over whole action chunks.

A transformer encoder reads a latent token and the observation tokens; a decoder whose ``horizon`` learned
queries cross-attend to the encoder output regresses the normalized chunk (B, Tp, Da) in one pass. Encoder
tokens, G per observation step (the concatenated state if the policy reads any, then one per camera)::

    [ z | state_0 cam1_0 .. camK_0 | state_1 .. camK_1 | .. | state_{To-1} .. camK_{To-1} ]

Each camera is one token (its ``ConvEncoder`` features), not one per feature-map cell as in ACT: at 84x84 the
default trunk leaves 19x19 cells, and ~360 tokens per camera and step would make CPU training many times
slower. Temporal ensembling of overlapping chunks is the ``ChunkExecutor``'s job, not the policy's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import ACTION_KEY, Batch, LossOutput, Policy
from roboloop.core.spec import PolicySpec
from roboloop.policies.act import nets
from roboloop.policies.act.config import ACTConfig
from roboloop.policies.encoders import ObservationEncoder, masked_mean


class ACTPolicy(Policy):
    name = "act"
    config_cls = ACTConfig

    def __init__(self, config: ACTConfig, spec: PolicySpec) -> None:
        super().__init__(config, spec)
        d = config.dim_model
        self.encoder = ObservationEncoder(spec, config.vision)
        self.state_dim = sum(spec.obs_shapes[k][0] for k in spec.lowdim_keys)
        # ObservationEncoder's per-step features are [state | camera 1 | .. | camera K]: one token per group.
        camera_dims = [config.vision.feature_dim] * len(spec.image_keys)
        self.group_dims = ([self.state_dim] if self.state_dim else []) + camera_dims
        self.input_proj = nn.ModuleList(nn.Linear(dim, d) for dim in self.group_dims)
        self.latent_proj = nn.Linear(config.latent_dim, d)
        self.pos_embed = nets.learned_embedding(1 + spec.n_obs_steps * len(self.group_dims), d)
        self.transformer_encoder = nets.transformer_encoder(config, config.n_encoder_layers)
        self.queries = nets.learned_embedding(spec.horizon, d)
        self.transformer_decoder = nets.transformer_decoder(config)
        self.action_head = nn.Linear(d, spec.action_dim)
        nets.xavier_init(self.transformer_encoder)
        nets.xavier_init(self.transformer_decoder)
        self.posterior = (nets.ChunkPosterior(config, self.state_dim, spec.action_dim, spec.horizon)
                          if config.use_vae else None)

    # ------------------------------------------------------------------------------ network
    def _obs_tokens(self, obs_norm: dict[str, Tensor]) -> Tensor:
        """Normalized observations (B, To, ...) -> tokens (B, To * G, d), step-major, position embedded."""
        features = self.encoder(obs_norm)  # (B, To, F)
        groups = features.split(self.group_dims, dim=-1)
        tokens = torch.stack([proj(g) for proj, g in zip(self.input_proj, groups)], dim=2)  # (B, To, G, d)
        return tokens.flatten(1, 2) + self.pos_embed[1:]

    def _predict(self, obs_tokens: Tensor, latent: Tensor) -> Tensor:
        """obs_tokens (B, S, d) and latent (B, latent_dim) -> normalized chunk (B, Tp, Da)."""
        latent_token = (self.latent_proj(latent) + self.pos_embed[0])[:, None]
        memory = self.transformer_encoder(torch.cat([latent_token, obs_tokens], dim=1))
        queries = self.queries.expand(memory.shape[0], -1, -1)
        return self.action_head(self.transformer_decoder(queries, memory))

    def _prior_latent(self, batch: int, *, sample: bool, generator: torch.Generator | None = None) -> Tensor:
        """(batch, latent_dim): a draw from N(0, I) (from ``generator``; None: the global torch RNG), or its
        mean 0."""
        shape = (batch, self.config.latent_dim)
        return torch.randn(shape, generator=generator, device=self.device) if sample else torch.zeros(
            shape, device=self.device)

    # ------------------------------------------------------------------------------ the contract
    @torch.no_grad()
    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Raw obs (B, To, ...) -> raw actions (B, Ta, Da). ``deterministic`` takes the prior mean z = 0;
        otherwise z is drawn from the prior with ``generator`` (without the CVAE there is no latent and both are
        the same)."""
        obs_tokens = self._obs_tokens(self.normalize_obs(obs))
        latent = self._prior_latent(obs_tokens.shape[0], sample=not deterministic and self.posterior is not None,
                                    generator=generator)
        return self.unnormalize_action(self.executed(self._predict(obs_tokens, latent)))

    @torch.no_grad()
    def sample_actions(self, obs: Batch, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Raw obs (B, To, ...) -> n candidate action sequences (B, n, Ta, Da), one prior draw of z each (from
        ``generator``; None: the global torch RNG)."""
        if self.posterior is None:
            raise ConfigError("sample_actions draws the CVAE latent from its prior, but this ACT policy has "
                              "use_vae=False: every candidate would be the same chunk")
        if n < 1:
            raise InputError(f"sample_actions needs n >= 1 candidates, got {n}")
        obs_tokens = self._obs_tokens(self.normalize_obs(obs)).repeat_interleave(n, dim=0)  # (B * n, S, d)
        latent = self._prior_latent(obs_tokens.shape[0], sample=True, generator=generator)
        chunk = self.executed(self._predict(obs_tokens, latent))
        return self.unnormalize_action(chunk).unflatten(0, (-1, n))

    def compute_loss(self, batch: Batch) -> LossOutput:
        """Reconstruction of the normalized chunk over non-padded actions (all of them when the batch has no
        ``action_is_pad``), plus ``kl_weight`` * KL(q(z | state, chunk) || N(0, I)) with the CVAE."""
        self.check_batch(batch)
        obs_norm = self.normalize_obs(batch)
        target = self.normalize_action(batch[ACTION_KEY])
        is_pad = batch.get(f"{ACTION_KEY}_is_pad")
        is_pad = None if is_pad is None else is_pad.to(self.device, torch.bool)
        obs_tokens = self._obs_tokens(obs_norm)
        if self.posterior is None:
            latent, kld = self._prior_latent(target.shape[0], sample=False), None
        else:
            state = (torch.cat([obs_norm[k][:, -1] for k in self.spec.lowdim_keys], dim=-1)
                     if self.state_dim else None)
            mean, log_var = self.posterior(state, target, is_pad)
            latent = mean + (0.5 * log_var).exp() * torch.randn_like(mean)  # reparameterized draw from q
            kld = (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp())).sum(-1).mean()
        error = self._predict(obs_tokens, latent) - target
        recon = masked_mean(error.abs() if self.config.loss == "l1" else error.pow(2), is_pad)
        metrics = {self.config.loss: recon.item()}
        if kld is None:
            return LossOutput(recon, metrics)
        return LossOutput(recon + self.config.kl_weight * kld, {**metrics, "kld": kld.item()})
