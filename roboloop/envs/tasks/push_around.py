"""PushAround: push a puck to a goal that sits behind an obstacle.

The puck starts in front of a wall and the goal lies behind it, both near the wall's centre line,
so going round the left end and going round the right end are equally good. Demonstrations are
therefore genuinely bimodal: a policy that averages the two routes drives the puck into the wall.
The puck is wider than the gripper's opening, so it has to be pushed, not carried.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from roboloop.envs.base import ManipulationEnv, gripper_pose_range
from roboloop.envs.randomization import PoseRange, RandomizationSpec
from roboloop.envs.scene import MAX_OPENING


class PushAroundEnv(ManipulationEnv):
    """Bring the puck's centre within ``goal_radius`` of the goal.

    Task observation: ``puck_pos(3), goal_xy(2), obstacle_xy(2)``.
    Shaped terms in info: ``reward_reach`` (-distance fingertips to puck) and ``reward_goal``
    (-distance puck to goal).

    Args:
        puck_radius: Metres; must exceed half the gripper's maximum opening so the puck cannot be grasped.
        goal_radius: Success radius, metres.
        obstacle_half_length: Half the wall's length along x, metres.
        **kwargs: See :class:`ManipulationEnv`.
    """

    task_name: ClassVar[str] = "PushAround"
    task_observation_structure: ClassVar[dict[str, int]] = {"puck_pos": 3, "goal_xy": 2, "obstacle_xy": 2}
    object_observation_parts: ClassVar[tuple[str, ...]] = ("puck_pos",)
    PUCK_HALF_HEIGHT = 0.015
    OBSTACLE_HALF_WIDTH = 0.025  # along y
    OBSTACLE_HALF_HEIGHT = 0.04

    def __init__(self, *, puck_radius: float = 0.045, goal_radius: float = 0.03, obstacle_half_length: float = 0.09,
                 **kwargs: Any) -> None:
        if puck_radius <= MAX_OPENING / 2:
            raise ValueError(f"PushAround puck_radius must exceed {MAX_OPENING / 2} m (else it can be grasped)")
        self.puck_radius = float(puck_radius)
        self.goal_radius = float(goal_radius)
        self.obstacle_half_length = float(obstacle_half_length)
        super().__init__(**kwargs)
        self._puck_qpos = self.model.joint("puck").qposadr[0]
        self._goal_mocap = self.model.body("goal").mocapid[0]
        self._obstacle_mocap = self.model.body("obstacle").mocapid[0]

    @classmethod
    def default_randomization(cls) -> RandomizationSpec:
        return RandomizationSpec(poses={
            "gripper": gripper_pose_range(y=(-0.28, -0.24)),
            "puck": PoseRange(x=(-0.03, 0.03), y=(-0.17, -0.13)),
            "goal": PoseRange(x=(-0.03, 0.03), y=(0.13, 0.17)),
            "obstacle": PoseRange(x=(-0.01, 0.01), y=(-0.01, 0.01)),
        })

    def _assets_xml(self) -> str:
        return ('<material name="puck" rgba="0.9 0.55 0.1 1" reflectance="0"/>'
                '<material name="obstacle" rgba="0.4 0.4 0.45 1" reflectance="0"/>'
                '<material name="goal" rgba="0.2 0.8 0.3 0.6" reflectance="0"/>')

    def _worldbody_xml(self) -> str:
        return f"""
    <!-- priority: the puck's own (low) friction governs its contacts, so the grippy fingers push it
         without dragging it along when they lift or turn. -->
    <body name="puck" pos="0 0 {self.PUCK_HALF_HEIGHT}">
      <freejoint name="puck"/>
      <geom name="puck" type="cylinder" size="{self.puck_radius} {self.PUCK_HALF_HEIGHT}" mass="0.2"
            material="puck" friction="0.3 0.005 0.0001" priority="1"/>
    </body>
    <body name="obstacle" mocap="true" pos="0 0 {self.OBSTACLE_HALF_HEIGHT}">
      <geom name="obstacle" type="box" size="{self.obstacle_half_length} {self.OBSTACLE_HALF_WIDTH}
            {self.OBSTACLE_HALF_HEIGHT}" material="obstacle" friction="0.3 0.005 0.0001"/>
    </body>
    <body name="goal" mocap="true" pos="0 0 0.0005">
      <geom name="goal" type="cylinder" size="{self.goal_radius} 0.0005" material="goal" contype="0"
            conaffinity="0"/>
    </body>"""

    def _object_bodies(self) -> list[str]:
        return ["puck"]

    def _object_geoms(self) -> list[str]:
        return ["puck"]

    def _place_entities(self, sample: Mapping[str, Any]) -> None:
        self._set_free_joint(self._puck_qpos, (sample["puck.x"], sample["puck.y"], self.PUCK_HALF_HEIGHT),
                             sample["puck.yaw"])
        self._set_mocap("goal", (sample["goal.x"], sample["goal.y"], 0.0005), sample["goal.yaw"])
        self._set_mocap("obstacle", (sample["obstacle.x"], sample["obstacle.y"], self.OBSTACLE_HALF_HEIGHT),
                        sample["obstacle.yaw"])

    def _entity_poses_from_observation(self, task_state: np.ndarray) -> dict[str, float]:
        # The puck is round and goal and obstacle are placed without yaw, so no yaw is observed (or needed).
        return {"puck.x": float(task_state[0]), "puck.y": float(task_state[1]), "puck.yaw": 0.0,
                "goal.x": float(task_state[3]), "goal.y": float(task_state[4]), "goal.yaw": 0.0,
                "obstacle.x": float(task_state[5]), "obstacle.y": float(task_state[6]), "obstacle.yaw": 0.0}

    def _task_observation(self, out: np.ndarray) -> None:
        out[0:3] = self.data.qpos[self._puck_qpos : self._puck_qpos + 3]
        out[3:5] = self.data.mocap_pos[self._goal_mocap, :2]
        out[5:7] = self.data.mocap_pos[self._obstacle_mocap, :2]

    def _evaluate(self) -> tuple[bool, dict[str, float]]:
        qpos = self.data.qpos
        puck = qpos[self._puck_qpos : self._puck_qpos + 3]
        eef = qpos[self._grip_qpos : self._grip_qpos + 3]
        goal = self.data.mocap_pos[self._goal_mocap]
        to_goal = math.hypot(puck[0] - goal[0], puck[1] - goal[1])
        reach = math.hypot(puck[0] - eef[0], puck[1] - eef[1])
        return bool(to_goal < self.goal_radius), {"reward_reach": -reach, "reward_goal": -to_goal}
