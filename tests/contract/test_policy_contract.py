"""Every registered policy honours the contract in ``roboloop/core/policy.py`` (tiny networks, CPU).

Shapes, raw-unit bounds, determinism under a seed, no input mutation, a finite loss with gradients for
every parameter, an exact save -> load round trip, and clear errors for missing statistics, wrong
observations and incompatible checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from roboloop.core.errors import CheckpointError, InputError, StateError
from roboloop.core.policy import Policy
from roboloop.core.spec import PolicySpec
from roboloop.policies import POLICIES
from roboloop.policies.encoders import VisionConfig

STATE, CAMERA = "observation.state", "observation.images.front"
TINY_VISION = VisionConfig(channels=[8, 8], num_keypoints=4, feature_dim=8)
# The smallest networks of each policy: the contract does not depend on size.
TINY: dict[str, dict] = {
    "mlp": {"hidden_dims": [16]},
    "act": {"dim_model": 16, "n_heads": 2, "dim_feedforward": 32, "n_encoder_layers": 1, "n_decoder_layers": 1,
            "n_vae_encoder_layers": 1, "latent_dim": 4},
    "diffusion": {"down_dims": [16, 32], "step_embed_dim": 16, "n_groups": 4, "num_inference_steps": 3},
}
B, TO, TP, TA, DA = 3, 2, 8, 4, 3


def test_every_policy_has_a_tiny_config() -> None:
    assert set(TINY) >= set(POLICIES)


def make_policy(name: str, *, images: bool = False, fit: bool = True) -> Policy:
    cls = POLICIES[name]
    keys = [STATE, CAMERA] if images else [STATE]
    spec = PolicySpec({STATE: (5,), **({CAMERA: (16, 16, 3)} if images else {})}, action_dim=DA,
                      action_low=[-1.0] * DA, action_high=[1.0] * DA, n_obs_steps=TO, horizon=TP, n_action_steps=TA)
    config = cls.config_cls(n_obs_steps=TO, horizon=TP, n_action_steps=TA, obs_keys=keys, vision=TINY_VISION,
                            **TINY[name])
    torch.manual_seed(0)
    policy = cls(config, spec)
    if fit:
        # Action statistics wider than the bounds: unnormalized outputs must still be clipped into them.
        policy.normalizer.fit({STATE: {"min": -2 * np.ones(5), "max": 3 * np.ones(5), "mean": np.zeros(5),
                                       "std": np.ones(5)},
                               CAMERA: {"mean": np.full(3, 120.0), "std": np.full(3, 60.0)},
                               "action": {"min": -3 * np.ones(DA), "max": 3 * np.ones(DA), "mean": np.zeros(DA),
                                          "std": 2 * np.ones(DA)}})
    return policy


def make_obs(images: bool = False, batch: int = B) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    obs = {STATE: torch.randn(batch, TO, 5, generator=g)}
    if images:
        obs[CAMERA] = torch.randint(0, 256, (batch, TO, 16, 16, 3), generator=g, dtype=torch.uint8)
    return obs


def make_batch(images: bool = False) -> dict[str, torch.Tensor]:
    batch = make_obs(images)
    batch[f"{STATE}_is_pad"] = torch.zeros(B, TO, dtype=torch.bool)
    batch["action"] = torch.rand(B, TP, DA) * 4 - 2
    batch["action_is_pad"] = torch.zeros(B, TP, dtype=torch.bool)
    batch["action_is_pad"][0, -2:] = True
    return batch


names = pytest.mark.parametrize("name", sorted(POLICIES))
modalities = pytest.mark.parametrize("images", [False, True], ids=["state", "image"])


@names
@modalities
def test_act_returns_raw_chunks_within_bounds(name: str, images: bool) -> None:
    policy = make_policy(name, images=images).eval()
    for deterministic in (True, False):
        actions = policy.act(make_obs(images), deterministic=deterministic)
        assert actions.shape == (B, TA, DA) and actions.dtype == torch.float32
        assert torch.isfinite(actions).all()
        assert (actions >= -1).all() and (actions <= 1).all()


@names
def test_act_is_deterministic_under_a_seed(name: str) -> None:
    policy = make_policy(name).eval()
    obs = make_obs()
    for deterministic in (True, False):
        torch.manual_seed(3)
        a = policy.act(obs, deterministic=deterministic)
        torch.manual_seed(3)
        b = policy.act(obs, deterministic=deterministic)
        assert torch.equal(a, b)


@names
@modalities
def test_inputs_are_not_mutated(name: str, images: bool) -> None:
    policy = make_policy(name, images=images)
    obs, batch = make_obs(images), make_batch(images)
    obs_copy = {k: v.clone() for k, v in obs.items()}
    batch_copy = {k: v.clone() for k, v in batch.items()}
    policy.eval().act(obs)
    policy.train().compute_loss(batch)
    assert all(torch.equal(obs[k], obs_copy[k]) for k in obs)
    assert all(torch.equal(batch[k], batch_copy[k]) for k in batch)


@names
@modalities
def test_loss_is_finite_and_reaches_every_parameter(name: str, images: bool) -> None:
    policy = make_policy(name, images=images).train()
    out = policy.compute_loss(make_batch(images))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.metrics and all(isinstance(v, float) for v in out.metrics.values())
    out.loss.backward()
    without_grad = [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None]
    assert not without_grad, f"parameters the loss never reaches: {without_grad}"
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


@names
@modalities
def test_save_load_round_trip_is_exact(name: str, images: bool, tmp_path: Path) -> None:
    policy = make_policy(name, images=images).eval()
    policy.save(tmp_path / "ckpt")
    loaded = Policy.load(tmp_path / "ckpt")
    assert type(loaded) is type(policy) and not loaded.training
    assert loaded.spec == policy.spec and loaded.config == policy.config
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    obs = make_obs(images)
    torch.manual_seed(5)
    x = policy.act(obs, deterministic=False)
    torch.manual_seed(5)
    y = loaded.act(obs, deterministic=False)
    assert torch.equal(x, y)
    assert type(policy).load(tmp_path / "ckpt").name == name


@names
def test_missing_statistics_raise(name: str) -> None:
    policy = make_policy(name, fit=False).eval()
    with pytest.raises(StateError, match="no normalization statistics"):
        policy.act(make_obs())


@names
def test_wrong_observations_raise_errors_that_name_the_problem(name: str) -> None:
    policy = make_policy(name).eval()
    with pytest.raises(InputError, match="missing key"):
        policy.act({"observation.other": torch.zeros(B, TO, 5)})
    with pytest.raises(InputError, match=r"observation.state.*shape"):
        policy.act({STATE: torch.zeros(B, TO, 6)})
    with pytest.raises(InputError, match=r"observation.state.*shape"):
        policy.act({STATE: torch.zeros(B, 5)})
    with pytest.raises(InputError, match="NaN"):
        policy.act({STATE: torch.full((B, TO, 5), float("nan"))})
    batch = make_batch()
    batch["action"] = batch["action"][..., :2]
    with pytest.raises(InputError, match="action"):
        policy.compute_loss(batch)


@names
def test_incompatible_checkpoints_are_refused(name: str, tmp_path: Path) -> None:
    path = make_policy(name).save(tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    config["config"]["no_such_field"] = 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no_such_field"):
        Policy.load(path)

    path = make_policy(name).save(tmp_path / "ckpt2")
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        Policy.load(path)

    with pytest.raises(CheckpointError, match="does not exist"):
        Policy.load(tmp_path / "nowhere")
