"""Declarative domain randomization: a spec of ranges, a sampler, and an applier.

A :class:`RandomizationSpec` is data (a frozen dataclass of ranges, usable as a Hydra structured
config). Each episode the env draws one :class:`dict` *sample* from it with ``np_random`` and applies
the sample to its MuJoCo model. The sample is flat (``"cube.x"``, ``"friction_scale"``,
``"camera.front.pos"``...) and JSON-serialisable, reported in ``reset``'s ``info["randomization"]``,
stored with every episode, and accepted back through ``reset(options={"randomization": sample})`` so
an episode can be reconstructed exactly.

Order follows dm_control composer: model edits (physics and visuals) first, then object and fixture
poses, then per-step effects (action latency and observation noise) that live in the env.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import mujoco
import numpy as np

from roboloop.core.errors import ConfigError

Range = tuple[float, float]


def _check_range(name: str, value: Range, *, positive: bool = False) -> None:
    if len(value) != 2:
        raise ConfigError(f"randomization.{name} must be a (low, high) pair, got {value!r}")
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"randomization.{name} must be finite, got {value!r}")
    if low > high:
        raise ConfigError(f"randomization.{name} has low > high: {value!r}")
    if positive and low <= 0:
        raise ConfigError(f"randomization.{name} must be > 0 (it scales a physical quantity), got {value!r}")


@dataclass(frozen=True)
class PoseRange:
    """Planar pose range of an object or fixture: x, y in metres (table frame), yaw in radians."""

    x: Range = (0.0, 0.0)
    y: Range = (0.0, 0.0)
    yaw: Range = (0.0, 0.0)

    def __post_init__(self) -> None:
        for f in ("x", "y", "yaw"):
            _check_range(f, getattr(self, f))

    def widened(self, factor: float) -> PoseRange:
        """The same range scaled about its centre by ``factor`` (used to make tasks harder)."""

        def scale(r: Range) -> Range:
            mid, half = (r[0] + r[1]) / 2, (r[1] - r[0]) / 2 * factor
            return (mid - half, mid + half)

        return PoseRange(scale(self.x), scale(self.y), scale(self.yaw))


@dataclass(frozen=True)
class RandomizationSpec:
    """Ranges for everything an episode can vary. The identity spec changes nothing but poses.

    Attributes:
        poses: Pose range per named entity of the task (e.g. ``{"cube": PoseRange(...)}``); each task
            provides its own defaults and rejects unknown names.
        friction_scale: Multiplies the sliding friction of every geom.
        object_mass_scale: Multiplies mass and inertia of the task's movable objects.
        actuator_gain_scale: Multiplies the stiffness (kp) of the gripper's position actuators.
        actuator_damping_scale: Multiplies the damping (kv) of the gripper's position actuators.
        object_rgb_jitter: Each RGB channel of the task objects' colours moves by up to this much.
        table_rgb_jitter: Same for the table.
        light_intensity_scale: Multiplies the key light's diffuse intensity.
        light_pos_jitter: The key light moves by up to this many metres per axis.
        camera_pos_jitter: Each world camera moves by up to this many metres per axis.
        camera_angle_jitter: Each world camera rotates by up to this many radians about a random axis.
        action_latency_steps: Actions reach the robot this many control steps late (integers).
        obs_noise_std: Std of Gaussian noise added to ``observation.state`` (in its units).
    """

    poses: dict[str, PoseRange] = field(default_factory=dict)
    friction_scale: Range = (1.0, 1.0)
    object_mass_scale: Range = (1.0, 1.0)
    actuator_gain_scale: Range = (1.0, 1.0)
    actuator_damping_scale: Range = (1.0, 1.0)
    object_rgb_jitter: float = 0.0
    table_rgb_jitter: float = 0.0
    light_intensity_scale: Range = (1.0, 1.0)
    light_pos_jitter: float = 0.0
    camera_pos_jitter: float = 0.0
    camera_angle_jitter: float = 0.0
    action_latency_steps: tuple[int, int] = (0, 0)
    obs_noise_std: float = 0.0

    def __post_init__(self) -> None:
        for name in ("friction_scale", "object_mass_scale", "actuator_gain_scale", "actuator_damping_scale",
                     "light_intensity_scale"):
            _check_range(name, getattr(self, name), positive=True)
        for name in ("object_rgb_jitter", "table_rgb_jitter", "light_pos_jitter", "camera_pos_jitter",
                     "camera_angle_jitter", "obs_noise_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"randomization.{name} must be a finite number >= 0, got {value!r}")
        low, high = self.action_latency_steps
        if int(low) != low or int(high) != high or not 0 <= low <= high:
            raise ConfigError(
                f"randomization.action_latency_steps must be integers 0 <= low <= high, got {(low, high)!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | RandomizationSpec | None, base: RandomizationSpec
                     ) -> RandomizationSpec:
        """Overlay user values (a dict from a config or CLI, or a full spec) onto a task's ``base`` spec.

        Pose ranges are merged per entity so a user can widen one object's range and keep the rest.
        """
        if values is None:
            return base
        if isinstance(values, RandomizationSpec):
            values = {f.name: getattr(values, f.name) for f in fields(values)}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown randomization field(s) {unknown}; known fields: {sorted(known)}")
        updates: dict[str, Any] = {}
        for key, value in values.items():
            if key == "poses":
                poses = dict(base.poses)
                for name, pose in dict(value).items():
                    if name not in base.poses:
                        raise ConfigError(
                            f"randomization.poses has no entity {name!r} in this task; known: {sorted(base.poses)}"
                        )
                    poses[name] = pose if isinstance(pose, PoseRange) else replace(base.poses[name], **{
                        k: tuple(v) for k, v in dict(pose).items()})
                updates["poses"] = poses
            elif isinstance(getattr(base, key), tuple):
                updates[key] = tuple(value)
            else:
                updates[key] = value
        return replace(base, **updates)


def _uniform(rng: np.random.Generator, r: Range) -> float:
    # Degenerate ranges draw nothing, so turning a factor on does not shift the random stream of the others.
    return float(r[0]) if r[0] == r[1] else float(rng.uniform(r[0], r[1]))


def _small_rotation_quat(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    return np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis])


def sample_randomization(spec: RandomizationSpec, rng: np.random.Generator, camera_names: tuple[str, ...]
                         ) -> dict[str, Any]:
    """Draw one episode's values. Pose entries are drawn by the task (it may reject overlaps)."""
    sample: dict[str, Any] = {
        "friction_scale": _uniform(rng, spec.friction_scale),
        "object_mass_scale": _uniform(rng, spec.object_mass_scale),
        "actuator_gain_scale": _uniform(rng, spec.actuator_gain_scale),
        "actuator_damping_scale": _uniform(rng, spec.actuator_damping_scale),
        "light_intensity_scale": _uniform(rng, spec.light_intensity_scale),
    }
    if spec.object_rgb_jitter > 0:
        sample["object_rgb_offset"] = rng.uniform(-spec.object_rgb_jitter, spec.object_rgb_jitter, 3).tolist()
    if spec.table_rgb_jitter > 0:
        sample["table_rgb_offset"] = rng.uniform(-spec.table_rgb_jitter, spec.table_rgb_jitter, 3).tolist()
    if spec.light_pos_jitter > 0:
        sample["light_pos_offset"] = rng.uniform(-spec.light_pos_jitter, spec.light_pos_jitter, 3).tolist()
    for cam in camera_names:
        if spec.camera_pos_jitter > 0:
            sample[f"camera.{cam}.pos_offset"] = rng.uniform(
                -spec.camera_pos_jitter, spec.camera_pos_jitter, 3).tolist()
        if spec.camera_angle_jitter > 0:
            sample[f"camera.{cam}.rotation"] = _small_rotation_quat(rng, spec.camera_angle_jitter).tolist()
    low, high = spec.action_latency_steps
    sample["action_latency_steps"] = int(low) if low == high else int(rng.integers(low, high + 1))
    sample["obs_noise_std"] = float(spec.obs_noise_std)
    if spec.obs_noise_std > 0:
        sample["obs_noise_seed"] = int(rng.integers(2**31))
    return sample


