"""``roboloop train-residual`` end to end on a tiny BC base: PPO trains only the head, the base is untouched,
checkpoints load and evaluate like BC ones, a killed run resumes, and bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roboloop.cli.main import main
from roboloop.core.policy import Policy
from roboloop.residual_rl import ResidualPolicy

BC = ["policy=diffusion", "policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.n_groups=4",
      "policy.horizon=8", "policy.n_action_steps=4", "train.steps=4", "train.batch_size=4", "train.progress=false",
      "train.device=cpu", "evaluate=false"]
RESIDUAL = ["n_envs=2", "ppo.n_steps=10", "ppo.n_minibatches=2", "ppo.n_epochs=2", "ppo.critic_warmup_iterations=1",
            "ppo.checkpoint_every=1", "ppo.eval_every=2", "ppo.progress=false", "residual.hidden_dims=[16]",
            "eval.n_episodes=2", "eval.n_envs=2", "eval.progress=false", "device=cpu"]


@pytest.fixture(scope="module")
def bc_base(lift_demos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bc")
    assert main(["train-bc", f"dataset={lift_demos}", f"out_dir={out}", "policy.obs_keys=[observation.state]",
                 *BC]) == 0
    return out / "checkpoints" / "last"


def test_train_residual_then_evaluate(bc_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base_weights = load_file(str(bc_base / "model.safetensors"))
    out = tmp_path / "residual"
    assert main(["train-residual", f"base={bc_base}", f"out_dir={out}", "ppo.total_env_steps=60", *RESIDUAL]) == 0
    text = capsys.readouterr().out
    assert "base success:" in text and "residual success:" in text
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3] and log[0]["actor_updated"] == 0.0  # critic warm-up
    assert log[1]["actor_updated"] == 1.0

    policy = Policy.load(out / "checkpoints" / "last")
    assert isinstance(policy, ResidualPolicy)
    assert policy.head.mean_layer.weight.abs().sum() > 0  # the head learned something
    for key, value in policy.base.state_dict().items():  # the base did not
        if key in base_weights:
            torch.testing.assert_close(value, base_weights[key], rtol=0, atol=0)
    assert main(["eval", str(out / "checkpoints" / "last"), "n_episodes=2", "progress=false"]) == 0
    assert "success:" in capsys.readouterr().out


def test_a_killed_run_resumes_where_it_stopped(bc_base: Path, tmp_path: Path) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    args = [f"base={bc_base}", "ppo.anneal_lr=false", *RESIDUAL]  # the budget then only says where to stop
    assert main(["train-residual", f"out_dir={full}", "ppo.total_env_steps=80", *args]) == 0
    assert main(["train-residual", f"out_dir={split}", "ppo.total_env_steps=40", *args]) == 0
    # The stopped run is continued to the full budget: the same iterations, the same numbers.
    assert main(["train-residual", f"out_dir={split}", "ppo.total_env_steps=80", "ppo.resume=true", *args]) == 0

    def losses(run: Path) -> list[tuple[float, float]]:
        return [(r["policy_loss"], r["value_loss"]) for r in map(json.loads, (run / "train_log.jsonl").open())]

    assert losses(split) == losses(full)
    a = load_file(str(full / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(split / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_another_residual_config_is_refused(bc_base: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train-residual", f"base={bc_base}", f"out_dir={out}", "ppo.total_env_steps=20", *RESIDUAL]) == 0
    assert main(["train-residual", f"base={bc_base}", f"out_dir={out}", "ppo.total_env_steps=40", "ppo.resume=true",
                 "residual.scale=0.3", *RESIDUAL]) == 2
    assert "residual.scale: 0.1 -> 0.3" in capsys.readouterr().err


def test_bad_input_is_refused(bc_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train-residual", f"base={bc_base}", "task=FetchPickAndPlace-v4", f"out_dir={tmp_path / 'x'}",
                 *RESIDUAL]) == 2
    assert "does not fit FetchPickAndPlace-v4" in capsys.readouterr().err
    assert main(["train-residual", f"base={tmp_path / 'nothing'}", *RESIDUAL]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_init_continues_a_residual_in_another_simulation(bc_base: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train-residual", f"base={bc_base}", f"out_dir={first}", "ppo.total_env_steps=60", *RESIDUAL]) == 0
    trained = load_file(str(first / "checkpoints" / "last" / "model.safetensors"))
    # One iteration, the critic's warm-up: the actor is not updated, so the saved head is the init's, exactly.
    assert main(["train-residual", f"init={first / 'checkpoints' / 'last'}", f"out_dir={second}",
                 "ppo.total_env_steps=20", "env_kwargs.randomization.action_latency_steps=[1,1]", *RESIDUAL]) == 0
    continued = load_file(str(second / "checkpoints" / "last" / "model.safetensors"))
    assert continued.keys() == trained.keys() and all(torch.equal(continued[k], trained[k]) for k in trained)
    meta = json.loads((second / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["init"] == str(first / "checkpoints" / "last")
    assert meta["env_kwargs"]["randomization"]["action_latency_steps"] == [1, 1]
    # Widened to see the previous action: the old weights unchanged, the new input's weights zero.
    third = tmp_path / "third"
    assert main(["train-residual", f"init={first / 'checkpoints' / 'last'}", f"out_dir={third}",
                 "ppo.total_env_steps=20", "residual.previous_action=true", *RESIDUAL]) == 0
    wider = load_file(str(third / "checkpoints" / "last" / "model.safetensors"))
    first_layer = "head.trunk.0.weight"
    assert wider[first_layer].shape[1] == trained[first_layer].shape[1] + 5  # Lift's action width
    assert torch.equal(wider[first_layer][:, :-5], trained[first_layer])
    assert not wider[first_layer][:, -5:].any()
    assert Policy.load(third / "checkpoints" / "last").config.previous_action
    assert main(["train-residual", f"init={bc_base}", *RESIDUAL]) == 2
    assert "not a residual checkpoint" in capsys.readouterr().err
    assert main(["train-residual", *RESIDUAL]) == 2
    assert "needs base=" in capsys.readouterr().err
