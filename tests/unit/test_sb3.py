"""stable-baselines3 on roboloop vector envs: the VecEnv adapter keeps terminated and truncated apart, and SB3's
PPO trains a residual head on the same ResidualVecEnv as ours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from roboloop.core.errors import ConfigError
from roboloop.datasets.collection import make_vector_env
from roboloop.residual_rl import PPOConfig, ResidualConfig, ResidualPolicy, ResidualVecEnv
from roboloop.residual_rl.sb3 import make_sb3_vec_env, sb3_ppo
from tests.point_mass import make_envs
from tests.unit.test_residual import make_base


def test_truncation_reaches_sb3_as_a_time_limit_with_its_final_observation() -> None:
    venv = make_sb3_vec_env(make_envs(2, max_steps=3))
    venv.seed(0)
    first = venv.reset()
    assert first.shape == (2, 2)
    for _ in range(2):
        venv.step_async(np.zeros((2, 1), np.float32))
        _, _, dones, infos = venv.step_wait()
        assert not dones.any()
    venv.step_async(np.zeros((2, 1), np.float32))
    obs, _, dones, infos = venv.step_wait()
    assert dones.all()
    for i in range(2):
        assert infos[i]["TimeLimit.truncated"] and "is_success" in infos[i]
        assert infos[i]["terminal_observation"][1] == pytest.approx(1.0)  # t / max_steps at the end
        assert obs[i][1] == pytest.approx(0.0)  # the next episode's first observation


def test_termination_is_not_a_time_limit() -> None:
    venv = make_sb3_vec_env(make_envs(1, max_steps=50, terminate_at_goal=True))
    venv.seed(0)
    venv.reset()
    for _ in range(50):
        venv.step_async(-np.sign(venv.envs.envs[0].unwrapped.x) * np.ones((1, 1), np.float32))
        _, _, dones, infos = venv.step_wait()
        if dones[0]:
            break
    assert dones[0] and not infos[0]["TimeLimit.truncated"]


def test_other_autoreset_modes_are_refused() -> None:
    with pytest.raises(ConfigError, match="SAME_STEP"):
        make_sb3_vec_env(make_envs(1, autoreset_mode=AutoresetMode.NEXT_STEP))


def test_sb3_ppo_trains_a_residual_head_on_the_residual_env(lift_demos: Path) -> None:
    policy = ResidualPolicy.from_base(make_base(lift_demos), ResidualConfig(hidden_dims=[16]))
    envs = ResidualVecEnv(make_vector_env("Lift", {}, 2, "sync"), policy)
    cfg = PPOConfig(total_env_steps=40, n_steps=10, n_epochs=2, n_minibatches=2, progress=False)
    model = sb3_ppo(envs, cfg, hidden_dims=[16], init_logstd=-2.0)
    model.learn(cfg.total_env_steps)
    assert model.num_timesteps == 40
    obs = envs.reset(seed=0)[0]
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2, policy.spec.action_dim)
    assert not torch.allclose(model.policy.log_std, torch.full_like(model.policy.log_std, -2.0))  # learned

    # With learn_std=False the log std stays where it started while the rest trains.
    fixed = sb3_ppo(envs, cfg, hidden_dims=[16], init_logstd=-2.0, learn_std=False)
    before = {name: p.detach().clone() for name, p in fixed.policy.named_parameters()}
    fixed.learn(cfg.total_env_steps)
    assert torch.equal(fixed.policy.log_std, torch.full_like(fixed.policy.log_std, -2.0))
    assert not torch.equal(before["action_net.weight"], fixed.policy.action_net.weight)
