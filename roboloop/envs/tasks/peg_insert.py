"""PegInsert: pick up a square peg and insert it into a tight square hole.

The peg stands on the table at a random planar pose (x, y, yaw); the hole is the opening of a
fixture built from four boxes, also at a random planar pose. The gripper has only a yaw axis, so
the peg stands upright and is inserted vertically, the classic peg-in-hole assembly of ResiP's
``factory_peg_hole``. The default clearance (1 mm in total, 0.5 mm per side) with square edges and
no chamfer makes this the precise-assembly task that residual RL is judged on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from roboloop.core.errors import ConfigError
from roboloop.envs.base import ManipulationEnv, gripper_pose_range, quat_to_yaw
from roboloop.envs.randomization import PoseRange, RandomizationSpec


class PegInsertEnv(ManipulationEnv):
    """Insert the peg at least ``insert_depth`` metres into the hole.

    Task observation: ``peg_pos(3), peg_quat(4), hole_pos(3), hole_yaw_cos_sin(2)``, then the relative pose
    the task is decided by: ``peg_rel_eef(3)`` (peg minus gripper position), ``hole_rel_peg(3)`` (hole minus
    peg), ``grasp_yaw_cos_sin(2)`` and ``insert_yaw_cos_sin(2)``: cos/sin of 4x the yaw of the peg relative to
    the gripper and of the hole relative to the peg (a square is the same every quarter turn, so 4x makes the
    feature continuous across the faces and ``sin`` ~ 4x the misalignment near zero). ``hole_pos`` is the
    centre of the hole's opening on the table. The relative terms are what robosuite's object observables
    add (``gripper_to_cube_pos``): with 0.5 mm per side, a policy that must subtract two absolute positions
    normalized over a 30 cm workspace loses the millimetres the task is about.
    Shaped terms in info: ``reward_reach`` (-distance fingertips to the peg's grasp point),
    ``reward_align`` (-misalignment in centimetres: horizontal distance of the peg to the hole plus the half side
    times the yaw error), ``reward_insert`` (inserted depth as a fraction of ``insert_depth``, counted only
    while the misalignment is within 1.5 clearances, i.e. the peg is in the hole rather than tilted on the rim).

    Args:
        clearance: Hole side minus peg side, metres (total, not per side). Default 1 mm.
        peg_half_width: Half the peg's square side, metres.
        peg_half_height: Half the peg's length, metres.
        fixture_height: Height of the fixture walls (the hole's depth), metres.
        insert_depth: How deep the peg's bottom must go below the fixture's top for success, metres.
        **kwargs: See :class:`ManipulationEnv`.
    """

    task_name: ClassVar[str] = "PegInsert"
    task_observation_structure: ClassVar[dict[str, int]] = {
        "peg_pos": 3, "peg_quat": 4, "hole_pos": 3, "hole_yaw_cos_sin": 2,
        "peg_rel_eef": 3, "hole_rel_peg": 3, "grasp_yaw_cos_sin": 2, "insert_yaw_cos_sin": 2, "hole_rel_peg_fine": 2,
    }
    object_observation_parts: ClassVar[tuple[str, ...]] = ("peg_pos", "peg_quat")
    FINE_SCALE = 0.005  # hole_rel_peg_fine = tanh(planar offset / 5 mm)
    FIXTURE_HALF = 0.05
    MIN_UPRIGHT = math.cos(math.radians(10))  # a peg tilted further than this is not inserted

    def __init__(self, *, clearance: float = 0.001, peg_half_width: float = 0.012, peg_half_height: float = 0.04,
                 fixture_height: float = 0.04, insert_depth: float = 0.025, **kwargs: Any) -> None:
        if not 0.0 < clearance <= 0.02:
            raise ConfigError(f"PegInsert clearance must be in (0, 0.02] m, got {clearance}")
        if not 0.0 < insert_depth <= fixture_height:
            raise ConfigError(f"PegInsert insert_depth must be in (0, fixture_height={fixture_height}], "
                              f"got {insert_depth}")
        self.clearance = float(clearance)
        self.peg_half_width = float(peg_half_width)
        self.peg_half_height = float(peg_half_height)
        self.fixture_height = float(fixture_height)
        self.insert_depth = float(insert_depth)
        # Half the other tasks' control increments: a full-scale action moves 1.5 cm / 0.15 rad, so the
        # sub-millimetre corrections insertion needs are not lost in a policy's action error (a 0.05 error
        # in normalized action is 0.75 mm here, 1.5 mm with the default scale).
        kwargs.setdefault("max_delta_pos", 0.015)
        kwargs.setdefault("max_delta_yaw", 0.15)
        super().__init__(**kwargs)
        self._peg_qpos = self.model.joint("peg").qposadr[0]
        self._hole_mocap = self.model.body("hole").mocapid[0]

    @property
    def hole_half_width(self) -> float:
        return self.peg_half_width + self.clearance / 2

    @classmethod
    def default_randomization(cls) -> RandomizationSpec:
        return RandomizationSpec(poses={
            "gripper": gripper_pose_range(),
            "peg": PoseRange(x=(-0.15, 0.15), y=(-0.04, 0.14), yaw=(-math.pi / 4, math.pi / 4)),
            "hole": PoseRange(x=(-0.15, 0.15), y=(-0.04, 0.14), yaw=(-math.pi / 4, math.pi / 4)),
        })

    def _pose_conflict(self, poses: Mapping[str, float]) -> bool:
        # Keep the peg clear of the fixture, with room for the fingers around it.
        gap = math.hypot(poses["peg.x"] - poses["hole.x"], poses["peg.y"] - poses["hole.y"])
        return gap < self.FIXTURE_HALF * math.sqrt(2) + 0.06

    def _assets_xml(self) -> str:
        return ('<material name="peg" rgba="0.15 0.45 0.85 1" reflectance="0"/>'
                '<material name="fixture" rgba="0.35 0.65 0.35 1" reflectance="0"/>')

    def _worldbody_xml(self) -> str:
        w, hh, H, F, hs = self.peg_half_width, self.peg_half_height, self.fixture_height, self.FIXTURE_HALF, \
            self.hole_half_width
        side = (F - hs) / 2  # half thickness of a wall
        mid = (F + hs) / 2  # wall centre offset from the hole centre
        wall = 'type="box" material="fixture" friction="0.5 0.005 0.0001"'
        return f"""
    <body name="peg" pos="0 0 {hh}">
      <freejoint name="peg"/>
      <geom name="peg" type="box" size="{w} {w} {hh}" mass="0.05" material="peg" friction="1.0 0.01 0.0001"/>
    </body>
    <body name="hole" mocap="true" pos="0 0 0">
      <geom name="wall_px" {wall} size="{side} {F} {H / 2}" pos="{mid} 0 {H / 2}"/>
      <geom name="wall_nx" {wall} size="{side} {F} {H / 2}" pos="{-mid} 0 {H / 2}"/>
      <geom name="wall_py" {wall} size="{hs} {side} {H / 2}" pos="0 {mid} {H / 2}"/>
      <geom name="wall_ny" {wall} size="{hs} {side} {H / 2}" pos="0 {-mid} {H / 2}"/>
    </body>"""

    def _object_bodies(self) -> list[str]:
        return ["peg"]

    def _object_geoms(self) -> list[str]:
        return ["peg"]

    def _place_entities(self, sample: Mapping[str, Any]) -> None:
        self._set_free_joint(self._peg_qpos, (sample["peg.x"], sample["peg.y"], self.peg_half_height),
                             sample["peg.yaw"])
        self._set_mocap("hole", (sample["hole.x"], sample["hole.y"], 0.0), sample["hole.yaw"])

    def _entity_poses_from_observation(self, task_state: np.ndarray) -> dict[str, float]:
        peg_yaw = quat_to_yaw(task_state[3:7])
        hole_yaw = math.atan2(float(task_state[11]), float(task_state[10]))
        return {"peg.x": float(task_state[0]), "peg.y": float(task_state[1]), "peg.yaw": peg_yaw,
                "hole.x": float(task_state[7]), "hole.y": float(task_state[8]), "hole.yaw": hole_yaw}

    def _task_observation(self, out: np.ndarray) -> None:
        pos, quat = self._free_joint_pose(self._peg_qpos)
        hole = self.data.mocap_pos[self._hole_mocap]
        hole_yaw = quat_to_yaw(self.data.mocap_quat[self._hole_mocap])
        eef = self.data.qpos[self._grip_qpos : self._grip_qpos + 4]  # x, y, z, yaw
        peg_yaw = quat_to_yaw(quat)
        out[0:3] = pos
        out[3:7] = quat
        out[7:10] = hole
        out[10] = math.cos(hole_yaw)
        out[11] = math.sin(hole_yaw)
        out[12:15] = pos - eef[:3]
        out[15:18] = hole - pos
        out[18] = math.cos(4 * (peg_yaw - eef[3]))
        out[19] = math.sin(4 * (peg_yaw - eef[3]))
        out[20] = math.cos(4 * (hole_yaw - peg_yaw))
        out[21] = math.sin(4 * (hole_yaw - peg_yaw))
        out[22:24] = np.tanh((hole[:2] - pos[:2]) / self.FINE_SCALE)

    def _evaluate(self) -> tuple[bool, dict[str, float]]:
        qpos = self.data.qpos
        peg = qpos[self._peg_qpos : self._peg_qpos + 3]
        eef = qpos[self._grip_qpos : self._grip_qpos + 3]
        hole = self.data.mocap_pos[self._hole_mocap]
        # The gripper holds the peg near its top: the grasp point is one finger-half-length below the top.
        grasp_dz = self.peg_half_height - 0.02
        reach = math.sqrt((peg[0] - eef[0]) ** 2 + (peg[1] - eef[1]) ** 2 + (peg[2] + grasp_dz - eef[2]) ** 2)
        planar = math.hypot(peg[0] - hole[0], peg[1] - hole[1])
        # How far the peg's sides are from the hole's: the planar offset plus what the yaw error moves a side's
        # end (a square repeats every quarter turn); 0.5 mm of either keeps the peg out.
        qw, qx, qy, qz = qpos[self._peg_qpos + 3 : self._peg_qpos + 7]
        yaw_error = (quat_to_yaw(np.array([qw, qx, qy, qz])) - quat_to_yaw(self.data.mocap_quat[self._hole_mocap])
                     + math.pi / 4) % (math.pi / 2) - math.pi / 4
        misalignment = planar + self.peg_half_width * abs(yaw_error)
        depth = self.fixture_height - (peg[2] - self.peg_half_height)  # how far the bottom is below the top
        # z component of the peg's long axis: 1 upright, 0 lying on its side.
        upright = 1.0 - 2.0 * (qx * qx + qy * qy)
        # Upright with its bottom below the fixture's top, the peg can only be inside the hole (or beside
        # the fixture, which the planar test excludes).
        success = bool(depth >= self.insert_depth and planar < self.hole_half_width and upright > self.MIN_UPRIGHT)
        return success, {
            "reward_reach": -reach,
            "reward_align": -misalignment / 0.01,
            # Only a peg aligned to about the clearance is in the hole (inside, the walls bound the misalignment
            # to ~1.2 clearances); one tilted on the rim also dips below the top.
            "reward_insert": float(misalignment < 1.5 * self.clearance) * min(max(depth, 0.0), self.insert_depth)
            / self.insert_depth,
        }
