"""RL actors as checkpointed platform policies; critics on disk; V-GPS steering picks the best-scored chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from roboloop.core.checkpoint import load_policy
from roboloop.core.errors import CheckpointError, ConfigError, InputError
from roboloop.core.spec import PolicySpec
from roboloop.envs import make
from roboloop.envs.evaluation import EvalConfig, evaluate
from roboloop.offline_rl.networks import QEnsemble
from roboloop.offline_rl.policy import RLActorConfig, RLActorPolicy, SteeredPolicy, load_critic, save_critic
from tests.unit.test_residual import lift_obs, make_base


def lift_state_spec() -> PolicySpec:
    env = make("Lift")
    spec = PolicySpec.from_env(env, obs_keys=["observation.state"], n_obs_steps=1, horizon=1, n_action_steps=1)
    env.close()
    return spec


@pytest.mark.parametrize("actor", ["tanh_gaussian", "gaussian"])
def test_rl_actor_round_trips_and_runs_in_evaluation(tmp_path: Path, actor: str) -> None:
    torch.manual_seed(0)
    policy = RLActorPolicy(RLActorConfig(actor=actor, hidden_dims=[8]), lift_state_spec())
    obs = {"observation.state": lift_obs(3)["observation.state"][:, -1:]}
    action = policy.act(obs)
    assert action.shape == (3, 1, 5) and (action.abs() <= 1).all()
    out = policy.sample(obs)
    assert out.log_prob.shape == (3,) and out.actor_obs.shape == (3, 16)
    policy.save(tmp_path / "actor")
    loaded = load_policy(tmp_path / "actor")
    assert isinstance(loaded, RLActorPolicy)
    torch.testing.assert_close(loaded.act(obs), policy.act(obs))
    result = evaluate(loaded, "Lift", EvalConfig(n_episodes=2, n_envs=2, progress=False))
    assert result.n_episodes == 2
    with pytest.raises(ConfigError, match="not by BC"):
        policy.compute_loss({})


def test_critic_round_trip_and_steering_takes_the_best_scored_candidate(tmp_path: Path, lift_demos: Path) -> None:
    torch.manual_seed(0)
    critic = QEnsemble(16, 5, [8], 2)
    save_critic(tmp_path / "q", critic, obs_keys=["observation.state"])
    loaded, config = load_critic(tmp_path / "q")
    assert config["obs_keys"] == ["observation.state"]
    base = make_base(lift_demos, "diffusion")
    steered = SteeredPolicy(base, loaded, config["obs_keys"], n_samples=6)
    obs = lift_obs(2)
    torch.manual_seed(3)
    chosen = steered.act(obs)
    torch.manual_seed(3)
    candidates = base.sample_actions(obs, 6)
    best = steered.scores(obs, candidates).argmax(dim=1)
    torch.testing.assert_close(chosen, candidates[torch.arange(2), best])
    assert chosen.shape == base.act(obs).shape
    with pytest.raises(InputError, match="critic was trained"):
        SteeredPolicy(base, QEnsemble(7, 5, [8]), ["observation.state"], 4)
    with pytest.raises(ConfigError, match="sample_actions"):
        SteeredPolicy(make_base(lift_demos, "mlp"), loaded, ["observation.state"], 4)
    with pytest.raises(CheckpointError, match="holds no critic"):
        load_critic(tmp_path)


def test_steering_with_a_temperature_draws_candidates_by_softmax_of_q(lift_demos: Path) -> None:
    """Fixed candidates with known scores: each is executed about as often as softmax(Q / temperature) says, and a
    temperature near 0 is the argmax."""
    torch.manual_seed(0)
    base = make_base(lift_demos, "diffusion")
    obs = lift_obs(1)
    candidates = base.sample_actions(obs, 3)  # (1, 3, Ta, Da)
    q = torch.tensor([[0.0, 0.1, 0.2]])
    steered = SteeredPolicy(base, QEnsemble(16, 5, [8], 2), ["observation.state"], n_samples=3, temperature=0.1)
    steered.base.sample_actions = lambda *args: candidates  # type: ignore[method-assign]
    steered.scores = lambda *args: q  # type: ignore[method-assign]
    generator = torch.Generator().manual_seed(0)
    picks = [int((steered.act(obs, generator=generator) - candidates[0]).abs().flatten(1).sum(1).argmin())
             for _ in range(3000)]
    frequencies = np.bincount(picks, minlength=3) / len(picks)
    np.testing.assert_allclose(frequencies, torch.softmax(q[0] / 0.1, dim=0).numpy(), atol=0.03)
    steered.config.temperature = 1e-4
    assert all(torch.equal(steered.act(obs, generator=generator), candidates[:, 2]) for _ in range(20))
    with pytest.raises(ConfigError, match="temperature"):
        SteeredPolicy(base, QEnsemble(16, 5, [8], 2), ["observation.state"], 3, temperature=-1.0)
