"""Locomotion tiers from a stable-baselines3 agent trained here, and the locomotion adapters they are recorded in."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from roboloop.cli.main import main
from roboloop.core.errors import ConfigError
from roboloop.datasets import EpisodeStore
from roboloop.datasets.agent_tiers import AgentConfig, pick_snapshots
from roboloop.envs import make
from roboloop.envs.experts import make_expert
from roboloop.offline_rl import replay_from_store


@pytest.mark.parametrize("task", ["Hopper-v5", "HalfCheetah-v5"])
def test_locomotion_adapter_replays_from_its_state(task: str) -> None:
    env = make(task)
    obs, info = env.reset(seed=3)
    assert obs["observation.state"].dtype == np.float32 and info["is_success"] is False
    state = env.unwrapped.get_state()
    actions = np.random.default_rng(0).uniform(-1, 1, (5, *env.action_space.shape))
    first = [env.step(a)[0]["observation.state"] for a in actions]
    env.reset(options={"state": state})
    again = [env.step(a)[0]["observation.state"] for a in actions]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    assert env.spec.max_episode_steps == 1000
    with pytest.raises(ConfigError, match="no scripted expert"):
        make_expert(task, env)


def test_pick_snapshots_follows_d4rl() -> None:
    index = {"snapshots": [{"name": f"s{i}", "eval_return": r} for i, r in enumerate([50, 400, 900, 2700, 2400])]}
    picked = pick_snapshots(index, 1 / 3)
    assert (picked["expert"]["name"], picked["medium"]["name"], picked["noisy"]["name"]) == ("s3", "s2", "s0")
    with pytest.raises(ConfigError, match="at least 3 snapshots"):
        pick_snapshots({"snapshots": index["snapshots"][:2]}, 1 / 3)
    with pytest.raises(ConfigError, match="checkpoint_every"):
        AgentConfig(total_env_steps=1000, checkpoint_every=2048)


def test_make_tiers_trains_an_agent_then_reuses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where SB3's default logger would make its folders
    args = ["make-tiers", "task=Hopper-v5", "n_episodes=4", f"out_dir={tmp_path}/tiers", "progress=false",
            "agent.total_env_steps=6144", "agent.checkpoint_every=2048", "agent.eval_episodes=1",
            f"agent.agent_dir={tmp_path}/agent"]
    assert main(args) == 0
    assert "mixed: 7 episodes" in capsys.readouterr().out
    index = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert index["complete"] and [s["env_steps"] for s in index["snapshots"]] == [2048, 4096, 6144]
    assert not list(temp.glob("SB3-*"))  # no empty log folder per learn() call
    with EpisodeStore(tmp_path / "tiers" / "mixed.hdf5") as store:
        assert [store.attrs(d)["source"] for d in store.demos] == ["medium"] * 4 + ["noisy"] * 2 + ["random"]
        assert store.attrs(store.demos[0])["policy_id"].startswith("sb3-PPO(step_")
        first = store.episode(store.demos[0])
    assert len(replay_from_store(tmp_path / "tiers" / "medium.hdf5")) > 0
    # A second call reuses the finished agent (no training) and reproduces the tiers from the seed.
    before = (tmp_path / "agent" / "agent.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "agent" / "agent.json").stat().st_mtime_ns == before
    with EpisodeStore(tmp_path / "tiers" / "mixed.hdf5") as store:
        np.testing.assert_array_equal(store.episode(store.demos[0]).actions, first.actions)
