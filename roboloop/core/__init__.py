"""Small typed contracts shared by every stage of the platform."""

from roboloop.core.errors import ConfigError, DatasetError, RoboloopError, StateError

__all__ = ["ConfigError", "DatasetError", "RoboloopError", "StateError"]
