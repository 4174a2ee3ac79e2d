from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from roboloop.core.errors import ConfigError
from roboloop.core.policy import Policy
from roboloop.core.spec import PolicySpec
from roboloop.policies import POLICIES
from roboloop.policies.act import ACTConfig, ACTPolicy
from roboloop.policies.encoders import VisionConfig

STATE, IMAGE = "observation.state", "observation.images.front"
TINY = {"dim_model": 32, "n_heads": 2, "dim_feedforward": 64, "n_encoder_layers": 2, "n_decoder_layers": 1,
        "n_vae_encoder_layers": 1, "latent_dim": 8, "dropout": 0.0}
TINY_VISION = VisionConfig(channels=[8, 8], num_keypoints=4, feature_dim=8)


def make_policy(n_obs_steps: int = 1, *, state: bool = True, image: bool = False, **overrides: Any) -> ACTPolicy:
    torch.manual_seed(0)
    shapes = {**({STATE: (10,)} if state else {}), **({IMAGE: (16, 16, 3)} if image else {})}
    spec = PolicySpec(shapes, action_dim=4, action_low=[-1] * 4, action_high=[1] * 4, n_obs_steps=n_obs_steps,
                      horizon=8, n_action_steps=4)
    config = ACTConfig(n_obs_steps=n_obs_steps, horizon=8, n_action_steps=4, obs_keys=list(shapes),
                       vision=TINY_VISION, **{**TINY, **overrides})
    policy = ACTPolicy(config, spec)
    stats = {"action": {"min": [-1.0] * 4, "max": [1.0] * 4}}
    if state:
        stats[STATE] = {"min": [-2.0] * 10, "max": [2.0] * 10}
    if image:
        stats[IMAGE] = {"mean": [120.0] * 3, "std": [60.0] * 3}
    policy.normalizer.fit(stats)
    return policy


def make_batch(policy: ACTPolicy, batch_size: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    spec = policy.spec
    batch = {}
    for key, shape in spec.obs_shapes.items():
        if key == IMAGE:
            batch[key] = torch.randint(0, 256, (batch_size, spec.n_obs_steps, *shape), generator=g, dtype=torch.uint8)
        else:
            batch[key] = torch.rand(batch_size, spec.n_obs_steps, *shape, generator=g) * 4 - 2
    batch["action"] = torch.rand(batch_size, spec.horizon, spec.action_dim, generator=g) * 2 - 1
    is_pad = torch.zeros(batch_size, spec.horizon, dtype=torch.bool)
    is_pad[0, -3:] = True  # an episode end
    is_pad[1, -1:] = True
    batch["action_is_pad"] = is_pad
    return batch


def obs_of(batch: dict[str, torch.Tensor], policy: ACTPolicy) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in policy.spec.obs_shapes}


def test_registered_and_config_validation() -> None:
    assert POLICIES["act"] is ACTPolicy
    assert ACTConfig().n_obs_steps == 1
    with pytest.raises(ConfigError, match="n_heads"):
        ACTConfig(dim_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="loss"):
        ACTConfig(loss="huber")
    with pytest.raises(ConfigError, match="dropout"):
        ACTConfig(dropout=1.0)


