"""`roboloop make-tiers`: three files with per-episode source and success, readable as replay buffers."""

from __future__ import annotations

from pathlib import Path

import pytest

from roboloop.cli.main import main
from roboloop.core.errors import ConfigError
from roboloop.datasets import EpisodeStore
from roboloop.datasets.tiers import TiersConfig
from roboloop.offline_rl import replay_from_store


def test_make_tiers_writes_expert_medium_and_mixed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-tiers", "task=Lift", "n_episodes=4", f"out_dir={tmp_path}/Lift", "progress=false"]) == 0
    assert "mixed: 7 episodes" in capsys.readouterr().out
    sources = {}
    for tier in ("expert", "medium", "mixed"):
        with EpisodeStore(tmp_path / "Lift" / f"{tier}.hdf5") as store:
            sources[tier] = [store.attrs(d)["source"] for d in store.demos]
            assert set(store.masks()["success"]) == {d for d in store.demos if store.attrs(d)["success"]}
    assert sources == {"expert": ["expert"] * 4, "medium": ["medium"] * 4,
                       "mixed": ["medium"] * 4 + ["noisy"] * 2 + ["random"]}
    with EpisodeStore(tmp_path / "Lift" / "expert.hdf5") as store:
        assert all(store.attrs(d)["success"] for d in store.demos)
    # The mixed tier's medium part is the medium tier itself (same seeds), and it loads as a replay buffer.
    tiers = tmp_path / "Lift"
    with EpisodeStore(tiers / "medium.hdf5") as medium, EpisodeStore(tiers / "mixed.hdf5") as mixed:
        assert [medium.attrs(d)["seed"] for d in medium.demos] == [mixed.attrs(d)["seed"] for d in mixed.demos[:4]]
        steps = mixed.total_steps
    assert len(replay_from_store(tmp_path / "Lift" / "mixed.hdf5")) == steps
    assert not list((tmp_path / "Lift").glob(".*tmp*"))  # no leftovers


def test_tier_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown tier"):
        TiersConfig(task="Lift", tiers=["expert", "perfect"])
    with pytest.raises(ConfigError, match="medium_noise"):
        TiersConfig(task="Lift", medium_noise=1.5)
