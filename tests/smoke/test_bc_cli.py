"""``roboloop train-bc`` and ``roboloop eval`` end to end for every policy, with tiny networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roboloop.cli.main import main
from roboloop.policies import POLICIES

TINY = {
    "mlp": ["policy.hidden_dims=[16]"],
    "act": ["policy.dim_model=16", "policy.n_heads=2", "policy.dim_feedforward=32", "policy.n_encoder_layers=1",
            "policy.n_vae_encoder_layers=1", "policy.latent_dim=4"],
    "diffusion": ["policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.n_groups=4",
                  "policy.num_inference_steps=3"],
}
QUICK = ["train.steps=4", "train.batch_size=4", "train.log_every=2", "train.progress=false", "train.device=cpu",
         "eval.n_episodes=2", "eval.n_envs=2", "eval.progress=false"]


def test_every_policy_has_tiny_overrides() -> None:
    assert set(TINY) >= set(POLICIES)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_train_then_evaluate(name: str, lift_demos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    args = ["train-bc", f"policy={name}", f"dataset={lift_demos}", f"out_dir={out}", *TINY[name], *QUICK]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"trained {name} on Lift: 4 steps" in text and "best evaluation success" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == name and summary["steps"] == 4
    for ckpt in ("last", "best"):
        assert (out / "checkpoints" / ckpt / "model.safetensors").exists()
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    assert any((out / "tb").iterdir())

    extra = ["num_inference_steps=2"] if name == "diffusion" else []
    assert main(["eval", str(out / "checkpoints" / "last"), "n_episodes=2", "video=true", "n_videos=1",
                 "video_size=64", "progress=false", *extra]) == 0
    text = capsys.readouterr().out
    assert "success:" in text and "[" in text  # the Wilson interval
    result = json.loads((out / "checkpoints" / "last" / "eval" / "eval.json").read_text())
    assert len(result["episodes"]) == 2
    assert (out / "checkpoints" / "last" / "eval" / "success.png").exists()
    assert next((out / "checkpoints" / "last" / "eval" / "videos").glob("*.mp4")).stat().st_size > 1000


def test_train_bc_collects_its_demonstrations_when_no_dataset_is_given(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train-bc", "policy=mlp", "task=Lift", "n_demos=3", "evaluate=false", *TINY["mlp"], *QUICK]) == 0
    assert (tmp_path / "data" / "Lift_3demos_seed0.hdf5").exists()
    assert (tmp_path / "outputs" / "train_bc" / "Lift_mlp" / "checkpoints" / "last" / "spec.json").exists()


def test_a_dataset_that_does_not_fit_the_policy_is_refused(lift_demos: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train-bc", "policy=mlp", f"dataset={lift_demos}", f"out_dir={tmp_path}", *TINY["mlp"], *QUICK]
    assert main([*args, "policy.obs_keys=[observation.images.wrist]"]) == 2
    assert "has no observation key(s) ['observation.images.wrist']" in capsys.readouterr().err


def test_resuming_with_another_policy_type_is_refused(lift_demos: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = [f"dataset={lift_demos}", f"out_dir={tmp_path}", "evaluate=false", *QUICK]
    assert main(["train-bc", "policy=mlp", *TINY["mlp"], *base]) == 0
    assert main(["train-bc", "policy=act", *TINY["act"], *base, "train.resume=true"]) == 2
    assert "holds a 'mlp' policy" in capsys.readouterr().err


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nope"), "n_episodes=1"]) == 2
    assert "does not exist" in capsys.readouterr().err
