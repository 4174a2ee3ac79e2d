"""GAE with terminated and truncated episodes against a brute-force per-episode computation; the rollout
buffer's minibatches; reward normalization against a plain reimplementation, and its exact state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from roboloop.core.errors import InputError
from roboloop.residual_rl.buffers import RewardNormalizer, RolloutBuffer, RunningMeanStd, compute_gae

GAMMA, LAM = 0.9, 0.8


def random_rollout(T: int, N: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ends = torch.rand(T, N, generator=g)
    return {"rewards": torch.randn(T, N, generator=g, dtype=torch.float64),
            "values": torch.randn(T, N, generator=g, dtype=torch.float64),
            "next_values": torch.randn(T, N, generator=g, dtype=torch.float64),
            "terminated": ends < 0.15, "truncated": (ends >= 0.15) & (ends < 0.3)}


def brute_force_gae(r: dict[str, torch.Tensor], gamma: float, lam: float) -> np.ndarray:
    """Per env, per step: the explicit (gamma * lam)-discounted sum of TD residuals up to the end of the
    step's episode (or of the rollout)."""
    rewards, values, next_values = (r[k].numpy() for k in ("rewards", "values", "next_values"))
    terminated, truncated = r["terminated"].numpy(), r["truncated"].numpy()
    T, N = rewards.shape
    advantages = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            end = t
            while end < T - 1 and not (terminated[end, n] or truncated[end, n]):
                end += 1
            total = 0.0
            for k in range(t, end + 1):
                bootstrap = 0.0 if terminated[k, n] else gamma * next_values[k, n]
                delta = rewards[k, n] + bootstrap - values[k, n]
                total += (gamma * lam) ** (k - t) * delta
            advantages[t, n] = total
    return advantages


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_brute_force_with_mixed_episode_ends(seed: int) -> None:
    r = random_rollout(T=15, N=5, seed=seed)
    assert r["terminated"].any() and r["truncated"].any()
    advantages, returns = compute_gae(**r, gamma=GAMMA, gae_lambda=LAM)
    np.testing.assert_allclose(advantages.numpy(), brute_force_gae(r, GAMMA, LAM), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(returns, advantages + r["values"], rtol=0, atol=0)


def test_termination_does_not_bootstrap_and_truncation_bootstraps_from_next_values() -> None:
    # Env 0 terminates at step 0, env 1 is truncated at step 0; step 1 belongs to the next episode.
    rewards = torch.tensor([[1.0, 1.0], [5.0, 5.0]])
    values = torch.tensor([[0.5, 0.5], [7.0, 7.0]])
    next_values = torch.tensor([[100.0, 3.0], [2.0, 2.0]])  # 100 must never be used: env 0 terminated
    terminated = torch.tensor([[True, False], [False, False]])
    truncated = torch.tensor([[False, True], [False, False]])
    advantages, _ = compute_gae(rewards, values, next_values, terminated, truncated, GAMMA, LAM)
    assert advantages[0, 0].item() == pytest.approx(1.0 - 0.5)  # r - V, nothing from the next episode
    assert advantages[0, 1].item() == pytest.approx(1.0 + GAMMA * 3.0 - 0.5)  # r + gamma V(final obs) - V
    # The last step bootstraps from its next value.
    assert advantages[1, 0].item() == pytest.approx(5.0 + GAMMA * 2.0 - 7.0)


def test_lambda_one_gives_discounted_returns_with_bootstrap() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.zeros(3, 1)
    next_values = torch.tensor([[0.0], [0.0], [10.0]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    _, returns = compute_gae(rewards, values, next_values, no, no, GAMMA, 1.0)
    assert returns[0, 0].item() == pytest.approx(1 + GAMMA * 2 + GAMMA**2 * 3 + GAMMA**3 * 10)


def test_gae_rejects_mismatched_shapes() -> None:
    r = random_rollout(T=4, N=2, seed=0)
    r["values"] = r["values"][:3]
    with pytest.raises(InputError, match="one shape"):
        compute_gae(**r, gamma=GAMMA, gae_lambda=LAM)


def test_rollout_buffer_minibatches_cover_every_sample_once() -> None:
    T, N, D, A = 6, 4, 3, 2
    buffer = RolloutBuffer(T, N, D, A)
    for t in range(T):
        ids = torch.arange(N, dtype=torch.float32) + 100 * t  # encodes (t, n)
        buffer.add(obs=ids[:, None].repeat(1, D), actor_obs=ids[:, None].repeat(1, D),
                   actions=ids[:, None].repeat(1, A), log_probs=ids, rewards=torch.ones(N),
                   terminated=torch.zeros(N, dtype=torch.bool), truncated=torch.zeros(N, dtype=torch.bool),
                   values=ids, next_values=ids)
    with pytest.raises(InputError, match="full"):
        buffer.add(obs=torch.zeros(N, D), actor_obs=torch.zeros(N, D), actions=torch.zeros(N, A),
                   log_probs=torch.zeros(N), rewards=torch.zeros(N), terminated=torch.zeros(N, dtype=torch.bool),
                   truncated=torch.zeros(N, dtype=torch.bool), values=torch.zeros(N), next_values=torch.zeros(N))
    buffer.compute_advantages(GAMMA, LAM)
    batches = list(buffer.minibatches(8, torch.Generator().manual_seed(0)))
    assert len(batches) == 3
    for mb in batches:
        assert mb.obs.shape == (8, D) and mb.actions.shape == (8, A) and mb.log_probs.shape == (8,)
        assert mb.advantages.shape == (8,) and mb.returns.shape == (8,)
        torch.testing.assert_close(mb.obs[:, 0], mb.log_probs)  # rows stay aligned across fields
    seen = torch.cat([mb.log_probs for mb in batches]).sort().values
    torch.testing.assert_close(seen, buffer.log_probs.flatten().sort().values)


def test_next_values_come_from_the_following_step_except_where_an_episode_ended() -> None:
    n_steps, n_envs = 5, 3
    buffer = RolloutBuffer(n_steps, n_envs, obs_dim=2, action_dim=1)
    values = torch.randn(n_steps, n_envs)
    final = torch.full((n_envs,), 7.0)
    ended = torch.zeros(n_steps, n_envs, dtype=torch.bool)
    ended[1, 0] = ended[4, 2] = True
    for t in range(n_steps):
        buffer.add(obs=torch.zeros(n_envs, 2), actor_obs=torch.zeros(n_envs, 2), actions=torch.zeros(n_envs, 1),
                   log_probs=torch.zeros(n_envs), rewards=torch.zeros(n_envs), terminated=ended[t],
                   truncated=torch.zeros(n_envs, dtype=torch.bool), values=values[t],
                   next_values=torch.where(ended[t], final, torch.zeros(n_envs)))
    last = torch.randn(n_envs)
    buffer.fill_next_values(last)
    expected = torch.cat([values[1:], last[None]])
    expected[ended] = 7.0  # the final observations' values stay
    torch.testing.assert_close(buffer.next_values, expected, rtol=0, atol=0)


def test_rollout_buffer_rejects_wrong_shapes() -> None:
    buffer = RolloutBuffer(2, 3, 4, 1)
    with pytest.raises(InputError, match="obs has shape"):
        buffer.add(obs=torch.zeros(3, 5), actor_obs=torch.zeros(3, 4), actions=torch.zeros(3, 1),
                   log_probs=torch.zeros(3), rewards=torch.zeros(3), terminated=torch.zeros(3, dtype=torch.bool),
                   truncated=torch.zeros(3, dtype=torch.bool), values=torch.zeros(3), next_values=torch.zeros(3))


def test_running_mean_std_matches_the_pooled_statistics() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n,)) for n in (5, 1, 17, 8)]
    rms = RunningMeanStd(epsilon=1e-4)
    for b in batches:
        rms.update(b)
    data = np.concatenate(batches)
    # The prior is a pseudo-count epsilon of samples with mean 0 and variance 1.
    eps, n = 1e-4, data.size
    mean = data.sum() / (n + eps)
    var = (((data - mean) ** 2).sum() + eps * (1.0 + mean**2)) / (n + eps)
    assert rms.mean == pytest.approx(mean, rel=1e-12) and rms.var == pytest.approx(var, rel=1e-12)


