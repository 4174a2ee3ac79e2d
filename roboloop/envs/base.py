"""The base class of roboloop's MuJoCo manipulation tasks.

Action (5,), in [-1, 1]:
    ``[dx, dy, dz, dyaw, grip]``. The first four move the gripper's position setpoint by up to
    ``max_delta_pos`` metres / ``max_delta_yaw`` radians per control step (end-effector deltas, as
    a real arm's Cartesian controller takes them); ``grip`` is absolute, -1 fully open, +1 closed.

Observation (Dict):
    ``observation.state`` (float32): proprioception ``[eef_pos(3), cos(yaw), sin(yaw),
    finger_gap(1), eef_vel(3)]`` followed by the task's object and fixture poses (see each task's
    ``observation_structure``). ``observation.images.<camera>`` (uint8, H x W x 3) for each camera
    asked for in ``cameras``. With ``proprio=True`` also ``observation.proprio`` (float32, 9): the
    proprioception alone, for image policies that must not read object poses (distilled students).

Control runs at ``control_freq`` Hz over ``physics_dt`` physics steps. Everything an episode varies
comes from the :class:`~roboloop.envs.randomization.RandomizationSpec` and ``np_random``; the
episode's drawn values are in ``reset``'s ``info["randomization"]``. ``get_state()`` returns the
full simulator state (physics plus pending delayed actions) and ``reset(options={"state": s})``
restores it, which is what dataset replay relies on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from roboloop.core.errors import ConfigError, StateError
from roboloop.envs import scene
from roboloop.envs.effects import ActionLatency, ObservationNoise
from roboloop.envs.randomization import ModelRandomizer, PoseRange, RandomizationSpec, sample_randomization
from roboloop.envs.registration import task_info
from roboloop.envs.rendering import Renderers

STATE_KEY = "observation.state"
PROPRIO_KEY = "observation.proprio"
IMAGE_PREFIX = "observation.images."
ACTION_DIM = 5
GRIP_INDEX = 4  # [dx, dy, dz, dyaw, grip]
PROPRIO_STRUCTURE: dict[str, int] = {"eef_pos": 3, "eef_yaw_cos_sin": 2, "finger_gap": 1, "eef_vel": 3}
_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
_OPEN_GRIP_ACTION = np.array([0.0, 0.0, 0.0, 0.0, -1.0])
RESET_OPTIONS = frozenset({"state", "randomization"})
GRIPPER_HOME_Z = 0.2


def refresh_derived(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """``mj_forward`` without its side effect on the simulation.

    MuJoCo's forward pass stores its constraint solution as the next step's warm start, and the
    warm start is simulator state: an extra forward (to render, or after restoring a state) would
    change the trajectory that follows. Restoring it keeps rendering and replay from perturbing
    the physics, so an env with cameras and one without step identically.
    """
    warmstart = data.qacc_warmstart.copy()
    mujoco.mj_forward(model, data)
    data.qacc_warmstart[:] = warmstart


def check_action(task_name: str, action: np.ndarray, layout: str) -> np.ndarray:
    """``action`` as float64 after checking its shape (``layout`` names the dims) and finiteness."""
    action = np.asarray(action, dtype=np.float64)
    expected = (layout.count(",") + 1,)
    if action.shape != expected:
        raise ValueError(f"{task_name}: action has shape {action.shape}, expected {expected} = [{layout}]")
    if not np.isfinite(action).all():
        raise ValueError(f"{task_name}: action contains NaN or inf: {action.tolist()}")
    return action


def hold_action(action: np.ndarray) -> np.ndarray:
    """The command that holds the gripper where ``action`` left it: no motion (zero position and yaw deltas), the
    same grip; same dtype as ``action``."""
    hold = np.zeros_like(action)
    hold[GRIP_INDEX:] = action[GRIP_INDEX:]
    return hold


def check_reset_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The reset options as a dict, rejecting keys other than ``state`` and ``randomization``."""
    options = dict(options or {})
    unknown = set(options) - RESET_OPTIONS
    if unknown:
        raise ValueError(f"unknown reset option(s) {sorted(unknown)}; accepted: {sorted(RESET_OPTIONS)}")
    return options


