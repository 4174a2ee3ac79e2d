"""On-policy rollout storage, generalized advantage estimation and reward normalization (written once,
unit-tested in ``tests/unit/test_gae.py``).

Shapes: T = rollout steps per env, N = envs, B = minibatch size. ``terminated`` and ``truncated`` stay
separate end to end: a terminated step has no future (its value target is the reward alone), a truncated
one was cut by a time limit and bootstraps from the value of the episode's final observation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from roboloop.core.errors import ConfigError, InputError


def compute_gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor,
                gamma: float, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over a rollout with autoresetting envs.

    All inputs are (T, N). ``next_values[t]`` is V of the observation that followed step t: for a step that
    ended an episode, the episode's final observation (not the first one of the next episode).

    ``delta_t = r_t + gamma * next_values_t * (1 - terminated_t) - values_t`` and
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}`` with ``done = terminated | truncated``: a
    truncated step still bootstraps through ``next_values``, but no advantage flows across an episode boundary.
    The last step's ``A_{T}`` is 0 (its ``next_values`` already bootstraps the rest).

    Returns (advantages (T, N), returns (T, N)) with ``returns = advantages + values``, the value targets.
    """
    shapes = {name: tuple(x.shape) for name, x in (("rewards", rewards), ("values", values),
                                                    ("next_values", next_values), ("terminated", terminated),
                                                    ("truncated", truncated))}
    if len(set(shapes.values())) != 1 or rewards.ndim != 2:
        raise InputError(f"compute_gae needs (T, N) tensors of one shape, got {shapes}")
    not_terminal = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - (terminated.bool() | truncated.bool()).to(values.dtype)
    deltas = rewards + gamma * next_values * not_terminal - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * gae_lambda * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


_STEP_FIELDS = frozenset({"obs", "actor_obs", "actions", "log_probs", "rewards", "terminated", "truncated", "values",
                          "next_values"})


class RolloutBatch(NamedTuple):
    """One minibatch of flattened (step, env) samples."""

    obs: Tensor  # (B, obs_dim) the env observation: the critic's input
    actor_obs: Tensor  # (B, actor_obs_dim) what ``actor.evaluate`` re-scores
    actions: Tensor  # (B, action_dim) the actor's (unclipped) sampled actions
    log_probs: Tensor  # (B,) log-probabilities at sampling time
    values: Tensor  # (B,) critic values at sampling time
    advantages: Tensor  # (B,) GAE advantages (not normalized)
    returns: Tensor  # (B,) value targets


