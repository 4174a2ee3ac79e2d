"""MJCF for the pieces every roboloop task shares: table, lights, cameras and the floating gripper.

The gripper is a parallel-jaw hand on four joints (x, y, z slides and a yaw hinge) driven by
position actuators, with gravity compensation, so it behaves like the end effector of an arm
under a Cartesian impedance controller. The gripper frame's origin is the point between the
fingertips: its joint values *are* the end-effector pose, which keeps observations and scripted
experts simple and lets a real arm's Cartesian controller map onto the same action space.

Coordinates: the table top is the plane z = 0, x points right and y away from the front camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Gripper geometry (metres). Fingers close along the gripper's local y axis.
FINGER_HALF_WIDTH = 0.012  # along local x
FINGER_HALF_THICKNESS = 0.006  # along local y
FINGER_HALF_LENGTH = 0.03  # along z; fingertips at the gripper origin
FINGER_OPEN_OFFSET = 0.045  # |y| of a finger's centre when fully open
FINGER_TRAVEL = 0.04  # each finger moves this far inward from open to closed
MAX_OPENING = 2 * (FINGER_OPEN_OFFSET - FINGER_HALF_THICKNESS)  # inner-face gap when open: 7.8 cm

WORKSPACE_LOW = np.array([-0.32, -0.32, 0.0])
WORKSPACE_HIGH = np.array([0.32, 0.32, 0.40])
TABLE_HALF = 0.4


@dataclass(frozen=True)
class CameraDef:
    """A fixed camera looking from ``pos`` at ``target`` (world frame, or body frame for body cameras)."""

    name: str
    pos: tuple[float, float, float]
    target: tuple[float, float, float]
    fovy: float = 45.0


def look_at_xyaxes(pos: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """Camera frame x (right) and y (up) axes, (6,), for a camera at ``pos`` looking at ``target``.

    MuJoCo cameras look along their local -z axis with +y up in the image.
    """
    up = np.array([0.0, 0.0, 1.0]) if up is None else up
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    if abs(float(np.dot(forward, up))) > 0.999:  # looking straight down: pick image-up = +y
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    return np.concatenate([right, cam_up])


def _fmt(values: np.ndarray | tuple[float, ...]) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def camera_xml(cam: CameraDef) -> str:
    xy = look_at_xyaxes(np.array(cam.pos), np.array(cam.target))
    return f'<camera name="{cam.name}" pos="{_fmt(cam.pos)}" xyaxes="{_fmt(xy)}" fovy="{cam.fovy}"/>'


FRONT_CAMERA = CameraDef("front", pos=(0.0, -0.5, 0.42), target=(0.0, 0.03, 0.02), fovy=48.0)
TOP_CAMERA = CameraDef("top", pos=(0.0, -0.04, 0.72), target=(0.0, 0.0, 0.0), fovy=45.0)
# The wrist camera rides on the gripper beside the palm, looking down past the fingertips.
WRIST_CAMERA = CameraDef("wrist", pos=(-0.05, 0.0, 0.075), target=(0.025, 0.0, -0.06), fovy=75.0)
WORLD_CAMERAS = (FRONT_CAMERA, TOP_CAMERA)
CAMERA_NAMES = tuple(c.name for c in (*WORLD_CAMERAS, WRIST_CAMERA))


def gripper_xml(start: tuple[float, float, float] = (0.0, -0.1, 0.2)) -> str:
    """The floating gripper body with its joints; actuators are in :func:`gripper_actuators_xml`."""
    fz = FINGER_HALF_LENGTH
    finger = (
        f'type="box" size="{FINGER_HALF_WIDTH} {FINGER_HALF_THICKNESS} {FINGER_HALF_LENGTH}" '
        'material="finger" condim="4" friction="1.5 0.02 0.0001" solref="0.004 1"'
    )
    return f"""
    <body name="gripper" pos="0 0 0" gravcomp="1">
      <joint name="grip_x" type="slide" axis="1 0 0" range="{WORKSPACE_LOW[0]} {WORKSPACE_HIGH[0]}" ref="0"/>
      <joint name="grip_y" type="slide" axis="0 1 0" range="{WORKSPACE_LOW[1]} {WORKSPACE_HIGH[1]}"/>
      <joint name="grip_z" type="slide" axis="0 0 1" range="{WORKSPACE_LOW[2]} {WORKSPACE_HIGH[2]}"/>
      <joint name="grip_yaw" type="hinge" axis="0 0 1" range="-3.2 3.2" armature="0.01"/>
      <inertial pos="0 0 0.08" mass="0.5" diaginertia="0.001 0.001 0.0006"/>
      <geom name="palm" type="box" size="0.016 0.058 0.012" pos="0 0 {2 * fz + 0.012}" material="gripper"/>
      <geom name="wrist_link" type="cylinder" size="0.018 0.04" pos="0 0 {2 * fz + 0.064}"
            material="gripper" contype="0" conaffinity="0"/>
      {camera_xml(WRIST_CAMERA)}
      <site name="eef" pos="0 0 0" size="0.004" rgba="1 0 0 0.5" group="4"/>
      <body name="finger_left" pos="0 {FINGER_OPEN_OFFSET} {fz}" gravcomp="1">
        <joint name="finger_left" type="slide" axis="0 -1 0" range="0 {FINGER_TRAVEL}" armature="0.002"/>
        <geom name="finger_left" {finger} mass="0.04"/>
      </body>
      <body name="finger_right" pos="0 {-FINGER_OPEN_OFFSET} {fz}" gravcomp="1">
        <joint name="finger_right" type="slide" axis="0 1 0" range="0 {FINGER_TRAVEL}" armature="0.002"/>
        <geom name="finger_right" {finger} mass="0.04"/>
      </body>
    </body>"""


# Actuator order is fixed: x, y, z, yaw, left finger, right finger (see ManipulationEnv._apply_action).
def gripper_actuators_xml() -> str:
    lo, hi = WORKSPACE_LOW, WORKSPACE_HIGH
    return f"""
    <position name="act_x" joint="grip_x" kp="1500" kv="60" ctrlrange="{lo[0]} {hi[0]}" forcerange="-30 30"/>
    <position name="act_y" joint="grip_y" kp="1500" kv="60" ctrlrange="{lo[1]} {hi[1]}" forcerange="-30 30"/>
    <position name="act_z" joint="grip_z" kp="1500" kv="60" ctrlrange="{lo[2]} {hi[2]}" forcerange="-30 30"/>
    <position name="act_yaw" joint="grip_yaw" kp="40" kv="1.5" ctrlrange="-3.2 3.2" forcerange="-6 6"/>
    <position name="act_finger_left" joint="finger_left" kp="500" kv="8" ctrlrange="0 {FINGER_TRAVEL}"
              forcerange="-20 20"/>
    <position name="act_finger_right" joint="finger_right" kp="500" kv="8" ctrlrange="0 {FINGER_TRAVEL}"
              forcerange="-20 20"/>"""


def scene_xml(
    name: str,
    *,
    worldbody: str,
    assets: str = "",
    physics_dt: float = 0.002,
    extra_contact: str = "",
) -> str:
    """A full MJCF document: shared scene + gripper + the task's ``worldbody`` elements."""
    cameras = "\n    ".join(camera_xml(c) for c in WORLD_CAMERAS)
    return f"""
<mujoco model="{name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{physics_dt}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <global offwidth="640" offheight="640"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.35 0.35 0.35" specular="0 0 0"/>
  </visual>
  <default>
    <geom solref="0.01 1" solimp="0.95 0.99 0.001"/>
  </default>
  <asset>
    <material name="table" rgba="0.72 0.62 0.5 1" reflectance="0"/>
    <material name="gripper" rgba="0.25 0.25 0.28 1" reflectance="0"/>
    <material name="finger" rgba="0.55 0.55 0.6 1" reflectance="0"/>
    <material name="floor" rgba="0.3 0.33 0.36 1" reflectance="0"/>
    <material name="backdrop" rgba="0.62 0.68 0.74 1" reflectance="0"/>
    {assets}
  </asset>
  <worldbody>
    <light name="key" pos="0.3 -0.4 1.2" dir="-0.25 0.3 -1" diffuse="0.7 0.7 0.7" castshadow="false"/>
    <geom name="floor" type="plane" size="2 2 0.1" pos="0 0 -0.75" material="floor" contype="0" conaffinity="0"/>
    <!-- A backdrop instead of a skybox: one box is far cheaper to render on a CPU. -->
    <geom name="backdrop" type="box" size="1.5 0.01 1" pos="0 0.9 0.2" material="backdrop" contype="0"
          conaffinity="0"/>
    <geom name="table" type="box" size="{TABLE_HALF} {TABLE_HALF} 0.02" pos="0 0 -0.02" material="table"
          friction="0.6 0.005 0.0001"/>
    {cameras}
    {gripper_xml()}
    {worldbody}
  </worldbody>
  <contact>
    <exclude body1="finger_left" body2="finger_right"/>
    {extra_contact}
  </contact>
  <actuator>{gripper_actuators_xml()}
  </actuator>
</mujoco>
"""
