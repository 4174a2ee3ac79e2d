"""Episode store -> replay buffer, terminated vs truncated, returns-to-go, the ring buffer and the data mixer."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from roboloop.core.errors import DatasetError, InputError
from roboloop.datasets import EpisodeWriter
from roboloop.offline_rl import MixedSampler, ReplayBuffer, discounted_returns, replay_from_store
from tests.conftest import ENV_ARGS, synthetic_episode, write_synthetic


def test_store_to_replay_keeps_every_transition_and_the_final_observation(tmp_path: Path) -> None:
    # Episode 0 succeeds (terminated at its last step), episode 1 is cut by the time limit (truncated).
    path = tmp_path / "f.hdf5"
    with EpisodeWriter(path, env_args=ENV_ARGS) as writer:
        writer.append(synthetic_episode(0, 3, success=True))
        writer.append(synthetic_episode(1, 4, success=False))
    buffer = replay_from_store(path, gamma=0.5, obs_keys=["observation.state"])
    assert len(buffer) == 7 and buffer.obs_keys == ["observation.state"]
    batch = buffer.gather(torch.arange(7))
    # obs[t] = 1000 * episode + t; next_obs is the following observation, the final one included.
    np.testing.assert_array_equal(batch.obs[:, 0].numpy(), [0, 1, 2, 1000, 1001, 1002, 1003])
    np.testing.assert_array_equal(batch.next_obs[:, 0].numpy(), [1, 2, 3, 1001, 1002, 1003, 1004])
    np.testing.assert_array_equal(batch.actions[:, 0].numpy(), batch.obs[:, 0].numpy() + 0.5)
    assert batch.terminated.tolist() == [False, False, True, False, False, False, False]
    assert batch.truncated.tolist() == [False, False, False, False, False, False, True]
    # Returns-to-go with gamma 0.5: the success's reward 1 discounted back; the truncated episode has none.
    np.testing.assert_allclose(batch.mc_returns.numpy(), [0.25, 0.5, 1.0, 0, 0, 0, 0])


def test_discounted_returns_against_a_hand_computation() -> None:
    np.testing.assert_allclose(discounted_returns(np.array([1.0, 0.0, 2.0]), 0.9), [1 + 0.81 * 2, 1.8, 2.0])


def test_ring_buffer_overwrites_the_oldest_and_round_trips_its_state() -> None:
    buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=4)
    for start in (0, 3):
        n = 3
        obs = np.arange(start, start + n, dtype=np.float32)[:, None]
        buffer.add(obs, obs, obs[:, 0], obs + 1, np.zeros(n, bool), np.zeros(n, bool))
    assert len(buffer) == 4 and buffer.added == 6
    assert sorted(buffer.obs[:, 0].tolist()) == [2, 3, 4, 5]  # 0 and 1 overwritten
    assert torch.isnan(buffer.mc_returns).all()  # online data: unknown
    other = ReplayBuffer(obs_dim=1, action_dim=1, capacity=4)
    other.load_state_dict(buffer.state_dict())
    assert torch.equal(other.obs, buffer.obs) and other.position == buffer.position
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(buffer.sample(5, generator).obs, other.sample(5, torch.Generator().manual_seed(0)).obs)


def test_bad_transitions_are_refused_naming_the_field() -> None:
    buffer = ReplayBuffer(obs_dim=2, action_dim=1, capacity=8)
    ok = np.zeros((2, 2), np.float32)
    with pytest.raises(InputError, match="actions has shape"):
        buffer.add(ok, np.zeros((2, 3)), np.zeros(2), ok, np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(InputError, match="rewards contains NaN"):
        buffer.add(ok, np.zeros((2, 1)), np.array([0.0, np.nan]), ok, np.zeros(2, bool), np.zeros(2, bool))
    with pytest.raises(InputError, match="empty replay buffer"):
        buffer.sample(4)


def test_a_dataset_without_rewards_is_refused(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "f.hdf5", [3, 4])
    with h5py.File(path, "a") as f:
        del f["data/demo_1/rewards"]
    with pytest.raises(DatasetError, match="demo_1 has no rewards"):
        replay_from_store(path)


def test_the_mixer_draws_its_ratio_and_falls_back_to_offline_data() -> None:
    def filled(value: float, n: int) -> ReplayBuffer:
        buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=n)
        obs = np.full((n, 1), value, np.float32)
        buffer.add(obs, obs, obs[:, 0], obs, np.zeros(n, bool), np.zeros(n, bool))
        return buffer

    offline, online = filled(0.0, 10), ReplayBuffer(obs_dim=1, action_dim=1, capacity=10)
    mixer = MixedSampler(offline, online)  # RLPD's symmetric default
    assert (mixer.sample(8).obs == 0).all()  # nothing online yet
    online = filled(1.0, 10)
    for fraction, expected_offline in ((0.5, 128), (0.25, 64), (1.0, 256)):
        batch = MixedSampler(offline, online, fraction).sample(256, torch.Generator().manual_seed(0))
        assert int((batch.obs == 0).sum()) == expected_offline and batch.obs.shape == (256, 1)
    with pytest.raises(InputError, match="dims"):
        MixedSampler(offline, ReplayBuffer(obs_dim=2, action_dim=1, capacity=1))


def test_reward_transform_applies_before_the_returns_to_go(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "f.hdf5", [3])  # reward 1 on the last (terminated) step
    buffer = replay_from_store(path, gamma=0.5, reward_scale=2.0, reward_bias=-1.0)
    batch = buffer.gather(torch.arange(3))
    np.testing.assert_allclose(batch.rewards.numpy(), [-1.0, -1.0, 1.0])
    np.testing.assert_allclose(batch.mc_returns.numpy(), discounted_returns(np.array([-1.0, -1.0, 1.0]), 0.5))
    # The buffer records how its rewards were made, so online data can be made the same way.
    assert (buffer.reward_scale, buffer.reward_bias, buffer.returns_gamma) == (2.0, -1.0, 0.5)
    np.testing.assert_allclose(buffer.env_rewards(np.array([0.0, 1.0])), [-1.0, 1.0])


def test_returns_set_later_land_on_their_rows_and_skip_overwritten_ones() -> None:
    buffer = ReplayBuffer(obs_dim=1, action_dim=1, capacity=4)
    for start, n in ((0, 1), (1, 6), (7, 3)):  # one add larger than the buffer: its first 3 never land
        obs = np.arange(start, start + n, dtype=np.float32)[:, None]
        buffer.add(obs, obs, obs[:, 0], obs + 1, np.zeros(n, bool), np.zeros(n, bool))
    assert sorted(buffer.obs[:, 0].tolist()) == [6, 7, 8, 9]
    buffer.set_mc_returns(np.array([1, 6, 9]), np.array([10.0, 60.0, 90.0]))
    # The transition added i-th holds obs i; index 1 is gone, so only 6 and 9 are written.
    by_obs = dict(zip(buffer.obs[:, 0].tolist(), buffer.mc_returns.tolist(), strict=True))
    assert by_obs[6.0] == 60.0 and by_obs[9.0] == 90.0 and np.isnan(by_obs[7.0]) and np.isnan(by_obs[8.0])
    with pytest.raises(InputError, match="not added yet"):
        buffer.set_mc_returns(np.array([10]), np.array([1.0]))
