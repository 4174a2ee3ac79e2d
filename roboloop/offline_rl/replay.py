"""Transition replay for off-policy and offline RL: episode store -> ``ReplayBuffer``, and offline/online mixing.

A transition is ``(obs, action, reward, next_obs, terminated, truncated, mc_return)``. ``terminated`` and
``truncated`` stay apart: a terminated step's target is its reward alone, a truncated step (time limit) still
bootstraps from ``next_obs``, which for the last step of an episode is the episode's final observation (the
store keeps it: ``next_obs[-1]``). ``mc_return`` is the discounted return-to-go of the behavior that produced the
data (Cal-QL's calibration reference): ``G_t = r_t + gamma * G_{t+1}``, the tail of a truncated episode counted
as 0 (a lower bound when rewards are non-negative, which is what Cal-QL needs). A buffer records how its rewards
and returns were made (``reward_scale``, ``reward_bias``, ``returns_gamma``), so that online data added next to it
is made the same way (``OffPolicyTrainer``); until an online episode ends, its transitions' returns are NaN.

Shapes: N = buffer size, B = batch size, D = observation dim (the low-dimensional keys concatenated in the
order given), A = action dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from roboloop.core.errors import ConfigError, DatasetError, InputError
from roboloop.datasets.store import Episode, EpisodeStore


class Transitions(NamedTuple):
    """A batch of B transitions (float32 unless noted)."""

    obs: Tensor  # (B, D)
    actions: Tensor  # (B, A)
    rewards: Tensor  # (B,)
    next_obs: Tensor  # (B, D)
    terminated: Tensor  # (B,) bool: no bootstrapping
    truncated: Tensor  # (B,) bool: cut by a time limit (bootstraps from next_obs)
    mc_returns: Tensor  # (B,) discounted return-to-go of the data's behavior; NaN where unknown


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Return-to-go ``G_t = r_t + gamma * G_{t+1}`` of one episode's rewards (T,), with ``G_T = 0``."""
    out = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


