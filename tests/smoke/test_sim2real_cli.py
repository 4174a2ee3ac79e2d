"""``roboloop sysid`` and ``roboloop sim2real`` end to end on the real proxy, tiny: real episodes are logged as
real, identifications and reports are written, a log can be identified again from its file, the loop retrains in the
identified simulation and resumes, and too little data is refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roboloop.cli.main import main
from roboloop.datasets.store import EpisodeStore
from tests.smoke.test_residual_cli import BC, RESIDUAL

SMALL = ["task=Lift", "env_kwargs.max_episode_steps=30", "identification.max_evaluations=8",
         "identification.popsize=4", "identification.rounds=1", "identification.min_steps=60",
         "identification.parameters=[actuator_gain_scale]", "identification.max_latency_steps=2"]


def test_sysid_on_the_real_proxy_then_from_its_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sysid"
    assert main(["sysid", "episodes=3", "secret_seed=4", f"output_dir={out}", *SMALL]) == 0
    text = capsys.readouterr().out
    assert "ran 3 episodes on the real proxy" in text and "| actuator_gain_scale |" in text
    with EpisodeStore(out / "real_episodes.hdf5") as store:
        assert len(store) == 3 and {store.attrs(i)["source"] for i in range(3)} == {"real"}
        assert store.num_samples(0) == 30
    ident = json.loads((out / "identification.json").read_text())
    assert set(ident["estimates"]) == {"actuator_gain_scale"} and ident["n_episodes"] == 3
    assert ident["loss"] <= ident["nominal_loss"]
    assert (out / "report.md").read_text().startswith("# System identification: Lift")
    assert (out / "sysid_loss.png").stat().st_size > 0

    again = tmp_path / "again"
    assert main(["sysid", f"real_log={out / 'real_episodes.hdf5'}", f"output_dir={again}", *SMALL]) == 0
    assert "ran 3 episodes" not in capsys.readouterr().out
    assert json.loads((again / "identification.json").read_text())["n_steps"] == 90


def test_sysid_refuses_too_little_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sysid", "episodes=1", f"output_dir={tmp_path}", *SMALL]) == 2
    assert "at least 3 episodes" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_bc(lift_demos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bc")
    assert main(["train-bc", f"dataset={lift_demos}", f"out_dir={out}", "policy.obs_keys=[observation.state]",
                 *BC]) == 0
    return out / "checkpoints" / "last"


@pytest.fixture(scope="module")
def tiny_residual(tiny_bc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("residual")
    assert main(["train-residual", f"base={tiny_bc}", f"out_dir={out}", "ppo.total_env_steps=20", *RESIDUAL]) == 0
    return out / "checkpoints" / "last"


#: The re-clone (off by default), tiny: a few demonstrations, BC steps and PPO iterations.
RECLONE = ["reclone.enabled=true", "reclone.n_demos=2", "reclone.bc.steps=2", "reclone.bc.batch_size=4",
           "reclone.bc.checkpoint_every=1", "reclone.bc.eval_every=0", "reclone.bc.device=cpu",
           "reclone.bc_eval_episodes=1", "reclone.residual.hidden_dims=[16]", "reclone.ppo.n_steps=10",
           "reclone.ppo.n_minibatches=2", "reclone.ppo.n_epochs=2", "reclone.ppo.critic_warmup_iterations=1",
           "reclone.ppo.checkpoint_every=1", "reclone.ppo.eval_every=2", "reclone.ppo.total_env_steps=20"]


def test_sim2real_deploys_identifies_retrains_and_resumes(tiny_residual: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loop"
    args = [str(tiny_residual), "iterations=2", "episodes_per_iteration=3", "probe_episodes=3", "real_budget=15",
            "target_success=1", "confirm_episodes=2", f"out_dir={out}", *SMALL[2:], *(f"train.{o}" for o in RESIDUAL),
            "train.reward_shaping=0", "train.reward_shaping_terms=null", "train.ppo.total_env_steps=20", *RECLONE]
    assert main(["sim2real", *args]) == 0
    text = capsys.readouterr().out
    assert all(f"iteration {i}: real success" in text for i in range(3))
    report = json.loads((out / "report.json").read_text())
    assert [e["iteration"] for e in report["iterations"]] == [0, 1, 2]
    assert report["iterations"][0]["probe_episodes"] == 3 and report["iterations"][2]["real_episodes_total"] == 15
    # Each retraining's best and last were evaluated again on 2 further episodes; the better one was deployed.
    confirmed, deployed = report["trainings"]["1"]["confirmed"], report["trainings"]["1"]["deployed"]
    assert set(confirmed) == {"best", "last"} and confirmed[Path(deployed).name] == max(confirmed.values())
    assert report["iterations"][1]["checkpoint"] == deployed
    assert deployed in {str(out / "iteration1" / "checkpoints" / name) for name in ("best", "last")}
    assert set(report["trainings"]["1"]["identification"]) >= {"actuator_gain_scale", "action_latency_steps"}
    with EpisodeStore(out / "real_episodes.hdf5") as store:
        assert [store.attrs(i)["policy_id"] for i in range(len(store))] == (
            ["iteration0"] * 3 + ["sysid-probe"] * 3 + ["iteration1"] * 3 + ["sysid-probe"] * 3 + ["iteration2"] * 3)
    assert (out / "report.md").exists() and (out / "sim2real_success.png").stat().st_size > 0
    # The retraining ran in the identified simulation ...
    meta = json.loads((out / "iteration1" / "checkpoints" / "last" / "meta.json").read_text())
    assert "actuator_gain_scale" in meta["env_kwargs"]["randomization"]
    # ... at the identified latency's rate (the proxy's is 1 or 2 steps), which its deployment used too.
    latency = report["trainings"]["1"]["identification"]["action_latency_steps"]
    assert meta["env_kwargs"]["hold_steps"] == report["trainings"]["1"]["hold_steps"] == latency > 0
    # The nominal policy never held, so the first retraining re-cloned it: expert demonstrations in the identified
    # simulation at 3x Lift's action scale, a BC base with the old base's config, a new residual on that base.
    reclone = report["trainings"]["1"]["reclone"]
    assert meta["env_kwargs"]["max_delta_pos"] == reclone["max_delta_pos"] == pytest.approx(3 * 0.03)
    with EpisodeStore(out / "iteration1" / "bc" / "demos.hdf5") as demos:
        assert len(demos) == 2 and all(demos.attrs(i)["success"] for i in range(2))
        assert demos.env_args["env_kwargs"]["hold_steps"] == latency
    assert meta["base_checkpoint"] == reclone["base"] and meta["init"] is None
    old_base = json.loads((tiny_residual / "base" / "config.json").read_text())["config"]
    assert json.loads((Path(reclone["base"]) / "config.json").read_text())["config"] == old_base
    # A policy that already holds at that rate is continued: the second retraining started from the first's.
    meta2 = json.loads((out / "iteration2" / "checkpoints" / "last" / "meta.json").read_text())
    if report["trainings"]["2"]["hold_steps"] == latency:
        assert "reclone" not in report["trainings"]["2"]
        assert meta2["init"] == deployed
        assert meta2["env_kwargs"]["max_delta_pos"] == reclone["max_delta_pos"]
    assert "re-cloned at max_delta_pos" in (out / "report.md").read_text()

    # A finished run resumes to nothing new; a rerun without resume is refused.
    assert main(["sim2real", *args, "resume=true"]) == 0
    with EpisodeStore(out / "real_episodes.hdf5") as store:
        assert len(store) == 15
    assert main(["sim2real", *args]) == 2
    assert "resume=true" in capsys.readouterr().err


def test_self_improve_rolls_out_grows_the_dataset_finetunes_and_resumes(tiny_bc: Path, lift_demos: Path,
                                                                        tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sail"
    args = [str(tiny_bc), "rounds=1", "episodes_per_round=2", "n_envs=1", "keep=all", "train.steps=2",
            "train.batch_size=4", "train.checkpoint_every=1", "train.device=cpu", f"out_dir={out}",
            "env_kwargs.randomization.poses.cube.x=[-0.2,0.2]"]
    assert main(["self-improve", *args]) == 0
    assert "round 0: success" in capsys.readouterr().out
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1] and rounds[0]["kept"] == 2 and rounds[1]["kept"] == 0
    with EpisodeStore(lift_demos) as demos, EpisodeStore(out / "round1" / "dataset.hdf5") as grown:
        assert len(grown) == len(demos) + 2
        assert [grown.attrs(i)["source"] for i in range(len(demos), len(grown))] == ["self_improvement"] * 2
    assert rounds[1]["checkpoint"] == str(out / "round1" / "checkpoints" / "last")
    assert (out / "report.md").exists() and (out / "self_improve_success.png").exists()
    assert main(["self-improve", *args, "resume=true"]) == 0
    with EpisodeStore(out / "round1" / "dataset.hdf5") as grown:
        assert len(grown) == len(demos) + 2
    assert main(["self-improve", *args]) == 2
    assert main(["self-improve", "keep=some", str(tiny_bc)]) == 2

    # Without the demonstrations, round 1 finetunes on the kept rollouts alone.
    alone = tmp_path / "sail_alone"
    assert main(["self-improve", *args[:-2], f"out_dir={alone}", "keep_demonstrations=false", args[-1]]) == 0
    with EpisodeStore(alone / "round1" / "dataset.hdf5") as grown, EpisodeStore(lift_demos) as demos:
        assert len(grown) == 2 and grown.env_args["env_name"] == demos.env_args["env_name"]
        assert {grown.attrs(i)["source"] for i in range(2)} == {"self_improvement"}
    assert json.loads((alone / "rounds.json").read_text())[0]["kept"] == 2


def test_distill_labels_with_the_teacher_trains_an_image_student_and_deploys_both(
        tiny_bc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "distill"
    args = [str(tiny_bc), "rounds=1", "episodes_per_round=2", "beta=0.5", "image_size=16",
            "student.obs_keys=[observation.images.front,observation.proprio]", "student.down_dims=[16,32]",
            "student.step_embed_dim=16", "student.n_groups=4", "student.horizon=8", "student.n_action_steps=4",
            "student.vision.channels=[8,8]", "student.vision.num_keypoints=4", "student.vision.feature_dim=8",
            "train.steps=2", "train.batch_size=4", "train.checkpoint_every=1", "train.device=cpu",
            "eval_episodes=2", "real_episodes=2", f"out_dir={out}"]
    assert main(["distill", *args]) == 0
    text = capsys.readouterr().out
    assert "round 0: beta 1.00" in text and "round 1: beta 0.50" in text
    assert "teacher on the real proxy" in text and "student on the real proxy" in text
    report = json.loads((out / "report.json").read_text())
    first, second = report["rounds"]
    assert first["student_steps"] == 0 and second["teacher_steps"] > 0 and second["student_steps"] > 0
    with EpisodeStore(out / "round1" / "labels.hdf5") as store:
        assert len(store) == 4
        keys = set(store.obs_keys)
        assert {"observation.images.front", "observation.proprio", "observation.state"} <= keys
    student_meta = json.loads((out / "round1" / "checkpoints" / "last" / "meta.json").read_text())
    assert student_meta["env_kwargs"]["proprio"] is True and "cameras" not in student_meta["env_kwargs"]
    assert report["real"]["teacher"]["episodes"] == 2 and report["real"]["student"]["episodes"] == 2
    # The teacher is evaluated on the students' simulated episodes, as their reference.
    assert 0.0 <= report["teacher_sim_success"] <= 1.0
    assert "The teacher on the same 2 episodes of the randomized simulation" in (out / "report.md").read_text()
    assert main(["distill", *args, "resume=true"]) == 0  # finished rounds are not redone
    assert main(["distill", str(tiny_bc), "student.obs_keys=[observation.state]", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "must not read observation.state" in capsys.readouterr().err