@pytest.mark.parametrize("n_obs_steps", [1, 2])
def test_shapes_and_bounds(n_obs_steps: int) -> None:
    policy = make_policy(n_obs_steps).eval()
    batch = make_batch(policy)
    obs = obs_of(batch, policy)
    actions = policy.act(obs)
    assert actions.shape == (6, 4, 4)
    assert (actions.abs() <= 1.0).all()
    assert policy.sample_actions(obs, 3).shape == (6, 3, 4, 4)
    before = {k: v.clone() for k, v in batch.items()}
    out = policy.train().compute_loss(batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(torch.equal(before[k], batch[k]) for k in batch), "compute_loss mutated its batch"


def test_padded_actions_do_not_affect_the_loss() -> None:
    policy = make_policy()
    batch = make_batch(policy)
    changed = {**batch, "action": batch["action"].clone()}
    changed["action"][batch["action_is_pad"]] = 0.9  # other values where the masks say padding
    torch.manual_seed(3)
    loss = policy.compute_loss(batch)
    torch.manual_seed(3)
    loss_changed = policy.compute_loss(changed)
    torch.testing.assert_close(loss.loss, loss_changed.loss, rtol=1e-6, atol=1e-7)
    changed["action"][0, 0] += 0.5  # a real action does count
    torch.manual_seed(3)
    assert policy.compute_loss(changed).loss != loss.loss


@pytest.mark.parametrize("use_vae", [True, False])
def test_kl_term_only_with_the_cvae(use_vae: bool) -> None:
    policy = make_policy(use_vae=use_vae, kl_weight=5.0)
    out = policy.compute_loss(make_batch(policy))
    assert ("kld" in out.metrics) == use_vae
    expected = out.metrics["l1"] + 5.0 * out.metrics.get("kld", 0.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert (policy.posterior is not None) == use_vae


def test_mse_loss_metric() -> None:
    policy = make_policy(loss="mse")
    assert set(policy.compute_loss(make_batch(policy)).metrics) == {"mse", "kld"}


def test_zero_latent_is_deterministic_and_sampling_follows_the_seed() -> None:
    policy = make_policy().eval()
    obs = obs_of(make_batch(policy), policy)
    torch.manual_seed(0)
    first = policy.act(obs)
    assert torch.equal(first, policy.act(obs))  # no reseeding: z = 0 draws nothing
    torch.manual_seed(1)
    a = policy.act(obs, deterministic=False)
    torch.manual_seed(1)
    b = policy.act(obs, deterministic=False)
    torch.manual_seed(2)
    c = policy.act(obs, deterministic=False)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, first)


def test_a_generator_replaces_the_global_rng() -> None:
    policy = make_policy().eval()
    obs = obs_of(make_batch(policy), policy)
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    a = policy.act(obs, deterministic=False, generator=torch.Generator().manual_seed(3))
    candidates = policy.sample_actions(obs, 2, torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(a, policy.act(obs, deterministic=False, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(candidates, policy.sample_actions(obs, 2, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, policy.act(obs, deterministic=False, generator=torch.Generator().manual_seed(4)))


def test_sample_actions_needs_the_cvae() -> None:
    policy = make_policy(use_vae=False).eval()
    obs = obs_of(make_batch(policy), policy)
    with pytest.raises(ConfigError, match="use_vae"):
        policy.sample_actions(obs, 2)
    assert torch.equal(policy.act(obs, deterministic=False), policy.act(obs))


def test_loss_decreases_on_a_fixed_batch() -> None:
    policy = make_policy(kl_weight=1.0)
    batch = make_batch(policy, batch_size=8)
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(50):
        out = policy.compute_loss(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.metrics["l1"])
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


@pytest.mark.parametrize("state", [True, False])
def test_image_observations(state: bool) -> None:
    policy = make_policy(2, state=state, image=True)
    batch = make_batch(policy)
    out = policy.compute_loss(batch)
    out.loss.backward()
    camera = next(iter(policy.encoder.cameras.values()))
    assert camera.conv[0].weight.grad is not None and camera.conv[0].weight.grad.abs().sum() > 0
    policy.eval()
    assert policy.act(obs_of(batch, policy)).shape == (6, 4, 4)


@pytest.mark.parametrize("image", [False, True])
def test_save_load_round_trip(tmp_path: Path, image: bool) -> None:
    policy = make_policy(image=image).eval()
    obs = obs_of(make_batch(policy), policy)
    loaded = Policy.load(policy.save(tmp_path / "ckpt"))
    assert isinstance(loaded, ACTPolicy) and loaded.config == policy.config
    assert torch.equal(loaded.act(obs), policy.act(obs))
    torch.manual_seed(4)
    sampled = policy.sample_actions(obs, 2)
    torch.manual_seed(4)
    assert torch.equal(loaded.sample_actions(obs, 2), sampled)
