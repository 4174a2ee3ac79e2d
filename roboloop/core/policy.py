"""The one policy interface every stage uses (BC training, evaluation, residual RL, offline RL, sim-to-real).

Raw units in, raw units out: a policy normalizes inside (its ``normalizer`` submodule is saved with the
weights) and returns unnormalized actions clipped to the spec's bounds. ``act`` returns the whole executed
chunk; running part of it, ensembling and observation history belong to ``envs.executor.ChunkExecutor``.

Chunk convention (shared with the sequence sampler): a training window's actions start at the oldest
observation, t - To + 1, and run for Tp steps; the executed actions are chunk[To - 1 : To - 1 + Ta], the
ones from the current step t on.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol, Self, runtime_checkable

import torch
from torch import Tensor, nn

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.normalizer import Normalizer
from roboloop.core.spec import PolicySpec, check_horizons

ACTION_KEY = "action"
Batch = Mapping[str, Tensor]


@dataclass
class PolicyConfig:
    """Fields every policy shares.

    Attributes:
        n_obs_steps: To, observations the policy sees (the current one and To-1 before it).
        horizon: Tp, length of the predicted action chunk (starting at the oldest observation).
        n_action_steps: Ta, actions executed from the current step on (<= horizon - n_obs_steps + 1).
        obs_keys: Observation keys the policy reads (state and/or ``observation.images.<camera>``).
        state_norm: Normalization of low-dimensional observations (``min_max``, ``mean_std``, ``identity``).
        action_norm: Normalization of actions.
        state_clip: Clip normalized low-dimensional observations to ``[-state_clip, state_clip]`` (None: no
            clip). A ``min_max`` feature leaves [-1, 1] only in states the training data never reached, and a
            feature that barely varies there explodes: PegInsert's peg stays upright in the demonstrations (its
            quaternion's x spans 0.002), so a 5 degree tilt reads as 500. Clipping near the data's range keeps
            such inputs at the edge of what was seen (measured: the PegInsert base rises from 1% to 9% over 100
            episodes with 1.2), but it also hides genuine extrapolation (Lift with wider cube placements: 49% ->
            41%), hence per preset. Training data lies inside the range, so this acts at deployment only.
    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    obs_keys: list[str] = field(default_factory=lambda: ["observation.state"])
    state_norm: str = "min_max"
    action_norm: str = "min_max"
    state_clip: float | None = None

    def __post_init__(self) -> None:
        check_horizons(self.n_obs_steps, self.horizon, self.n_action_steps)
        if self.state_clip is not None and not (math.isfinite(self.state_clip) and self.state_clip > 0):
            raise ConfigError(f"state_clip must be a positive number or None, got {self.state_clip}")
        if not self.obs_keys:
            raise ConfigError("obs_keys must name at least one observation key")
        for name in ("state_norm", "action_norm"):
            if getattr(self, name) not in ("min_max", "mean_std", "identity"):
                raise ConfigError(f"{name} must be min_max, mean_std or identity, got {getattr(self, name)!r}")


class LossOutput(NamedTuple):
    loss: Tensor  # scalar, differentiable
    metrics: dict[str, float]  # logging-friendly python floats


class ActorOutput(NamedTuple):
    env_action: Tensor  # what the env receives, raw units: (B, Da) or (B, Ta, Da)
    actor_obs: Tensor  # input of the trainable head (what RL stores)
    actor_action: Tensor  # sample of the trainable head (what RL stores)
    log_prob: Tensor  # (B,)


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``x`` from ``generator`` (None: the global torch RNG, the same draw as
    ``torch.randn_like``), which ``torch.randn_like`` cannot take."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


