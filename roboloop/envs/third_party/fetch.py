"""gymnasium-robotics ``FetchPush-v4`` and ``FetchPickAndPlace-v4`` under roboloop's observation contract.

These are real environments no one here wrote. The adapters change only what the contract needs:

* Observations become a Dict: ``observation.state`` = Fetch's ``observation`` (25) followed by
  ``desired_goal`` (3); cameras add ``observation.images.<camera>`` (``external_camera_0``,
  ``head_camera_rgb``, ``gripper_camera_rgb``).
* Observations are computed after a fresh ``mj_forward``. Fetch reads site positions right after
  ``mj_step``, which MuJoCo leaves one physics step stale, so its own observations cannot be
  reproduced from a saved state; dynamics, rewards and success are Fetch's own.
* ``get_state()`` / ``reset(options={"state": ...})`` for replay, and the model-level part of the
  randomization spec (friction, object mass, finger actuator gains, colours, light, camera jitter,
  action latency, observation noise). Object and goal placement stay Fetch's (``obj_range``,
  ``target_range`` constructor arguments).

Actions are Fetch's own: ``[dx, dy, dz, grip]`` in [-1, 1], 5 cm per unit, grip +1 opens and -1 closes.
Rewards are Fetch's (``reward_type="sparse"``: -1 until success, then 0); episodes never terminate,
they are truncated after 50 steps, and success is ``info["is_success"]`` at the last step.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from roboloop.core.errors import ConfigError, StateError
from roboloop.envs.base import STATE_KEY, check_action, check_reset_options, image_key, refresh_derived
from roboloop.envs.effects import ActionLatency, ObservationNoise
from roboloop.envs.randomization import ModelRandomizer, RandomizationSpec, sample_randomization
from roboloop.envs.rendering import Renderers

_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
FETCH_CAMERAS = ("external_camera_0", "head_camera_rgb", "gripper_camera_rgb")


def _import_fetch(module: str, cls: str) -> type:
    try:
        # gymnasium-robotics 1.4.2 prints a notice about its Adroit envs on import; the Fetch envs are unaffected.
        with contextlib.redirect_stderr(io.StringIO()):
            return getattr(importlib.import_module(f"gymnasium_robotics.envs.fetch.{module}"), cls)
    except ImportError as err:
        raise ConfigError(
            "the Fetch tasks need gymnasium-robotics: pip install -c constraints.txt 'roboloop[bench-envs]'"
        ) from err


class FetchAdapter(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Base of the Fetch adapters. Extra keyword arguments go to the Fetch env (``obj_range``, ...)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 25}
    task_name: ClassVar[str]
    _fetch_module: ClassVar[str]
    _fetch_class: ClassVar[str]
    state_dim = 28
    observation_structure: ClassVar[dict[str, int]] = {
        "grip_pos": 3, "object_pos": 3, "object_rel_pos": 3, "gripper_state": 2, "object_rot": 3,
        "object_velp": 3, "object_velr": 3, "grip_velp": 3, "gripper_vel": 2, "desired_goal": 3,
    }

    def __init__(
        self,
        *,
        cameras: Sequence[str] = (),
        image_size: int | Sequence[int] = 84,
        render_mode: str | None = None,
        render_size: int = 256,
        randomization: RandomizationSpec | Mapping[str, Any] | None = None,
        reward_type: str = "sparse",
        **fetch_kwargs: Any,
    ) -> None:
        self.cameras = tuple(cameras)
        unknown = [c for c in self.cameras if c not in FETCH_CAMERAS]
        if unknown:
            raise ConfigError(f"unknown camera(s) {unknown} for {self.task_name}; available: {list(FETCH_CAMERAS)}")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.randomization = RandomizationSpec.from_mapping(randomization, RandomizationSpec())
        if self.randomization.poses:
            raise ConfigError(f"{self.task_name} places its object and goal itself; set obj_range/target_range "
                              "instead of randomization.poses")

        self._inner = _import_fetch(self._fetch_module, self._fetch_class)(reward_type=reward_type, **fetch_kwargs)
        m = self.model
        # Offscreen rendering on CPU is 20x faster without shadows, multisampling and reflections.
        m.vis.quality.shadowsize = 0
        m.vis.quality.offsamples = 0
        m.mat_reflectance[:] = 0.0
        self._randomizer = ModelRandomizer(
            m,
            object_bodies=["object0"],
            object_geoms=self._body_geoms("object0"),
            table_geoms=self._body_geoms("table0"),
            gripper_actuators=list(range(m.nu)),
            camera_names=("external_camera_0",),
            light_name="light0",
        )
        self._physics_state_size = mujoco.mj_stateSize(m, _STATE_SPEC)
        self._latency = ActionLatency(np.zeros(4))
        self._obs_noise = ObservationNoise()
        self._renderers = Renderers(m)
        self._episode: dict[str, Any] = {}
        self._achieved = np.zeros(3)

        obs_spaces: dict[str, spaces.Space] = {STATE_KEY: spaces.Box(-np.inf, np.inf, (self.state_dim,), np.float32)}
        for cam in self.cameras:
            obs_spaces[image_key(cam)] = spaces.Box(0, 255, (*self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)

    @property
    def model(self) -> mujoco.MjModel:
        return self._inner.model

    @property
    def data(self) -> mujoco.MjData:
        return self._inner.data

    @property
    def fetch_env(self) -> gym.Env:
        """The wrapped gymnasium-robotics env."""
        return self._inner

    def _body_geoms(self, body: str) -> list[int]:
        b = self.model.body(body)
        return list(range(b.geomadr[0], b.geomadr[0] + b.geomnum[0]))

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = check_reset_options(options)
        if options.get("randomization") is not None:
            sample = dict(options["randomization"])
        else:
            sample = sample_randomization(self.randomization, self.np_random, ("external_camera_0",))
        self._randomizer.apply(sample)
        # Fetch draws object and goal positions from its own generator: seed it from ours.
        self._inner.reset(seed=int(self.np_random.integers(2**31)))
        self._latency.reset(int(sample.get("action_latency_steps", 0)))
        if options.get("state") is not None:
            self._set_state(np.asarray(options["state"], dtype=np.float64))
        self._obs_noise.reset(float(sample.get("obs_noise_std", 0.0)), sample.get("obs_noise_seed"))
        self._episode = sample
        obs, success = self._fresh_observation()
        return obs, {"randomization": sample, "is_success": success}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = check_action(self.task_name, action, "dx, dy, dz, grip")
        if not self._episode:
            raise RuntimeError(f"{self.task_name}: call reset() before step()")
        action = self._latency(np.clip(action, -1.0, 1.0))
        self._inner.step(action.astype(np.float32))
        obs, success = self._fresh_observation()
        reward = float(self._inner.compute_reward(self._achieved, self._inner.goal, {"is_success": success}))
        return obs, reward, False, False, {"is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        camera = mujoco.MjvCamera()
        camera.distance, camera.azimuth, camera.elevation = 1.6, 132.0, -20.0
        camera.lookat[:] = (1.3, 0.75, 0.45)
        return self._render(camera, (self.render_size, self.render_size))

    def close(self) -> None:
        self._renderers.close()
        self._inner.close()

    # ------------------------------------------------------------------ state
    @property
    def state_size(self) -> int:
        return self._physics_state_size + 3 + self._latency.pending.size

    def get_state(self) -> np.ndarray:
        """Physics integration state, then the goal (3,), then the latency queue."""
        physics = np.empty(self._physics_state_size)
        mujoco.mj_getState(self.model, self.data, physics, _STATE_SPEC)
        return np.concatenate([physics, np.asarray(self._inner.goal, dtype=np.float64), self._latency.pending.ravel()])

    def _set_state(self, state: np.ndarray) -> None:
        if state.ndim != 1 or state.size != self.state_size:
            raise StateError(f"{self.task_name}: state has shape {state.shape}, expected ({self.state_size},) "
                             f"(physics {self._physics_state_size} + goal 3 + latency queue "
                             f"{self._latency.pending.size})")
        if not np.isfinite(state).all():
            raise StateError(f"{self.task_name}: state contains NaN or inf")
        n = self._physics_state_size
        mujoco.mj_setState(self.model, self.data, state[:n], _STATE_SPEC)
        self._inner.goal = state[n : n + 3].copy()
        self._latency.set_pending(state[n + 3 :])

    @property
    def episode_randomization(self) -> dict[str, Any]:
        return dict(self._episode)

    # ------------------------------------------------------------------ internals
    def _fresh_observation(self) -> tuple[dict[str, np.ndarray], bool]:
        refresh_derived(self.model, self.data)
        fetch_obs = self._inner._get_obs()
        self._achieved = fetch_obs["achieved_goal"]
        success = bool(self._inner._is_success(self._achieved, self._inner.goal))
        state = np.concatenate([fetch_obs["observation"], fetch_obs["desired_goal"]])
        obs = {STATE_KEY: self._obs_noise(state).astype(np.float32)}
        for cam in self.cameras:
            obs[image_key(cam)] = self._render(cam, self.image_size)
        return obs, success

    def _render(self, camera: str | mujoco.MjvCamera, size: tuple[int, int]) -> np.ndarray:
        warmstart = self.data.qacc_warmstart.copy()
        self._inner._render_callback()  # moves the goal marker to the goal (and runs mj_forward)
        self.data.qacc_warmstart[:] = warmstart
        return self._renderers.render(self.data, camera, size)


class FetchPushAdapter(FetchAdapter):
    """``FetchPush-v4``: push the block to the goal on the table (the gripper stays closed)."""

    task_name: ClassVar[str] = "FetchPush-v4"
    _fetch_module: ClassVar[str] = "push"
    _fetch_class: ClassVar[str] = "MujocoFetchPushEnv"


class FetchPickAndPlaceAdapter(FetchAdapter):
    """``FetchPickAndPlace-v4``: pick the block up and hold it at the goal (often in the air)."""

    task_name: ClassVar[str] = "FetchPickAndPlace-v4"
    _fetch_module: ClassVar[str] = "pick_and_place"
    _fetch_class: ClassVar[str] = "MujocoFetchPickAndPlaceEnv"
