"""The real proxy hides its parameters and really runs under them; RealRobotEnv keeps the budget and logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from roboloop.core.errors import InputError
from roboloop.datasets.store import EpisodeStore
from roboloop.envs import make
from roboloop.sim2real import BudgetExceededError, HiddenParameters, RealProxy, RealRobot, RealRobotEnv
from roboloop.sim2real.real_robot import HIDDEN_SCALES, MAX_SHIFT, MIN_SHIFT


def test_hidden_parameters_are_off_nominal_and_reproducible_from_the_secret_seed() -> None:
    first, again, other = HiddenParameters.draw(3), HiddenParameters.draw(3), HiddenParameters.draw(4)
    assert first == again and first != other
    for name in HIDDEN_SCALES:
        assert MIN_SHIFT <= abs(getattr(first, name) - 1.0) <= MAX_SHIFT
    assert first.action_latency_steps >= 1 and first.obs_noise_std > 0


def test_the_proxy_reports_nothing_of_its_parameters() -> None:
    proxy = RealProxy("PegInsert", secret_seed=5)
    assert isinstance(proxy, RealRobot)
    hidden = proxy.reveal_parameters()
    _, info = proxy.reset(seed=0)
    assert set(info) == {"is_success"}
    _, _, _, _, info = proxy.step(np.zeros(5, np.float32))
    assert set(info) == {"is_success"}
    public = {k: v for k, v in vars(proxy).items() if not k.startswith("_")}
    assert set(public) == {"task", "env_kwargs", "observation_space", "action_space"}
    assert str(hidden.friction_scale) not in repr(proxy)
    assert not hasattr(proxy, "get_state") and not hasattr(proxy, "unwrapped")
    proxy.close()


def test_the_proxy_runs_under_its_hidden_physics() -> None:
    """The simulation behind the proxy has the hidden friction and gains, and the same seed and actions give a
    different trajectory than the nominal task."""
    proxy = RealProxy("PegInsert", secret_seed=5)
    hidden = proxy.reveal_parameters()
    nominal = make("PegInsert")
    obs_real, _ = proxy.reset(seed=1)
    obs_sim, _ = nominal.reset(seed=1)
    sim = proxy._RealProxy__sim.unwrapped  # type: ignore[attr-defined]  # the test may look; training code may not
    np.testing.assert_allclose(sim.model.geom_friction[:, 0],
                               nominal.unwrapped.model.geom_friction[:, 0] * hidden.friction_scale)
    # The same poses (the proxy draws them as the task does), up to the sensor noise.
    np.testing.assert_allclose(obs_real["observation.state"][9:12], obs_sim["observation.state"][9:12], atol=0.01)
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(20):
        action = rng.uniform(-1, 1, 5).astype(np.float32)
        obs_real, *_ = proxy.step(action)
        obs_sim, *_ = nominal.step(action)
        gaps.append(np.abs(obs_real["observation.state"][:3] - obs_sim["observation.state"][:3]).max())
    assert max(gaps) > 0.005  # latency and gains move the gripper elsewhere
    proxy.close()
    nominal.close()


def run_episode(env: RealRobotEnv, steps: int | None = None, seed: int | None = None) -> int:
    env.reset(seed=seed)
    rng = np.random.default_rng(0)
    n = 0
    while steps is None or n < steps:
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 5).astype(np.float32))
        n += 1
        if terminated or truncated:
            break
    return n


def test_real_robot_env_keeps_the_budget_and_logs_every_episode(tmp_path: Path) -> None:
    log = tmp_path / "real.hdf5"
    env = RealRobotEnv(RealProxy("Lift", secret_seed=2), episode_budget=3, log_path=log, policy_id="random")
    full = run_episode(env, seed=10)
    partial = run_episode(env, steps=7, seed=11)  # abandoned: the next reset still logs it
    assert env.episodes_left == 1
    run_episode(env, steps=3)
    with pytest.raises(BudgetExceededError, match="budget of 3 episodes is spent"):
        env.reset()
    env.close()
    with EpisodeStore(log) as store:
        assert len(store) == 3 and [store.num_samples(d) for d in store.demos] == [full, partial, 3]
        attrs = store.attrs(store.demos[0])
        assert attrs["source"] == "real" and attrs["policy_id"] == "random" and attrs["seed"] == 10
        assert store.episode(store.demos[0]).truncated[-1]
        assert store.env_args["roboloop"]["task"] == "Lift"


def test_real_robot_env_refuses_what_a_robot_cannot_do(tmp_path: Path) -> None:
    env = RealRobotEnv(RealProxy("Lift"), episode_budget=1)
    with pytest.raises(InputError, match="observation.images.wrist"):
        env.check_observations(["observation.state", "observation.images.wrist"])
    env.check_observations(["observation.state"])
    with pytest.raises(InputError, match="no reset options"):
        env.reset(options={"state": np.zeros(3)})
    with pytest.raises(InputError, match="reset"):
        env.step(np.zeros(5, np.float32))
    env.close()
