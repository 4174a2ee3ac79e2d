"""Scripted expert for PushAround.

At reset the expert flips a fair coin for the route (left or right of the obstacle): that coin is
what makes the demonstrations bimodal. The puck is pushed through waypoints (beside the wall's
near corner, beside its far corner, then the goal) with the *open* gripper used as a cradle: the two
fingertips straddle the puck, which keeps a round puck stable while pushed. Before each push the
gripper lifts, moves behind the puck along the push direction, and descends.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from roboloop.envs.experts.base import GripperExpert, wrap_to
from roboloop.envs.scene import FINGER_HALF_WIDTH, MAX_OPENING


class PushAroundExpert(GripperExpert):
    REPOSITION, PUSH = range(2)
    Z_PUSH = 0.006  # fingertips just above the table
    Z_TRAVEL = 0.055  # clears the puck (3 cm tall), not the wall (8 cm)

    def _configure(self, env: Any) -> None:
        super()._configure(env)
        self.puck_radius = float(env.puck_radius)
        self.goal_radius = float(env.goal_radius)
        self.obstacle_half_length = float(env.obstacle_half_length)
        self.obstacle_half_width = float(env.OBSTACLE_HALF_WIDTH)
        # Gripper-to-puck distance when the puck rests against the open fingers' front corners.
        half_gap = MAX_OPENING / 2
        self.cradle = FINGER_HALF_WIDTH + math.sqrt(self.puck_radius**2 - half_gap**2)

    def _reset_plan(self) -> None:
        self.side = 1.0 if self.rng.random() < 0.5 else -1.0
        self.waypoint = 0
        self.phase = self.REPOSITION

    def _waypoints(self, state: np.ndarray) -> list[np.ndarray]:
        goal, obstacle = state[12:14], state[14:16]
        # Far enough out that the open fingers (11 cm across) clear the wall's corners.
        x = obstacle[0] + self.side * (self.obstacle_half_length + self.puck_radius + 0.06)
        return [
            np.array([x, obstacle[1] - 0.06]),
            np.array([x, obstacle[1] + self.obstacle_half_width + self.puck_radius + 0.015]),
            goal.copy(),
        ]

    def _plan(self, state: np.ndarray) -> np.ndarray:
        eef, yaw, _ = self.proprio(state)
        puck = state[9:11]
        waypoints = self._waypoints(state)
        while self.waypoint < 2 and np.linalg.norm(waypoints[self.waypoint] - puck) < 0.025:
            self.waypoint += 1
        target = waypoints[self.waypoint]
        to_target = target - puck
        remaining = float(np.linalg.norm(to_target))
        direction = to_target / max(remaining, 1e-6)
        # Fingers close along the gripper's local y, so the push direction is local +x or -x.
        yaw_error = wrap_to(math.atan2(direction[1], direction[0]) - yaw, math.pi)
        behind = puck - direction * self.cradle
        pre_push = puck - direction * (self.cradle + 0.035)

        # In push pose: on the line behind the puck, fingertips low, turned to the push direction.
        rel = eef[:2] - puck
        along = -float(rel @ direction)
        lateral = abs(float(rel[0] * direction[1] - rel[1] * direction[0]))
        in_push_pose = (lateral < 0.015 and self.cradle - 0.015 < along < self.cradle + 0.05
                        and abs(yaw_error) < 0.35 and eef[2] < self.Z_PUSH + 0.015)
        if self.phase == self.PUSH and not in_push_pose:
            self.phase = self.REPOSITION
        if self.phase == self.REPOSITION and in_push_pose:
            self.phase = self.PUSH
        if self.phase == self.PUSH:
            # Slow down near the goal so the puck does not slide past it.
            step = 0.02 if self.waypoint < 2 else float(np.clip(remaining, 0.004, 0.02))
            goal_xy = behind + direction * step
            return self.action(np.array([*(goal_xy - eef[:2]), self.Z_PUSH - eef[2]]), yaw_error, -1.0)

        # REPOSITION: up, across to the pre-push point, down.
        if np.linalg.norm(eef[:2] - pre_push) < 0.012 and abs(yaw_error) < 0.12:
            return self.action(np.array([*(pre_push - eef[:2]), self.Z_PUSH - eef[2]]), yaw_error, -1.0)
        if eef[2] < self.Z_TRAVEL - 0.01:
            return self.action(np.array([0.0, 0.0, self.Z_TRAVEL - eef[2]]), yaw_error, -1.0)
        return self.action(np.array([*(pre_push - eef[:2]), self.Z_TRAVEL - eef[2]]), yaw_error, -1.0)
