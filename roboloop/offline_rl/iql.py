"""``IQL``: implicit Q-learning (Kostrikov, Nair and Levine, 2022), offline and for online finetuning.

IQL never queries Q on actions outside the data: V(s) is fit as an upper expectile of Q(s, a) over the data's
actions, Q(s, a) regresses onto ``r + gamma * V(s')``, and the actor is extracted by advantage-weighted
regression, ``-exp(beta * (Q - V)) * log pi(a | s)`` on the data's actions. One ``update`` takes one batch
through the three steps, in that order, as the reference implementation does. The algorithm owns its critics
(a pair of Q-functions with a Polyak-averaged target copy, a value function) and the three optimizers; the
actor is any ``Actor`` (``sample`` / ``evaluate`` / ``trainable_parameters``), by default a ``GaussianMLP``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from roboloop.core.errors import ConfigError
from roboloop.core.policy import Actor
from roboloop.offline_rl.agent_state import Trainables, adam
from roboloop.offline_rl.losses import advantage_weights, ensemble_td_loss, expectile_loss, td_target
from roboloop.offline_rl.networks import QEnsemble, StateValue, soft_update
from roboloop.offline_rl.replay import Transitions


@dataclass
class IQLConfig:
    """IQL's hyperparameters (the paper's locomotion settings by default).

    Attributes:
        expectile: tau of the value's expectile regression (0.7 locomotion, 0.9 AntMaze).
        temperature: beta of the advantage weights (3 locomotion, 10 AntMaze).
        max_weight: Clip of the advantage weights.
        gamma: Discount.
        target_update_rate: Polyak rate of the target Q-functions.
        actor_lr, critic_lr, value_lr: Adam learning rates.
        hidden_dims: Widths of the Q and V networks.
        n_critics: Q-functions; the value regresses onto their minimum.
    """

    expectile: float = 0.7
    temperature: float = 3.0
    max_weight: float = 100.0
    gamma: float = 0.99
    target_update_rate: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    n_critics: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.expectile < 1.0:
            raise ConfigError(f"iql.expectile must be in (0, 1), got {self.expectile}")
        if self.temperature < 0 or self.max_weight <= 0:
            raise ConfigError(f"iql.temperature must be >= 0 and max_weight > 0, got {self.temperature}, "
                              f"{self.max_weight}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.target_update_rate <= 1.0:
            raise ConfigError(f"iql.gamma and target_update_rate must be in (0, 1], got {self.gamma}, "
                              f"{self.target_update_rate}")
        if min(self.actor_lr, self.critic_lr, self.value_lr) <= 0:
            raise ConfigError("iql learning rates must be > 0")


class IQL:
    """IQL on flat observations (D) and actions (A) for ``actor``; ``update(batch)`` is one gradient step of each
    of the value, the Q-functions and the actor."""

    def __init__(self, actor: Actor, obs_dim: int, action_dim: int, cfg: IQLConfig,
                 device: str | torch.device = "cpu") -> None:
        if not isinstance(actor, nn.Module) or not isinstance(actor, Actor):
            raise ConfigError(f"IQL trains an nn.Module implementing the Actor protocol, got {type(actor).__name__}")
        self.cfg, self.device = cfg, torch.device(device)
        self.actor = actor.to(self.device)
        self.critic = QEnsemble(obs_dim, action_dim, cfg.hidden_dims, cfg.n_critics).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = StateValue(obs_dim, cfg.hidden_dims).to(self.device)
        self.trainables = Trainables(
            networks={"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                      "value": self.value},
            optimizers={"actor": adam(actor.trainable_parameters(), cfg.actor_lr),
                        "critic": adam(self.critic.parameters(), cfg.critic_lr),
                        "value": adam(self.value.parameters(), cfg.value_lr)})

    def update(self, batch: Transitions) -> dict[str, float]:
        """One step on a batch of B transitions; returns the losses and diagnostics as floats."""
        cfg = self.cfg
        obs, actions = batch.obs.to(self.device), batch.actions.to(self.device)
        rewards, terminated = batch.rewards.to(self.device), batch.terminated.to(self.device)

        # --- value: an upper expectile of the (target) Q over the data's actions
        with torch.no_grad():
            q_data = self.critic_target(obs, actions).min(dim=0).values  # (B,)
        value = self.value(obs)
        value_loss = expectile_loss(q_data - value, cfg.expectile)
        self.trainables.step("value", value_loss)

        # --- Q: regress onto r + gamma * V(s'); terminated steps have no future, truncated ones bootstrap
        with torch.no_grad():
            target = td_target(rewards, terminated, self.value(batch.next_obs.to(self.device)), cfg.gamma)
        q = self.critic(obs, actions)  # (E, B)
        critic_loss = ensemble_td_loss(q, target)
        self.trainables.step("critic", critic_loss)

        # --- actor: advantage-weighted regression onto the data's actions
        advantage = q_data - value.detach()
        weights = advantage_weights(advantage, cfg.temperature, cfg.max_weight)
        log_prob, _ = self.actor.evaluate(obs, actions)
        actor_loss = -(weights * log_prob).mean()
        self.trainables.step("actor", actor_loss)

        soft_update(self.critic_target, self.critic, cfg.target_update_rate)
        return {"value_loss": value_loss.item(), "critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(),
                "q_mean": q.mean().item(), "value_mean": value.mean().item(),
                "advantage_mean": advantage.mean().item(), "weight_mean": weights.mean().item()}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the replay data: networks, target, optimizers."""
        return self.trainables.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainables.load_state_dict(state)
