"""Every command end to end on a tiny run, in process (``main(argv)``) and once as a real console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roboloop.cli.main import main
from roboloop.datasets import EpisodeStore


def test_collect_info_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.hdf5"
    assert main(["collect", "task=PegInsert", "n_episodes=2", f"output={out}", "progress=false",
                 "cameras=[wrist]", "image_size=24", "env_kwargs.clearance=0.002"]) == 0
    assert "wrote 2 episodes" in capsys.readouterr().out
    with EpisodeStore(out) as store:
        assert len(store) == 2 and store.env_args["env_kwargs"]["clearance"] == 0.002
        assert "obs/observation.images.wrist" in store.keys(0)
    assert main(["info", str(out), "episodes=true"]) == 0
    text = capsys.readouterr().out
    assert "episodes:  2" in text and "obs/observation.images.wrist" in text and "demo_1" in text
    video = tmp_path / "replay.mp4"
    assert main(["replay", str(out), "episodes=[0,1]", f"video={video}", "render_size=64"]) == 0
    assert "replay matches" in capsys.readouterr().out
    assert video.stat().st_size > 1000


def test_collect_appends_and_vectorizes(tmp_path: Path) -> None:
    out = tmp_path / "d.hdf5"
    assert main(["collect", "task=Lift", "n_episodes=3", "n_envs=2", f"output={out}", "progress=false"]) == 0
    assert main(["collect", "task=Lift", "n_episodes=2", "n_envs=2", "vectorization=async", "mode=a", "seed=100",
                 f"output={out}", "progress=false"]) == 0
    with EpisodeStore(out) as store:
        assert len(store) == 5
        assert sorted(store.attrs(d)["seed"] for d in store.demos) == [0, 1, 2, 100, 101]
        assert store.masks()["success"] == store.demos


def test_quickstart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "n_episodes=3", "video_episodes=1", "train_steps=3", "batch_size=8",
                 "residual_env_steps=400", "residual_eval_every=1", "eval_episodes=2", "eval_videos=1", "n_envs=2",
                 f"out_dir={tmp_path}"]) == 0
    assert (tmp_path / "replay.mp4").exists() and (tmp_path / "demos.hdf5").exists()
    report = (tmp_path / "report.md").read_text()
    assert "expert success" in report and "replay mismatch" in report
    assert "diffusion policy | 3 steps" in report and "Success over the same 2 seeded episodes" in report
    assert "| diffusion (BC, 3 steps" in report and "| residual PPO on it (400 env steps" in report
    assert (tmp_path / "diffusion" / "checkpoints" / "last" / "model.safetensors").exists()
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1 and (tmp_path / "eval" / "eval.json").exists()
    assert len(list((tmp_path / "videos_residual").glob("*.mp4"))) == 1
    assert (tmp_path / "residual" / "success_curve.png").exists() and "success_curve.png" in report


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["collect", "task=Nope"], "unknown task 'Nope'"),
        (["collect", "n_episodes=0"], "n_episodes must be >= 1"),
        (["collect", "n_episodes=abc"], "n_episodes"),
        (["collect", "noise=1.5"], "noise"),
        (["collect", "nosie=0.1"], "nosie"),
        (["collect", "vectorization=threads"], "vectorization"),
        (["info", "/nonexistent/x.hdf5"], "does not exist"),
        (["replay"], "replay needs file"),
        (["frobnicate"], "unknown command"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "collect" in capsys.readouterr().out
    assert main(["collect", "--help"]) == 0
    assert "n_episodes: 100" in capsys.readouterr().out


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "roboloop"
    result = subprocess.run([str(script), "info", str(tmp_path / "missing.hdf5")], capture_output=True, text=True)
    assert result.returncode == 2 and "does not exist" in result.stderr
