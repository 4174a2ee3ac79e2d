"""System identification recovers known parameters from logged episodes, and refuses logs it cannot use."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from roboloop.core.errors import ConfigError, InputError
from roboloop.datasets.collection import EpisodeRecording
from roboloop.datasets.store import Episode
from roboloop.envs import make
from roboloop.envs.base import STATE_KEY
from roboloop.envs.experts import make_expert
from roboloop.sim2real.sysid import (
    DragProbe,
    EpisodeReplayer,
    Identification,
    IdentificationConfig,
    ProbeConfig,
    SettlingActor,
    _profile_zs,
    carry_prefixes,
    free_motion_prefixes,
    identify,
    probe_actor,
)

TRUE = {"actuator_gain_scale": 0.8, "actuator_damping_scale": 1.25, "action_latency_steps": 1,
        "obs_noise_std": 3e-4}


def logged_episodes(task: str, params: dict, n: int, steps: int, seed: int = 0,
                    probe: ProbeConfig | None = None) -> list[Episode]:
    """Episodes of the settling expert on ``task`` simulated under ``params``: a stand-in for a real log. With
    ``probe``, the identification probe (:func:`probe_actor`) acts instead."""
    env = make(task)
    sim = env.unwrapped
    actor = (SettlingActor(make_expert(task, env, seed=seed), settle_steps=3) if probe is None
             else probe_actor(task, env, probe, seed=seed))
    episodes = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        sample = {**sim._sample_episode(rng), **params, "obs_noise_seed": int(rng.integers(2**31))}
        obs, _ = env.reset(options={"randomization": sample})
        actor.reset(seed=i)
        recording = EpisodeRecording(obs)
        for _ in range(steps):
            action = actor.act(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            recording.add(action, reward, terminated, truncated, obs)
            if terminated:
                break
        episodes.append(recording.finish(False, "test", "real"))
    env.close()
    return episodes


@pytest.mark.parametrize("task", ["PegInsert", "Lift", "PushAround"])
def test_start_poses_read_from_a_first_observation_are_the_episodes(task: str) -> None:
    env = make(task)
    obs, info = env.reset(seed=3)
    poses = env.unwrapped.episode_poses_from_observation(obs[STATE_KEY])
    for key, value in poses.items():
        assert value == pytest.approx(info["randomization"][key], abs=1e-5), key
    with pytest.raises(ValueError, match="shape"):
        env.unwrapped.episode_poses_from_observation(obs[STATE_KEY][:-1])
    env.close()


def test_replay_under_the_true_parameters_reproduces_a_noise_free_log() -> None:
    params = {k: v for k, v in TRUE.items() if k != "obs_noise_std"}
    episodes = logged_episodes("Lift", {**params, "obs_noise_std": 0.0}, n=2, steps=25)
    replayer = EpisodeReplayer("Lift", episodes)
    assert replayer.loss(params) < 1e-12
    assert replayer.loss({**params, "action_latency_steps": 0}) > 1e-6
    assert replayer.episode_losses(params).shape == (2,)


def test_identification_recovers_known_gains_latency_and_noise() -> None:
    episodes = logged_episodes("Lift", TRUE, n=4, steps=40)
    cfg = IdentificationConfig(parameters=["actuator_gain_scale", "actuator_damping_scale"], popsize=6,
                               max_evaluations=72, rounds=2, max_latency_steps=2, min_steps=100)
    ident = identify("Lift", episodes, cfg)
    assert ident.action_latency_steps == 1
    for name in ("actuator_gain_scale", "actuator_damping_scale"):
        assert ident.estimates[name] == pytest.approx(TRUE[name], rel=0.05), name
        assert ident.identifiable[name] and 0 < ident.relative_stds[name] < 0.1
        assert ident.profile_zs[name] >= cfg.profile_z
    assert ident.obs_noise_std == pytest.approx(TRUE["obs_noise_std"], rel=0.25)
    assert ident.loss < ident.nominal_loss / 10
    assert ident.history[-1] <= ident.history[0]

    ranges = ident.randomization(cfg)
    low, high = ranges["actuator_gain_scale"]
    assert low < ident.estimates["actuator_gain_scale"] < high
    assert ranges["action_latency_steps"] == (1, 1)


def test_identification_refuses_too_little_or_broken_data() -> None:
    episodes = logged_episodes("Lift", TRUE, n=2, steps=10)
    with pytest.raises(InputError, match="at least 3 episodes"):
        identify("Lift", episodes)
    broken = episodes * 2
    broken[0].observations[STATE_KEY][3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        identify("Lift", broken, IdentificationConfig(min_steps=10))
    images_only = [Episode({"observation.images.front": np.zeros((11, 8, 8, 3), np.uint8)}, ep.actions, ep.rewards,
                           ep.terminated, ep.truncated) for ep in episodes * 2]
    with pytest.raises(InputError, match="observation.state"):
        identify("Lift", images_only, IdentificationConfig(min_steps=10))
    with pytest.raises(ConfigError, match="subset"):
        IdentificationConfig(parameters=["light_intensity_scale"])


def test_an_unidentified_scale_keeps_the_fallback_range(tmp_path: Path) -> None:
    ident = Identification(
        task="Lift", estimates={"actuator_gain_scale": 0.8, "friction_scale": 0.5},
        relative_stds={"actuator_gain_scale": 0.01, "friction_scale": math.inf},
        identifiable={"actuator_gain_scale": True, "friction_scale": False}, action_latency_steps=2,
        latency_losses=[1.0, 0.5, 0.1], obs_noise_std=1e-3, loss=0.1, nominal_loss=1.0, n_episodes=5, n_steps=500,
        evaluations=10, history=[0.2, 0.1], profile_zs={"actuator_gain_scale": 40.0, "friction_scale": math.inf})
    cfg = IdentificationConfig(fallback_range=(0.7, 1.5), range_stds=2.0, min_relative_range=0.05)
    ranges = ident.randomization(cfg)
    assert ranges["friction_scale"] == (0.7, 1.5)
    # 2 stds of 1% is narrower than the 5% floor.
    assert ranges["actuator_gain_scale"] == pytest.approx((0.8 * math.exp(-0.05), 0.8 * math.exp(0.05)))
    assert ranges["action_latency_steps"] == (2, 2) and ranges["obs_noise_std"] == 1e-3
    loaded = Identification.load(ident.save(tmp_path / "identification.json"))
    assert loaded == ident
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="not an identification"):
        Identification.load(tmp_path / "bad.json")


def test_the_profile_check_tells_a_pinned_scale_from_a_flat_rugged_one() -> None:
    """Scale 0 is a clear minimum of every episode's error; scale 1 only adds per-episode ruggedness with no trend
    (a sharp local dip at the estimate that a small finite-difference step would read as confident curvature)."""
    rng = np.random.default_rng(0)
    offsets = rng.normal(0.0, 1.0, 12)

    def episode_losses(x: np.ndarray) -> np.ndarray:
        rugged = 0.0 if abs(x[1]) < 1e-12 else 0.3 * np.sin(37.0 * x[1] + offsets)
        return 1.0 + offsets ** 2 + 5.0 * x[0] ** 2 + rugged + 0.01 * x[1] ** 2

    zs = _profile_zs(episode_losses, np.zeros(2), math.log1p(0.2), ["gain", "friction"])
    assert zs["gain"] > 100  # every episode's error rises by the same amount
    assert zs["friction"] < 2.0


def test_the_settling_actor_acts_every_few_steps_and_holds_its_grip_in_between() -> None:
    class Constant:
        def reset(self, seed: int | None = None) -> None:
            self.calls = 0

        def act(self, obs: dict) -> np.ndarray:
            self.calls += 1
            return np.array([0.5, -0.5, 0.2, 0.1, 1.0], np.float32)

    inner = Constant()
    actor = SettlingActor(inner, settle_steps=3)
    actor.reset()
    actions = np.array([actor.act({}) for _ in range(6)])
    assert inner.calls == 2
    np.testing.assert_array_equal(actions[[1, 2, 4, 5], :4], 0.0)
    np.testing.assert_array_equal(actions[:, 4], 1.0)
    with pytest.raises(ConfigError):
        SettlingActor(inner, settle_steps=0)


class ClosesAfter:
    """A stand-in actor: moves +x with the grip open for ``open_steps`` steps, then holds still, closed."""

    def __init__(self, open_steps: int) -> None:
        self.open_steps = open_steps

    def reset(self, seed: int | None = None) -> None:
        self.t = 0

    def act(self, obs: dict) -> np.ndarray:
        self.t += 1
        if self.t <= self.open_steps:
            return np.array([0.5, 0.0, 0.0, 0.0, -1.0], np.float32)
        return np.array([0.0, 0.0, 0.0, 0.0, 1.0], np.float32)


def test_the_drag_probe_drags_once_after_the_grasp_and_puts_the_object_back() -> None:
    cfg = ProbeConfig(drag_distance=0.03, drag_step=0.005, press_depth=0.004, close_steps=3, weigh_steps=0)
    probe = DragProbe(ClosesAfter(open_steps=2), max_delta_pos=0.015, cfg=cfg)
    state = np.zeros(30, np.float32)
    state[0] = 0.1  # right of centre: the drag goes toward -x first
    obs = {STATE_KEY: state}
    for _ in range(2):
        probe.reset()
        actions = np.array([probe.act(obs) for _ in range(60)])
        grip = actions[:, 4]
        assert (grip[:2] == -1).all() and (grip[2:] == 1).all()  # the grip is held closed through the drag
        script = actions[5:5 + 29]  # after the third closed command
        moves = script[:, :3] * 0.015
        assert moves[:, 0].min() == pytest.approx(-0.005) and moves[:, 0].max() == pytest.approx(0.005)
        assert np.argmin(moves[:, 0]) < np.argmax(moves[:, 0])  # out toward the centre first, then back
        assert moves[:, 0].sum() == pytest.approx(0.0, abs=1e-7) and moves[:, 2].sum() == pytest.approx(0.0)
        assert moves[:, 2].min() == pytest.approx(-0.004)  # pressed onto the table first
        assert moves[:, 2].argmin() < np.flatnonzero(moves[:, 0])[0]
        np.testing.assert_array_equal(actions[5 + 29:], np.tile([0, 0, 0, 0, 1], (60 - 34, 1)))  # only once

    never_grasps = DragProbe(ClosesAfter(open_steps=100), max_delta_pos=0.015, cfg=cfg)
    never_grasps.reset()
    assert all(never_grasps.act(obs)[0] == 0.5 for _ in range(50))
    off = DragProbe(ClosesAfter(open_steps=0), max_delta_pos=0.015, cfg=replace(cfg, drag_distance=0.0))
    off.reset()
    assert all(off.act(obs)[0] == 0.0 for _ in range(20))
    with pytest.raises(ConfigError):
        DragProbe(ClosesAfter(0), max_delta_pos=0.004, cfg=cfg)  # a drag step beyond one action's reach
    with pytest.raises(ConfigError):
        ProbeConfig(drag_step=0.0)
    with pytest.raises(ConfigError):
        ProbeConfig(weigh_steps=-1)


def test_the_probe_weighs_the_object_aloft_before_the_drag_and_the_carry_prefix_ends_there() -> None:
    cfg = ProbeConfig(drag_distance=0.03, drag_step=0.005, press_depth=0.004, close_steps=3, weigh_height=0.02,
                      weigh_steps=5)
    probe = DragProbe(ClosesAfter(open_steps=2), max_delta_pos=0.015, cfg=cfg)
    probe.reset()
    obs = {STATE_KEY: np.zeros(30, np.float32)}
    actions = np.array([probe.act(obs) for _ in range(80)])
    dz = actions[5:, 2] * 0.015
    np.testing.assert_allclose(dz[:4], 0.005)  # up 2 cm in drag steps
    np.testing.assert_array_equal(actions[9:14, :4], 0.0)  # held still aloft
    np.testing.assert_allclose(dz[9:13], -0.005)  # lowered again, then the drag presses
    assert dz[13:].min() == pytest.approx(-0.004) and dz.sum() == pytest.approx(0.0, abs=1e-7)
    assert (actions[2:, 4] == 1).all()  # held through it all

    # The carry prefix: up to the first downward command after a closed-grip lift; none without a lift.
    episode = Episode({STATE_KEY: np.zeros((81, 1), np.float32)}, actions, np.zeros(80), np.zeros(80, bool),
                      np.zeros(80, bool))
    down_before_grasp = actions.copy()
    down_before_grasp[0, 2] = -1.0  # an open-grip descent does not end it
    never_lifts = actions.copy()
    never_lifts[:, 2] = np.minimum(never_lifts[:, 2], 0.0)
    prefixes = carry_prefixes([episode, replace(episode, actions=down_before_grasp),
                               replace(episode, actions=never_lifts)])
    assert [len(p) for p in prefixes] == [5 + 9, 5 + 9]
    for p in prefixes:
        p.validate()


def test_dragging_the_grasped_peg_makes_friction_identifiable() -> None:
    """Friction alone, from 3 short PegInsert probes under 1.3x friction; the drag (from about step 60) is what
    shows it: held pegs do not slide."""
    true = {"friction_scale": 1.3, "action_latency_steps": 0, "obs_noise_std": 2e-4}
    episodes = logged_episodes("PegInsert", true, n=3, steps=100, probe=ProbeConfig(weigh_steps=0))
    cfg = IdentificationConfig(parameters=["friction_scale"], popsize=6, max_evaluations=36, rounds=1,
                               max_latency_steps=0, min_steps=100)
    ident = identify("PegInsert", episodes, cfg)
    assert ident.estimates["friction_scale"] == pytest.approx(1.3, rel=0.1)
    assert ident.identifiable["friction_scale"], (ident.relative_stds, ident.profile_zs)


def test_weighing_the_grasped_peg_makes_its_mass_identifiable() -> None:
    """Gains, damping and mass from 3 PegInsert probes under a 1.3x heavier peg (no drag: friction stays nominal).
    The mass is searched and judged on the carry prefixes, where the peg hangs still in the grip for 36 steps."""
    true = {"object_mass_scale": 1.3, "action_latency_steps": 0, "obs_noise_std": 2e-4}
    episodes = logged_episodes("PegInsert", true, n=3, steps=130, probe=ProbeConfig(drag_distance=0.0))
    assert all(len(p) >= 60 for p in carry_prefixes(episodes))
    cfg = IdentificationConfig(parameters=["actuator_gain_scale", "actuator_damping_scale", "object_mass_scale"],
                               popsize=6, max_evaluations=36, rounds=1, max_latency_steps=0, min_steps=100)
    ident = identify("PegInsert", episodes, cfg)
    assert ident.estimates["object_mass_scale"] == pytest.approx(1.3, rel=0.1)
    assert ident.identifiable["object_mass_scale"], (ident.relative_stds, ident.profile_zs)
    for name in ("actuator_gain_scale", "actuator_damping_scale"):
        assert ident.estimates[name] == pytest.approx(1.0, rel=0.05), name


def test_free_motion_prefixes_end_at_the_first_closing_grip_command() -> None:
    def episode(grips: list[float]) -> Episode:
        T = len(grips)
        actions = np.zeros((T, 5), np.float32)
        actions[:, 4] = grips
        return Episode({STATE_KEY: np.arange(T + 1, dtype=np.float32)[:, None]}, actions, np.zeros(T),
                       np.zeros(T, bool), np.zeros(T, bool))

    prefixes = free_motion_prefixes([episode([-1, -1, 1, -1]), episode([-1, -1]), episode([1, 1])])
    assert [len(p) for p in prefixes] == [2, 2]  # closes at step 2; never closes; closes at once (dropped)
    np.testing.assert_array_equal(prefixes[0].observations[STATE_KEY][:, 0], [0, 1, 2])
    for p in prefixes:
        p.validate()
