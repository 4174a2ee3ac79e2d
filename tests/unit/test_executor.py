"""ChunkExecutor: queue popping, query schedule, history filling, partial resets, masking, temporal ensembling.

A test policy returns chunks that encode who asked and when: action ``[b, j]`` of the ``n``-th query is
``1000 * n + 10 * env + j`` in every dimension, where ``env`` is read from the current observation. So every
executed action names the query it came from, the env and the chunk position.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import Batch, LossOutput, Policy, PolicyConfig
from roboloop.core.spec import PolicySpec
from roboloop.envs.executor import ChunkExecutor

STATE = "observation.state"
IMAGE = "observation.images.front"
TO, TP, TA, DA = 2, 4, 3, 2


class EncodingPolicy(Policy):
    """Chunk ``[b, j, :] = 1000 * n + 10 * env_b + j`` (n: 1-based query count, env_b: obs[b, -1, 0])."""

    name = "test_encoding"
    config_cls = PolicyConfig

    def __init__(self, config: PolicyConfig, spec: PolicySpec) -> None:
        super().__init__(config, spec)
        self.calls: list[dict[str, Tensor]] = []
        self.resets: list[list[int] | None] = []

    def act(self, obs: Batch, *, deterministic: bool = True, generator: torch.Generator | None = None) -> Tensor:
        self.spec.check_obs(obs)
        self.calls.append({k: v.clone() for k, v in obs.items()})
        env = obs[STATE][:, -1, 0].float()  # (B,)
        j = torch.arange(TA, dtype=torch.float32)
        chunk = 1000.0 * len(self.calls) + 10.0 * env[:, None] + j[None, :]  # (B, Ta)
        return chunk[:, :, None].expand(-1, -1, DA).clone()

    def compute_loss(self, batch: Batch) -> LossOutput:
        raise NotImplementedError

    def reset(self, env_ids: Tensor | None = None) -> None:
        self.resets.append(None if env_ids is None else env_ids.tolist())


def make_policy(*, image: bool = False) -> EncodingPolicy:
    keys = [STATE, IMAGE] if image else [STATE]
    shapes = {STATE: (2,), IMAGE: (4, 4, 3)} if image else {STATE: (2,)}
    spec = PolicySpec(obs_shapes=shapes, action_dim=DA, action_low=(-1e6,) * DA, action_high=(1e6,) * DA,
                      n_obs_steps=TO, horizon=TP, n_action_steps=TA)
    return EncodingPolicy(PolicyConfig(n_obs_steps=TO, horizon=TP, n_action_steps=TA, obs_keys=keys), spec)


def obs_at(t: int, n_envs: int, *, image: bool = False) -> dict[str, np.ndarray]:
    """Observation of step t: state [env, t]; image filled with t (uint8)."""
    state = np.stack([np.arange(n_envs), np.full(n_envs, t)], axis=1).astype(np.float32)
    obs = {STATE: state}
    if image:
        obs[IMAGE] = np.full((n_envs, 4, 4, 3), t, dtype=np.uint8)
    return obs


def code(query: int, env: int, j: int) -> float:
    return 1000.0 * query + 10.0 * env + j


def test_actions_pop_in_order_and_the_policy_is_queried_every_ta_steps() -> None:
    policy = make_policy()
    executor = ChunkExecutor(policy, 2)
    executor.reset()
    actions = [executor.act(obs_at(t, 2)) for t in range(7)]
    assert len(policy.calls) == 3 == executor.n_queries  # at steps 0, 3, 6
    for t, action in enumerate(actions):
        assert action.shape == (2, DA) and action.dtype == np.float32
        for env in range(2):
            np.testing.assert_array_equal(action[env], code(t // TA + 1, env, t % TA))
    # Both envs' queues empty at the same time: one batched query, not one per env.
    assert all(call[STATE].shape == (2, TO, 2) for call in policy.calls)
    assert executor.n_queued(0) == TA - 1


def test_shorter_n_action_steps_replans_earlier() -> None:
    policy = make_policy()
    executor = ChunkExecutor(policy, 1, n_action_steps=2)
    actions = [executor.act(obs_at(t, 1))[0, 0] for t in range(5)]
    assert actions == [code(1, 0, 0), code(1, 0, 1), code(2, 0, 0), code(2, 0, 1), code(3, 0, 0)]


def test_history_repeats_the_first_observation_then_slides() -> None:
    policy = make_policy(image=True)
    executor = ChunkExecutor(policy, 2)
    for t in range(4):
        executor.act(obs_at(t, 2, image=True))
    first, second = policy.calls  # steps 0 and 3
    np.testing.assert_array_equal(first[STATE][:, :, 1].numpy(), [[0, 0], [0, 0]])
    np.testing.assert_array_equal(second[STATE][:, :, 1].numpy(), [[2, 3], [2, 3]])
    assert first[IMAGE].dtype == torch.uint8 and first[IMAGE].shape == (2, TO, 4, 4, 3)
    np.testing.assert_array_equal(second[IMAGE][:, :, 0, 0, 0].numpy(), [[2, 3], [2, 3]])
    np.testing.assert_array_equal(executor.history(1)[STATE], [[1, 2], [1, 3]])


def test_partial_reset_only_clears_those_envs() -> None:
    policy = make_policy()
    executor = ChunkExecutor(policy, 2)
    for t in range(2):
        executor.act(obs_at(t, 2))
    executor.reset([1])
    assert policy.resets == [[1]]
    assert executor.n_queued(0) == 1 and executor.n_queued(1) == 0
    action = executor.act(obs_at(2, 2))
    # Env 0 keeps executing its first chunk; env 1 alone is queried, with its new first observation repeated.
    assert len(policy.calls) == 2
    assert policy.calls[1][STATE].shape == (1, TO, 2)
    np.testing.assert_array_equal(policy.calls[1][STATE][0].numpy(), [[1, 2], [1, 2]])
    np.testing.assert_array_equal(action[:, 0], [code(1, 0, 2), code(2, 1, 0)])
    np.testing.assert_array_equal(executor.history(0)[STATE][:, 1], [1, 2])  # env 0's history kept sliding
    executor.reset()
    assert policy.resets == [[1], None]
    assert executor.n_queued(0) == executor.n_queued(1) == 0


def test_a_limited_queue_keeps_its_next_actions_then_replans() -> None:
    """``limit_queue`` keeps the next actions in order (not the chunk's last ones); 0 replans at the next act."""
    policy = make_policy()
    executor = ChunkExecutor(policy, 2)
    first = executor.act(obs_at(0, 2))  # chunk 1, action 0 for both
    executor.limit_queue([0], 1)
    executor.limit_queue([1], 5)  # more than queued: unchanged
    assert executor.n_queued(0) == 1 and executor.n_queued(1) == TA - 1
    second = executor.act(obs_at(1, 2))
    np.testing.assert_array_equal(first[:, 0], [code(1, 0, 0), code(1, 1, 0)])
    np.testing.assert_array_equal(second[:, 0], [code(1, 0, 1), code(1, 1, 1)])  # env 0: its next, not its last
    third = executor.act(obs_at(2, 2))  # env 0 has run out: queried alone; env 1 finishes its chunk
    np.testing.assert_array_equal(third[:, 0], [code(2, 0, 0), code(1, 1, 2)])
    executor.limit_queue([0, 1], 0)
    fourth = executor.act(obs_at(3, 2))  # both replan, in one call
    np.testing.assert_array_equal(fourth[:, 0], [code(3, 0, 0), code(3, 1, 0)])
    assert len(policy.calls) == 3 and policy.calls[-1][STATE].shape[0] == 2
    with pytest.raises(ConfigError, match="n_actions"):
        executor.limit_queue([0], -1)


def test_inactive_envs_get_zeros_and_are_not_queried() -> None:
    policy = make_policy()
    executor = ChunkExecutor(policy, 3)
    active = np.array([True, False, True])
    action = executor.act(obs_at(0, 3), active=active)
    np.testing.assert_array_equal(action[1], 0.0)
    np.testing.assert_array_equal(action[[0, 2], 0], [code(1, 0, 0), code(1, 2, 0)])
    np.testing.assert_array_equal(policy.calls[0][STATE][:, -1, 0].numpy(), [0, 2])
    # Env 1 saw no observation yet: when it becomes active its history is filled with the current one.
    executor.act(obs_at(1, 3), active=np.array([False, True, False]))
    np.testing.assert_array_equal(policy.calls[1][STATE][0].numpy(), [[1, 1], [1, 1]])
    assert executor.n_queued(0) == executor.n_queued(2) == TA - 1  # untouched while inactive
    assert not executor.act(obs_at(2, 3), active=np.zeros(3, dtype=bool)).any()
    assert len(policy.calls) == 2


@pytest.mark.parametrize("coeff", [0.01, 0.5, -0.3])
def test_temporal_ensembling_matches_a_hand_computed_average(coeff: float) -> None:
    policy = make_policy()
    executor = ChunkExecutor(policy, 1, temporal_ensemble_coeff=coeff)
    got = [executor.act(obs_at(t, 1))[0, 0] for t in range(5)]
    assert len(policy.calls) == 5  # queried every step

    def average(predictions: list[float]) -> float:  # oldest first, weight exp(-coeff * i)
        weights = [math.exp(-coeff * i) for i in range(len(predictions))]
        return sum(w * p for w, p in zip(weights, predictions)) / sum(weights)

    # The chunk of query n (made at step n - 1) predicts step t at position t - (n - 1).
    expected = [
        code(1, 0, 0),
        average([code(1, 0, 1), code(2, 0, 0)]),
        average([code(1, 0, 2), code(2, 0, 1), code(3, 0, 0)]),
        average([code(2, 0, 2), code(3, 0, 1), code(4, 0, 0)]),  # only the last Ta chunks reach step 3
        average([code(3, 0, 2), code(4, 0, 1), code(5, 0, 0)]),
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6)

    executor.reset()  # after a reset the old predictions are gone
    np.testing.assert_allclose(executor.act(obs_at(5, 1))[0, 0], code(6, 0, 0), rtol=1e-7)


def test_temporal_ensembling_is_per_env_and_respects_active() -> None:
    policy = make_policy()
    executor = ChunkExecutor(policy, 2, temporal_ensemble_coeff=0.0)
    executor.act(obs_at(0, 2))
    action = executor.act(obs_at(1, 2), active=np.array([True, False]))
    assert action[0, 0] == pytest.approx((code(1, 0, 1) + code(2, 0, 0)) / 2)
    assert action[1, 0] == 0.0
    action = executor.act(obs_at(2, 2), active=np.array([False, True]))
    # Env 1 skipped a step: its chunks are one query old (query 1) and new (query 3), for its 2nd action.
    assert action[1, 0] == pytest.approx((code(1, 1, 1) + code(3, 1, 0)) / 2)


def test_observations_are_not_mutated() -> None:
    executor = ChunkExecutor(make_policy(image=True), 2)
    obs = obs_at(3, 2, image=True)
    before = {k: v.copy() for k, v in obs.items()}
    executor.act(obs)
    for key, value in obs.items():
        np.testing.assert_array_equal(value, before[key])


def test_clear_errors() -> None:
    policy = make_policy(image=True)
    executor = ChunkExecutor(policy, 2)
    with pytest.raises(InputError, match="missing key"):
        executor.act({STATE: obs_at(0, 2)[STATE]})
    with pytest.raises(InputError, match=r"observation.state.*\(2, 2\)"):
        executor.act(obs_at(0, 3, image=True))
    bad = obs_at(0, 2, image=True)
    bad[IMAGE] = bad[IMAGE].astype(np.float32)
    with pytest.raises(InputError, match="uint8"):
        executor.act(bad)
    with pytest.raises(InputError, match="active"):
        executor.act(obs_at(0, 2, image=True), active=np.array([True]))
    with pytest.raises(InputError, match="out of range"):
        executor.reset([2])
    with pytest.raises(ConfigError, match="n_action_steps"):
        ChunkExecutor(policy, 1, n_action_steps=TA + 1)
    with pytest.raises(ConfigError, match="exclude"):
        ChunkExecutor(policy, 1, n_action_steps=1, temporal_ensemble_coeff=0.1)
    with pytest.raises(ConfigError, match="n_envs"):
        ChunkExecutor(policy, 0)
