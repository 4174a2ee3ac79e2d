"""The loss terms of IQL, CQL / Cal-QL and SAC, as small pure functions (unit-tested against hand computations).

Shapes: B = batch, E = critics in an ensemble, n = sampled actions per state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from roboloop.core.errors import ConfigError, InputError


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """IQL's asymmetric least squares (Kostrikov et al., 2022, eq. 5): ``mean(|tau - 1(diff < 0)| * diff^2)`` with
    ``diff = Q(s, a) - V(s)``. ``tau = 0.5`` is the mean squared error; ``tau -> 1`` makes V an upper expectile
    of Q over the data's actions (IQL: 0.7 for locomotion, 0.9 for AntMaze)."""
    if not 0.0 < expectile < 1.0:
        raise ConfigError(f"expectile must be in (0, 1), got {expectile}")
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def td_target(rewards: Tensor, terminated: Tensor, next_values: Tensor, gamma: float) -> Tensor:
    """``r + gamma * (1 - terminated) * V(s')`` (B,): a terminated step has no future; a truncated one (time
    limit) bootstraps like any other, since ``s'`` is its real final observation."""
    if rewards.shape != terminated.shape or rewards.shape != next_values.shape:
        raise InputError(f"td_target needs (B,) tensors of one shape, got {tuple(rewards.shape)}, "
                         f"{tuple(terminated.shape)}, {tuple(next_values.shape)}")
    return rewards + gamma * (1.0 - terminated.float()) * next_values


def ensemble_td_loss(q: Tensor, target: Tensor) -> Tensor:
    """Squared TD error of every critic of an ensemble, ``q`` (E, B) against one ``target`` (B,): the mean over the
    batch, summed over the critics (each critic regresses on its own)."""
    return (q - target).pow(2).mean(dim=1).sum()


def advantage_weights(advantages: Tensor, temperature: float, max_weight: float = 100.0) -> Tensor:
    """IQL's advantage-weighted regression weights ``min(exp(temperature * A), max_weight)`` (B,), no gradient.
    The clip keeps one lucky sample from dominating a batch (IQL's implementation uses 100)."""
    if temperature < 0 or max_weight <= 0:
        raise ConfigError(f"temperature must be >= 0 and max_weight > 0, got {temperature}, {max_weight}")
    return torch.exp(temperature * advantages.detach()).clamp(max=max_weight)


def calibrate(q_policy: Tensor, reference: Tensor) -> Tensor:
    """Cal-QL's calibration (Nakamoto et al., 2023, eq. 5): the Q-values of the *policy's* actions (..., B, n),
    e.g. (E, B, n) for an ensemble, lower-bounded by a reference value of the state (B,), the behavior's
    Monte-Carlo return-to-go. The
    conservative term then pushes those values down only as far as the reference, so the critic never
    under-estimates the data's own returns and online finetuning does not start with an unlearning dip.
    NaN references (no known return: an online episode still running) leave their row unchanged."""
    if q_policy.ndim < 2 or reference.shape != q_policy.shape[-2:-1]:
        raise InputError(f"reference has shape {tuple(reference.shape)}, expected ({q_policy.shape[-2]},) for "
                         f"Q-values of shape {tuple(q_policy.shape)}")
    bound = reference[:, None].expand_as(q_policy)
    return torch.where(torch.isnan(bound), q_policy, torch.maximum(q_policy, bound))


def conservative_penalty(q_data: Tensor, q_sampled: Tensor, log_densities: Tensor, temperature: float = 1.0) -> Tensor:
    """CQL(H)'s regularizer (Kumar et al., 2020, eq. 4 with importance sampling, as in the reference code):
    ``mean(T * logsumexp((Q(s, a_i) - log mu(a_i | s)) / T) - Q(s, a_data))`` over states, where the a_i are
    the n sampled actions of each state (uniform random ones and the policy's) and ``log mu`` their proposal
    log-densities (B, n) (the logsumexp then estimates the log-partition under the uniform measure). q_data
    (B,), q_sampled (B, n). Minimizing it pushes Q down on sampled actions and up on the data's."""
    if q_sampled.shape != log_densities.shape or q_sampled.shape[:1] != q_data.shape:
        raise InputError(f"conservative_penalty needs q_data (B,), q_sampled and log_densities (B, n); got "
                         f"{tuple(q_data.shape)}, {tuple(q_sampled.shape)}, {tuple(log_densities.shape)}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    pushed_down = temperature * torch.logsumexp((q_sampled - log_densities) / temperature, dim=1)
    return (pushed_down - q_data).mean()


def uniform_log_density(action_dim: int, low: float = -1.0, high: float = 1.0) -> float:
    """Log-density of the uniform distribution over a box ``[low, high]^action_dim``."""
    return -action_dim * math.log(high - low)


def action_distance(policy_actions: Tensor, data_actions: Tensor) -> Tensor:
    """Mean over the batch of the squared distance between actions (B, A), summed over the action's dimensions:
    TD3+BC's data term, and the ``bc_distance`` its users log."""
    return (policy_actions - data_actions).pow(2).sum(-1).mean()


def bc_regularized_actor_loss(rl_loss: Tensor, q_policy: Tensor, policy_actions: Tensor, data_actions: Tensor,
                              bc_alpha: float) -> Tensor:
    """TD3+BC's actor objective (Fujimoto and Gu, 2021), DDPG+BC in Park et al. (2024), which found it extracts
    far better policies from a learned value than advantage-weighted regression:
    ``lambda * mean(rl_loss) + mean(||mu(s) - a||^2)`` with ``lambda = bc_alpha / mean(|Q(s, mu(s))|)`` (no
    gradient), so that ``bc_alpha`` weighs the critic's pull against the data's actions whatever the scale of
    the rewards. rl_loss (B,) is the per-state RL loss (``-Q(s, mu(s))``, or SAC's ``alpha log pi - Q``),
    q_policy (B,) the Q-values it uses, policy_actions and data_actions (B, A); the squared distance is summed over
    the action's dimensions."""
    if bc_alpha <= 0:
        raise ConfigError(f"bc_alpha must be > 0, got {bc_alpha}")
    if policy_actions.shape != data_actions.shape or rl_loss.shape != q_policy.shape \
            or rl_loss.shape != policy_actions.shape[:1]:
        raise InputError(f"bc_regularized_actor_loss needs rl_loss and q_policy (B,), actions (B, A) of one shape; "
                         f"got {tuple(rl_loss.shape)}, {tuple(q_policy.shape)}, {tuple(policy_actions.shape)}, "
                         f"{tuple(data_actions.shape)}")
    scale = bc_alpha / q_policy.detach().abs().mean().clamp(min=1e-6)
    return scale * rl_loss.mean() + action_distance(policy_actions, data_actions)


def sac_actor_loss(q_policy: Tensor, log_probs: Tensor, alpha: Tensor | float) -> Tensor:
    """SAC's actor objective ``mean(alpha * log pi(a|s) - Q(s, a))`` with ``a ~ pi`` reparameterized (B,)."""
    return (alpha * log_probs - q_policy).mean()


def temperature_loss(log_alpha: Tensor, log_probs: Tensor, target_entropy: float) -> Tensor:
    """SAC's automatic entropy tuning: ``mean(-log_alpha * (log pi + target_entropy))``: alpha rises while the
    policy's entropy is below the target (the usual target: ``-action_dim``)."""
    return (-log_alpha * (log_probs.detach() + target_entropy)).mean()
