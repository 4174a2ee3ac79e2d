"""``ResidualPolicy``: a frozen BC policy (the base) plus a small Gaussian head that corrects its actions.

ResiP (Ankile et al., 2024) and Policy Decorator (Yuan et al., 2025) refine a behavior-cloned chunking policy
with RL without touching its weights: a residual head, trained with PPO (or SAC) on sparse rewards, adds a
bounded correction to the base's actions in the base's normalized action space::

    action = unnormalize(base_action_norm + scale * clip(delta, -1, 1))

Two modes (``ResidualConfig.mode``):

* ``step`` (ResiP): at every env step the head sees ``[normalized current observation, normalized current base
  action]`` and outputs one delta (Da,). The base still plans a chunk every Ta steps; the chunk queue lives in
  the ``ChunkExecutor`` (evaluation) or the ``ResidualVecEnv`` (training), which ask ``correct`` once per step.
* ``chunk`` (Policy Decorator): once per chunk the head sees the normalized current observation alone and
  outputs a delta for the whole executed chunk (Ta * Da,). ``act`` is then exact on its own.

The base is frozen three ways: ``requires_grad`` off, always in eval mode (``train()`` leaves it there) and
kept out of ``trainable_parameters()``, so no optimizer can hold it. A head whose mean layer is zero (the
initialization) reproduces the base exactly.

Checkpoints are self-contained: the head's files at the top level (its ``model.safetensors`` holds the head and
the normalizer, not the base) and the base's own checkpoint, copied whole, in ``base/``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor, nn

from roboloop.core.checkpoint import load_policy
from roboloop.core.config import config_to_dict
from roboloop.core.errors import CheckpointError, ConfigError, InputError
from roboloop.core.policy import Batch, LossOutput, Policy, PolicyConfig
from roboloop.core.spec import PolicySpec
from roboloop.policies.gaussian_mlp import GaussianMLP

MODES = ("step", "chunk")
BASE_DIR = "base"


@dataclass
class ResidualConfig(PolicyConfig):
    """The residual head and how its delta is applied. Horizons, observation keys and normalization modes are
    the base's (``ResidualPolicy.from_base`` copies them); only the fields below are the residual's own.

    Attributes:
        mode: ``step`` (one delta per env step from the observation and the base action, ResiP) or ``chunk``
            (one delta for the whole executed chunk from the observation alone, Policy Decorator).
        scale: Multiplies the head's delta, clipped to [-1, 1], in the base's normalized action space (ResiP: 0.1):
            the largest correction the head can make.
        hidden_dims: Widths of the head's hidden layers (ResiP: 2 x 256).
        activation: ``relu`` or ``tanh``.
        init_logstd: Initial log standard deviation of the head's Gaussian (ResiP: -1.0).
        learn_std: Learn the standard deviation (ResiP keeps it fixed).
        head_init_std: Standard deviation of the mean layer's initial weights; 0 makes the initial residual
            exactly zero, so the untrained residual policy is the base.
        base_type: Policy type of the base (filled in by ``from_base``; checked against ``base/`` on load).
        base_num_inference_steps: Denoising steps of a diffusion base while it is refined and evaluated
            (ResiP: 4, against 16 for BC evaluation); None keeps the base's own setting. The head learns to
            correct the base as sampled with this setting, so training and evaluation use the same one.
        state_clip: The head's own clip of its normalized observations (the base keeps its own setting). RL
            drives the system into states the demonstrations never showed, where a barely-varying feature
            normalized by the base's statistics reaches hundreds (PegInsert's peg tilt) and one PPO minibatch
            moves the policy by a KL of 1; 5 bounds that (SB3's ``VecNormalize`` clips at 10 for the same reason).
        previous_action: ``step`` mode: the head also sees the action executed at the previous step (normalized;
            raw zeros at an episode's start). With action latency the observation alone is not a Markov state:
            the action still on its way to the robot decides the next state. (One step of latency takes the
            nominal PegInsert residual from 92% to 18% in simulation; seeing the previous action alone did not
            win that back within 960k env steps of retraining, see the README's sim-to-real section.)
    """

    mode: str = "step"
    scale: float = 0.1
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "relu"
    init_logstd: float = -1.0
    learn_std: bool = False
    head_init_std: float = 0.0
    base_type: str = ""
    base_num_inference_steps: int | None = 4
    state_clip: float | None = 5.0
    previous_action: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ConfigError(f"residual mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.previous_action and self.mode != "step":
            raise ConfigError("previous_action is for step-mode residuals (a chunk-mode head plans a whole chunk "
                              "from the observation)")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"residual scale must be a positive number, got {self.scale}")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ConfigError(f"hidden_dims must be a non-empty list of positive widths, got {self.hidden_dims}")
        if self.activation not in ("relu", "tanh"):
            raise ConfigError(f"activation must be relu or tanh, got {self.activation!r}")
        if self.head_init_std < 0:
            raise ConfigError(f"head_init_std must be >= 0, got {self.head_init_std}")
        if self.base_num_inference_steps is not None and self.base_num_inference_steps < 1:
            raise ConfigError(f"base_num_inference_steps must be >= 1 or None, got {self.base_num_inference_steps}")


class ResidualPolicy(Policy):
    """A frozen ``base`` policy and a Gaussian ``head`` (a :class:`GaussianMLP` on flat vectors, what PPO trains).

    Build one with :meth:`from_base`; load one with ``Policy.load(dir)`` like any other checkpoint.
    """

    name = "residual"
    config_cls = ResidualConfig
    config: ResidualConfig

    def __init__(self, config: ResidualConfig, spec: PolicySpec, base: Policy) -> None:
        super().__init__(config, spec)
        if spec.to_dict() != base.spec.to_dict():
            raise ConfigError("a residual policy's spec must be its base's spec")
        if config.base_type and config.base_type != base.name:
            raise CheckpointError(f"this residual head was trained on a {config.base_type!r} base, got a "
                                  f"{base.name!r} one")
        if not spec.lowdim_keys:
            raise ConfigError(f"the residual head reads low-dimensional observations; the base reads only "
                              f"{list(spec.obs_shapes)}")
        self.base = base
        self._freeze_base()
        if config.base_num_inference_steps is not None and hasattr(base, "set_sampler"):
            base.set_sampler(base.config.sampler, config.base_num_inference_steps)  # type: ignore[attr-defined]
        self.obs_dim = spec.flat_dim()
        da, ta = spec.action_dim, spec.n_action_steps
        head_in, head_out = (self.obs_dim + da, da) if config.mode == "step" else (self.obs_dim, ta * da)
        head_in += da if config.previous_action else 0
        self.head = GaussianMLP(head_in, head_out, hidden_dims=tuple(config.hidden_dims),
                                activation=config.activation, init_logstd=config.init_logstd,
                                learn_std=config.learn_std, last_layer_init_std=config.head_init_std)

    @classmethod
    def from_base(cls, base: Policy, config: ResidualConfig | None = None) -> ResidualPolicy:
        """A residual policy around ``base`` (a trained policy, e.g. ``Policy.load(bc_checkpoint)``): the
        config's horizons, observation keys and normalization come from the base, and so do the normalizer's
        statistics (the head sees observations and actions normalized exactly as the base does)."""
        config = config or ResidualConfig()
        b = base.config
        config = replace(config, n_obs_steps=b.n_obs_steps, horizon=b.horizon, n_action_steps=b.n_action_steps,
                         obs_keys=list(b.obs_keys), state_norm=b.state_norm, action_norm=b.action_norm,
                         base_type=base.name)
        policy = cls(config, base.spec, base)
        policy.normalizer.load_state_dict(base.normalizer.state_dict())
        return policy.to(base.device)

    # ------------------------------------------------------------------------------ frozen base
    def _freeze_base(self) -> None:
        self.base.requires_grad_(False)
        self.base.eval()

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        self.base.eval()  # whatever the caller asks, the base never leaves eval mode
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The head's parameters: the only ones any optimizer may hold."""
        return self.head.trainable_parameters()

    # ------------------------------------------------------------------------------ the head's view
    def head_obs(self, obs: Batch, base_action: Tensor | None = None, previous_action: Tensor | None = None
                 ) -> Tensor:
        """The head's input from raw observations ``{key: (B, To, ...)}``: the normalized current (last) step of
        every low-dimensional key, flattened, and in ``step`` mode the normalized base action ``(B, Da)``
        (raw units) after it, then with ``previous_action`` the normalized previously executed action (B, Da)
        (raw units). Returns (B, obs_dim [+ Da [+ Da]])."""
        norm = self.normalize_obs({k: obs[k] for k in self.spec.obs_shapes})
        parts = [norm[k][:, -1].flatten(1) for k in self.spec.lowdim_keys]
        if self.config.mode == "step":
            if base_action is None:
                raise InputError("a step-mode residual head needs the current base action")
            parts.append(self.normalize_action(torch.as_tensor(base_action, dtype=torch.float32)))
        if self.config.previous_action:
            if previous_action is None:
                raise InputError("this residual head sees the previously executed action: pass previous_action "
                                 "(a ChunkExecutor or ResidualVecEnv keeps it per sub-env)")
            parts.append(self.normalize_action(torch.as_tensor(previous_action, dtype=torch.float32)))
        return torch.cat(parts, dim=-1)

    @property
    def sees_previous_action(self) -> bool:
        """Whether ``correct`` needs the previously executed action of each sub-env."""
        return self.config.previous_action

    def with_previous_action(self) -> ResidualPolicy:
        """This policy with a head that also sees the previously executed action: the new input's weights start
        at zero, so it acts exactly as before until trained (e.g. when an identified simulation has latency)."""
        if self.config.previous_action:
            return self
        config = replace(self.config, previous_action=True)
        wider = type(self)(config, self.spec, self.base)
        wider.normalizer.load_state_dict(self.normalizer.state_dict())
        wider.head = self.head.with_extra_inputs(self.spec.action_dim)
        return wider.to(self.device)

    def compose(self, base_action: Tensor, delta: Tensor) -> Tensor:
        """Raw base actions (..., Da) and the head's deltas (same shape) -> raw actions, clipped to the bounds:
        ``unnormalize(normalize(base) + scale * clip(delta, -1, 1))``. The delta is bounded (the training env's
        action space is [-1, 1]), so ``scale`` is the largest correction, in normalized action units."""
        if not torch.isfinite(delta).all():
            raise InputError("the residual delta contains NaN or inf")
        return self.unnormalize_action(self.normalize_action(base_action) + self.config.scale * delta.clamp(-1, 1))

    # ------------------------------------------------------------------------------ acting
    @torch.no_grad()
    def correct(self, obs: Batch, base_action: Tensor, *, previous_action: Tensor | None = None,
                deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """``step`` mode, one env step: raw observations ``{key: (B, To, ...)}`` and the base's raw action for this
        step (B, Da) (and, for a head that sees it, the raw action executed at the previous step (B, Da)) -> the
        corrected raw action (B, Da) (the head's mean when ``deterministic``, else a draw from ``generator``)."""
        if self.config.mode != "step":
            raise ConfigError("correct() is for step-mode residual policies; a chunk-mode one corrects in act()")
        base_action = torch.as_tensor(base_action, dtype=torch.float32, device=self.device)
        if previous_action is not None:
            previous_action = torch.as_tensor(previous_action, dtype=torch.float32, device=self.device)
        head_obs = self.head_obs(obs, base_action, previous_action)
        delta = self.head.sample(head_obs, deterministic=deterministic, generator=generator).actor_action
        return self.compose(base_action, delta)

    @property
    def corrects_each_step(self) -> bool:
        """Whether an executor must call ``correct`` at every step between the base's chunk queries."""
        return self.config.mode == "step"

    @torch.no_grad()
    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Raw observations ``{key: (B, To, ...)}`` -> raw actions (B, Ta, Da).

        ``chunk`` mode: the base's chunk plus the head's chunk delta, exact. ``step`` mode: the base's chunk with
        every action corrected from the *current* observation, exact for the first action only; the
        ``ChunkExecutor`` (evaluation, deployment) instead corrects each action from the observation at its own
        step, as in training.
        """
        if self.config.previous_action:
            raise ConfigError("a residual head that sees the previously executed action acts step by step through "
                              "a ChunkExecutor (roboloop eval, deploy), which keeps that action per sub-env")
        base_chunk = self.base.act(obs, deterministic=True, generator=generator)  # (B, Ta, Da)
        b, ta, da = base_chunk.shape
        if self.config.mode == "chunk":
            delta = self.head.sample(self.head_obs(obs), deterministic=deterministic,
                                     generator=generator).actor_action
            return self.compose(base_chunk, delta.view(b, ta, da))
        steps = [self.correct(obs, base_chunk[:, i], deterministic=deterministic, generator=generator)
                 for i in range(ta)]
        return torch.stack(steps, dim=1)

    def compute_loss(self, batch: Batch) -> LossOutput:
        raise ConfigError("a residual policy is trained with reinforcement learning (roboloop train-residual), "
                          "not behavior cloning: train-bc its base instead")

    # ------------------------------------------------------------------------------ persistence
    def state_dict(self, *, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """The head and the normalizer; the base is saved as its own checkpoint in ``base/``."""
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if k.startswith(f"{prefix}base.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        base = {f"base.{k}": v for k, v in self.base.state_dict().items()}
        return super().load_state_dict({**base, **state_dict}, strict=strict, assign=assign)

    def save_parts(self, directory: Path) -> None:
        self.base.save(directory / BASE_DIR)

    @classmethod
    def from_checkpoint_parts(cls, config: PolicyConfig, spec: PolicySpec, path: Path) -> Self:
        assert isinstance(config, ResidualConfig)
        base_dir = path / BASE_DIR
        if not base_dir.is_dir():
            raise CheckpointError(f"residual checkpoint {str(path)!r} has no base policy: {str(base_dir)!r} is "
                                  f"missing (a residual checkpoint carries a copy of the {config.base_type!r} "
                                  f"checkpoint it refines; copy the whole directory)")
        base = load_policy(base_dir)
        if base.name != config.base_type:
            raise CheckpointError(f"{str(base_dir)!r} holds a {base.name!r} policy, the head was trained on a "
                                  f"{config.base_type!r} base")
        return cls(config, spec, base)

    def describe(self) -> dict[str, Any]:
        """Head and base settings, for logs and reports."""
        return {"mode": self.config.mode, "scale": self.config.scale, "base": self.base.name,
                "base_config": config_to_dict(self.base.config)}
