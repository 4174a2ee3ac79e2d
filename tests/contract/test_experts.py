from __future__ import annotations

import numpy as np
import pytest

from roboloop.core.errors import ConfigError
from roboloop.envs import TASKS, make
from roboloop.envs.experts import make_expert


def _run(task: str, seed: int, noise: float = 0.0) -> tuple[bool, int]:
    env = make(task)
    expert = make_expert(task, env, noise=noise)
    obs, _ = env.reset(seed=seed)
    expert.reset(seed=seed)
    done, steps = False, 0
    while not done:
        action = expert.act(obs)
        assert action.shape == env.action_space.shape and action.dtype == np.float32
        assert np.all(np.abs(action) <= 1.0)
        obs, _, terminated, truncated, info = env.step(action)
        done, steps = terminated or truncated, steps + 1
    return bool(info["is_success"]), steps


@pytest.mark.parametrize("task", list(TASKS))
def test_clean_expert_succeeds(task: str) -> None:
    if TASKS[task].third_party:
        pytest.importorskip("gymnasium_robotics")
    results = [_run(task, seed) for seed in range(3)]
    assert all(success for success, _ in results), results


def test_expert_is_deterministic_under_a_seed() -> None:
    assert _run("PushAround", 4, noise=0.2) == _run("PushAround", 4, noise=0.2)


def test_push_around_expert_takes_both_routes() -> None:
    env = make("PushAround")
    expert = make_expert("PushAround", env)
    sides = set()
    for seed in range(12):
        expert.reset(seed=seed)
        sides.add(expert.side)
    assert sides == {-1.0, 1.0}


def test_full_noise_is_random_actions() -> None:
    env = make("Lift")
    expert = make_expert("Lift", env, noise=1.0, seed=0)
    obs, _ = env.reset(seed=0)
    actions = np.stack([expert.act(obs) for _ in range(200)])
    assert abs(actions.mean()) < 0.1 and actions.std() > 0.5


def test_noise_must_be_a_probability() -> None:
    env = make("Lift")
    with pytest.raises(ConfigError, match="noise.*\\[0, 1\\]"):
        make_expert("Lift", env, noise=1.5)
    with pytest.raises(ConfigError, match="jitter"):
        make_expert("Lift", env, jitter=-1.0)
