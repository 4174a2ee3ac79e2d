"""`roboloop train-offline` (each algorithm), `finetune-online`, and `eval steer=` for a few steps each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roboloop.cli.main import main
from roboloop.core.checkpoint import load_policy
from roboloop.offline_rl.policy import RLActorPolicy

TINY = ["train.batch_size=16", "train.log_every=5", "train.checkpoint_every=10", "train.eval_every=0",
        "train.progress=false", "eval.n_episodes=2", "eval.n_envs=2", "actor_hidden_dims=[16]"]
NETS = {"iql": ["iql.hidden_dims=[16]"], "calql": ["calql.hidden_dims=[16]", "calql.n_actions=2"],
        "rlpd": ["sac.hidden_dims=[16]", "sac.n_critics=3"]}


@pytest.fixture(scope="module")
def mixed_tier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiers")
    assert main(["make-tiers", "task=Lift", "n_episodes=4", "tiers=[mixed]", f"out_dir={out}", "progress=false"]) == 0
    return out / "mixed.hdf5"


@pytest.mark.parametrize(("algo", "extraction"), [("iql", []), ("iql", ["iql.extraction=ddpg_bc"]), ("calql", []),
                                                   ("calql", ["calql.bc_alpha=50"]),
                                                   ("calql", ["calql.bc_alpha=0.5", "calql.extraction=ddpg_bc"]),
                                                   ("rlpd", [])])
def test_train_offline_writes_a_policy_a_critic_and_a_history(mixed_tier: Path, tmp_path: Path, algo: str,
                                                              extraction: list[str]) -> None:
    out = tmp_path / algo
    assert main(["train-offline", f"algo={algo}", f"dataset={mixed_tier}", "train.offline_steps=10", f"out_dir={out}",
                 *TINY, *NETS[algo], *extraction]) == 0
    assert isinstance(load_policy(out / "policy"), RLActorPolicy)
    assert (out / "critic" / "critic.json").exists()
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["updates"] == 10 and "success_rate" in history[-1]
    # The TD3+BC extractions log the actor's distance to the data's actions.
    logged = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    assert ("bc_distance" in logged) == bool(extraction)


def test_finetune_online_continues_and_eval_steers(mixed_tier: Path, tmp_path: Path, lift_demos: Path) -> None:
    offline = tmp_path / "offline"
    assert main(["train-offline", f"dataset={mixed_tier}", "train.offline_steps=10", f"out_dir={offline}", *TINY,
                 *NETS["iql"]]) == 0
    online = tmp_path / "online"
    assert main(["finetune-online", f"init={offline}", f"dataset={mixed_tier}", "train.online_env_steps=20",
                 "n_envs=2", f"out_dir={online}", *TINY, *NETS["iql"]]) == 0
    records = [json.loads(r) for r in (online / "train_log.jsonl").read_text().splitlines()]
    assert records[-1]["phase"] == "online" and records[-1]["online_env_steps"] == 20
    assert main(["finetune-online", f"dataset={mixed_tier}", "train.online_env_steps=20"]) == 2  # no init=
    bc = tmp_path / "bc"
    assert main(["train-bc", f"dataset={lift_demos}", f"out_dir={bc}", "policy.obs_keys=[observation.state]",
                 "policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.n_groups=4", "train.steps=2",
                 "train.eval_every=0", "train.batch_size=16", "evaluate=false", "train.progress=false"]) == 0
    assert main(["eval", str(bc / "checkpoints" / "last"), f"steer={offline / 'critic'}", "n_samples=3",
                 "n_episodes=2", "progress=false", f"out_dir={tmp_path / 'steered'}"]) == 0
    # Steering one executed action per query: the critic's choice is then all that runs.
    assert main(["eval", str(bc / "checkpoints" / "last"), f"steer={offline / 'critic'}", "n_samples=3",
                 "n_action_steps=1", "steer_temperature=0.05", "n_episodes=2", "progress=false",
                 f"out_dir={tmp_path / 'steered1'}"]) == 0
