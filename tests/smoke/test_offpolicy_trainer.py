"""OffPolicyTrainer: offline then online phases on the point mass, exact resume, checks on its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from roboloop.core.errors import ConfigError, InputError
from roboloop.offline_rl import ReplayBuffer, discounted_returns
from roboloop.offline_rl.iql import IQL, IQLConfig
from roboloop.offline_rl.sac import SAC, SACConfig
from roboloop.offline_rl.trainer import OffPolicyConfig, OffPolicyTrainer
from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.policies.tanh_gaussian import TanhGaussianMLP
from tests.point_mass import make_envs, random_point_mass_data


def iql_agent() -> IQL:
    torch.manual_seed(0)
    return IQL(GaussianMLP(2, 1, hidden_dims=(16,), learn_std=True, last_layer_init_std=0.1), 2, 1,
               IQLConfig(hidden_dims=[16]))


def config(**overrides: object) -> OffPolicyConfig:
    fields: dict[str, object] = {"offline_steps": 20, "batch_size": 32, "log_every": 5, "eval_every": 10,
                                 "checkpoint_every": 10, "progress": False, **overrides}
    return OffPolicyConfig(**fields)  # type: ignore[arg-type]


def test_offline_run_resumes_exactly(tmp_path: Path) -> None:
    full = OffPolicyTrainer(iql_agent(), random_point_mass_data(), config(), tmp_path / "full").learn()
    assert full.updates == 20
    OffPolicyTrainer(iql_agent(), random_point_mass_data(), config(offline_steps=10), tmp_path / "split").learn()
    resumed = iql_agent()
    OffPolicyTrainer(resumed, random_point_mass_data(), config(resume=True), tmp_path / "split").learn()
    reference = iql_agent()
    OffPolicyTrainer(reference, random_point_mass_data(), config(), tmp_path / "again").learn()
    for a, b in zip(resumed.critic.parameters(), reference.critic.parameters(), strict=True):
        assert torch.equal(a, b)
    records = [json.loads(line) for line in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    assert [r["updates"] for r in records] == [5, 10, 15, 20] and {r["phase"] for r in records} == {"offline"}
    with pytest.raises(ConfigError, match="resume=true"):
        OffPolicyTrainer(iql_agent(), random_point_mass_data(), config(), tmp_path / "full").learn()


def test_history_file_holds_the_evaluations_so_far(tmp_path: Path) -> None:
    """history.json is rewritten at every evaluation, so a run's curve is readable before it ends (or if killed)."""
    seen: list[list[int]] = []

    def evaluate(actor: object, updates: int) -> dict[str, float]:
        path = tmp_path / "history.json"
        seen.append([h["updates"] for h in json.loads(path.read_text())] if path.exists() else [])
        return {"success_rate": updates / 100}

    OffPolicyTrainer(iql_agent(), random_point_mass_data(), config(offline_steps=30), tmp_path,
                     evaluate_fn=evaluate).learn()
    assert seen == [[], [10], [10, 20]]
    assert json.loads((tmp_path / "history.json").read_text())[-1] == {"updates": 30, "online_env_steps": 0,
                                                                       "success_rate": 0.3}


def test_online_phase_stores_final_observations_and_mixes_data(tmp_path: Path) -> None:
    torch.manual_seed(0)
    agent = SAC(TanhGaussianMLP(2, 1, hidden_dims=(16,)), 2, 1, SACConfig(n_critics=2, hidden_dims=[16]))
    envs = make_envs(2, max_steps=5)
    evaluations: list[int] = []
    trainer = OffPolicyTrainer(agent, random_point_mass_data(), config(offline_steps=4, online_env_steps=30,
                                                                      utd_ratio=2, eval_every=0),
                               tmp_path, envs=envs, evaluate_fn=lambda actor, n: evaluations.append(n) or {"x": 1.0})
    result = trainer.learn()
    assert result.online_env_steps == 30 and result.updates == 4 + 15 * 2 and evaluations == [34]
    online = trainer.online.gather(torch.arange(len(trainer.online)))
    assert len(trainer.online) == 30
    # Every 5th step of each env ends an episode by truncation; its next_obs is the final one (t = 5/5 = 1).
    assert online.truncated.sum().item() == 6 and (online.next_obs[online.truncated, 1] == 1.0).all()
    assert torch.isnan(online.mc_returns).all()  # the offline data has no returns-to-go: none computed online
    with pytest.raises(InputError, match="do not match"):
        OffPolicyTrainer(agent, ReplayBuffer(3, 1, 4), config(online_env_steps=2), tmp_path / "x", envs=envs)
    envs.close()


def test_online_data_is_made_as_the_offline_data_was(tmp_path: Path) -> None:
    """Online rewards get the offline buffer's scale and bias, and finished episodes its returns-to-go."""
    torch.manual_seed(0)
    agent = SAC(TanhGaussianMLP(2, 1, hidden_dims=(16,)), 2, 1, SACConfig(n_critics=2, hidden_dims=[16]))
    offline = random_point_mass_data()
    offline.reward_scale, offline.reward_bias, offline.returns_gamma = 10.0, -5.0, 0.9
    envs = make_envs(2, max_steps=5)
    trainer = OffPolicyTrainer(agent, offline, config(offline_steps=2, online_env_steps=24, eval_every=0),
                               tmp_path, envs=envs)
    trainer.learn()
    envs.close()
    online = trainer.online.gather(torch.arange(len(trainer.online)))
    # The point mass's reward is -|x'| and obs[0] of the next step is x': the stored reward is 10 r - 5.
    np.testing.assert_allclose(online.rewards.numpy(), -10 * np.abs(online.next_obs[:, 0].numpy()) - 5, rtol=1e-5)
    # Steps alternate env 0, env 1; each env's episodes are 5 steps: 2 finished per env, the third cut off.
    for env in range(2):
        rewards, returns = online.rewards[env::2].numpy(), online.mc_returns[env::2].numpy()
        for start in (0, 5):
            np.testing.assert_allclose(returns[start:start + 5], discounted_returns(rewards[start:start + 5], 0.9),
                                       rtol=1e-5)
        assert np.isnan(returns[10:]).all()  # the episode still running when online steps ran out


def test_exploration_noise_acts_around_the_actors_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    actor = TanhGaussianMLP(2, 1, hidden_dims=(16,))
    agent = SAC(actor, 2, 1, SACConfig(n_critics=2, hidden_dims=[16]))
    envs = make_envs(2, max_steps=5)
    obs = np.array([[0.3, 0.0], [-0.5, 0.2]], dtype=np.float32)
    mode = actor.sample(torch.as_tensor(obs), deterministic=True).env_action.detach().numpy()

    def trainer(noise: float | None) -> OffPolicyTrainer:
        return OffPolicyTrainer(agent, random_point_mass_data(), config(online_env_steps=2, exploration_noise=noise),
                                tmp_path / str(noise), envs=envs)

    assert np.allclose(trainer(0.0)._explore(obs, torch.Generator().manual_seed(1)), mode)
    noisy = [trainer(0.5)._explore(obs, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert np.array_equal(noisy[0], noisy[1]) and not np.allclose(noisy[0], mode)  # seeded, and off the mode
    assert (np.abs(noisy[0]) <= 1.0).all()  # clipped to the action space
    sampled = trainer(None)._explore(obs, torch.Generator().manual_seed(1))
    assert sampled.shape == mode.shape and not np.allclose(sampled, mode)  # the actor's own distribution
    with pytest.raises(ConfigError, match="exploration_noise"):
        config(exploration_noise=-0.1)
    envs.close()
