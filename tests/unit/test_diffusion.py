"""Diffusion Policy: the two denoisers, the samplers, learning on a fixed batch, images, save/load (tiny nets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import Policy
from roboloop.core.spec import PolicySpec
from roboloop.policies.diffusion import DiffusionConfig, DiffusionPolicy
from roboloop.policies.diffusion.nets import ConditionalUnet1D, TransformerForDiffusion
from roboloop.policies.encoders import VisionConfig

STATE, CAMERA = "observation.state", "observation.images.front"
B, TO, TP, TA, DA, D = 3, 2, 8, 4, 4, 10
TINY_UNET = {"down_dims": [8, 16], "n_groups": 4, "step_embed_dim": 8}
TINY_TRANSFORMER = {"denoiser": "transformer", "n_layer": 1, "n_head": 2, "n_emb": 16}
TINY_VISION = VisionConfig(channels=[8, 8], num_keypoints=4, feature_dim=8)


def make_policy(*, images: bool = False, **overrides: object) -> DiffusionPolicy:
    keys = [STATE, CAMERA] if images else [STATE]
    spec = PolicySpec({STATE: (D,), **({CAMERA: (16, 16, 3)} if images else {})}, action_dim=DA,
                      action_low=[-1] * DA, action_high=[1] * DA, n_obs_steps=TO, horizon=TP, n_action_steps=TA)
    config = DiffusionConfig(n_obs_steps=TO, horizon=TP, n_action_steps=TA, obs_keys=keys, vision=TINY_VISION,
                             num_inference_steps=4, **{**TINY_UNET, **overrides})  # type: ignore[arg-type]
    torch.manual_seed(0)
    policy = DiffusionPolicy(config, spec)
    policy.normalizer.fit({STATE: {"min": -np.ones(D), "max": np.ones(D)},
                           CAMERA: {"mean": np.full(3, 127.0), "std": np.full(3, 64.0)},
                           "action": {"min": -np.ones(DA), "max": np.ones(DA)}})
    return policy


def make_obs(*, images: bool = False, batch: int = B, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = {STATE: torch.rand(batch, TO, D, generator=g) * 2 - 1}
    if images:
        obs[CAMERA] = torch.randint(0, 256, (batch, TO, 16, 16, 3), generator=g, dtype=torch.uint8)
    return obs


def make_batch(*, images: bool = False) -> dict[str, torch.Tensor]:
    batch = make_obs(images=images)
    g = torch.Generator().manual_seed(2)
    batch["action"] = torch.rand(B, TP, DA, generator=g) * 2 - 1
    batch["action_is_pad"] = torch.zeros(B, TP, dtype=torch.bool)
    return batch


# ------------------------------------------------------------------------------------------------ denoisers
@pytest.mark.parametrize("horizon", [1, 5, 8, 9, 16])
@pytest.mark.parametrize("down_dims", [[8], [8, 16], [8, 16, 16]])
def test_unet_keeps_the_chunk_shape_for_any_horizon(horizon: int, down_dims: list[int]) -> None:
    net = ConditionalUnet1D(DA, 6, TO, down_dims, kernel_size=3, n_groups=4, step_embed_dim=8, blocks_per_level=2)
    out = net(torch.randn(2, horizon, DA), torch.tensor([0, 50]), torch.randn(2, TO, 6))
    assert out.shape == (2, horizon, DA)


@pytest.mark.parametrize("horizon", [1, 5, 8])
@pytest.mark.parametrize("n_cond_layers", [0, 1])
def test_transformer_keeps_the_chunk_shape(horizon: int, n_cond_layers: int) -> None:
    net = TransformerForDiffusion(DA, 6, TO, horizon, n_layer=1, n_head=2, n_emb=16, n_cond_layers=n_cond_layers)
    out = net(torch.randn(2, horizon, DA), torch.tensor([0, 50]), torch.randn(2, TO, 6))
    assert out.shape == (2, horizon, DA)


def test_film_carries_the_condition_into_the_unet() -> None:
    torch.manual_seed(0)
    net = ConditionalUnet1D(DA, 6, TO, [8, 16], n_groups=4, step_embed_dim=8).eval()
    sample, steps = torch.randn(1, TP, DA), torch.tensor([10])
    obs_a, obs_b = torch.randn(1, TO, 6), torch.randn(1, TO, 6)
    assert not torch.allclose(net(sample, steps, obs_a), net(sample, steps, obs_b))
    assert not torch.allclose(net(sample, steps, obs_a), net(sample, torch.tensor([90]), obs_a))
    with torch.no_grad():  # without the FiLM layer the condition has no way in
        net.film[1].weight.zero_()
    assert torch.equal(net(sample, steps, obs_a), net(sample, steps, obs_b))
    assert torch.equal(net(sample, steps, obs_a), net(sample, torch.tensor([90]), obs_a))


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_causal_masks(causal: bool) -> None:
    torch.manual_seed(0)
    net = TransformerForDiffusion(DA, 6, TO, TP, n_layer=2, n_head=2, n_emb=16, causal_attn=causal).eval()
    sample, steps, obs = torch.randn(1, TP, DA), torch.tensor([30]), torch.randn(1, TO, 6)
    base = net(sample, steps, obs)
    # An action token changed at index 5: with the causal mask, outputs before it cannot see it.
    later = sample.clone()
    later[:, 5] += 1.0
    changed = (net(later, steps, obs) - base).abs().amax(-1)[0] > 1e-6  # (Tp,)
    assert changed[5:].all()
    assert changed[:5].any() != causal
    # The last observation sits at chunk index To - 1: action tokens before it cannot see it.
    newer = obs.clone()
    newer[:, -1] += 1.0
    changed = (net(sample, steps, newer) - base).abs().amax(-1)[0] > 1e-6
    assert changed[TO - 1:].all()
    assert changed[:TO - 1].any() != causal


# ------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 1), ("ddim", 4), ("ddim", 100), ("ddpm", 7), ("ddpm", 100)])
def test_set_sampler_runs_that_many_denoising_steps(sampler: str, steps: int) -> None:
    policy = make_policy().eval()
    policy.set_sampler(sampler, steps)
    calls = []
    denoise = policy.denoiser.denoise

    def counting(sample: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        calls.append(sample.shape[0])
        return denoise(sample, cond)

    policy.denoiser.denoise = counting  # type: ignore[method-assign]
    actions = policy.act(make_obs())
    assert len(calls) == steps and set(calls) == {B}
    assert actions.shape == (B, TA, DA) and torch.isfinite(actions).all()
    assert (policy.config.sampler, policy.config.num_inference_steps) == (sampler, steps)


@pytest.mark.parametrize(("sampler", "steps", "match"), [("ddim", 0, "num_inference_steps"),
                                                         ("ddpm", 101, "num_inference_steps"),
                                                         ("euler", 10, "sampler")])
def test_set_sampler_rejects_bad_settings(sampler: str, steps: int, match: str) -> None:
    policy = make_policy()
    with pytest.raises(ConfigError, match=match):
        policy.set_sampler(sampler, steps)
    assert (policy.config.sampler, policy.config.num_inference_steps) == ("ddim", 4)  # unchanged


@pytest.mark.parametrize("overrides", [{}, TINY_TRANSFORMER], ids=["unet", "transformer"])
def test_batched_conditioning_matches_the_plain_forward_pass(overrides: dict[str, object]) -> None:
    """sample_chunks conditions all steps in one call; a loop calling forward() step by step must agree."""
    policy = make_policy(**overrides).eval()
    with torch.no_grad():
        features = policy.encode(make_obs())
        torch.manual_seed(4)
        fast = policy.sample_chunks(features)
        torch.manual_seed(4)
        chunk = torch.randn(B, TP, DA)
        for t in policy.sampler.timesteps.tolist():
            pred = policy.denoiser(chunk, torch.full((B,), t), features)
            chunk = policy.sampler.step(pred, t, chunk).prev_sample
    torch.testing.assert_close(fast, chunk, rtol=1e-5, atol=1e-5)


def test_ddim_is_a_function_of_the_initial_noise() -> None:
    policy = make_policy().eval()
    obs = make_obs()
    torch.manual_seed(5)
    a = policy.act(obs, deterministic=True)
    torch.manual_seed(5)
    b = policy.act(obs, deterministic=False)  # the flag does not remove the initial-noise draw
    c = policy.act(obs)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_generator_replaces_the_global_rng(sampler: str) -> None:
    """With a generator, act and sample_actions draw from it alone: the same seed gives the same chunks whatever
    the global RNG does, and the global RNG is left untouched (env groups plan on their own threads with it)."""
    policy = make_policy(sampler=sampler).eval()
    obs = make_obs()
    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    a = policy.act(obs, generator=torch.Generator().manual_seed(7))
    candidates = policy.sample_actions(obs, 3, torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.manual_seed(1)
    assert torch.equal(a, policy.act(obs, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(candidates, policy.sample_actions(obs, 3, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, policy.act(obs, generator=torch.Generator().manual_seed(8)))


def test_sample_actions_gives_distinct_candidates_per_observation() -> None:
    policy = make_policy().eval()
    torch.manual_seed(0)
    candidates = policy.sample_actions(make_obs(), 5)
    assert candidates.shape == (B, 5, TA, DA)
    assert (candidates >= -1).all() and (candidates <= 1).all()
    for b in range(B):
        flat = candidates[b].flatten(1)
        assert torch.cdist(flat, flat)[~torch.eye(5, dtype=torch.bool)].min() > 1e-4
    with pytest.raises(InputError, match="n >= 1"):
        policy.sample_actions(make_obs(), 0)


# ------------------------------------------------------------------------------------------------ training
def _seeded_loss(policy: Policy, batch: dict[str, torch.Tensor]) -> float:
    """The loss with the same noise and diffusion steps each time, averaged over a few draws."""
    torch.manual_seed(123)
    with torch.no_grad():
        return float(np.mean([policy.compute_loss(batch).loss.item() for _ in range(8)]))


@pytest.mark.parametrize(("overrides", "images"), [({}, False), ({"prediction_type": "epsilon"}, False),
                                                   (TINY_TRANSFORMER, False), ({}, True)],
                         ids=["unet-sample", "unet-epsilon", "transformer", "unet-images"])
def test_loss_decreases_on_a_fixed_batch(overrides: dict[str, object], images: bool) -> None:
    policy = make_policy(images=images, **overrides).train()
    batch = make_batch(images=images)
    before = _seeded_loss(policy, batch)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(100):
        out = policy.compute_loss(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert set(out.metrics) == {"mse"}
    after = _seeded_loss(policy, batch)
    assert after < 0.85 * before, (before, after)  # same noise and steps: a real decrease, not luck


def test_image_observations_reach_the_camera_encoder() -> None:
    policy = make_policy(images=True).train()
    policy.compute_loss(make_batch(images=True)).loss.backward()
    grads = [p.grad for p in policy.encoder.cameras.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)
    actions = policy.eval().act(make_obs(images=True))
    assert actions.shape == (B, TA, DA)


def test_loss_checks_the_batch() -> None:
    batch = make_batch()
    batch["action"] = batch["action"][:, :-1]
    with pytest.raises(InputError, match="horizon"):
        make_policy().compute_loss(batch)


# ------------------------------------------------------------------------------------------------ persistence
@pytest.mark.parametrize(("overrides", "images"), [({}, False), (TINY_TRANSFORMER, False), ({}, True)],
                         ids=["unet", "transformer", "unet-images"])
def test_save_load_round_trip_gives_the_same_actions(tmp_path: Path, overrides: dict[str, object],
                                                     images: bool) -> None:
    policy = make_policy(images=images, **overrides).eval()
    policy.set_sampler("ddpm", 6)  # a changed sampler is saved with the config
    path = policy.save(tmp_path / "ckpt")
    loaded = Policy.load(path)
    assert isinstance(loaded, DiffusionPolicy) and not loaded.training
    assert (loaded.config.sampler, loaded.config.num_inference_steps) == ("ddpm", 6)
    obs = make_obs(images=images)
    torch.manual_seed(9)
    expected = policy.act(obs)
    torch.manual_seed(9)
    assert torch.equal(loaded.act(obs), expected)


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("field", "value"), [
    ("denoiser", "mlp"), ("down_dims", []), ("down_dims", [12, 16]), ("kernel_size", 4), ("n_groups", 0),
    ("step_embed_dim", 7), ("blocks_per_level", 0), ("n_layer", 0), ("n_head", 3), ("n_emb", 0),
    ("n_cond_layers", -1), ("p_drop_emb", 1.0), ("p_drop_attn", -0.1), ("num_train_timesteps", 0),
    ("beta_schedule", "cosine"), ("prediction_type", "v_prediction"), ("sampler", "euler"),
    ("num_inference_steps", 0), ("num_inference_steps", 101),
])
def test_config_rejects_invalid_values_by_name(field: str, value: object) -> None:
    name = {"down_dims": "n_groups|down_dims", "n_head": "n_emb|n_head", "n_emb": "n_emb"}.get(field, field)
    with pytest.raises(ConfigError, match=name):
        DiffusionConfig(**{field: value})  # type: ignore[arg-type]


def test_default_config_is_valid_and_small() -> None:
    spec = PolicySpec({STATE: (16,)}, action_dim=5, action_low=[-1] * 5, action_high=[1] * 5, n_obs_steps=2,
                      horizon=16, n_action_steps=8)
    policy = DiffusionPolicy(DiffusionConfig(), spec)
    assert sum(p.numel() for p in policy.parameters()) < 500_000  # a batch-1 chunk in <= 10 ms on 2 CPU cores
