"""``IQL``: implicit Q-learning (Kostrikov, Nair and Levine, 2022), offline and for online finetuning.

IQL never queries Q on actions outside the data: V(s) is fit as an upper expectile of Q(s, a) over the data's
actions, Q(s, a) regresses onto ``r + gamma * V(s')``, and the actor is extracted by advantage-weighted
regression, ``-exp(beta * (Q - V)) * log pi(a | s)`` on the data's actions. One ``update`` takes one batch
through the three steps, in that order, as the reference implementation does. The algorithm owns its critics
(a pair of Q-functions with a Polyak-averaged target copy, a value function) and the three optimizers; the
actor is any ``Actor`` (``sample`` / ``evaluate`` / ``trainable_parameters``), by default a ``GaussianMLP``.

``extraction="ddpg_bc"`` extracts the actor by DDPG+BC instead (Park, Frans, Levine and Kumar, 2024: with the
value learned the same way, it extracted better policies than AWR on most of their tasks): the actor's mean
climbs the learned Q, held to the data's actions by a squared-error term. AWR can only reweight the data's own
actions, and with sparse 0/1 rewards its advantages are about 0.01, so at IQL's temperatures it clones the data
whatever the critic knows: on PegInsert the critic prefers closing the gripper where the cloned policy stalls
with it half open, and only the Q gradient turns that into the actor's action. The actor's std is fit to the
data's actions around its (detached) mean, so sampling from it explores about as widely as the data varies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from roboloop.core.errors import ConfigError
from roboloop.core.policy import Actor
from roboloop.offline_rl.agent_state import FusedAdam, Trainables, as_floats, frozen
from roboloop.offline_rl.losses import (
    action_distance,
    advantage_weights,
    bc_regularized_actor_loss,
    ensemble_td_loss,
    expectile_loss,
    td_target,
)
from roboloop.offline_rl.networks import QEnsemble, StateValue, soft_update
from roboloop.offline_rl.replay import Transitions
from roboloop.policies.gaussian_mlp import GaussianMLP

EXTRACTIONS = ("awr", "ddpg_bc")


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
        extraction: ``awr`` (IQL's advantage-weighted regression) or ``ddpg_bc`` (the mean action climbs the
            critics' mean Q, plus a squared error to the data's action; needs a ``GaussianMLP`` actor).
        bc_alpha: ``ddpg_bc``'s weight of the Q term, relative to the data term, with Q normalized by its mean
            absolute value: TD3+BC's alpha times the action's dimension A (TD3+BC averages the squared error over
            the action's dimensions, this sums them; its 2.5 is 12.5 here at A = 5). 0.5 is the setting that
            improved online on PegInsert (2.5 collapsed there).
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
    extraction: str = "awr"
    bc_alpha: float = 0.5

    def __post_init__(self) -> None:
        if self.extraction not in EXTRACTIONS:
            raise ConfigError(f"iql.extraction must be one of {EXTRACTIONS}, got {self.extraction!r}")
        if self.bc_alpha <= 0:
            raise ConfigError(f"iql.bc_alpha must be > 0, got {self.bc_alpha}")
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
                 device: str | torch.device = "cpu", *, action_low: Tensor | None = None,
                 action_high: Tensor | None = None) -> None:
        """``action_low`` / ``action_high`` (A,) bound the actor's mean where DDPG+BC queries the critics with it
        (a ``GaussianMLP``'s mean is unbounded, the data's actions are not); None leaves it unbounded."""
        if not isinstance(actor, nn.Module) or not isinstance(actor, Actor):
            raise ConfigError(f"IQL trains an nn.Module implementing the Actor protocol, got {type(actor).__name__}")
        if cfg.extraction == "ddpg_bc" and not isinstance(actor, GaussianMLP):
            raise ConfigError(f"iql.extraction=ddpg_bc differentiates the actor's mean action: it needs a GaussianMLP "
                              f"actor, got {type(actor).__name__}")
        self.cfg, self.device = cfg, torch.device(device)
        self.action_low = None if action_low is None else torch.as_tensor(action_low, device=self.device).float()
        self.action_high = None if action_high is None else torch.as_tensor(action_high, device=self.device).float()
        self.actor = actor.to(self.device)
        self.critic = QEnsemble(obs_dim, action_dim, cfg.hidden_dims, cfg.n_critics).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = StateValue(obs_dim, cfg.hidden_dims).to(self.device)
        self.trainables = Trainables(
            networks={"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                      "value": self.value},
            optimizers={"actor": FusedAdam(actor.trainable_parameters(), cfg.actor_lr),
                        "critic": FusedAdam(self.critic.parameters(), cfg.critic_lr),
                        "value": FusedAdam(self.value.parameters(), cfg.value_lr)})

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

        advantage = q_data - value.detach()
        if cfg.extraction == "awr":
            # --- actor: advantage-weighted regression onto the data's actions
            weights = advantage_weights(advantage, cfg.temperature, cfg.max_weight)
            log_prob, _ = self.actor.evaluate(obs, actions)
            actor_loss = -(weights * log_prob).mean()
            actor_stats = {"weight_mean": weights.mean()}
        else:
            # --- actor: DDPG+BC, the mean action up the critics' mean Q (just updated), near the data's action
            raw_mean, log_std = self.actor(obs)
            mean = self._bounded(raw_mean)
            with frozen(self.critic):
                q_policy = self.critic(obs, mean).mean(dim=0)
            # The std learns the data's spread around the mean (the mean gets no gradient from this term).
            spread = -Normal(raw_mean.detach(), log_std.exp()).log_prob(actions).sum(-1).mean()
            actor_loss = bc_regularized_actor_loss(-q_policy, q_policy, mean, actions, cfg.bc_alpha) + spread
            actor_stats = {"q_policy": q_policy.detach().mean(), "bc_distance": action_distance(mean, actions).detach()}
        self.trainables.step("actor", actor_loss)

        soft_update(self.critic_target, self.critic, cfg.target_update_rate)
        return as_floats({"value_loss": value_loss.detach(), "critic_loss": critic_loss.detach(),
                          "actor_loss": actor_loss.detach(), "q_mean": q.detach().mean(),
                          "value_mean": value.detach().mean(), "advantage_mean": advantage.mean(), **actor_stats})

    def _bounded(self, actions: Tensor) -> Tensor:
        """Actions (B, A) clamped into the action bounds, where given (the gradient passes inside them)."""
        if self.action_low is None or self.action_high is None:
            return actions
        return actions.clamp(self.action_low, self.action_high)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the replay data: networks, target, optimizers."""
        return self.trainables.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainables.load_state_dict(state)