class Policy(nn.Module, abc.ABC):
    """Base class: subclasses set ``name`` and ``config_cls`` and implement ``act`` and ``compute_loss``."""

    name: ClassVar[str]
    config_cls: ClassVar[type[PolicyConfig]]

    def __init__(self, config: PolicyConfig, spec: PolicySpec) -> None:
        super().__init__()
        if not (hasattr(type(self), "name") and hasattr(type(self), "config_cls")):
            raise TypeError(f"{type(self).__name__} must define class attributes `name` and `config_cls`")
        if not isinstance(config, self.config_cls):
            raise ConfigError(f"{type(self).__name__} takes a {self.config_cls.__name__}, got {type(config).__name__}")
        horizons = (config.n_obs_steps, config.horizon, config.n_action_steps)
        if horizons != (spec.n_obs_steps, spec.horizon, spec.n_action_steps):
            raise ConfigError(f"config horizons (To, Tp, Ta) = {horizons} differ from the spec's "
                              f"{(spec.n_obs_steps, spec.horizon, spec.n_action_steps)}")
        if list(spec.obs_shapes) != list(config.obs_keys):
            raise ConfigError(f"spec observation keys {list(spec.obs_shapes)} differ from config.obs_keys "
                              f"{config.obs_keys}")
        self.config = config
        self.spec = spec
        modes = {k: (config.state_norm if k in spec.lowdim_keys else "mean_std") for k in spec.obs_shapes}
        shapes = {k: (s if k in spec.lowdim_keys else (3,)) for k, s in spec.obs_shapes.items()}
        self.normalizer = Normalizer({**shapes, ACTION_KEY: (spec.action_dim,)},
                                     {**modes, ACTION_KEY: config.action_norm})
        self.register_buffer("_action_low", torch.tensor(spec.action_low, dtype=torch.float32), persistent=False)
        self.register_buffer("_action_high", torch.tensor(spec.action_high, dtype=torch.float32), persistent=False)

    # ------------------------------------------------------------------------------ the contract
    @abc.abstractmethod
    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """obs: raw units, ``{key: (B, To, *shape)}``. Returns raw actions (B, Ta, Da). Never mutates obs.

        ``generator`` is the random stream of a policy that samples (a diffusion policy's noise, ACT's latent, a
        Gaussian head's draw); None: the global torch RNG. A caller that plans on another thread passes its own,
        so that what it draws does not depend on how the threads interleave."""

    @abc.abstractmethod
    def compute_loss(self, batch: Batch) -> LossOutput:
        """batch: the sequence sampler's output as tensors (obs (B, To, ...), ``action`` (B, Tp, Da),
        ``*_is_pad`` masks). Returns a scalar loss and float metrics. Never mutates batch."""

    def reset(self, env_ids: Tensor | None = None) -> None:  # noqa: B027 - stateless policies need nothing
        """Forget per-environment state (recurrent policies); chunk queues live in the ChunkExecutor."""

    # ------------------------------------------------------------------------------ shared helpers
    @property
    def device(self) -> torch.device:
        return self._action_low.device

    def normalize_obs(self, obs: Batch) -> dict[str, Tensor]:
        """Validate and normalize raw observations: low-dim (B, To, D) float; images (B, To, H, W, 3)
        uint8 -> (B, To, 3, H, W) float. New tensors: the input is left as it is."""
        self.spec.check_obs(obs)
        out = {}
        for key in self.spec.obs_shapes:
            x = torch.as_tensor(obs[key], device=self.device)
            if key in self.spec.image_keys:
                out[key] = self.normalizer.normalize(key, x.float()).permute(0, 1, 4, 2, 3)
            else:
                if not torch.isfinite(x).all():
                    raise InputError(f"observation {key!r} contains NaN or inf")
                out[key] = self.normalizer.normalize(key, x.float())
                if self.config.state_clip is not None:
                    out[key] = out[key].clamp(-self.config.state_clip, self.config.state_clip)
        return out

    def normalize_action(self, action: Tensor) -> Tensor:
        if action.shape[-1] != self.spec.action_dim:
            raise InputError(f"action has {action.shape[-1]} dims, the policy expects {self.spec.action_dim}")
        return self.normalizer.normalize(ACTION_KEY, action.to(self.device))

    def unnormalize_action(self, action_norm: Tensor) -> Tensor:
        """(..., Da) normalized -> raw units, clipped to the action bounds."""
        action = self.normalizer.unnormalize(ACTION_KEY, action_norm)
        return torch.maximum(torch.minimum(action, self._action_high), self._action_low)

    def executed(self, chunk: Tensor) -> Tensor:
        """(B, Tp, Da) -> (B, Ta, Da): the actions from the current step on."""
        start = self.spec.n_obs_steps - 1
        return chunk[:, start:start + self.spec.n_action_steps]

    def check_batch(self, batch: Batch) -> None:
        missing = [k for k in [*self.spec.obs_shapes, ACTION_KEY] if k not in batch]
        if missing:
            raise InputError(f"batch is missing key(s) {missing}; got {sorted(batch)}")
        want = (self.spec.horizon, self.spec.action_dim)
        if tuple(batch[ACTION_KEY].shape[1:]) != want:
            raise InputError(f"batch action has shape {tuple(batch[ACTION_KEY].shape)}, expected (B, {want[0]}, "
                             f"{want[1]}) (B, horizon, action_dim)")

    # ------------------------------------------------------------------------------ persistence
    @classmethod
    def from_checkpoint_parts(cls, config: PolicyConfig, spec: PolicySpec, path: Path) -> Self:
        """Build the (untrained) policy a checkpoint directory ``path`` describes, before its weights are loaded.
        A policy made of other policies (a residual policy and its base) overrides it to load its parts."""
        return cls(config, spec)

    def save_parts(self, directory: Path) -> None:  # noqa: B027 - most policies are a single module
        """Write what ``from_checkpoint_parts`` needs besides this policy's own files into ``directory``."""

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """Write a checkpoint directory (config.json, spec.json, model.safetensors, meta.json)."""
        from roboloop.core.checkpoint import save_checkpoint

        return save_checkpoint(path, self, **kwargs)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Self:
        """Load a checkpoint directory in eval mode. On a subclass, the checkpoint must hold that type."""
        from roboloop.core.checkpoint import load_policy

        return load_policy(path, device=device, expected=None if cls is Policy else cls)  # type: ignore[return-value]


@runtime_checkable
class Actor(Protocol):
    """What RL algorithms train (PPO here; SAC-style ones later): a stochastic head that samples actions with
    their log-probabilities and re-evaluates stored ones. ``roboloop.policies.gaussian_mlp.GaussianMLP`` is one
    over flat observation vectors (a residual head, or a policy on a plain vector env); ``StochasticPolicy``
    provides the same three methods over raw observation dicts."""

    def sample(self, obs: Any, *, deterministic: bool = False,
               generator: torch.Generator | None = None) -> ActorOutput: ...

    def evaluate(self, actor_obs: Tensor, actor_action: Tensor) -> tuple[Tensor, Tensor]: ...

    def trainable_parameters(self) -> Iterator[nn.Parameter]: ...


class StochasticPolicy(Policy):
    """What RL needs on top of ``Policy`` (PPO, SAC/RLPD and Cal-QL train anything implementing it)."""

    @abc.abstractmethod
    def sample(self, obs: Batch, *, deterministic: bool = False,
               generator: torch.Generator | None = None) -> ActorOutput:
        """Actions for raw obs, drawn from ``generator`` (None: the global torch RNG) unless ``deterministic``."""

    @abc.abstractmethod
    def evaluate(self, actor_obs: Tensor, actor_action: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (log_prob (B,), entropy (B,)) of ``actor_action`` under the current head."""

    @abc.abstractmethod
    def trainable_parameters(self) -> Iterator[nn.Parameter]: ...