class RolloutBuffer:
    """A fixed-size rollout of ``n_steps`` steps of ``n_envs`` envs, as (T, N, ...) tensors on ``device``.

    ``obs`` is the environment observation the critic sees; ``actor_obs`` / ``actions`` are the actor's
    ``ActorOutput.actor_obs`` / ``actor_action`` (the same vector as ``obs`` for a ``GaussianMLP`` on a
    flat env; ``actor_obs_dim`` defaults to ``obs_dim``).
    """

    def __init__(self, n_steps: int, n_envs: int, obs_dim: int, action_dim: int,
                 device: str | torch.device = "cpu", *, actor_obs_dim: int | None = None) -> None:
        if min(n_steps, n_envs, obs_dim, action_dim) < 1:
            raise ConfigError(f"RolloutBuffer sizes must be >= 1, got n_steps={n_steps}, n_envs={n_envs}, "
                              f"obs_dim={obs_dim}, action_dim={action_dim}")
        self.n_steps, self.n_envs = n_steps, n_envs
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.actor_obs_dim = obs_dim if actor_obs_dim is None else actor_obs_dim
        self.device = torch.device(device)

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros((n_steps, n_envs, *shape), dtype=dtype, device=self.device)

        self.obs = zeros(obs_dim)
        self.actor_obs = zeros(self.actor_obs_dim)
        self.actions = zeros(action_dim)
        self.log_probs = zeros()
        self.rewards = zeros()
        self.terminated = zeros(dtype=torch.bool)
        self.truncated = zeros(dtype=torch.bool)
        self.values = zeros()
        self.next_values = zeros()
        self.advantages = zeros()
        self.returns = zeros()
        self.filled = 0

    def add(self, *, obs: Tensor, actor_obs: Tensor, actions: Tensor, log_probs: Tensor, rewards: Tensor,
            terminated: Tensor, truncated: Tensor, values: Tensor, next_values: Tensor) -> None:
        """Store one step of all envs: obs (N, obs_dim), actor_obs (N, actor_obs_dim), actions (N, action_dim),
        the rest (N,). Steps fill the buffer in order; ``reset()`` starts over."""
        self.store(self.filled, slice(None), obs=obs, actor_obs=actor_obs, actions=actions, log_probs=log_probs,
                   rewards=rewards, terminated=terminated, truncated=truncated, values=values,
                   next_values=next_values)

    def store(self, step: int, envs: slice, **fields: Tensor) -> None:
        """Store step ``step`` of the envs ``envs`` (a slice of the N; fields shaped like ``add``'s for those
        rows): a rollout over groups of envs fills each step group by group. The rollout counts as filled up to
        the highest step stored."""
        if not 0 <= step < self.n_steps:
            raise InputError(f"rollout step {step} is outside the buffer (full at {self.n_steps} steps): call reset() "
                             f"first")
        rows = range(self.n_envs)[envs]
        if set(fields) != _STEP_FIELDS:
            raise InputError(f"a rollout step needs the fields {sorted(_STEP_FIELDS)}, got {sorted(fields)}")
        for name, x in fields.items():
            want = getattr(self, name)
            if tuple(x.shape) != (len(rows), *want.shape[2:]):
                raise InputError(f"rollout {name} has shape {tuple(x.shape)}, expected {(len(rows), *want.shape[2:])}")
            want[step, envs] = x
        self.filled = max(self.filled, step + 1)

    def reset(self) -> None:
        self.filled = 0

    def fill_next_values(self, last_values: Tensor) -> None:
        """Complete ``next_values`` after a full rollout in which only the steps that ended an episode stored
        theirs (the value of the final observation): every other step's next value is the value of the
        following step's observation, and after the last step it is ``last_values`` (N,). This saves a critic
        pass per step."""
        if self.filled != self.n_steps:
            raise InputError(f"the rollout has {self.filled} of {self.n_steps} steps: it is not complete")
        following = torch.cat([self.values[1:], last_values.reshape(1, self.n_envs)], dim=0)
        ended = self.terminated | self.truncated
        self.next_values = torch.where(ended, self.next_values, following)

    def compute_advantages(self, gamma: float, gae_lambda: float) -> None:
        """Fill ``advantages`` and ``returns`` (T, N) from the full rollout (see ``compute_gae``)."""
        if self.filled != self.n_steps:
            raise InputError(f"the rollout has {self.filled} of {self.n_steps} steps: it is not complete")
        self.advantages, self.returns = compute_gae(self.rewards, self.values, self.next_values, self.terminated,
                                                    self.truncated, gamma, gae_lambda)

    def minibatches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[RolloutBatch]:
        """One pass over the T * N samples in a random order (from ``generator``, a CPU generator, or the
        global torch RNG), as minibatches of ``batch_size``; a final smaller remainder is dropped."""
        total = self.n_steps * self.n_envs
        if not 1 <= batch_size <= total:
            raise ConfigError(f"minibatch size must be in [1, {total}] (the rollout size), got {batch_size}")
        flat = RolloutBatch(obs=self.obs.reshape(total, -1), actor_obs=self.actor_obs.reshape(total, -1),
                            actions=self.actions.reshape(total, -1), log_probs=self.log_probs.reshape(total),
                            values=self.values.reshape(total), advantages=self.advantages.reshape(total),
                            returns=self.returns.reshape(total))
        order = torch.randperm(total, generator=generator).to(self.device)
        for start in range(0, total - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield RolloutBatch(*(x[idx] for x in flat))


class RunningMeanStd:
    """Running mean and variance of a stream of (n, *shape) batches (Chan et al.'s parallel update, as in
    stable-baselines3 and gymnasium). Starts from a pseudo-count ``epsilon`` of mean 0 and variance 1."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        batch_mean, batch_var, batch_count = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = np.asarray(self.mean + delta * batch_count / total)
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = np.asarray(m2 / total)
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": torch.from_numpy(self.mean.copy()), "var": torch.from_numpy(self.var.copy()),
                "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = state["mean"].numpy().astype(np.float64)
        self.var = state["var"].numpy().astype(np.float64)
        self.count = float(state["count"])


class RewardNormalizer:
    """Scale rewards by the running std of each env's discounted return (stable-baselines3 ``VecNormalize``
    / CleanRL's ``NormalizeReward``), then clip to ``[-clip, clip]``.

    Per env, ``G <- gamma * G + r`` over the raw rewards; the statistics are updated with the N returns of
    each step before ``r / sqrt(var(G) + epsilon)`` is computed; ``G`` restarts at 0 after a step that ended
    the episode (terminated or truncated). The mean is not subtracted: that would change which behaviour is
    optimal.
    """

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8) -> None:
        if n_envs < 1 or not 0 < gamma <= 1 or clip <= 0 or epsilon <= 0:
            raise ConfigError(f"RewardNormalizer needs n_envs >= 1, gamma in (0, 1], clip > 0, epsilon > 0; got "
                              f"{n_envs}, {gamma}, {clip}, {epsilon}")
        self.n_envs, self.gamma, self.clip, self.epsilon = n_envs, gamma, clip, epsilon
        self.return_rms = RunningMeanStd()
        self.returns = np.zeros(n_envs, dtype=np.float64)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray, envs: slice = slice(None)) -> np.ndarray:
        """rewards (n,) raw, dones (n,) bool for the same step of the envs ``envs`` (all N by default; a group
        stepped on its own updates the statistics with its n returns) -> normalized, clipped rewards (n,)."""
        rewards = np.asarray(rewards, dtype=np.float64)
        n = len(range(self.n_envs)[envs])
        if rewards.shape != (n,):
            raise InputError(f"rewards have shape {rewards.shape}, expected ({n},)")
        self.returns[envs] = self.returns[envs] * self.gamma + rewards
        self.return_rms.update(self.returns[envs])
        scaled = np.clip(rewards / np.sqrt(self.return_rms.var + self.epsilon), -self.clip, self.clip)
        self.returns[envs] = np.where(np.asarray(dones, dtype=bool), 0.0, self.returns[envs])
        return scaled.astype(np.float32)

    def reset(self) -> None:
        """Forget the episodes in progress (all envs were reset); the statistics are kept."""
        self.returns[:] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"return_rms": self.return_rms.state_dict(), "returns": torch.from_numpy(self.returns.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        returns = state["returns"].numpy().astype(np.float64)
        if returns.shape != (self.n_envs,):
            raise InputError(f"reward normalizer state is for {returns.shape[0]} envs, this one has {self.n_envs}")
        self.return_rms.load_state_dict(state["return_rms"])
        self.returns = returns
