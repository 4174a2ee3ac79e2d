"""``SAC`` with RLPD's choices (Ball et al., 2023): online RL that learns from offline data from the first step.

RLPD is SAC plus three design choices, each a config field here: symmetric sampling (every batch half offline,
half online: ``MixedSampler``, outside this class), LayerNorm in the critics (bounds the Q-values of actions
the data does not support, which a high update-to-data ratio otherwise inflates), and a large ensemble of
critics whose target takes the minimum over a random subset of two (``n_critics`` 10, ``target_subset`` 2),
with ``utd_ratio`` gradient steps per env step. With ``n_critics=2, target_subset=2, layer_norm=False,
utd_ratio=1`` it is plain SAC. The entropy temperature is tuned automatically and the backup includes the
entropy term, as in SAC.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from roboloop.core.errors import ConfigError
from roboloop.offline_rl.agent_state import FusedAdam, SoftActor, Trainables, as_floats
from roboloop.offline_rl.losses import ensemble_td_loss, td_target
from roboloop.offline_rl.networks import QEnsemble, soft_update
from roboloop.offline_rl.replay import Transitions
from roboloop.policies.tanh_gaussian import TanhGaussianMLP


@dataclass
class SACConfig:
    """SAC / RLPD hyperparameters (RLPD's defaults).

    Attributes:
        n_critics: Q-functions in the ensemble (RLPD: 10; SAC: 2).
        target_subset: Critics whose minimum forms the target (RLPD: 2 random ones per update).
        layer_norm: LayerNorm after every critic hidden layer (RLPD: on).
        utd_ratio: Gradient steps per env step in online training (RLPD: 20); ``update`` does one.
        gamma: Discount.
        target_update_rate: Polyak rate of the target critics.
        actor_lr, critic_lr, alpha_lr: Adam learning rates.
        init_alpha: Initial entropy temperature.
        target_entropy: Entropy target (None: -A / 2, RLPD's).
        hidden_dims: Widths of the critic networks.
        backup_entropy: Subtract ``alpha * log pi(a'|s')`` in the target (SAC's soft backup).
    """

    n_critics: int = 10
    target_subset: int = 2
    layer_norm: bool = True
    utd_ratio: int = 20
    gamma: float = 0.99
    target_update_rate: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    target_entropy: float | None = None
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    backup_entropy: bool = True

    def __post_init__(self) -> None:
        if self.n_critics < 1 or not 1 <= self.target_subset <= self.n_critics:
            raise ConfigError(f"sac needs n_critics >= 1 and 1 <= target_subset <= n_critics, got {self.n_critics}, "
                              f"{self.target_subset}")
        if self.utd_ratio < 1:
            raise ConfigError(f"sac.utd_ratio must be >= 1, got {self.utd_ratio}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.target_update_rate <= 1.0:
            raise ConfigError(f"sac.gamma and target_update_rate must be in (0, 1], got {self.gamma}, "
                              f"{self.target_update_rate}")
        if min(self.actor_lr, self.critic_lr, self.alpha_lr, self.init_alpha) <= 0:
            raise ConfigError("sac learning rates and init_alpha must be > 0")


class SAC:
    """SAC / RLPD for a ``TanhGaussianMLP`` actor; ``update(batch)`` is one critic step, then one actor and one
    temperature step (RLPD updates the actor once per ``utd_ratio`` critic steps: pass ``update_actor``)."""

    def __init__(self, actor: TanhGaussianMLP, obs_dim: int, action_dim: int, cfg: SACConfig,
                 device: str | torch.device = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.soft = SoftActor(actor, actor_lr=cfg.actor_lr, alpha_lr=cfg.alpha_lr, init_alpha=cfg.init_alpha,
                              target_entropy=-action_dim / 2 if cfg.target_entropy is None else cfg.target_entropy,
                              device=self.device, owner="SAC")
        self.actor = self.soft.actor
        self.critic = QEnsemble(obs_dim, action_dim, cfg.hidden_dims, cfg.n_critics,
                                layer_norm=cfg.layer_norm).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.trainables = Trainables(
            networks={"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target},
            optimizers={"critic": FusedAdam(self.critic.parameters(), cfg.critic_lr), **self.soft.optimizers},
            tensors={"log_alpha": self.soft.log_alpha})

    @property
    def alpha(self) -> Tensor:
        return self.soft.alpha

    def update(self, batch: Transitions, *, update_actor: bool = True,
               generator: torch.Generator | None = None) -> dict[str, float]:
        """One critic step (and, with ``update_actor``, one actor and temperature step) on B transitions.
        ``generator`` draws the target subset."""
        cfg = self.cfg
        obs, actions = batch.obs.to(self.device), batch.actions.to(self.device)
        next_obs = batch.next_obs.to(self.device)

        # --- critics: min over a random subset of the target ensemble (RLPD), soft backup
        with torch.no_grad():
            next_actions, next_log_probs = self.actor.rsample(next_obs)
            next_q = self.critic_target(next_obs, next_actions)
            if cfg.target_subset < cfg.n_critics:
                subset = torch.randperm(cfg.n_critics, generator=generator)[: cfg.target_subset].to(self.device)
                next_q = next_q[subset]
            next_q = next_q.min(dim=0).values
            if cfg.backup_entropy:
                next_q = next_q - self.alpha * next_log_probs
            target = td_target(batch.rewards.to(self.device), batch.terminated.to(self.device), next_q, cfg.gamma)
        q = self.critic(obs, actions)  # (E, B)
        critic_loss = ensemble_td_loss(q, target)
        self.trainables.step("critic", critic_loss)
        soft_update(self.critic_target, self.critic, cfg.target_update_rate)
        metrics = {"critic_loss": critic_loss.detach(), "q_mean": q.detach().mean(), "alpha": self.alpha.detach()}
        if update_actor:
            # --- actor against the ensemble's mean Q (RLPD), temperature toward the entropy target
            metrics |= self.soft.update(obs, self.critic, lambda q: q.mean(dim=0))
        return as_floats(metrics)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the replay data: networks, targets, optimizers, temperature."""
        return self.trainables.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainables.load_state_dict(state)
