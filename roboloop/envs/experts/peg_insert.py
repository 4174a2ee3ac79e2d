"""Scripted expert for PegInsert.

Grasp the peg near its top, lift it clear of the fixture, servo the *peg's* measured position and
yaw (not the gripper's) onto the hole, then descend slowly while correcting. If the peg jams on
the rim it backs off and realigns; if it falls out of the hand it starts over.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from roboloop.envs.base import quat_to_yaw
from roboloop.envs.experts.base import GripperExpert, wrap_to


class PegInsertExpert(GripperExpert):
    APPROACH, DESCEND, CLOSE, LIFT, ALIGN, INSERT, BACKOFF = range(7)

    def _configure(self, env: Any) -> None:
        super()._configure(env)
        self.half_height = float(env.peg_half_height)
        self.fixture_height = float(env.fixture_height)
        self.clearance = float(env.clearance)

    def _reset_plan(self) -> None:
        self.phase = self.APPROACH
        self.counter = 0
        self.last_bottom = math.inf

    def _plan(self, state: np.ndarray) -> np.ndarray:
        eef, yaw, _ = self.proprio(state)
        peg, peg_quat, hole = state[9:12], state[12:16], state[16:19]
        hole_yaw = math.atan2(state[20], state[19])
        peg_yaw = quat_to_yaw(peg_quat)
        peg_top = peg[2] + self.half_height
        peg_bottom = peg[2] - self.half_height
        grasp_z = peg_top - 0.035  # fingers overlap the top 3.5 cm of the peg
        # Held: between the fingers horizontally, fingertips between the peg's ends (it may slide up when jammed).
        in_hand = (abs(peg[0] - eef[0]) < 0.015 and abs(peg[1] - eef[1]) < 0.015
                   and peg_bottom - 0.005 < eef[2] < peg_top - 0.01)

        if self.phase >= self.LIFT and not in_hand:
            self.phase = self.APPROACH  # lost the peg: start over
        if self.phase == self.APPROACH:
            yaw_error = wrap_to(peg_yaw - yaw, math.pi / 2)
            target = np.array([peg[0], peg[1], peg_top + 0.03])
            if np.hypot(*(peg[:2] - eef[:2])) < 0.004 and abs(yaw_error) < 0.04 and abs(eef[2] - target[2]) < 0.02:
                self.phase = self.DESCEND
            return self.action(target - eef, yaw_error, -1.0)
        if self.phase == self.DESCEND:
            yaw_error = wrap_to(peg_yaw - yaw, math.pi / 2)
            target = np.array([peg[0], peg[1], grasp_z])
            if abs(eef[2] - grasp_z) < 0.004:
                self.phase, self.counter = self.CLOSE, 0
            return self.action(target - eef, yaw_error, -1.0)
        if self.phase == self.CLOSE:
            self.counter += 1
            if self.counter >= 3:
                self.phase = self.LIFT
            return self.action(np.zeros(3), 0.0, 1.0)

        # The peg is in hand: from here on servo the peg, not the gripper.
        yaw_error = wrap_to(hole_yaw - peg_yaw, math.pi / 2)
        planar = hole[:2] - peg[:2]
        clear_z = self.fixture_height + 0.015  # peg bottom this high clears the fixture
        if self.phase == self.LIFT:
            dz = clear_z + 0.01 - peg_bottom
            if dz < 0.005:
                self.phase = self.ALIGN
            # Move toward the hole only once clear of the fixture's top.
            move = planar if peg_bottom > clear_z else np.zeros(2)
            return self.action(np.array([*move, dz]), yaw_error, 1.0, limit=0.8)
        if self.phase == self.ALIGN:
            dz = clear_z - peg_bottom
            aligned = np.hypot(*planar) < 0.25 * self.clearance and abs(yaw_error) < 0.01
            self.counter = self.counter + 1 if aligned else 0
            if self.counter >= 2:  # aligned on two consecutive steps: the peg has stopped swinging
                self.phase, self.counter, self.last_bottom = self.INSERT, 0, peg_bottom
            return self.action(np.array([*planar, dz]), yaw_error, 1.0, gain=0.8)
        if self.phase == self.INSERT:
            # Slow descent with continuous correction; a peg that stops sinking is jammed on the rim.
            self.counter = self.counter + 1 if peg_bottom > self.last_bottom - 0.001 else 0
            self.last_bottom = min(self.last_bottom, peg_bottom)
            if self.counter >= 4 and peg_bottom > self.fixture_height - 0.005:
                self.phase, self.counter = self.BACKOFF, 0
            return self.action(np.array([*planar, -0.01]), yaw_error, 1.0, gain=0.8)
        # BACKOFF: rise above the rim and realign.
        dz = clear_z - peg_bottom
        if dz < 0.003:
            self.phase, self.counter = self.ALIGN, 0
        return self.action(np.array([0.0, 0.0, dz]), 0.0, 1.0)
