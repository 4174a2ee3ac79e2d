"""PPO killed after a checkpoint and resumed by a new PPO object produces the same iterations as an
uninterrupted run: identical train_log statistics, evaluation history and final actor/critic weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from roboloop.core.checkpoint import read_train_state
from roboloop.core.errors import CheckpointError, ConfigError
from roboloop.core.policy import Actor
from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.residual_rl import PPO, PPOConfig, PPOResult
from tests.point_mass import make_envs

ITERATIONS, KILLED_AT = 6, 4
TIMING = ("env_steps_per_second",)


class KilledError(RuntimeError):
    pass


def config(**overrides: object) -> PPOConfig:
    fields: dict[str, object] = {"total_env_steps": ITERATIONS * 2 * 12, "n_steps": 12, "n_epochs": 3,
                                 "n_minibatches": 4, "critic_hidden_dims": [16], "reset_each_iteration": True,
                                 "device": "cpu", "progress": False, "checkpoint_every": 2, "eval_every": 1,
                                 "target_kl": 0.05, "seed": 3, **overrides}
    return PPOConfig(**fields)  # type: ignore[arg-type]


def run(out: Path, *, kill_at: int | None = None, **overrides: object) -> PPOResult:
    """A fresh actor and env each time, as a new process would build them."""
    def evaluate(actor: Actor, iteration: int) -> dict[str, float]:
        if iteration == kill_at:
            raise KilledError(f"killed in iteration {iteration}")
        return {"success_rate": float(iteration % 3)}

    torch.manual_seed(0)
    actor = GaussianMLP(2, 1, hidden_dims=(16,), learn_std=True, last_layer_init_std=0.01)
    # max_steps=8 with 12-step rollouts: episodes end mid-rollout, and rollouts cut episodes.
    return PPO(actor, make_envs(2, max_steps=8), config(**overrides), out, evaluate_fn=evaluate).learn()


def log(out: Path) -> list[dict[str, float]]:
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    full = run(tmp_path / "full")

    killed = tmp_path / "killed"
    # Dies during iteration 5, after the checkpoint of iteration 4 and after logging iteration 5.
    with pytest.raises(KilledError):
        run(killed, kill_at=KILLED_AT + 1)
    assert read_train_state(killed / "checkpoints" / "last")["iteration"] == KILLED_AT
    assert len(log(killed)) == KILLED_AT + 1

    # An existing run is never overwritten without resume=true.
    with pytest.raises(ConfigError, match="resume=true"):
        run(killed)
    resumed = run(killed, resume=True)

    assert log(killed) == log(tmp_path / "full")
    assert [r["iteration"] for r in log(killed)] == list(range(1, ITERATIONS + 1))
    assert resumed.history == full.history and resumed.env_steps == full.env_steps
    assert resumed.iterations == full.iterations == ITERATIONS
    a = read_train_state(full.last_checkpoint)
    b = read_train_state(resumed.last_checkpoint)
    for part in ("actor", "critic"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    torch.testing.assert_close(a["actor_optimizer"], b["actor_optimizer"], rtol=0, atol=0)
    torch.testing.assert_close(a["reward_normalizer"], b["reward_normalizer"], rtol=0, atol=0)


def test_resuming_with_another_config_is_refused(tmp_path: Path) -> None:
    run(tmp_path, total_env_steps=2 * 2 * 12)
    with pytest.raises(CheckpointError, match=r"gamma: 0.99 -> 0.9"):
        run(tmp_path, resume=True, gamma=0.9)
    # Training longer is allowed.
    assert run(tmp_path, resume=True, total_env_steps=3 * 2 * 12).iterations == 3
