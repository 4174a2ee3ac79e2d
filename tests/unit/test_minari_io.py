"""Minari interop: roboloop -> Minari -> replay equals the direct replay; a dataset made by Minari's own tools loads;
unsupported spaces are refused."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from roboloop.core.errors import DatasetError
from roboloop.offline_rl import replay_from_store

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402

from roboloop.datasets.minari_io import export_minari, replay_from_minari  # noqa: E402


def test_export_then_import_equals_the_direct_replay(lift_demos: Path, tmp_path: Path) -> None:
    dataset = export_minari(lift_demos, "roboloop/lift-test-v0", root=tmp_path)
    assert dataset.total_episodes == 5 and "observation.state" in dataset.observation_space.spaces
    assert dataset.spec.env_spec.id == "roboloop/Lift-v0"  # recover_environment can rebuild it
    via_minari = replay_from_minari("roboloop/lift-test-v0", root=tmp_path)
    direct = replay_from_store(lift_demos, obs_keys=["observation.state"])
    for name in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated", "mc_returns"):
        torch.testing.assert_close(getattr(via_minari, name), getattr(direct, name), msg=name)


def random_buffers(env: gym.Env, n: int) -> list[EpisodeBuffer]:
    buffers = []
    for index in range(n):
        obs, _ = env.reset(seed=index)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        while True:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terms.append(terminated)
            truncs.append(truncated)
            if terminated or truncated:
                break
        buffers.append(EpisodeBuffer(id=index, observations=np.array(observations), actions=np.array(actions),
                                     rewards=rewards, terminations=terms, truncations=truncs))
    return buffers


def test_a_dataset_made_by_minari_loads_and_bad_spaces_are_refused(tmp_path: Path) -> None:
    import os

    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        env = gym.make("Pendulum-v1", max_episode_steps=10)
        minari.create_dataset_from_buffers("test/pendulum-v0", random_buffers(env, 3), env=env.spec,
                                           eval_env=env.spec)
        env = gym.make("CartPole-v1", max_episode_steps=10)
        minari.create_dataset_from_buffers("test/cartpole-v0", random_buffers(env, 2), env=env.spec,
                                           eval_env=env.spec)
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    buffer = replay_from_minari("test/pendulum-v0", root=tmp_path)
    assert len(buffer) == 30 and (buffer.obs_dim, buffer.action_dim) == (3, 1)
    assert int(buffer.truncated.sum()) == 3 and not buffer.terminated.any()
    with pytest.raises(DatasetError, match="action space Discrete"):
        replay_from_minari("test/cartpole-v0", root=tmp_path)
    with pytest.raises(DatasetError, match="cannot load"):
        replay_from_minari("test/absent-v0", root=tmp_path)


def test_cli_exports_and_train_offline_reads_minari_ids(lift_demos: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`roboloop export-minari` then `train-offline dataset=minari:<id>` (the env found from the dataset); a Box
    dataset made by Minari's own tools for a locomotion task trains too, and one whose size does not fit is refused."""
    from roboloop.cli.main import main
    from roboloop.envs.registration import register_all

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    assert main(["export-minari", str(lift_demos), "dataset_id=roboloop/lift-cli-v0"]) == 0
    tiny = ["train.offline_steps=4", "train.batch_size=8", "train.eval_every=0", "train.progress=false",
            "eval.n_episodes=1", "actor_hidden_dims=[8]", "iql.hidden_dims=[8]"]
    assert main(["train-offline", "dataset=minari:roboloop/lift-cli-v0", f"out_dir={tmp_path / 'lift'}", *tiny]) == 0
    assert json.loads((tmp_path / "lift" / "history.json").read_text())[-1]["updates"] == 4

    register_all()
    env = gym.make("Hopper-v5", max_episode_steps=8)  # gymnasium's own Hopper: a flat Box observation
    minari.create_dataset_from_buffers("test/hopper-v0", random_buffers(env, 2), env=env.spec, eval_env=env.spec)
    assert main(["train-offline", "dataset=minari:test/hopper-v0", f"out_dir={tmp_path / 'hopper'}", *tiny]) == 0
    capsys.readouterr()
    assert main(["train-offline", "dataset=minari:test/hopper-v0", "task=HalfCheetah-v5",
                 f"out_dir={tmp_path / 'cheetah'}", *tiny]) == 2
    assert "(observation, action) dims (11, 3)" in capsys.readouterr().err  # HalfCheetah's are (17, 6)
