"""Training windows from an episode file: observation history plus an action chunk, with pad masks.

Horizons (one vocabulary everywhere): ``n_obs_steps`` (To) observations up to the current step t,
and ``horizon`` (Tp) actions starting at the first of them, of which a policy executes
``n_action_steps`` (Ta) from t on. For To=2, Tp=8::

    step:        t-1   t    t+1  t+2  t+3  t+4  t+5  t+6
    obs:         o    [o]                                   (To = 2, [o] = current)
    action:      a     a    a    a    a    a    a    a      (Tp = 8)

Windows never cross episodes. Where they run past an episode's start or end, the edge frame is
repeated and ``<key>_is_pad`` is True for those entries, so a loss can ignore them. The sample
index t runs over every step whose window has at most ``pad_after`` padded actions past the end and
at most ``n_obs_steps - 1`` padded observations before the start. The default, ``horizon - n_obs_steps``,
makes every recorded step a current observation (LeRobot's convention). Diffusion Policy's
``n_action_steps - 1`` keeps the executed part of every chunk real data but never shows the policy the
last ``horizon - n_obs_steps - n_action_steps + 1`` observations of an episode: in short episodes that end
on success (Lift's demos are 18 steps, Tp = 16) that is the whole final phase: a diffusion policy trained
that way had never seen a lifted cube and opened the gripper half way up.

Low-dimensional keys are loaded into memory once (one preallocated array per key, so a 1M-step
state dataset takes tens of MB); image keys stay in the file and are read lazily per sample.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from roboloop.core.errors import ConfigError, DatasetError
from roboloop.core.spec import check_horizons
from roboloop.datasets.store import EpisodeStore

ACTION_KEY = "action"


class SequenceDataset(Dataset):
    """``dataset[i]`` -> dict of numpy arrays:

    * ``<obs key>``: (To, ...) float32 for low-dim keys, uint8 (To, H, W, 3) for images
    * ``<obs key>_is_pad``: (To,) bool
    * ``action``: (Tp, action_dim) float32 and ``action_is_pad``: (Tp,) bool

    Args:
        path: Episode file.
        obs_keys: Observation keys to load (default: all in the file).
        n_obs_steps: To.
        horizon: Tp, the length of the action chunk.
        n_action_steps: Ta.
        pad_after: Most padded actions allowed past an episode's end (default ``horizon - n_obs_steps``:
            every step is a sample; ``n_action_steps - 1`` is Diffusion Policy's convention).
        filter_key: Use only the demos listed in ``mask/<filter_key>`` (e.g. ``success``).
        demos: Use only these demos (after ``filter_key``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        obs_keys: Sequence[str] | None = None,
        n_obs_steps: int = 2,
        horizon: int = 16,
        n_action_steps: int = 8,
        pad_after: int | None = None,
        filter_key: str | None = None,
        demos: Sequence[str] | None = None,
    ) -> None:
        check_horizons(n_obs_steps, horizon, n_action_steps)
        self.path = Path(path)
        self.n_obs_steps, self.horizon, self.n_action_steps = n_obs_steps, horizon, n_action_steps
        self.pad_after = horizon - n_obs_steps if pad_after is None else int(pad_after)
        if self.pad_after < 0:
            raise ConfigError(f"pad_after must be >= 0, got {self.pad_after}")

        with EpisodeStore(self.path) as store:
            selected = list(store.demos)
            if filter_key is not None:
                masks = store.masks()
                if filter_key not in masks:
                    raise DatasetError(f"{str(self.path)!r} has no filter key {filter_key!r}; it has {sorted(masks)}")
                allowed = set(masks[filter_key])
                selected = [d for d in selected if d in allowed]
            if demos is not None:
                missing = sorted(set(demos) - set(selected))
                if missing:
                    raise DatasetError(f"{str(self.path)!r}: demos {missing[:5]} not found (or filtered out)")
                selected = [d for d in selected if d in set(demos)]
            if not selected:
                raise DatasetError(f"{str(self.path)!r} has no episodes to sample from")
            available = store.obs_keys
            self.obs_keys = list(obs_keys) if obs_keys is not None else available
            missing_keys = [k for k in self.obs_keys if k not in available]
            if missing_keys:
                raise DatasetError(f"{str(self.path)!r} has no observation key(s) {missing_keys}; "
                                   f"available: {available}")
            self.demos = selected
            lengths = np.array([store.num_samples(d) for d in selected], dtype=np.int64)
            first = selected[0]
            self.image_keys = [k for k in self.obs_keys if store.dataset(first, f"obs/{k}").ndim == 4
                               and store.dataset(first, f"obs/{k}").dtype == np.uint8]
            self.lowdim_keys = [k for k in self.obs_keys if k not in self.image_keys]
            self.shapes = {k: tuple(store.dataset(first, f"obs/{k}").shape[1:]) for k in self.obs_keys}
            self.shapes[ACTION_KEY] = tuple(store.dataset(first, "actions").shape[1:])
            self.episode_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            self.episode_ends = self.episode_starts + lengths
            total = int(lengths.sum())
            # Preallocate and fill per episode: never hold two copies of a large dataset.
            self._lowdim = {k: np.empty((total, *self.shapes[k]), dtype=np.float32) for k in self.lowdim_keys}
            self._actions = np.empty((total, *self.shapes[ACTION_KEY]), dtype=np.float32)
            for demo, start, end in zip(selected, self.episode_starts, self.episode_ends, strict=True):
                for k in self.lowdim_keys:
                    self._lowdim[k][start:end] = store.read(demo, f"obs/{k}")
                self._actions[start:end] = store.read(demo, "actions")
                for k in self.obs_keys:
                    if store.dataset(demo, f"obs/{k}").shape[1:] != self.shapes[k]:
                        raise DatasetError(f"{str(self.path)!r}: {demo} obs/{k} has frame shape "
                                           f"{store.dataset(demo, f'obs/{k}').shape[1:]}, expected {self.shapes[k]}")

        # Sample index: the global step of the current observation t, and its episode.
        index, episode = [], []
        for e, (start, length) in enumerate(zip(self.episode_starts, lengths, strict=True)):
            # t starts at 0 (observation history is padded before the start); the last action of
            # the window, t - To + Tp, may pass the episode's end by at most pad_after.
            last = min(length - 1, length - 1 + self.pad_after + n_obs_steps - horizon)
            if last >= 0:
                steps = np.arange(0, last + 1)
                index.append(start + steps)
                episode.append(np.full(len(steps), e, dtype=np.int32))
        if not index:
            raise DatasetError(f"{str(self.path)!r}: every episode is shorter than one window "
                               f"(horizon {horizon}, n_obs_steps {n_obs_steps}, pad_after {self.pad_after})")
        self._index = np.concatenate(index)
        self._episode = np.concatenate(episode)
        self._obs_offsets = np.arange(1 - n_obs_steps, 1)
        self._action_offsets = np.arange(1 - n_obs_steps, 1 - n_obs_steps + horizon)
        self._h5: h5py.File | None = None
        self._h5_pid = -1

    def __len__(self) -> int:
        return len(self._index)

    @property
    def num_steps(self) -> int:
        return int(self.episode_ends[-1])

    def _window(self, items: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global row indices (B, L) clipped into each item's episode, and the pad mask (B, L)."""
        t = self._index[items][:, None] + offsets[None, :]
        e = self._episode[items]
        start, end = self.episode_starts[e][:, None], self.episode_ends[e][:, None]
        return np.clip(t, start, end - 1), (t < start) | (t >= end)

    def __getitems__(self, items: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Vectorized batch fetch (used by torch's DataLoader): one gather per key for the whole batch."""
        batch = self.get_batch(np.asarray(items, dtype=np.int64))
        return [{k: v[i] for k, v in batch.items()} for i in range(len(items))]

    def __getitem__(self, item: int) -> dict[str, np.ndarray]:
        if not -len(self) <= item < len(self):
            raise IndexError(f"index {item} out of range for {len(self)} samples")
        batch = self.get_batch(np.array([item % len(self)], dtype=np.int64))
        return {k: v[0] for k, v in batch.items()}

    def get_batch(self, items: np.ndarray) -> dict[str, np.ndarray]:
        """Batch of samples ``items`` as (B, ...) arrays."""
        obs_rows, obs_pad = self._window(items, self._obs_offsets)
        act_rows, act_pad = self._window(items, self._action_offsets)
        batch: dict[str, np.ndarray] = {}
        for k in self.lowdim_keys:
            batch[k] = self._lowdim[k][obs_rows]
            batch[f"{k}_is_pad"] = obs_pad
        for k in self.image_keys:
            batch[k] = self._read_images(k, obs_rows, items)
            batch[f"{k}_is_pad"] = obs_pad
        batch[ACTION_KEY] = self._actions[act_rows]
        batch[f"{ACTION_KEY}_is_pad"] = act_pad
        return batch

    def _read_images(self, key: str, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        # h5py handles are not fork-safe: open one per process (e.g. per DataLoader worker).
        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5 = h5py.File(self.path, "r", locking=False)
            self._h5_pid = os.getpid()
        out = np.empty((*rows.shape, *self.shapes[key]), dtype=np.uint8)
        for b, item in enumerate(items):
            e = self._episode[item]
            local = rows[b] - self.episode_starts[e]
            unique, inverse = np.unique(local, return_inverse=True)  # h5py wants increasing indices
            try:
                frames = self._h5[f"data/{self.demos[e]}/obs/{key}"][unique]
            except (OSError, KeyError) as err:
                raise DatasetError(f"{str(self.path)!r}: cannot read frames {unique.tolist()} of "
                                   f"{self.demos[e]} obs/{key} (corrupt file?): {err}") from err
            out[b] = frames[inverse]
        return out

    def all_actions(self) -> np.ndarray:
        """Every action in the dataset, (N, action_dim): for normalization statistics."""
        return self._actions

    def lowdim_array(self, key: str) -> np.ndarray:
        return self._lowdim[key]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_h5_pid"] = None, -1
        return state


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack samples into (B, ...) tensors."""
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