def image_key(camera: str) -> str:
    return f"{IMAGE_PREFIX}{camera}"


def canonical_quat(quat: np.ndarray) -> np.ndarray:
    """q and -q are the same rotation; pick w >= 0 so observations are continuous functions of pose."""
    return -quat if quat[0] < 0 else quat


def yaw_to_quat(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def quat_to_yaw(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


class ManipulationEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """A tabletop task with the floating parallel-jaw gripper. Subclasses define the task.

    Args:
        cameras: Cameras rendered into the observation (``front``, ``top``, ``wrist``); empty for state only.
        image_size: Camera resolution, an int (square) or ``(height, width)``.
        render_mode: ``"rgb_array"`` to let :meth:`render` return frames for videos.
        render_size: Side of the frames :meth:`render` returns.
        randomization: Overrides of the task's default :class:`RandomizationSpec` (a spec or a dict).
        control_freq: Control steps per second.
        physics_dt: Physics time step; ``1 / control_freq`` must be a whole multiple of it.
        reward_type: ``"sparse"`` (1 on success, else 0) or ``"dense"`` (the sum of the shaped terms in info).
        terminate_on_success: End the episode (``terminated=True``) on the first successful step.
        max_delta_pos: Setpoint change, in metres, of a full-scale position action.
        max_delta_yaw: Setpoint change, in radians, of a full-scale yaw action.
        proprio: Also observe ``observation.proprio`` (the first 9 values of ``observation.state``, with the same
            sensor noise).
        hold_steps: After each action the robot holds for this many more control steps (position and yaw setpoints
            unchanged, grip as commanded) before the env observes again, so the policy decides every
            ``1 + hold_steps`` control steps. A controller that waits for its command to take effect copes with
            action latency of up to ``hold_steps`` steps. The reward is summed over the held steps, the episode ends
            on the first successful one, and the time limit stays in control steps (the robot's time): the env
            truncates itself after the task's ``max_episode_steps`` control steps.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    #: Registered task name (``roboloop/<task_name>-v0``).
    task_name: ClassVar[str]
    #: Names and sizes of the task part of ``observation.state``, in order.
    task_observation_structure: ClassVar[dict[str, int]]
    #: The parts of ``task_observation_structure`` that measure movable objects' poses (what system identification
    #: compares; the other parts are fixtures or features derived from the same poses).
    object_observation_parts: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        *,
        cameras: Sequence[str] = (),
        image_size: int | Sequence[int] = 84,
        render_mode: str | None = None,
        render_size: int = 256,
        randomization: RandomizationSpec | Mapping[str, Any] | None = None,
        control_freq: float = 10.0,
        physics_dt: float = 0.002,
        reward_type: str = "sparse",
        terminate_on_success: bool = True,
        max_delta_pos: float = 0.03,
        max_delta_yaw: float = 0.3,
        proprio: bool = False,
        hold_steps: int = 0,
    ) -> None:
        self.cameras = tuple(cameras)
        unknown = [c for c in self.cameras if c not in scene.CAMERA_NAMES]
        if unknown:
            raise ConfigError(f"unknown camera(s) {unknown}; available: {list(scene.CAMERA_NAMES)}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if min(self.image_size) < 8 or max(self.image_size) > 640:
            raise ConfigError(f"image_size must be between 8 and 640 pixels, got {self.image_size}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if reward_type not in ("sparse", "dense"):
            raise ConfigError(f"reward_type must be 'sparse' or 'dense', got {reward_type!r}")
        if not (control_freq > 0 and physics_dt > 0):
            raise ConfigError(f"control_freq and physics_dt must be > 0, got {control_freq}, {physics_dt}")
        n_substeps = (1.0 / control_freq) / physics_dt
        if abs(n_substeps - round(n_substeps)) > 1e-6 or round(n_substeps) < 1:
            raise ConfigError(
                f"1/control_freq ({1 / control_freq:g} s) must be a whole multiple of physics_dt ({physics_dt:g} s)"
            )
        if not (0 < max_delta_pos <= 0.1 and 0 < max_delta_yaw <= 1.0):
            raise ConfigError(f"max_delta_pos must be in (0, 0.1] m and max_delta_yaw in (0, 1] rad, "
                              f"got {max_delta_pos}, {max_delta_yaw}")
        if isinstance(hold_steps, bool) or int(hold_steps) != hold_steps or hold_steps < 0:
            raise ConfigError(f"hold_steps must be an integer >= 0, got {hold_steps!r}")
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.reward_type = reward_type
        self.terminate_on_success = bool(terminate_on_success)
        self.control_freq = float(control_freq)
        self.n_substeps = int(round(n_substeps))
        self.max_delta_pos = float(max_delta_pos)
        self.max_delta_yaw = float(max_delta_yaw)
        self.proprio = bool(proprio)
        self.hold_steps = int(hold_steps)
        # The registered episode limit, in control steps; a holding env enforces it itself (TimeLimit counts
        # decisions, of which there are 1 + hold_steps times fewer).
        self._time_limit = task_info(self.task_name).max_episode_steps
        self._control_steps = 0
        self.metadata = {**type(self).metadata, "render_fps": self.control_freq / (1 + self.hold_steps)}
        self.randomization = RandomizationSpec.from_mapping(randomization, self.default_randomization())

        self.model = mujoco.MjModel.from_xml_string(self._build_xml(physics_dt))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._grip_qpos = m.joint("grip_x").qposadr[0]  # x, y, z, yaw are consecutive
        self._grip_qvel = m.joint("grip_x").dofadr[0]
        self._finger_qpos = np.array([m.joint("finger_left").qposadr[0], m.joint("finger_right").qposadr[0]])
        self._ctrl_low = m.actuator_ctrlrange[:4, 0].copy()
        self._ctrl_high = m.actuator_ctrlrange[:4, 1].copy()
        # The setpoint may lead the measured pose by at most this much, so pressing against the
        # table or an object does not wind up a large hidden force.
        self._max_lead = np.array([2 * self.max_delta_pos] * 3 + [2 * self.max_delta_yaw])
        self._action_scale = np.array([self.max_delta_pos] * 3 + [self.max_delta_yaw])
        self._randomizer = ModelRandomizer(
            m,
            object_bodies=self._object_bodies(),
            object_geoms=[m.geom(g).id for g in self._object_geoms()],
            table_geoms=[m.geom("table").id],
            gripper_actuators=list(range(4)),
            camera_names=tuple(c.name for c in scene.WORLD_CAMERAS),
        )
        self._physics_state_size = mujoco.mj_stateSize(m, _STATE_SPEC)

        self.state_dim = sum(PROPRIO_STRUCTURE.values()) + sum(self.task_observation_structure.values())
        obs_spaces: dict[str, spaces.Space] = {
            STATE_KEY: spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)
        }
        if self.proprio:
            obs_spaces[PROPRIO_KEY] = spaces.Box(-np.inf, np.inf, (sum(PROPRIO_STRUCTURE.values()),), np.float32)
        for cam in self.cameras:
            obs_spaces[image_key(cam)] = spaces.Box(0, 255, (*self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        self._renderers = Renderers(m)
        self._episode: dict[str, Any] = {}
        self._latency = ActionLatency(_OPEN_GRIP_ACTION)
        self._obs_noise = ObservationNoise()

    # ------------------------------------------------------------------ task hooks
    @classmethod
    def default_randomization(cls) -> RandomizationSpec:
        """The task's nominal ranges: object/fixture poses vary, physics and visuals do not."""
        raise NotImplementedError

    def _worldbody_xml(self) -> str:
        raise NotImplementedError

    def _assets_xml(self) -> str:
        return ""

    def _object_bodies(self) -> list[str]:
        """Movable bodies whose mass ``object_mass_scale`` scales."""
        raise NotImplementedError

    def _object_geoms(self) -> list[str]:
        """Geoms whose colour ``object_rgb_jitter`` changes."""
        raise NotImplementedError

    def _place_entities(self, sample: Mapping[str, Any]) -> None:
        """Write the sampled poses of objects (free joints) and fixtures (mocap bodies) into ``self.data``."""
        raise NotImplementedError

    def _task_observation(self, out: np.ndarray) -> None:
        """Fill ``out`` (the task part of ``observation.state``) from ``self.data.qpos``/``mocap_pos``.

        Read joint positions and mocap poses only, never derived quantities such as ``xpos``: after
        ``mj_step`` those lag one physics step behind, and replay must reproduce observations exactly.
        """
        raise NotImplementedError

    def _evaluate(self) -> tuple[bool, dict[str, float]]:
        """``(success, shaped reward terms)`` for the current state, from joint positions only."""
        raise NotImplementedError

    def _entity_poses_from_observation(self, task_state: np.ndarray) -> dict[str, float]:
        """The ``<entity>.x/y/yaw`` pose entries that the task part of a first observation shows."""
        raise NotImplementedError

    def _pose_conflict(self, poses: Mapping[str, float]) -> bool:
        """Whether sampled poses overlap (they are then redrawn). Default: never."""
        return False

    # ------------------------------------------------------------------ construction
    def _build_xml(self, physics_dt: float) -> str:
        return scene.scene_xml(
            self.task_name, worldbody=self._worldbody_xml(), assets=self._assets_xml(), physics_dt=physics_dt
        )

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = check_reset_options(options)
        if options.get("randomization") is not None:
            sample = self._check_sample(options["randomization"])
        else:
            sample = self._sample_episode(self.np_random)
        m, d = self.model, self.data
        self._randomizer.apply(sample)
        mujoco.mj_resetData(m, d)
        self._place_gripper(sample)
        self._place_entities(sample)
        self._latency.reset(int(sample["action_latency_steps"]))
        if options.get("state") is not None:
            self._set_state(np.asarray(options["state"], dtype=np.float64))
        refresh_derived(m, d)
        self._obs_noise.reset(float(sample["obs_noise_std"]), sample.get("obs_noise_seed"))
        self._episode = sample
        self._control_steps = 0
        success, terms = self._evaluate()  # the shaped terms too: potential-based shaping needs them at reset
        return self._observation(), {"randomization": sample, "is_success": success, **terms}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = check_action(self.task_name, action, "dx, dy, dz, dyaw, grip")
        if not self._episode:
            raise RuntimeError(f"{self.task_name}: call reset() before step()")
        action = np.minimum(np.maximum(action, -1.0), 1.0)
        if not self.hold_steps:
            success, terms = self._control_step(action)
            reward = float(success) if self.reward_type == "sparse" else float(sum(terms.values()))
            terms["is_success"] = success
            return self._observation(), reward, success and self.terminate_on_success, False, terms
        hold = hold_action(action)
        reward, truncated = 0.0, False
        for k in range(1 + self.hold_steps):
            success, terms = self._control_step(action if k == 0 else hold)
            reward += float(success) if self.reward_type == "sparse" else float(sum(terms.values()))
            truncated = self._control_steps >= self._time_limit
            if (success and self.terminate_on_success) or truncated:
                break
        terms["is_success"] = success
        terminated = success and self.terminate_on_success
        return self._observation(), reward, terminated, truncated and not terminated, terms

    def _control_step(self, action: np.ndarray) -> tuple[bool, dict[str, float]]:
        """Send ``action`` (clipped) through the latency queue, run one control period, evaluate the task."""
        self._apply_action(self._latency(action))
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        self._control_steps += 1
        return self._evaluate()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        refresh_derived(self.model, self.data)
        return self._renderers.render(self.data, "front", (self.render_size, self.render_size))

    def close(self) -> None:
        self._renderers.close()

    # ------------------------------------------------------------------ state
    @property
    def state_size(self) -> int:
        return self._physics_state_size + self._latency.pending.size

    def get_state(self) -> np.ndarray:
        """Full simulator state, (physics + latency * 5,) float64: enough to continue the episode exactly.

        Physics is MuJoCo's integration state (time, qpos, qvel, actuator setpoints, mocap fixture
        poses, warm start); the tail holds the actions still in the latency queue. Model parameters
        (friction, masses, colours...) are not state: they come from the episode's randomization sample.
        """
        physics = np.empty(self._physics_state_size)
        mujoco.mj_getState(self.model, self.data, physics, _STATE_SPEC)
        return np.concatenate([physics, self._latency.pending.ravel()])

    def _set_state(self, state: np.ndarray) -> None:
        if state.ndim != 1 or state.size != self.state_size:
            raise StateError(
                f"{self.task_name}: state has shape {state.shape}, expected ({self.state_size},) "
                f"= {self._physics_state_size} physics values + {self._latency.pending.size} queued action values "
                f"(action latency {self._latency.steps}); was it recorded with another task or latency?"
            )
        if not np.isfinite(state).all():
            raise StateError(f"{self.task_name}: state contains NaN or inf")
        mujoco.mj_setState(self.model, self.data, state[: self._physics_state_size], _STATE_SPEC)
        self._latency.set_pending(state[self._physics_state_size:])

    @property
    def episode_randomization(self) -> dict[str, Any]:
        """The values drawn for the current episode (as reported by ``reset``)."""
        return dict(self._episode)

    @property
    def observation_structure(self) -> dict[str, int]:
        return {**PROPRIO_STRUCTURE, **self.task_observation_structure}

    def observation_slices(self) -> dict[str, slice]:
        """Where each named part of ``observation.state`` lies."""
        slices, start = {}, 0
        for name, size in self.observation_structure.items():
            slices[name] = slice(start, start + size)
            start += size
        return slices

    def episode_poses_from_observation(self, state: np.ndarray) -> dict[str, float]:
        """The pose entries of a randomization sample (``gripper.x``, ``peg.yaw``...) that a first observation shows.

        This is how an episode logged on a real robot, which has no simulator state, is replayed in simulation
        from where it started (the gripper always starts open at ``GRIPPER_HOME_Z``). Sensor noise in ``state``
        becomes an error in the start poses.
        """
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_dim,):
            raise ValueError(f"{self.task_name}: a first observation.state has shape ({self.state_dim},), "
                             f"got {state.shape}")
        poses = {"gripper.x": float(state[0]), "gripper.y": float(state[1]),
                 "gripper.yaw": math.atan2(float(state[4]), float(state[3]))}
        poses.update(self._entity_poses_from_observation(state[sum(PROPRIO_STRUCTURE.values()):]))
        return poses

    # ------------------------------------------------------------------ internals
    def _sample_episode(self, rng: np.random.Generator) -> dict[str, Any]:
        spec = self.randomization
        sample = sample_randomization(spec, rng, tuple(c.name for c in scene.WORLD_CAMERAS))
        for _ in range(1000):
            poses: dict[str, float] = {}
            for name, pose in spec.poses.items():
                for axis in ("x", "y", "yaw"):
                    low, high = getattr(pose, axis)
                    poses[f"{name}.{axis}"] = float(low) if low == high else float(rng.uniform(low, high))
            if not self._pose_conflict(poses):
                break
        else:
            raise ConfigError(f"{self.task_name}: could not place objects without overlap in 1000 draws; "
                              "the pose ranges in the randomization spec are too tight")
        return {**poses, **sample}

    def _check_sample(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        required = {f"{n}.{a}" for n in self.randomization.poses for a in ("x", "y", "yaw")}
        required |= {"action_latency_steps", "obs_noise_std"}
        missing = sorted(required - set(sample))
        if missing:
            raise ValueError(f"{self.task_name}: randomization sample is missing {missing}")
        if float(sample["obs_noise_std"]) > 0 and "obs_noise_seed" not in sample:
            raise ValueError(f"{self.task_name}: randomization sample has obs noise but no 'obs_noise_seed'")
        return dict(sample)

    def _place_gripper(self, sample: Mapping[str, Any]) -> None:
        pose = np.array([sample["gripper.x"], sample["gripper.y"], GRIPPER_HOME_Z, sample["gripper.yaw"]])
        self.data.qpos[self._grip_qpos : self._grip_qpos + 4] = pose
        self.data.ctrl[:4] = pose
        self.data.ctrl[4:6] = 0.0  # fingers open

    def _apply_action(self, action: np.ndarray) -> None:
        # Runs every step: plain ufuncs, not np.clip (whose dispatch costs more than the arithmetic).
        d = self.data
        measured = d.qpos[self._grip_qpos : self._grip_qpos + 4]
        setpoint = d.ctrl[:4] + action[:4] * self._action_scale
        setpoint = np.minimum(np.maximum(setpoint, measured - self._max_lead), measured + self._max_lead)
        d.ctrl[:4] = np.minimum(np.maximum(setpoint, self._ctrl_low), self._ctrl_high)
        d.ctrl[4:6] = (action[4] + 1.0) * (0.5 * scene.FINGER_TRAVEL)

    def _observation(self) -> dict[str, np.ndarray]:
        d = self.data
        g = self._grip_qpos
        state = np.empty(self.state_dim, dtype=np.float64)
        state[0:3] = d.qpos[g : g + 3]
        yaw = d.qpos[g + 3]
        state[3] = math.cos(yaw)
        state[4] = math.sin(yaw)
        state[5] = scene.MAX_OPENING - d.qpos[self._finger_qpos].sum()
        state[6:9] = d.qvel[self._grip_qvel : self._grip_qvel + 3]
        self._task_observation(state[9:])
        obs = {STATE_KEY: self._obs_noise(state).astype(np.float32)}
        if self.proprio:
            obs[PROPRIO_KEY] = obs[STATE_KEY][: sum(PROPRIO_STRUCTURE.values())].copy()
        if self.cameras:
            # Rendering reads derived poses (geom_xpos...), which mj_step leaves one physics step stale.
            refresh_derived(self.model, self.data)
            for cam in self.cameras:
                obs[image_key(cam)] = self._renderers.render(self.data, cam, self.image_size)
        return obs

    # Helpers for tasks -------------------------------------------------------------
    def _free_joint_pose(self, qpos_adr: int) -> tuple[np.ndarray, np.ndarray]:
        qpos = self.data.qpos
        return qpos[qpos_adr : qpos_adr + 3], canonical_quat(qpos[qpos_adr + 3 : qpos_adr + 7])

    def _set_free_joint(self, qpos_adr: int, pos: Sequence[float], yaw: float) -> None:
        self.data.qpos[qpos_adr : qpos_adr + 3] = pos
        self.data.qpos[qpos_adr + 3 : qpos_adr + 7] = yaw_to_quat(yaw)

    def _set_mocap(self, body: str, pos: Sequence[float], yaw: float) -> None:
        mocap_id = self.model.body(body).mocapid[0]
        self.data.mocap_pos[mocap_id] = pos
        self.data.mocap_quat[mocap_id] = yaw_to_quat(yaw)


def gripper_pose_range(x: tuple[float, float] = (-0.03, 0.03), y: tuple[float, float] = (-0.13, -0.07),
                       yaw: tuple[float, float] = (-0.15, 0.15)) -> PoseRange:
    """Default range of the gripper's start pose (it always starts open at height ``GRIPPER_HOME_Z``)."""
    return PoseRange(x=x, y=y, yaw=yaw)
