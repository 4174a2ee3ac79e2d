"""Scripted expert for PegInsert.

Grasp the peg near its top, then servo the *peg's* measured position and yaw (not the gripper's) onto
the hole while holding a height that goes from clear of the fixture down to inserted as the peg comes
into alignment. After the grasp the action is a function of the observation alone (no phases), which is
what behavior cloning can reproduce, except for an aiming error drawn per episode (up to 6 mm and 0.08
rad) that the carry follows while the peg is far and that fades out over its last centimetre, so the
demonstrations show corrections from the few-millimetre misalignments a cloned policy arrives with; a
peg that lands off the hole lifts off and realigns, and one that falls out of the hand starts the grasp
over.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from roboloop.envs.base import quat_to_yaw
from roboloop.envs.experts.base import GripperExpert, toward, wrap_to

AIM_ERROR = 0.006  # m
AIM_YAW_ERROR = 0.08  # rad


class PegInsertExpert(GripperExpert):
    APPROACH, DESCEND, CLOSE, CARRY = range(4)
    YAW_TOLERANCE = 0.02  # rad: a quarter of what the clearance allows (0.5 mm over the 12 mm half side)

    def _configure(self, env: Any) -> None:
        super()._configure(env)
        self.half_height = float(env.peg_half_height)
        self.fixture_height = float(env.fixture_height)
        self.clearance = float(env.clearance)
        self.insert_depth = float(env.insert_depth)

    def _reset_plan(self) -> None:
        self.phase = self.APPROACH
        self.counter = 0
        # (dx, dy, dyaw) the carry aims off by until the peg is close (uniform in a 6 mm disc, +-0.08 rad).
        radius, angle = AIM_ERROR * math.sqrt(self.rng.random()), 2 * math.pi * self.rng.random()
        self.aim_error = np.array([radius * math.cos(angle), radius * math.sin(angle),
                                   self.rng.uniform(-AIM_YAW_ERROR, AIM_YAW_ERROR)])

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

        if self.phase == self.CARRY and not in_hand:
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
                self.phase = self.CARRY
            return self.action(np.zeros(3), 0.0, 1.0)

        # The peg is in hand: from here on servo the peg, not the gripper, and plan from the observation alone
        # (no phases), so that behavior cloning sees one function of the state. The height to hold falls from
        # clear of the fixture to inserted as the misalignment goes to zero: a peg that is not aligned hovers
        # while it aligns, and one that lands on the fixture's top off the hole lifts itself off again.
        yaw_error = wrap_to(hole_yaw - peg_yaw, math.pi / 2)
        planar = hole[:2] - peg[:2]
        offset = float(np.hypot(*planar))
        # Aim off by this episode's aiming error while far, fading out from 1 cm to 2 mm: the demonstrations then
        # arrive a few millimetres off and correct while hovering, the states a cloned policy ends up in.
        fade = min(max((offset - 0.002) / 0.008, 0.0), 1.0)
        aim_planar = planar + fade * self.aim_error[:2]
        aim_yaw_error = yaw_error + fade * self.aim_error[2]
        clear_z = self.fixture_height + 0.015  # peg bottom this high clears the fixture
        goal_z = self.fixture_height - self.insert_depth - 0.005
        inside = peg_bottom < self.fixture_height - 0.001 and offset < self.clearance * 1.5
        misalign = max(offset / (0.5 * self.clearance), abs(yaw_error) / self.YAW_TOLERANCE)
        lowering = min(max(2.0 - 2.0 * misalign, 0.0), 1.0)  # 0 at misalign >= 1, 1 at <= 0.5
        target_z = goal_z if inside else clear_z - lowering * (clear_z - goal_z)
        # Move across only once clear of the fixture's top, or when already over the hole.
        move = aim_planar if (peg_bottom > clear_z - 0.005 or offset < 0.003 or inside) else np.zeros(2)
        action = self.action(np.array([*move, 0.0]), aim_yaw_error, 1.0, gain=0.8, limit=0.8)
        action[2] = toward(np.array([target_z - peg_bottom]), self.max_delta_pos, limit=0.3)[0]
        return action
