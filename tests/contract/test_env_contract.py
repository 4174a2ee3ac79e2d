"""Every registered env honours the Gymnasium API and roboloop's env contract."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from roboloop.core.errors import ConfigError, StateError
from roboloop.envs import TASKS, make

OUR_TASKS = [t.name for t in TASKS.values() if not t.third_party]
FETCH_TASKS = [t.name for t in TASKS.values() if t.third_party]
CAMERA = {"Lift": "front", "PegInsert": "wrist", "PushAround": "top", "FetchPush-v4": "external_camera_0",
          "FetchPickAndPlace-v4": "external_camera_0"}


def _needs(task: str) -> None:
    if task in FETCH_TASKS:
        pytest.importorskip("gymnasium_robotics")


def _rollout(env: gym.Env, seed: int, actions: np.ndarray) -> list[tuple]:
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    for a in actions:
        step = env.step(a)
        out.append(step)
        if step[2] or step[3]:
            out.append(env.reset())
    return out


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b, strict=True):  # type: ignore[call-overload]
            _assert_same(x, y)
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("camera", [False, True], ids=["state", "camera"])
def test_check_env(task: str, camera: bool) -> None:
    _needs(task)
    kwargs = {"cameras": [CAMERA[task]], "image_size": 32} if camera else {}
    env = make(task, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Velocities have no natural bound: like Gymnasium's own MuJoCo envs, the state space is unbounded.
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value is -?infinity")
        check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert "is_success" in info and "randomization" in info
    if camera:
        image = obs[f"observation.images.{CAMERA[task]}"]
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.mean() > 10  # not a black frame
    env.close()


@pytest.mark.parametrize("task", list(TASKS))
def test_same_seed_same_trajectory(task: str) -> None:
    _needs(task)
    dim = make(task).action_space.shape[0]
    actions = np.random.default_rng(1).uniform(-1, 1, (40, dim)).astype(np.float32)
    _assert_same(_rollout(make(task), 7, actions), _rollout(make(task), 7, actions))
    first_obs = _rollout(make(task), 7, actions[:1])[0][0]["observation.state"]
    assert not np.array_equal(_rollout(make(task), 8, actions[:1])[0][0]["observation.state"], first_obs)


@pytest.mark.parametrize("task", list(TASKS))
def test_state_round_trip_continues_identically(task: str) -> None:
    _needs(task)
    env = make(task, randomization={"action_latency_steps": (2, 2), "friction_scale": (0.8, 1.2)})
    dim = env.action_space.shape[0]
    actions = np.random.default_rng(2).uniform(-1, 1, (30, dim)).astype(np.float32)
    _, info = env.reset(seed=3)
    for a in actions[:10]:
        env.step(a)
    state = env.unwrapped.get_state()
    tail = [env.step(a)[0]["observation.state"] for a in actions[10:]]
    other = make(task, randomization={"action_latency_steps": (2, 2), "friction_scale": (0.8, 1.2)})
    other.reset(options={"state": state, "randomization": info["randomization"]})
    replayed = [other.step(a)[0]["observation.state"] for a in actions[10:]]
    np.testing.assert_array_equal(np.stack(tail), np.stack(replayed))


@pytest.mark.parametrize("task", list(TASKS))
def test_bad_actions_and_states_get_clear_errors(task: str) -> None:
    _needs(task)
    env = make(task)
    env.reset(seed=0)
    dim = env.action_space.shape[0]
    with pytest.raises(ValueError, match=rf"shape \(3,\), expected \({dim},\)"):
        env.step(np.zeros(3, dtype=np.float32))
    bad = np.zeros(dim, dtype=np.float32)
    bad[1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.step(bad)
    with pytest.raises(StateError, match="state has shape"):
        env.reset(options={"state": np.zeros(5)})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"stat": 1})


def test_out_of_range_actions_are_clipped_not_rejected() -> None:
    env = make("Lift")
    env.reset(seed=0)
    obs_big, *_ = env.step(np.full(5, 50.0, dtype=np.float32))
    env.reset(seed=0)
    obs_one, *_ = env.step(np.ones(5, dtype=np.float32))
    np.testing.assert_array_equal(obs_big["observation.state"], obs_one["observation.state"])


def test_unknown_task_and_bad_constructor_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown task 'Lfit'.*Lift"):
        make("Lfit")
    with pytest.raises(ConfigError, match="unknown camera"):
        make("Lift", cameras=["side"])
    with pytest.raises(ConfigError, match="whole multiple of physics_dt"):
        make("Lift", control_freq=7.0)
    with pytest.raises(ConfigError, match="clearance"):
        make("PegInsert", clearance=-0.001)


@pytest.mark.parametrize("task", OUR_TASKS)
def test_time_limit_truncates_and_success_terminates(task: str) -> None:
    env = make(task)
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, info = env.step(np.zeros(5, dtype=np.float32))
        steps += 1
        assert not terminated and not info["is_success"]  # doing nothing never succeeds
    assert steps == env.spec.max_episode_steps


def test_dense_reward_is_the_sum_of_the_shaped_terms() -> None:
    env = make("PegInsert", reward_type="dense")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(5, dtype=np.float32))
    terms = [v for k, v in info.items() if k.startswith("reward_")]
    assert len(terms) == 3 and reward == pytest.approx(sum(terms))


def test_cameras_do_not_change_the_physics() -> None:
    actions = np.random.default_rng(4).uniform(-1, 1, (25, 5)).astype(np.float32)
    plain = _rollout(make("PushAround"), 5, actions)
    seen = _rollout(make("PushAround", cameras=["front"], image_size=16), 5, actions)
    for a, b in zip(plain, seen, strict=True):
        np.testing.assert_array_equal(a[0]["observation.state"], b[0]["observation.state"])


def test_render_returns_frames_without_perturbing_the_episode() -> None:
    actions = np.random.default_rng(5).uniform(-1, 1, (20, 5)).astype(np.float32)
    env = make("Lift", render_mode="rgb_array", render_size=64)
    obs, _ = env.reset(seed=2)
    frames = []
    states = []
    for a in actions:
        frames.append(env.render())
        states.append(env.step(a)[0]["observation.state"])
    assert frames[0].shape == (64, 64, 3) and frames[0].mean() > 10
    reference = [s[0]["observation.state"] for s in _rollout(make("Lift"), 2, actions)[1:]]
    np.testing.assert_array_equal(np.stack(states), np.stack(reference))


def test_unclosed_camera_envs_exit_cleanly() -> None:
    import subprocess
    import sys

    code = ("import roboloop\nfrom roboloop.envs import make\n"
            "env = make('Lift', cameras=['front'], render_mode='rgb_array')\nenv.reset(seed=0)\nenv.render()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "EGLError" not in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("latency", [0, 1])
def test_hold_steps_act_then_hold_within_the_same_time_limit(latency: int) -> None:
    """A holding env is the plain env stepped with the action, then with hold actions (zero motion, same grip):
    the same observations, summed rewards, termination on a successful held step, and the time limit in control
    steps (Lift: 80 control steps = 40 decisions with one held step each)."""
    from roboloop.envs.experts import make_expert

    kwargs = {"reward_type": "dense", "randomization": {"action_latency_steps": [latency, latency]}}
    held, plain = make("Lift", hold_steps=1, **kwargs), make("Lift", **kwargs)
    expert = make_expert("Lift", plain.unwrapped, seed=0)
    for seed in (0, 1):
        obs, _ = held.reset(seed=seed)
        plain.reset(seed=seed)
        expert.reset(seed)
        decisions, control_steps, done = 0, 0, False
        while not done:
            action = expert.act(obs)
            obs, reward, terminated, truncated, info = held.step(action)
            decisions += 1
            expected_reward = 0.0
            for sent in (action, np.r_[np.zeros(4), np.clip(action[4], -1, 1)]):
                plain_obs, plain_reward, plain_terminated, _, plain_info = plain.step(sent.astype(np.float32))
                control_steps += 1
                expected_reward += plain_reward
                if plain_terminated or control_steps == 80:
                    break
            np.testing.assert_array_equal(obs["observation.state"], plain_obs["observation.state"])
            assert reward == pytest.approx(expected_reward)
            assert (terminated, info["is_success"]) == (plain_terminated, plain_info["is_success"])
            assert truncated == (control_steps == 80 and not terminated)
            done = terminated or truncated
        assert decisions <= 40 and (terminated or decisions == 40)
    assert held.metadata["render_fps"] == 5.0
    with pytest.raises(ConfigError, match="hold_steps must be an integer >= 0"):
        make("Lift", hold_steps=-1)
