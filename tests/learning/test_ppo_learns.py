"""PPO solves the 1-D point-mass reach: the deterministic trained policy's return is far above a random
policy's, in seconds on one CPU core."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.residual_rl import PPO, PPOConfig
from tests.point_mass import make_envs, mean_return

pytestmark = pytest.mark.slow


def test_ppo_solves_point_mass_reach(tmp_path: Path) -> None:
    torch.manual_seed(0)
    actor = GaussianMLP(2, 1, hidden_dims=(32, 32), init_logstd=-0.5, learn_std=True, last_layer_init_std=0.01)
    cfg = PPOConfig(total_env_steps=40_960, n_steps=64, n_epochs=10, n_minibatches=4, gamma=0.95, actor_lr=1e-3,
                    critic_lr=1e-3, critic_hidden_dims=[32, 32], device="cpu", progress=False, checkpoint_every=1000)
    result = PPO(actor, make_envs(4), cfg, tmp_path).learn()
    assert result.seconds < 60

    rng = np.random.default_rng(0)
    random_return = mean_return(lambda obs: rng.uniform(-1, 1, size=1))

    def trained(obs: np.ndarray) -> np.ndarray:
        return actor.sample(torch.as_tensor(obs)[None], deterministic=True).env_action[0].numpy()

    trained_return = mean_return(trained)
    # Going straight to 0 and staying there earns about -0.7; a random walk about -11.
    assert trained_return > -1.5 and trained_return > random_return + 6, (trained_return, random_return)
