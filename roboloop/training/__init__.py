"""Behavior-cloning training: one ``BCTrainer`` for every BC policy, EMA, checkpoint/resume, DDP."""

from roboloop.training.ema import EMA, EMAConfig
from roboloop.training.trainer import BCTrainer, OptimizerConfig, TrainConfig, TrainResult

__all__ = ["EMA", "BCTrainer", "EMAConfig", "OptimizerConfig", "TrainConfig", "TrainResult"]