class ModelRandomizer:
    """Applies samples to a model. Keeps the nominal values so every episode starts from them.

    Args:
        model: The MuJoCo model to edit in place.
        object_bodies: Bodies whose mass is scaled (the task's movable objects).
        object_geoms: Ids of geoms whose colour is jittered with ``object_rgb_offset``.
        table_geoms: Ids of geoms whose colour is jittered with ``table_rgb_offset``.
        gripper_actuators: Ids of position actuators whose kp/kv are scaled.
        camera_names: Cameras that may be jittered (those fixed in the world or on a static body).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        *,
        object_bodies: list[str],
        object_geoms: list[int],
        table_geoms: list[int],
        gripper_actuators: list[int],
        camera_names: tuple[str, ...],
        light_name: str = "key",
    ) -> None:
        self.model = model
        self._body_ids = [model.body(b).id for b in object_bodies]
        self._object_geom_ids = list(object_geoms)
        self._table_geom_ids = list(table_geoms)
        self._actuator_ids = list(gripper_actuators)
        self._camera_ids = {c: model.camera(c).id for c in camera_names}
        self._light_id = model.light(light_name).id
        self._nominal = {
            "geom_friction": model.geom_friction.copy(),
            "body_mass": model.body_mass.copy(),
            "body_inertia": model.body_inertia.copy(),
            "actuator_gainprm": model.actuator_gainprm.copy(),
            "actuator_biasprm": model.actuator_biasprm.copy(),
            "geom_rgba": model.geom_rgba.copy(),
            "geom_matid": model.geom_matid.copy(),
            "mat_rgba": model.mat_rgba.copy(),
            "light_diffuse": model.light_diffuse.copy(),
            "light_pos": model.light_pos.copy(),
            "cam_pos": model.cam_pos.copy(),
            "cam_quat": model.cam_quat.copy(),
        }

    def apply(self, sample: Mapping[str, Any]) -> None:
        m, nominal = self.model, self._nominal
        for name, value in nominal.items():
            getattr(m, name)[:] = value

        m.geom_friction[:, 0] *= float(sample.get("friction_scale", 1.0))
        mass_scale = float(sample.get("object_mass_scale", 1.0))
        for b in self._body_ids:
            m.body_mass[b] *= mass_scale
            m.body_inertia[b] *= mass_scale
        gain, damping = float(sample.get("actuator_gain_scale", 1.0)), float(sample.get("actuator_damping_scale", 1.0))
        for a in self._actuator_ids:
            # Position actuator: force = kp * ctrl - kp * q - kv * qdot (gainprm[0]=kp, biasprm[1:3]=-kp,-kv).
            m.actuator_gainprm[a, 0] *= gain
            m.actuator_biasprm[a, 1] *= gain
            m.actuator_biasprm[a, 2] *= damping
        for key, geom_ids in (("object_rgb_offset", self._object_geom_ids), ("table_rgb_offset", self._table_geom_ids)):
            if key in sample:
                offset = np.asarray(sample[key], dtype=float)
                for g in geom_ids:
                    mat = m.geom_matid[g]
                    # A geom with a material takes its colour from the material; colour it directly instead.
                    base = nominal["mat_rgba"][mat] if mat >= 0 else nominal["geom_rgba"][g]
                    m.geom_matid[g] = -1
                    m.geom_rgba[g, :3] = np.clip(base[:3] + offset, 0.0, 1.0)
                    m.geom_rgba[g, 3] = base[3]
        m.light_diffuse[self._light_id] *= float(sample.get("light_intensity_scale", 1.0))
        if "light_pos_offset" in sample:
            m.light_pos[self._light_id] += np.asarray(sample["light_pos_offset"], dtype=float)
        for cam, cid in self._camera_ids.items():
            if f"camera.{cam}.pos_offset" in sample:
                m.cam_pos[cid] += np.asarray(sample[f"camera.{cam}.pos_offset"], dtype=float)
            if f"camera.{cam}.rotation" in sample:
                out = np.empty(4)
                mujoco.mju_mulQuat(out, np.asarray(sample[f"camera.{cam}.rotation"], dtype=float), m.cam_quat[cid])
                m.cam_quat[cid] = out
