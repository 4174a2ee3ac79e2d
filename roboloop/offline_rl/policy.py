"""The offline-RL actors and critics as platform objects.

* ``RLActorPolicy`` (``StochasticPolicy``, type ``rl_actor``): an IQL / Cal-QL / SAC actor over the flat current
  observation (the low-dimensional keys concatenated, raw units as in the replay buffer), To = Tp = Ta = 1. Its
  checkpoint is a policy checkpoint like any other: ``roboloop eval`` and ``Policy.load`` run it.
* ``save_critic`` / ``load_critic``: a Q-ensemble with the observation keys and sizes it was trained on.
* ``SteeredPolicy`` (V-GPS, Nakamoto et al., 2024): *has* any BC policy that can sample candidate chunks
  (``sample_actions``: diffusion, ACT with its CVAE) and a Q-ensemble; at each query it samples n chunks and
  executes the one whose first action the (pessimistic, min over critics) Q ranks highest, or, with a
  ``temperature``, one drawn with probability proportional to ``exp(Q / temperature)``. The BC policy's weights
  are untouched; ``n_samples=1`` is the BC policy itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from roboloop.core.errors import CheckpointError, ConfigError, InputError
from roboloop.core.policy import ActorOutput, Batch, LossOutput, Policy, PolicyConfig, StochasticPolicy
from roboloop.core.spec import PolicySpec
from roboloop.offline_rl.networks import QEnsemble
from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.policies.tanh_gaussian import TanhGaussianMLP
from roboloop.utils.io import atomic_path

ACTOR_TYPES = ("tanh_gaussian", "gaussian")
CRITIC_WEIGHTS, CRITIC_CONFIG = "critic.safetensors", "critic.json"


def flat_observation(obs: Batch, keys: list[str], device: torch.device) -> Tensor:
    """The current (last) step of the low-dim keys of raw observations ``{key: (B, To, ...)}``, concatenated:
    (B, D), as ``ReplayBuffer.obs`` stores them."""
    missing = [k for k in keys if k not in obs]
    if missing:
        raise InputError(f"observation key(s) {missing} missing; got {sorted(obs)}")
    parts = [torch.as_tensor(obs[k], device=device, dtype=torch.float32)[:, -1].flatten(1) for k in keys]
    flat = torch.cat(parts, dim=-1)
    if not torch.isfinite(flat).all():
        raise InputError("observation contains NaN or inf")
    return flat


@dataclass
class RLActorConfig(PolicyConfig):
    """An RL actor over flat observations. Attributes: ``actor`` (``tanh_gaussian``: Cal-QL, SAC/RLPD;
    ``gaussian``: IQL), ``hidden_dims``. Horizons are 1 and observations are used raw (``identity``)."""

    n_obs_steps: int = 1
    horizon: int = 1
    n_action_steps: int = 1
    state_norm: str = "identity"
    action_norm: str = "identity"
    actor: str = "tanh_gaussian"
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.actor not in ACTOR_TYPES:
            raise ConfigError(f"actor must be one of {ACTOR_TYPES}, got {self.actor!r}")
        if (self.n_obs_steps, self.horizon, self.n_action_steps) != (1, 1, 1):
            raise ConfigError("an RL actor acts on the current observation, one action at a time (To=Tp=Ta=1)")


class RLActorPolicy(StochasticPolicy):
    name = "rl_actor"
    config_cls = RLActorConfig

    def __init__(self, config: RLActorConfig, spec: PolicySpec) -> None:
        super().__init__(config, spec)
        self.obs_keys = list(spec.lowdim_keys)
        if len(self.obs_keys) != len(spec.obs_shapes):
            raise ConfigError("an RL actor reads low-dimensional observations only; drop the image keys")
        self.obs_dim = obs_dim = spec.flat_dim()
        if config.actor == "tanh_gaussian":
            self.actor: nn.Module = TanhGaussianMLP(obs_dim, spec.action_dim, config.hidden_dims,
                                                    low=spec.action_low, high=spec.action_high)
        else:
            self.actor = GaussianMLP(obs_dim, spec.action_dim, config.hidden_dims, init_logstd=0.0, learn_std=True,
                                     last_layer_init_std=0.01)

    def flat(self, obs: Batch) -> Tensor:
        return flat_observation(obs, self.obs_keys, self.device)

    def sample(self, obs: Batch, *, deterministic: bool = False,
               generator: torch.Generator | None = None) -> ActorOutput:
        return self.actor.sample(self.flat(obs), deterministic=deterministic, generator=generator)

    def evaluate(self, actor_obs: Tensor, actor_action: Tensor) -> tuple[Tensor, Tensor]:
        return self.actor.evaluate(actor_obs, actor_action)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.actor.trainable_parameters()

    @torch.no_grad()
    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        action = self.sample(obs, deterministic=deterministic, generator=generator).env_action
        low, high = self._action_low.to(action.device), self._action_high.to(action.device)
        return torch.maximum(torch.minimum(action, high), low)[:, None]  # (B, 1, Da)

    def compute_loss(self, batch: Batch) -> LossOutput:
        raise ConfigError("an rl_actor policy is trained by IQL, Cal-QL or SAC (roboloop train-offline), not by BC")


def save_critic(directory: str | Path, critic: QEnsemble, *, obs_keys: list[str],
                meta: dict[str, Any] | None = None) -> Path:
    """Write ``critic.safetensors`` and ``critic.json`` (keys, sizes, architecture) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / CRITIC_WEIGHTS) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}, str(tmp))
    config = {"obs_keys": obs_keys, "obs_dim": critic.obs_dim, "action_dim": critic.action_dim,
              "hidden_dims": critic.hidden_dims, "n_critics": critic.n_critics, "layer_norm": critic.layer_norm,
              **(meta or {})}
    with atomic_path(directory / CRITIC_CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    return directory


def load_critic(directory: str | Path) -> tuple[QEnsemble, dict[str, Any]]:
    directory = Path(directory)
    if not (directory / CRITIC_CONFIG).exists() or not (directory / CRITIC_WEIGHTS).exists():
        raise CheckpointError(f"{str(directory)!r} holds no critic ({CRITIC_CONFIG} and {CRITIC_WEIGHTS}); "
                              f"train one with roboloop train-offline")
    config = json.loads((directory / CRITIC_CONFIG).read_text())
    critic = QEnsemble(config["obs_dim"], config["action_dim"], config["hidden_dims"], config["n_critics"],
                       layer_norm=config["layer_norm"])
    try:
        critic.load_state_dict(load_file(str(directory / CRITIC_WEIGHTS)))
    except (RuntimeError, OSError) as err:
        raise CheckpointError(f"{str(directory / CRITIC_WEIGHTS)!r} does not fit its {CRITIC_CONFIG}: {err}") from err
    return critic.eval(), config


@dataclass
class SteeringConfig(PolicyConfig):
    """V-GPS: ``n_samples`` candidate chunks per query, ranked by the critic.

    Attributes:
        n_samples: Candidate chunks per query.
        temperature: 0 executes the highest-scored candidate (V-GPS's argmax). Above 0 a candidate is drawn with
            probability proportional to ``exp(Q / temperature)``: differences in Q far below the temperature (a
            critic's noise between near-identical candidates) then leave the choice to the base's own sampling,
            and only larger ones steer. Argmax over ACT's near-identical candidates follows the critic's slight
            preference for saturated actions at every step (Lift ACT: 35% unsteered; argmax 5% at n=16 over 40
            episodes; temperature 0.03, for Q in [0, 1]: 62% at n=4 and 58% at n=16 over 100).
    """

    n_samples: int = 8
    temperature: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1, got {self.n_samples}")
        if not self.temperature >= 0:
            raise ConfigError(f"steering temperature must be >= 0 (0: argmax), got {self.temperature}")


class SteeredPolicy(Policy):
    """``base`` steered by ``critic`` (see the module docstring). Not trainable and not saved: build it from a
    BC checkpoint and a critic directory (``roboloop eval checkpoint=... steer=... n_samples=...``)."""

    name = "steered"
    config_cls = SteeringConfig

    def __init__(self, base: Policy, critic: QEnsemble, obs_keys: list[str], n_samples: int,
                 temperature: float = 0.0) -> None:
        b = base.config
        config = SteeringConfig(n_obs_steps=b.n_obs_steps, horizon=b.horizon, n_action_steps=b.n_action_steps,
                                obs_keys=list(b.obs_keys), n_samples=n_samples, temperature=temperature)
        super().__init__(config, base.spec)
        if not hasattr(base, "sample_actions"):
            raise ConfigError(f"steering needs a policy that samples candidate chunks (sample_actions); "
                              f"{base.name} does not")
        if any(k not in base.spec.lowdim_keys for k in obs_keys) or base.spec.flat_dim(obs_keys) != critic.obs_dim:
            raise InputError(f"the critic was trained on {obs_keys} ({critic.obs_dim} dims); the policy observes "
                             f"{dict(base.spec.obs_shapes)}")
        if critic.action_dim != base.spec.action_dim:
            raise InputError(f"the critic scores {critic.action_dim}-dim actions, the policy outputs "
                             f"{base.spec.action_dim}")
        self.base, self.critic, self.critic_obs_keys = base, critic, list(obs_keys)
        self.normalizer.load_state_dict(base.normalizer.state_dict())
        # All of it where the base is: the critic, and this policy's own buffers, whose device is where the
        # evaluation sends observations (``Policy.device``).
        self.to(base.device)

    @torch.no_grad()
    def scores(self, obs: Batch, candidates: Tensor) -> Tensor:
        """Pessimistic Q (min over critics) of each candidate's first action: candidates (B, n, Ta, Da) -> (B, n)."""
        B, n = candidates.shape[:2]
        state = flat_observation(obs, self.critic_obs_keys, self.device).repeat_interleave(n, dim=0)
        return self.critic(state, candidates[:, :, 0].reshape(B * n, -1)).min(dim=0).values.view(B, n)

    @torch.no_grad()
    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        candidates = self.base.sample_actions(obs, self.config.n_samples, generator)  # (B, n, Ta, Da)
        if self.config.n_samples == 1:
            return candidates[:, 0]
        q = self.scores(obs, candidates)  # (B, n)
        if self.config.temperature == 0:
            chosen = q.argmax(dim=1)
        else:
            weights = torch.softmax(q / self.config.temperature, dim=1)
            chosen = torch.multinomial(weights, 1, generator=generator)[:, 0]
        return candidates[torch.arange(candidates.shape[0], device=candidates.device), chosen]

    def compute_loss(self, batch: Batch) -> LossOutput:
        raise ConfigError("a steered policy is not trained: train its BC base and its critic")
