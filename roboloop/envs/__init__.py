"""Gymnasium/MuJoCo manipulation tasks, scripted experts, wrappers and third-party adapters."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from roboloop.envs.registration import LOCOMOTION_TASKS, TASKS, TaskInfo, register_all, task_info

__all__ = ["LOCOMOTION_TASKS", "TASKS", "TaskInfo", "make", "register_all", "task_info"]


def make(task: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` by task name (``"Lift"``) or id (``"roboloop/Lift-v0"``), with a clear error for typos."""
    register_all()
    return gym.make(task_info(task).env_id, **kwargs)
