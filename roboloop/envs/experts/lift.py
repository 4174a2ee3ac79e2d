"""Scripted expert for Lift: align over the cube, descend, close, lift; start over if the cube drops."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from roboloop.envs.base import quat_to_yaw
from roboloop.envs.experts.base import GripperExpert, wrap_to


class LiftExpert(GripperExpert):
    APPROACH, DESCEND, CLOSE, LIFT = range(4)

    def _configure(self, env: Any) -> None:
        super()._configure(env)
        self.half = float(env.cube_half_size)
        self.lift_height = float(env.lift_height)

    def _reset_plan(self) -> None:
        self.phase = self.APPROACH
        self.closing_steps = 0

    def _plan(self, state: np.ndarray) -> np.ndarray:
        eef, yaw, _ = self.proprio(state)
        cube, cube_quat = state[9:12], state[12:16]
        # A cube looks the same every quarter turn: turn the short way to the nearest face pair.
        yaw_error = wrap_to(quat_to_yaw(cube_quat) - yaw, math.pi / 2)
        planar_error = float(np.hypot(*(cube[:2] - eef[:2])))
        grasp_z = cube[2] - self.half + 0.006  # fingertips just above the cube's bottom

        if self.phase in (self.CLOSE, self.LIFT) and cube[2] < self.half + 0.01 and eef[2] > grasp_z + 0.04:
            self.phase = self.APPROACH  # dropped it: start over
        if self.phase == self.APPROACH:
            target = np.array([cube[0], cube[1], max(cube[2] + self.half + 0.03, grasp_z + 0.04)])
            if planar_error < 0.006 and abs(yaw_error) < 0.05 and abs(eef[2] - target[2]) < 0.03:
                self.phase = self.DESCEND
            return self.action(target - eef, yaw_error, -1.0)
        if self.phase == self.DESCEND:
            target = np.array([cube[0], cube[1], grasp_z])
            if abs(eef[2] - grasp_z) < 0.004:
                self.phase, self.closing_steps = self.CLOSE, 0
            if planar_error > 0.015:
                self.phase = self.APPROACH
            return self.action(target - eef, yaw_error, -1.0)
        if self.phase == self.CLOSE:
            self.closing_steps += 1
            if self.closing_steps >= 3:
                self.phase = self.LIFT
            return self.action(np.zeros(3), 0.0, 1.0)
        target = np.array([eef[0], eef[1], self.lift_height + 0.06])
        return self.action(target - eef, 0.0, 1.0, limit=0.7)
