"""Helpers for the stable-baselines3 models roboloop builds (SB3 is imported only when one is used)."""

from __future__ import annotations

from typing import Any


def silence_logger(model: Any) -> Any:
    """Give an SB3 model a logger that writes nothing and returns the model. SB3's default logger
    (``configure(None, ...)``) makes an empty ``SB3-<date>`` folder in the temp dir at every ``learn()``."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))
    return model
