from __future__ import annotations

import numpy as np

from roboloop.envs.effects import ActionLatency, ObservationNoise


def test_latency_delays_by_whole_steps() -> None:
    latency = ActionLatency(np.array([0.0, -1.0]))
    latency.reset(2)
    out = [latency(np.array([float(t), float(t)])) for t in range(1, 5)]
    assert [o.tolist() for o in out] == [[0.0, -1.0], [0.0, -1.0], [1.0, 1.0], [2.0, 2.0]]


def test_zero_latency_passes_actions_through() -> None:
    latency = ActionLatency(np.zeros(3))
    latency.reset(0)
    action = np.array([0.1, 0.2, 0.3])
    assert latency(action) is action
    assert latency.pending.shape == (0, 3)


def test_latency_queue_round_trips_through_a_flat_state() -> None:
    latency = ActionLatency(np.zeros(2))
    latency.reset(3)
    for t in range(3):
        latency(np.array([t, t], dtype=float))
    saved = latency.pending.ravel().copy()
    other = ActionLatency(np.zeros(2))
    other.set_pending(saved)
    assert np.array_equal(other(np.array([9.0, 9.0])), latency(np.array([9.0, 9.0])))


def test_observation_noise_is_reproducible_and_off_at_zero() -> None:
    x = np.zeros(4)
    noise = ObservationNoise()
    noise.reset(0.0, None)
    assert noise(x) is x
    noise.reset(0.1, seed=7)
    first = [noise(x) for _ in range(3)]
    noise.reset(0.1, seed=7)
    second = [noise(x) for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0], first[1])
