from __future__ import annotations

import math

import numpy as np
import pytest

from roboloop.core.errors import ConfigError
from roboloop.envs import make
from roboloop.envs.randomization import PoseRange, RandomizationSpec
from roboloop.envs.tasks.lift import LiftEnv

WIDE = {
    "friction_scale": (0.5, 1.5), "object_mass_scale": (0.5, 2.0), "actuator_gain_scale": (0.7, 1.3),
    "actuator_damping_scale": (0.7, 1.3), "object_rgb_jitter": 0.2, "table_rgb_jitter": 0.1,
    "light_intensity_scale": (0.5, 1.5), "light_pos_jitter": 0.2, "camera_pos_jitter": 0.02,
    "camera_angle_jitter": 0.05, "action_latency_steps": (0, 3), "obs_noise_std": 0.01,
}


def test_spec_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="friction_scale.*low > high"):
        RandomizationSpec(friction_scale=(1.2, 0.8))
    with pytest.raises(ConfigError, match="object_mass_scale.*> 0"):
        RandomizationSpec(object_mass_scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="action_latency_steps"):
        RandomizationSpec(action_latency_steps=(0.5, 2))
    with pytest.raises(ConfigError, match="obs_noise_std"):
        RandomizationSpec(obs_noise_std=-0.1)
    with pytest.raises(ConfigError, match="x.*low > high"):
        PoseRange(x=(0.1, -0.1))


def test_overrides_merge_onto_the_task_defaults() -> None:
    base = LiftEnv.default_randomization()
    spec = RandomizationSpec.from_mapping({"poses": {"cube": {"x": (-0.2, 0.2)}}, "friction_scale": [0.9, 1.1]}, base)
    assert spec.poses["cube"].x == (-0.2, 0.2)
    assert spec.poses["cube"].y == base.poses["cube"].y  # untouched axes keep the task default
    assert spec.poses["gripper"] == base.poses["gripper"]
    assert spec.friction_scale == (0.9, 1.1)
    with pytest.raises(ConfigError, match="unknown randomization field.*frction"):
        RandomizationSpec.from_mapping({"frction_scale": (1, 2)}, base)
    with pytest.raises(ConfigError, match="no entity 'peg'"):
        RandomizationSpec.from_mapping({"poses": {"peg": {"x": (0, 0.1)}}}, base)


def test_widened_pose_range() -> None:
    wide = PoseRange(x=(0.0, 0.2), yaw=(-1.0, 1.0)).widened(2.0)
    assert wide.x == pytest.approx((-0.1, 0.3)) and wide.yaw == pytest.approx((-2.0, 2.0)) and wide.y == (0.0, 0.0)


def test_samples_are_reported_and_applied() -> None:
    env = make("Lift", randomization=WIDE)
    _, info = env.reset(seed=3)
    sample = info["randomization"]
    u = env.unwrapped
    nominal = LiftEnv().model
    cube = u.model.body("cube").id
    assert u.model.body_mass[cube] == pytest.approx(nominal.body_mass[cube] * sample["object_mass_scale"])
    assert u.model.geom_friction[0, 0] == pytest.approx(nominal.geom_friction[0, 0] * sample["friction_scale"])
    assert u.model.actuator_gainprm[0, 0] == pytest.approx(1500 * sample["actuator_gain_scale"])
    assert u.model.actuator_biasprm[0, 2] == pytest.approx(-60 * sample["actuator_damping_scale"])
    assert 0 <= sample["action_latency_steps"] <= 3
    assert len(u.get_state()) == u._physics_state_size + 5 * sample["action_latency_steps"]
    # Scaling starts from the nominal model every episode, it does not compound.
    for seed in range(5):
        _, info = env.reset(seed=seed)
        scale = info["randomization"]["object_mass_scale"]
        assert u.model.body_mass[cube] == pytest.approx(nominal.body_mass[cube] * scale)


def test_identity_spec_draws_only_poses() -> None:
    env = make("Lift")
    _, info = env.reset(seed=0)
    sample = info["randomization"]
    assert sample["friction_scale"] == 1.0 and sample["action_latency_steps"] == 0
    assert not any(k.startswith("camera.") for k in sample) and "obs_noise_seed" not in sample
    assert -math.pi / 4 <= sample["cube.yaw"] <= math.pi / 4


def test_a_reported_sample_recreates_the_episode() -> None:
    env = make("PegInsert", randomization=WIDE)
    obs, info = env.reset(seed=11)
    actions = np.random.default_rng(0).uniform(-1, 1, (15, 5)).astype(np.float32)
    first = [env.step(a)[0]["observation.state"] for a in actions]
    other = make("PegInsert", randomization=WIDE)
    obs2, _ = other.reset(seed=99, options={"randomization": info["randomization"]})
    np.testing.assert_array_equal(obs2["observation.state"], obs["observation.state"])
    second = [other.step(a)[0]["observation.state"] for a in actions]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))


def test_incomplete_sample_is_rejected() -> None:
    env = make("Lift")
    with pytest.raises(ValueError, match="missing.*cube.x"):
        env.reset(options={"randomization": {"action_latency_steps": 0, "obs_noise_std": 0.0}})
