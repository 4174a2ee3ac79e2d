"""Episode store (robomimic HDF5 layout), sequence sampler, statistics, collection and replay."""

from __future__ import annotations

import importlib
from typing import Any

from roboloop.datasets.store import Episode, EpisodeStore, EpisodeWriter

__all__ = ["Episode", "EpisodeStore", "EpisodeWriter", "SequenceDataset", "collate", "compute_stats"]

# The sampler imports torch (about a second): load it on first use, so `roboloop info` and
# `roboloop collect` start fast.
_LAZY = {"SequenceDataset": "roboloop.datasets.sampler", "collate": "roboloop.datasets.sampler",
         "compute_stats": "roboloop.datasets.stats"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'roboloop.datasets' has no attribute {name!r}")
