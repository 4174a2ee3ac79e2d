"""Sim-to-real: the real-robot protocol and the real proxy, domain randomization from identified ranges, system
identification, teacher-student distillation, and the iterative sim-to-real and self-improvement loops."""

from roboloop.sim2real.real_robot import (
    BudgetExceededError,
    HiddenParameters,
    RealProxy,
    RealRobot,
    RealRobotEnv,
)

__all__ = ["BudgetExceededError", "HiddenParameters", "RealProxy", "RealRobot", "RealRobotEnv"]