class ReplayBuffer:
    """A ring buffer of transitions in preallocated CPU tensors; ``sample`` draws uniformly with replacement.

    Args:
        obs_dim: D.
        action_dim: A.
        capacity: Transitions kept; once full, the oldest are overwritten.
        obs_keys: The observation keys whose concatenation ``obs`` is (recorded for checks; optional).
        reward_scale, reward_bias: The rewards are ``reward_scale * r + reward_bias`` of the env's (recorded, not
            applied: ``env_rewards`` applies them to new env rewards).
        returns_gamma: Discount of the ``mc_returns`` (None: none computed).
    """

    def __init__(self, obs_dim: int, action_dim: int, capacity: int, obs_keys: Sequence[str] | None = None, *,
                 reward_scale: float = 1.0, reward_bias: float = 0.0, returns_gamma: float | None = None) -> None:
        if min(obs_dim, action_dim, capacity) < 1:
            raise ConfigError(f"ReplayBuffer needs obs_dim, action_dim, capacity >= 1, got {obs_dim}, "
                              f"{action_dim}, {capacity}")
        self.obs_dim, self.action_dim, self.capacity = obs_dim, action_dim, capacity
        self.obs_keys = list(obs_keys) if obs_keys is not None else None
        self.reward_scale, self.reward_bias, self.returns_gamma = reward_scale, reward_bias, returns_gamma
        self.obs = torch.zeros(capacity, obs_dim)
        self.actions = torch.zeros(capacity, action_dim)
        self.rewards = torch.zeros(capacity)
        self.next_obs = torch.zeros(capacity, obs_dim)
        self.terminated = torch.zeros(capacity, dtype=torch.bool)
        self.truncated = torch.zeros(capacity, dtype=torch.bool)
        self.mc_returns = torch.full((capacity,), float("nan"))
        self.size = 0  # transitions held
        self.position = 0  # where the next one goes
        self.added = 0  # transitions ever added

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray, truncated: np.ndarray, mc_returns: np.ndarray | None = None) -> None:
        """Append n transitions: obs, next_obs (n, D), actions (n, A), the rest (n,). Non-finite values are
        refused (naming the field), so a NaN never reaches a loss."""
        n = len(obs)
        fields = {"obs": (obs, (n, self.obs_dim)), "actions": (actions, (n, self.action_dim)),
                  "rewards": (rewards, (n,)), "next_obs": (next_obs, (n, self.obs_dim)),
                  "terminated": (terminated, (n,)), "truncated": (truncated, (n,))}
        if mc_returns is not None:
            fields["mc_returns"] = (mc_returns, (n,))
        arrays = {}
        for name, (value, shape) in fields.items():
            array = np.asarray(value)
            if array.shape != shape:
                raise InputError(f"replay {name} has shape {array.shape}, expected {shape}")
            if name not in ("terminated", "truncated") and not np.isfinite(array).all():
                raise InputError(f"replay {name} contains NaN or inf (rows "
                                 f"{np.flatnonzero(~np.isfinite(array.reshape(n, -1)).all(1))[:10].tolist()})")
            arrays[name] = torch.from_numpy(np.ascontiguousarray(array))
        if n > self.capacity:  # only the newest fit; the dropped ones still count, so a row is always added % capacity
            arrays = {k: v[-self.capacity:] for k, v in arrays.items()}
            self.added += n - self.capacity
            self.position = (self.position + n - self.capacity) % self.capacity
            n = self.capacity
        rows = (self.position + torch.arange(n)) % self.capacity
        for name, value in arrays.items():
            getattr(self, name)[rows] = value.to(getattr(self, name).dtype)
        if mc_returns is None:
            self.mc_returns[rows] = float("nan")
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.added += n

    def env_rewards(self, rewards: np.ndarray) -> np.ndarray:
        """Env rewards (n,) as this buffer's rewards are: ``reward_scale * r + reward_bias``."""
        return self.reward_scale * np.asarray(rewards, dtype=np.float64) + self.reward_bias

    def set_mc_returns(self, indices: np.ndarray, returns: np.ndarray) -> None:
        """Returns-to-go (n,) of transitions given by their order of addition ``indices`` (n,) (0: the first
        transition ever added); those already overwritten by newer ones are skipped."""
        indices, returns = np.asarray(indices, dtype=np.int64), np.asarray(returns, dtype=np.float64)
        if indices.shape != returns.shape or (indices >= self.added).any():
            raise InputError(f"set_mc_returns: {indices.shape} indices for {returns.shape} returns, or an index "
                             f"not added yet ({self.added} added)")
        kept = indices >= self.added - self.capacity
        rows = torch.from_numpy(indices[kept] % self.capacity)
        self.mc_returns[rows] = torch.from_numpy(returns[kept]).to(self.mc_returns.dtype)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transitions:
        if self.size == 0:
            raise InputError("cannot sample from an empty replay buffer")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        return self.gather(idx)

    def gather(self, idx: Tensor) -> Transitions:
        return Transitions(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx],
                           self.terminated[idx], self.truncated[idx], self.mc_returns[idx])

    def add_episode(self, episode: Episode, obs_keys: Sequence[str]) -> None:
        """Append every transition of ``episode`` (observations of ``obs_keys`` concatenated; the env's rewards),
        made as this buffer's data is: rewards ``env_rewards``, returns-to-go discounted by ``returns_gamma``."""
        obs = flatten_observations(episode.observations, obs_keys)
        rewards = self.env_rewards(episode.rewards)
        mc = discounted_returns(rewards, self.returns_gamma) if self.returns_gamma is not None else None
        self.add(obs[:-1], episode.actions, rewards, obs[1:], episode.terminated, episode.truncated, mc)

    def state_dict(self) -> dict[str, Any]:
        return {"obs": self.obs[: self.size].clone(), "actions": self.actions[: self.size].clone(),
                "rewards": self.rewards[: self.size].clone(), "next_obs": self.next_obs[: self.size].clone(),
                "terminated": self.terminated[: self.size].clone(), "truncated": self.truncated[: self.size].clone(),
                "mc_returns": self.mc_returns[: self.size].clone(), "position": self.position, "added": self.added}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = len(state["obs"])
        if size > self.capacity:
            raise InputError(f"replay state holds {size} transitions, more than this buffer's capacity {self.capacity}")
        for name in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated", "mc_returns"):
            value = state[name]
            target = getattr(self, name)
            if tuple(value.shape[1:]) != tuple(target.shape[1:]):
                raise InputError(f"replay state {name} has rows of shape {tuple(value.shape[1:])}, "
                                 f"expected {tuple(target.shape[1:])}")
            target[:size] = value
        self.size, self.position, self.added = size, int(state["position"]), int(state["added"])


