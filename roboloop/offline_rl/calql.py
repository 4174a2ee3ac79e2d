"""``CalQL``: calibrated conservative Q-learning (Nakamoto et al., 2023), CQL with the calibration that removes the
unlearning dip of offline-to-online finetuning; ``calibrated=False`` is plain CQL(H) (Kumar et al., 2020).

Built on SAC: a squashed-Gaussian actor with an automatically tuned entropy temperature, two Q-functions with
Polyak targets and a min-of-two backup without the entropy term, taken at the best of ``n_actions`` actions drawn
from pi(s') (CQL's "max backup"; both as Cal-QL's reference configuration). The
conservative term pushes Q down on sampled actions (uniform ones and the policy's at s and s', importance-weighted
by their log-densities) and up on the data's. Cal-QL lower-bounds the Q-values of the *policy's* sampled actions
by the data's Monte-Carlo return-to-go before the push, so Q is never pushed below what the behavior achieved:
at the switch to online data the critic is calibrated and the policy does not first unlearn. Online transitions
carry their episode's return once it ends (``OffPolicyTrainer``), as in the reference, which computes it for
every collected trajectory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from roboloop.core.errors import ConfigError
from roboloop.offline_rl.agent_state import FusedAdam, SoftActor, Trainables, as_floats
from roboloop.offline_rl.losses import (
    calibrate,
    conservative_penalty,
    ensemble_td_loss,
    td_target,
)
from roboloop.offline_rl.networks import QEnsemble, soft_update
from roboloop.offline_rl.replay import Transitions
from roboloop.policies.tanh_gaussian import TanhGaussianMLP

EXTRACTIONS = ("sac", "ddpg_bc")


@dataclass
class CalQLConfig:
    """Cal-QL / CQL hyperparameters (Cal-QL's reference settings by default).

    Attributes:
        calibrated: Cal-QL's lower bound on the policy's Q-values; False is plain CQL.
        cql_alpha: Weight of the conservative term (Cal-QL: 5 on AntMaze and Kitchen, 1 on Adroit).
        n_actions: Actions sampled per state for each of the conservative term's uniform, pi(s) and pi(s') draws,
            and for the max backup.
        cql_temperature: Temperature of the conservative term's logsumexp.
        gamma: Discount.
        target_update_rate: Polyak rate of the target Q-functions.
        actor_lr, critic_lr, alpha_lr: Adam learning rates (actor 1e-4, critic 3e-4 in the reference).
        init_alpha: Initial entropy temperature. It weighs ``log pi`` against Q's differences, so it scales with
            the rewards (the reference pairs 1 with ``10 r - 5``). On 0/1 rewards, 1 keeps the actor near uniform
            (entropy +3.2 for A = 5 after 4.5k PegInsert updates, while the tuning lowers it), and the backup then
            values a random policy.
        target_entropy: Entropy target of the temperature (None: -A).
        hidden_dims: Widths of the Q networks.
        max_target_backup: The target's value of s' is the best, under the min of the two target critics, of
            ``n_actions`` actions drawn from pi(s') (CQL's and Cal-QL's reference: on, for every task); off, of one
            drawn action. On sparse rewards the max lets a success the policy reaches only sometimes carry back
            through the states before it.
        bc_alpha: None (Cal-QL's actor: SAC against the critics) or TD3+BC's alpha: the SAC objective scaled by
            ``bc_alpha / mean|Q|`` plus the squared distance of the actor's mode to the data's action, which holds
            the actor near the data while the critic is still uninformed (``IQLConfig.bc_alpha``'s scale). The
            normalization divides by mean |Q|, which a reward offset inflates without changing Q's slope in the
            action: with ``10 r - 5`` on PegInsert, |Q| is about 170 where IQL's (0/1 rewards) is about 0.15.
        extraction: Where the actor's objective queries the critics: ``sac`` at reparameterized samples (Cal-QL's
            actor), ``ddpg_bc`` at the actor's mode (DDPG+BC, Park et al. 2024; needs ``bc_alpha``). The mode is
            the action evaluations run, so with ``ddpg_bc`` it is the one that climbs Q; the spread keeps SAC's
            objective at samples around the mode held fixed (``SoftActor.update``'s ``q_at_mode``).
    """

    calibrated: bool = True
    cql_alpha: float = 5.0
    n_actions: int = 10
    cql_temperature: float = 1.0
    gamma: float = 0.99
    target_update_rate: float = 0.005
    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_alpha: float = 1.0
    target_entropy: float | None = None
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    max_target_backup: bool = True
    bc_alpha: float | None = None
    extraction: str = "sac"

    def __post_init__(self) -> None:
        if self.extraction not in EXTRACTIONS:
            raise ConfigError(f"calql.extraction must be one of {EXTRACTIONS}, got {self.extraction!r}")
        if self.extraction == "ddpg_bc" and self.bc_alpha is None:
            raise ConfigError("calql.extraction=ddpg_bc needs calql.bc_alpha (the weight of the Q term against the "
                              "data term)")
        if self.bc_alpha is not None and self.bc_alpha <= 0:
            raise ConfigError(f"calql.bc_alpha must be > 0 (or None for no behavior term), got {self.bc_alpha}")
        if self.cql_alpha < 0 or self.n_actions < 1 or self.cql_temperature <= 0:
            raise ConfigError(f"calql needs cql_alpha >= 0, n_actions >= 1, cql_temperature > 0; got "
                              f"{self.cql_alpha}, {self.n_actions}, {self.cql_temperature}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.target_update_rate <= 1.0:
            raise ConfigError(f"calql.gamma and target_update_rate must be in (0, 1], got {self.gamma}, "
                              f"{self.target_update_rate}")
        if min(self.actor_lr, self.critic_lr, self.alpha_lr, self.init_alpha) <= 0:
            raise ConfigError("calql learning rates and init_alpha must be > 0")


class CalQL:
    """Cal-QL (or CQL) for a ``TanhGaussianMLP`` actor on flat observations (D) and actions (A) in the actor's
    bounds; ``update(batch)`` is one gradient step of the critics, the actor and the temperature."""

    def __init__(self, actor: TanhGaussianMLP, obs_dim: int, action_dim: int, cfg: CalQLConfig,
                 device: str | torch.device = "cpu") -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.soft = SoftActor(actor, actor_lr=cfg.actor_lr, alpha_lr=cfg.alpha_lr, init_alpha=cfg.init_alpha,
                              target_entropy=-float(action_dim) if cfg.target_entropy is None else cfg.target_entropy,
                              device=self.device, owner="CalQL")
        self.actor = self.soft.actor
        self.action_dim = action_dim
        self.critic = QEnsemble(obs_dim, action_dim, cfg.hidden_dims, 2).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.trainables = Trainables(
            networks={"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target},
            optimizers={"critic": FusedAdam(self.critic.parameters(), cfg.critic_lr), **self.soft.optimizers},
            tensors={"log_alpha": self.soft.log_alpha})

    @property
    def alpha(self) -> Tensor:
        return self.soft.alpha

    def conservative_term(self, batch: Transitions, q_data: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The (calibrated) conservative penalty, summed over the two critics, and diagnostics (0-d tensors)."""
        cfg = self.cfg
        obs, next_obs = batch.obs.to(self.device), batch.next_obs.to(self.device)
        B, n = obs.shape[0], cfg.n_actions
        low, high = self.actor.action_center - self.actor.action_half_range, \
            self.actor.action_center + self.actor.action_half_range
        uniform = low + (high - low) * torch.rand(B * n, self.action_dim, device=self.device)
        q_uniform = self.critic(obs.repeat_interleave(n, dim=0), uniform).reshape(-1, B, n)
        log_uniform = torch.full((B, n), -float(torch.log(high - low).sum()), device=self.device)
        q_pi, log_pi = self._policy_q_at(obs, obs, n)
        # pi(s') evaluated at s, as CQL's reference implementation does: more actions near the policy's support.
        next_actions_q, log_pi_next = self._policy_q_at(obs, next_obs, n)
        stats: dict[str, Tensor] = {}
        if cfg.calibrated:
            reference = batch.mc_returns.to(self.device)
            # Where the return is unknown (NaN) the comparison is false: those count as not calibrated.
            stats["calibrated_fraction"] = (q_pi < reference[None, :, None]).float().mean()
            q_pi, next_actions_q = calibrate(q_pi, reference), calibrate(next_actions_q, reference)
        q_sampled = torch.cat([q_uniform, q_pi, next_actions_q], dim=2)  # (E, B, 3n)
        log_densities = torch.cat([log_uniform, log_pi, log_pi_next], dim=1)  # (B, 3n)
        penalty = torch.stack([conservative_penalty(q_data[e], q_sampled[e], log_densities, cfg.cql_temperature)
                               for e in range(q_sampled.shape[0])]).sum()
        stats["q_uniform"] = q_uniform.detach().mean()
        stats["q_policy"] = q_pi.detach().mean()
        return penalty, stats

    def _policy_q_at(self, obs: Tensor, action_obs: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """Q(obs, a) (E, B, n) for n actions sampled from pi(action_obs), with their log-probs (B, n)."""
        B = obs.shape[0]
        with torch.no_grad():
            actions, log_probs = self.actor.rsample(action_obs.repeat_interleave(n, dim=0))
        return (self.critic(obs.repeat_interleave(n, dim=0), actions).reshape(-1, B, n), log_probs.reshape(B, n))

    @torch.no_grad()
    def backup_value(self, next_obs: Tensor) -> Tensor:
        """The target's value of next_obs (B, D) -> (B,): the min of the two target critics at a' ~ pi(s'), the
        best of ``n_actions`` such actions with ``max_target_backup``."""
        n = self.cfg.n_actions if self.cfg.max_target_backup else 1
        repeated = next_obs.repeat_interleave(n, dim=0)
        next_actions, _ = self.actor.rsample(repeated)
        next_q = self.critic_target(repeated, next_actions).min(dim=0).values  # (B * n,)
        return next_q.reshape(next_obs.shape[0], n).max(dim=1).values

    def update(self, batch: Transitions) -> dict[str, float]:
        """One step on a batch of B transitions; returns the losses and diagnostics as floats."""
        cfg = self.cfg
        obs, actions = batch.obs.to(self.device), batch.actions.to(self.device)
        rewards, terminated = batch.rewards.to(self.device), batch.terminated.to(self.device)
        next_obs = batch.next_obs.to(self.device)

        # --- critics: TD (min of the two targets at the best a' ~ pi(s')) plus the conservative term
        target = td_target(rewards, terminated, self.backup_value(next_obs), cfg.gamma)
        q_data = self.critic(obs, actions)  # (E, B)
        td_loss = ensemble_td_loss(q_data, target)
        penalty, stats = self.conservative_term(batch, q_data)
        critic_loss = td_loss + cfg.cql_alpha * penalty
        self.trainables.step("critic", critic_loss)

        # --- actor (SAC, against the pessimistic min of the two critics; TD3+BC's data term with bc_alpha, Q at
        # the mode with ddpg_bc) and temperature
        actor_stats = self.soft.update(obs, self.critic, lambda q: q.min(dim=0).values, data_actions=actions,
                                       bc_alpha=cfg.bc_alpha, q_at_mode=cfg.extraction == "ddpg_bc")

        soft_update(self.critic_target, self.critic, cfg.target_update_rate)
        return as_floats({"td_loss": td_loss.detach(), "conservative_penalty": penalty.detach(),
                          "alpha": self.alpha.detach(), "q_data": q_data.detach().mean(), **actor_stats, **stats})

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs besides the replay data: networks, targets, optimizers, temperature."""
        return self.trainables.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainables.load_state_dict(state)
