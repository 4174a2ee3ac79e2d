"""``roboloop sysid`` end to end on the real proxy with a tiny search: the episodes are logged as real, the
identification and its report are written, a log can be identified again from the file, and too little data is
refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roboloop.cli.main import main
from roboloop.datasets.store import EpisodeStore

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