def flatten_observations(observations: dict[str, np.ndarray], obs_keys: Sequence[str]) -> np.ndarray:
    """(T, D) float32: the low-dimensional keys, each flattened per step, concatenated in ``obs_keys`` order."""
    missing = [k for k in obs_keys if k not in observations]
    if missing:
        raise DatasetError(f"observation key(s) {missing} missing; the data has {sorted(observations)}")
    parts = []
    for key in obs_keys:
        value = np.asarray(observations[key])
        if value.dtype == np.uint8 and value.ndim == 4:
            raise DatasetError(f"{key!r} is an image; replay buffers hold low-dimensional observations only")
        parts.append(value.reshape(len(value), -1).astype(np.float32))
    return np.concatenate(parts, axis=1)


def replay_from_store(path: str | Path, *, obs_keys: Sequence[str] | None = None, gamma: float | None = 0.99,
                      capacity: int | None = None, reward_scale: float = 1.0, reward_bias: float = 0.0) -> ReplayBuffer:
    """Every transition of an episode file in a ``ReplayBuffer`` (capacity: the file's steps by default), with
    returns-to-go discounted by ``gamma`` (None: not computed). Rewards become ``reward_scale * r + reward_bias``
    before the returns are summed, so the returns-to-go are those of the rewards the agent learns from.

    ``obs_keys`` default to the file's low-dimensional keys (images are left out). RL learns from rewards: a
    file without them (or whose rewards are NaN, as a converted dataset that recorded none) is refused with an
    error naming the file and episode."""
    with EpisodeStore(path) as store:
        if not store.demos:
            raise DatasetError(f"{str(path)!r} holds no episodes")
        keys = list(obs_keys) if obs_keys is not None else [k for k in store.obs_keys if "images" not in k]
        if not keys:
            raise DatasetError(f"{str(path)!r} has no low-dimensional observation keys: {store.obs_keys}")
        for demo in store.demos:  # before any episode is read: reading one needs its rewards
            if "rewards" not in store.keys(demo):
                raise DatasetError(f"{str(path)!r}: {demo} has no rewards; this algorithm learns from rewards "
                                   f"(relabel the file, or use behavior cloning)")
        first = store.episode(store.demos[0], obs_keys=keys)
        obs_dim = flatten_observations(first.observations, keys).shape[1]
        buffer = ReplayBuffer(obs_dim, first.actions.shape[1], capacity or store.total_steps, keys,
                              reward_scale=reward_scale, reward_bias=reward_bias, returns_gamma=gamma)
        for demo in store.demos:
            episode = store.episode(demo, obs_keys=keys)
            if not np.isfinite(episode.rewards).all():
                raise DatasetError(f"{str(path)!r}: {demo}'s rewards contain NaN or inf; RL learns from rewards")
            buffer.add_episode(episode, keys)
    return buffer


class MixedSampler:
    """Batches drawn from an offline and an online buffer at a fixed ratio (RLPD: symmetric, half and half).

    ``offline_fraction`` of every batch (rounded) comes from ``offline``, the rest from ``online``; until the
    online buffer holds anything, the whole batch is offline.
    """

    def __init__(self, offline: ReplayBuffer, online: ReplayBuffer, offline_fraction: float = 0.5) -> None:
        if not 0.0 <= offline_fraction <= 1.0:
            raise ConfigError(f"offline_fraction must be in [0, 1], got {offline_fraction}")
        if (offline.obs_dim, offline.action_dim) != (online.obs_dim, online.action_dim):
            raise InputError(f"offline data has (obs, action) dims {(offline.obs_dim, offline.action_dim)}, the "
                             f"online buffer {(online.obs_dim, online.action_dim)}")
        self.offline, self.online, self.offline_fraction = offline, online, offline_fraction

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transitions:
        n_offline = batch_size if len(self.online) == 0 else round(batch_size * self.offline_fraction)
        parts = []
        if n_offline:
            parts.append(self.offline.sample(n_offline, generator))
        if batch_size - n_offline:
            parts.append(self.online.sample(batch_size - n_offline, generator))
        if len(parts) == 1:
            return parts[0]
        return Transitions(*(torch.cat(fields) for fields in zip(*parts, strict=True)))
