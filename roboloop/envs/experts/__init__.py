"""Scripted experts, one per task, with a noise knob for datasets of chosen quality."""

from __future__ import annotations

import importlib

import gymnasium as gym

from roboloop.core.errors import ConfigError
from roboloop.envs.experts.base import ScriptedExpert
from roboloop.envs.registration import task_info

__all__ = ["ScriptedExpert", "make_expert"]


def make_expert(task: str, env: gym.Env, *, noise: float = 0.0, jitter: float = 0.0,
                seed: int | None = None) -> ScriptedExpert:
    """The scripted expert of ``task``, configured from ``env`` (any wrapper of the task's env)."""
    info = task_info(task)
    if info.expert is None:
        raise ConfigError(f"{info.name} has no scripted expert: its datasets come from a trained agent "
                          f"(roboloop make-tiers task={info.name})")
    module, cls = info.expert.split(":")
    expert_cls: type[ScriptedExpert] = getattr(importlib.import_module(module), cls)
    return expert_cls(env.unwrapped, noise=noise, jitter=jitter, seed=seed)


