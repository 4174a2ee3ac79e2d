"""Dataset statistics for normalization, streamed episode by episode (never the whole file in memory)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from roboloop.core.errors import DatasetError
from roboloop.datasets.sampler import ACTION_KEY
from roboloop.datasets.store import EpisodeStore

Stats = dict[str, dict[str, np.ndarray]]


class _Running:
    """Running min/max/mean/variance over the leading axis (Chan et al.'s parallel update), in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        n = len(x)
        if n == 0:
            return
        mean, m2 = x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            self.min, self.max = x.min(axis=0), x.max(axis=0)
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total
        self.min = np.minimum(self.min, x.min(axis=0))
        self.max = np.maximum(self.max, x.max(axis=0))

    def result(self) -> dict[str, np.ndarray]:
        std = np.sqrt(self.m2 / self.count)
        return {"min": self.min, "max": self.max, "mean": self.mean, "std": std, "count": np.array(self.count)}


def compute_stats(path: str | Path, *, obs_keys: Sequence[str] | None = None, demos: Sequence[str] | None = None,
                  image_frames_per_episode: int = 8) -> Stats:
    """Per-key ``min``, ``max``, ``mean``, ``std`` (population) and ``count``.

    Low-dimensional keys and ``action`` are reduced over every step: arrays of the feature's shape.
    Images (uint8, H x W x 3) are reduced per channel over up to ``image_frames_per_episode`` evenly
    spaced frames of each episode: arrays of shape (3,), in pixel units (0-255).
    """
    with EpisodeStore(path) as store:
        selected = list(demos) if demos is not None else store.demos
        if not selected:
            raise DatasetError(f"{str(path)!r} has no episodes to compute statistics from")
        keys = list(obs_keys) if obs_keys is not None else store.obs_keys
        running = {k: _Running() for k in [*keys, ACTION_KEY]}
        for demo in selected:
            running[ACTION_KEY].update(store.read(demo, "actions"))
            for key in keys:
                ds = store.dataset(demo, f"obs/{key}")
                if ds.dtype == np.uint8 and ds.ndim == 4:
                    picks = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), image_frames_per_episode)).astype(int))
                    frames = ds[picks]
                    running[key].update(frames.reshape(-1, frames.shape[-1]))
                else:
                    running[key].update(ds[()])
    stats = {k: r.result() for k, r in running.items()}
    for key, s in stats.items():
        if not all(np.isfinite(v).all() for v in s.values()):
            raise DatasetError(f"{str(path)!r}: statistics of {key!r} are not finite (NaN or inf in the data)")
    return stats
