"""Small typed contracts shared by every stage of the platform."""

from roboloop.core.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    InputError,
    RoboloopError,
    StateError,
    TrainingError,
)

__all__ = ["CheckpointError", "ConfigError", "DatasetError", "InputError", "RoboloopError", "StateError",
           "TrainingError"]