def plain_reward_normalizer(rewards: np.ndarray, dones: np.ndarray, gamma: float, clip: float,
                            eps: float = 1e-8) -> np.ndarray:
    """The semantics spelled out: per-env discounted returns, the variance of every return seen so far (plus
    the prior pseudo-count 1e-4 of variance 1), reset after done."""
    T, N = rewards.shape
    g = np.zeros(N)
    seen: list[float] = []
    out = np.zeros((T, N))
    for t in range(T):
        g = gamma * g + rewards[t]
        seen.extend(g.tolist())
        data, prior = np.array(seen), 1e-4
        mean = data.sum() / (data.size + prior)
        var = (((data - mean) ** 2).sum() + prior * (1.0 + mean**2)) / (data.size + prior)
        out[t] = np.clip(rewards[t] / np.sqrt(var + eps), -clip, clip)
        g[dones[t]] = 0.0
    return out


def test_reward_normalizer_matches_plain_reimplementation_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    T, N, gamma, clip = 40, 3, 0.95, 2.0
    rewards = rng.normal(0.5, 3.0, size=(T, N))
    rewards[7, 1] = 200.0  # one outlier: its normalized value is clipped
    dones = rng.random((T, N)) < 0.1
    expected = plain_reward_normalizer(rewards, dones, gamma, clip)
    normalizer = RewardNormalizer(N, gamma, clip=clip)
    got = np.stack([normalizer(rewards[t], dones[t]) for t in range(T)])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.abs(got).max() == pytest.approx(clip)

    # Resume in the middle: a fresh normalizer loaded from the state continues identically.
    a = RewardNormalizer(N, gamma, clip=clip)
    for t in range(20):
        a(rewards[t], dones[t])
    b = RewardNormalizer(N, gamma, clip=clip)
    b.load_state_dict(a.state_dict())
    for t in range(20, T):
        np.testing.assert_array_equal(a(rewards[t], dones[t]), b(rewards[t], dones[t]))
    with pytest.raises(InputError, match="3 envs"):
        RewardNormalizer(4, gamma).load_state_dict(a.state_dict())
