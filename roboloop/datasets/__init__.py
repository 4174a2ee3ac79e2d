"""Episode store (robomimic HDF5 layout), sequence sampler, statistics, collection and replay."""

from roboloop.datasets.sampler import SequenceDataset, collate
from roboloop.datasets.stats import compute_stats
from roboloop.datasets.store import Episode, EpisodeStore, EpisodeWriter

__all__ = ["Episode", "EpisodeStore", "EpisodeWriter", "SequenceDataset", "collate", "compute_stats"]
