"""Scripted experts for the Fetch adapters (4-D actions: ``[dx, dy, dz, grip]``, grip +1 opens).

``observation.state`` layout: grip_pos 0:3, object_pos 3:6, object_rel_pos 6:9, gripper_state 9:11,
object_rot 11:14, object_velp 14:17, object_velr 17:20, grip_velp 20:23, gripper_vel 23:25,
desired_goal 25:28.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from roboloop.envs.experts.base import ScriptedExpert, toward

_MAX_DELTA = 0.05  # Fetch moves the gripper 5 cm per unit action
_OPEN, _CLOSE = 1.0, -1.0


def _fetch_action(error: np.ndarray, grip: float, gain: float = 1.0) -> np.ndarray:
    return np.array([*toward(error, _MAX_DELTA, gain), grip])


class FetchPushExpert(ScriptedExpert):
    """Get behind the block on the line through the goal, then push it there; re-approach if it slips."""

    action_dim = 4
    REPOSITION, PUSH = range(2)
    CONTACT = 0.045  # gripper-to-block-centre distance when the (closed) fingertips touch the block

    def _configure(self, env: Any) -> None:
        self.distance_threshold = float(env.fetch_env.distance_threshold)

    def _reset_plan(self) -> None:
        self.phase = self.REPOSITION

    def _plan(self, state: np.ndarray) -> np.ndarray:
        grip, block, goal = state[0:3], state[3:6], state[25:28]
        to_goal = goal[:2] - block[:2]
        remaining = float(np.linalg.norm(to_goal))
        if remaining < 0.6 * self.distance_threshold:
            return _fetch_action(np.zeros(3), _CLOSE)  # done: hold still
        direction = to_goal / remaining
        rel = grip[:2] - block[:2]
        along = -float(rel @ direction)
        lateral = abs(float(rel[0] * direction[1] - rel[1] * direction[0]))
        in_push_pose = lateral < 0.012 and self.CONTACT - 0.015 < along < self.CONTACT + 0.04 \
            and abs(grip[2] - block[2]) < 0.012
        if self.phase == self.PUSH and not in_push_pose:
            self.phase = self.REPOSITION
        if self.phase == self.REPOSITION and in_push_pose:
            self.phase = self.PUSH
        if self.phase == self.PUSH:
            step = min(0.03, remaining)
            target = np.array([*(block[:2] - direction * self.CONTACT + direction * step), block[2]])
            return _fetch_action(target - grip, _CLOSE)
        pre_push = block[:2] - direction * (self.CONTACT + 0.02)
        near_block = float(np.linalg.norm(rel)) < 0.07
        if np.linalg.norm(grip[:2] - pre_push) < 0.01:
            return _fetch_action(np.array([*(pre_push - grip[:2]), block[2] - grip[2]]), _CLOSE)
        if near_block and grip[2] < block[2] + 0.04:
            return _fetch_action(np.array([0.0, 0.0, block[2] + 0.05 - grip[2]]), _CLOSE)  # lift clear first
        return _fetch_action(np.array([*(pre_push - grip[:2]), block[2] + 0.05 - grip[2]]), _CLOSE)


class FetchPickAndPlaceExpert(ScriptedExpert):
    """Open above the block, descend, close, carry to the goal and hold; start over if it drops."""

    action_dim = 4
    APPROACH, DESCEND, CLOSE, CARRY = range(4)

    def _reset_plan(self) -> None:
        self.phase = self.APPROACH
        self.closing_steps = 0

    def _plan(self, state: np.ndarray) -> np.ndarray:
        grip, block, goal = state[0:3], state[3:6], state[25:28]
        offset = block - grip
        if self.phase == self.CARRY and np.linalg.norm(offset) > 0.04:
            self.phase = self.APPROACH  # dropped it
        if self.phase == self.APPROACH:
            target = block + np.array([0.0, 0.0, 0.05])
            if np.linalg.norm(target - grip) < 0.01:
                self.phase = self.DESCEND
            return _fetch_action(target - grip, _OPEN)
        if self.phase == self.DESCEND:
            if np.linalg.norm(offset) < 0.008:
                self.phase, self.closing_steps = self.CLOSE, 0
            return _fetch_action(offset, _OPEN)
        if self.phase == self.CLOSE:
            self.closing_steps += 1
            if self.closing_steps >= 3:
                self.phase = self.CARRY
            return _fetch_action(np.zeros(3), _CLOSE)
        # CARRY: move the block (not the gripper) onto the goal.
        return _fetch_action(goal - block, _CLOSE)
