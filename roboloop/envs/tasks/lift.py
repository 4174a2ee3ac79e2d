"""Lift: grasp a cube placed at a random planar pose and lift it above a height."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from roboloop.envs.base import ManipulationEnv, gripper_pose_range, quat_to_yaw
from roboloop.envs.randomization import PoseRange, RandomizationSpec
from roboloop.envs.scene import FINGER_TRAVEL


class LiftEnv(ManipulationEnv):
    """Grasp the cube and raise its centre ``lift_height`` metres above the table.

    Task observation: ``cube_pos(3), cube_quat(4)`` (quaternion w >= 0).
    Shaped terms in info: ``reward_reach`` (-distance fingertips to cube), ``reward_grasp`` (cube between
    the fingers and fingers closed on it) and ``reward_lift`` (height gained, capped at the target).

    Args:
        cube_half_size: Half the cube's side, metres.
        cube_mass: kg.
        lift_height: Success height of the cube's centre above the table, metres.
        **kwargs: See :class:`ManipulationEnv`.
    """

    task_name: ClassVar[str] = "Lift"
    task_observation_structure: ClassVar[dict[str, int]] = {"cube_pos": 3, "cube_quat": 4}
    object_observation_parts: ClassVar[tuple[str, ...]] = ("cube_pos", "cube_quat")

    def __init__(self, *, cube_half_size: float = 0.02, cube_mass: float = 0.1, lift_height: float = 0.1,
                 **kwargs: Any) -> None:
        self.cube_half_size = float(cube_half_size)
        self.cube_mass = float(cube_mass)
        self.lift_height = float(lift_height)
        super().__init__(**kwargs)
        self._cube_qpos = self.model.joint("cube").qposadr[0]

    @classmethod
    def default_randomization(cls) -> RandomizationSpec:
        return RandomizationSpec(poses={
            "gripper": gripper_pose_range(),
            "cube": PoseRange(x=(-0.12, 0.12), y=(-0.02, 0.15), yaw=(-math.pi / 4, math.pi / 4)),
        })

    def _assets_xml(self) -> str:
        return '<material name="cube" rgba="0.85 0.2 0.15 1" reflectance="0"/>'

    def _worldbody_xml(self) -> str:
        h = self.cube_half_size
        return f"""
    <body name="cube" pos="0 0 {h}">
      <freejoint name="cube"/>
      <geom name="cube" type="box" size="{h} {h} {h}" mass="{self.cube_mass}" material="cube"
            friction="1.0 0.01 0.0001"/>
    </body>"""

    def _object_bodies(self) -> list[str]:
        return ["cube"]

    def _object_geoms(self) -> list[str]:
        return ["cube"]

    def _place_entities(self, sample: Mapping[str, Any]) -> None:
        self._set_free_joint(self._cube_qpos, (sample["cube.x"], sample["cube.y"], self.cube_half_size),
                             sample["cube.yaw"])

    def _entity_poses_from_observation(self, task_state: np.ndarray) -> dict[str, float]:
        return {"cube.x": float(task_state[0]), "cube.y": float(task_state[1]),
                "cube.yaw": quat_to_yaw(task_state[3:7])}

    def _task_observation(self, out: np.ndarray) -> None:
        pos, quat = self._free_joint_pose(self._cube_qpos)
        out[0:3] = pos
        out[3:7] = quat

    def _evaluate(self) -> tuple[bool, dict[str, float]]:
        cube = self.data.qpos[self._cube_qpos : self._cube_qpos + 3]
        eef = self.data.qpos[self._grip_qpos : self._grip_qpos + 3]
        # Fingertips sit at the gripper origin; a grasp holds the cube's centre between the finger pads.
        dist = math.sqrt((cube[0] - eef[0]) ** 2 + (cube[1] - eef[1]) ** 2
                         + (cube[2] - eef[2] - self.cube_half_size) ** 2)
        closed = self.data.ctrl[4] > 0.5 * FINGER_TRAVEL  # grip command past half way
        grasped = float(dist < 0.02 and closed)
        height = float(cube[2] - self.cube_half_size)
        target = self.lift_height - self.cube_half_size
        success = bool(cube[2] > self.lift_height)
        return success, {
            "reward_reach": -dist,
            "reward_grasp": grasped,
            "reward_lift": min(max(height, 0.0), target) / target,
        }
