"""Gymnasium registration of every roboloop task (``roboloop/<Name>-v0``) and third-party adapter.

Importing :mod:`roboloop` registers them. Registration only records entry-point strings, so it
imports neither MuJoCo models nor optional third-party packages.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

from roboloop.core.errors import ConfigError


@dataclass(frozen=True)
class TaskInfo:
    """One registered task: its env id, entry point, episode limit and scripted expert (None for the locomotion
    benchmarks, whose demonstrations come from trained agents)."""

    name: str
    env_id: str
    entry_point: str
    max_episode_steps: int
    expert: str | None  # "module:Class" of the scripted expert
    third_party: bool = False


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("Lift", "roboloop/Lift-v0", "roboloop.envs.tasks.lift:LiftEnv", 80,
                 "roboloop.envs.experts.lift:LiftExpert"),
        TaskInfo("PegInsert", "roboloop/PegInsert-v0", "roboloop.envs.tasks.peg_insert:PegInsertEnv", 150,
                 "roboloop.envs.experts.peg_insert:PegInsertExpert"),
        TaskInfo("PushAround", "roboloop/PushAround-v0", "roboloop.envs.tasks.push_around:PushAroundEnv", 200,
                 "roboloop.envs.experts.push_around:PushAroundExpert"),
        TaskInfo("FetchPush-v4", "roboloop/FetchPush-v4", "roboloop.envs.third_party.fetch:FetchPushAdapter", 50,
                 "roboloop.envs.experts.fetch:FetchPushExpert", third_party=True),
        TaskInfo("FetchPickAndPlace-v4", "roboloop/FetchPickAndPlace-v4",
                 "roboloop.envs.third_party.fetch:FetchPickAndPlaceAdapter", 50,
                 "roboloop.envs.experts.fetch:FetchPickAndPlaceExpert", third_party=True),
    )
}
#: Gymnasium's locomotion benchmarks for offline RL (no scripted expert: their tiers come from trained agents).
LOCOMOTION_TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("Hopper-v5", "roboloop/Hopper-v5", "roboloop.envs.third_party.locomotion:HopperAdapter", 1000,
                 None, third_party=True),
        TaskInfo("HalfCheetah-v5", "roboloop/HalfCheetah-v5",
                 "roboloop.envs.third_party.locomotion:HalfCheetahAdapter", 1000, None, third_party=True),
    )
}


def register_all() -> None:
    for task in (*TASKS.values(), *LOCOMOTION_TASKS.values()):
        if task.env_id not in gym.registry:
            gym.register(id=task.env_id, entry_point=task.entry_point, max_episode_steps=task.max_episode_steps)


def task_info(task: str) -> TaskInfo:
    """Look a task up by name (``Lift``, ``Hopper-v5``) or env id (``roboloop/Lift-v0``)."""
    for info in (*TASKS.values(), *LOCOMOTION_TASKS.values()):
        if task in (info.name, info.env_id):
            return info
    raise ConfigError(f"unknown task {task!r}; registered tasks: {sorted(TASKS) + sorted(LOCOMOTION_TASKS)}")
