"""Multimodality, the claim of Diffusion Policy, on a toy: from one observation the demonstrations go
either left or right (half each). A diffusion policy must produce both modes; the MSE baseline averages
them into a chunk that goes nowhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from roboloop.core.policy import Policy
from roboloop.core.spec import PolicySpec
from roboloop.policies import POLICIES

pytestmark = pytest.mark.slow
STATE = "observation.state"
TO, TP, TA, DA = 1, 4, 2, 2
MODE = 0.7


def bimodal_batch(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    action = sign[:, None, None] * MODE + 0.03 * torch.randn(n, TP, DA, generator=g)
    return {STATE: torch.zeros(n, TO, 3), f"{STATE}_is_pad": torch.zeros(n, TO, dtype=torch.bool),
            "action": action, "action_is_pad": torch.zeros(n, TP, dtype=torch.bool)}


def train(name: str, **config: object) -> Policy:
    cls = POLICIES[name]
    spec = PolicySpec({STATE: (3,)}, action_dim=DA, action_low=[-1.0] * DA, action_high=[1.0] * DA,
                      n_obs_steps=TO, horizon=TP, n_action_steps=TA)
    torch.manual_seed(0)
    policy = cls(cls.config_cls(n_obs_steps=TO, horizon=TP, n_action_steps=TA, **config), spec)
    policy.normalizer.fit({STATE: {"min": np.zeros(3), "max": np.zeros(3)},
                           "action": {"min": -np.ones(DA), "max": np.ones(DA)}})
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    policy.train()
    for _ in range(1500):
        loss = policy.compute_loss(bimodal_batch(128, g)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.eval()


def test_diffusion_produces_both_modes_while_mlp_averages_them() -> None:
    obs = {STATE: torch.zeros(400, TO, 3)}
    diffusion = train("diffusion", down_dims=[32, 64], step_embed_dim=32, num_inference_steps=10)
    torch.manual_seed(1)
    mean_action = diffusion.act(obs, deterministic=False).mean(dim=(1, 2))  # (400,)
    left = (mean_action - (-MODE)).abs() < 0.2
    right = (mean_action - MODE).abs() < 0.2
    assert left.float().mean() > 0.3 and right.float().mean() > 0.3, (left.float().mean(), right.float().mean())
    assert (mean_action.abs() < 0.3).float().mean() < 0.05

    mlp = train("mlp", hidden_dims=[64, 64])
    averaged = mlp.act(obs).mean(dim=(1, 2))
    assert averaged.abs().max() < 0.2  # the mean of the two modes: neither left nor right
