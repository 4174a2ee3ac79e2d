"""Error types. Every error names the offending thing (file, key, shape, value) in its message."""

from __future__ import annotations


class RoboloopError(Exception):
    """Base class for errors raised on bad user input."""


class ConfigError(RoboloopError, ValueError):
    """An invalid configuration value (raised from config ``__post_init__`` validation)."""


class DatasetError(RoboloopError):
    """A missing, corrupt or incompatible episode file, or a missing key in it."""


class StateError(RoboloopError, ValueError):
    """A simulator state that does not fit the environment it is restored into."""


class InputError(RoboloopError, ValueError):
    """Observations, batches or actions whose keys, shapes or values do not fit the policy."""


class CheckpointError(RoboloopError):
    """A missing, corrupt or incompatible checkpoint directory."""


class TrainingError(RoboloopError):
    """Training cannot go on (for example the loss became NaN); the last good checkpoint is kept."""
