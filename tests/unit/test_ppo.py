"""PPO on a tiny point mass: env requirements, critic warm-up, KL early stopping, frozen parameters never
optimized, non-finite env values refused, truncation bootstrapped from the final observation, outputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from torch import Tensor, nn

from roboloop.core.checkpoint import atomic_checkpoint_dir, read_meta, read_train_state
from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import ActorOutput
from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.residual_rl import PPO, PPOConfig
from tests.point_mass import STEP_SIZE, PointMass, make_envs


def tiny_config(iterations: int, n_envs: int = 2, **overrides: object) -> PPOConfig:
    n_steps = int(overrides.pop("n_steps", 10))
    fields: dict[str, object] = {"total_env_steps": iterations * n_steps * n_envs, "n_steps": n_steps,
                                 "n_epochs": 2, "n_minibatches": 2, "critic_hidden_dims": [16], "device": "cpu",
                                 "progress": False, "checkpoint_every": 100, **overrides}
    return PPOConfig(**fields)  # type: ignore[arg-type]


def tiny_actor(seed: int = 0) -> GaussianMLP:
    torch.manual_seed(seed)
    return GaussianMLP(2, 1, hidden_dims=(16,), learn_std=True, last_layer_init_std=0.5)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="ppo.n_steps"):
        PPOConfig(n_steps=0)
    with pytest.raises(ConfigError, match="ppo.gamma"):
        PPOConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="ppo.target_kl"):
        PPOConfig(target_kl=0.0)
    with pytest.raises(ConfigError, match="ppo.critic_activation"):
        PPOConfig(critic_activation="gelu")


def test_env_and_size_requirements_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SAME_STEP.*SyncVectorEnv\(fns, autoreset_mode=AutoresetMode.SAME_STEP\)"):
        PPO(tiny_actor(), make_envs(autoreset_mode=AutoresetMode.NEXT_STEP), tiny_config(1), tmp_path)
    with pytest.raises(ConfigError, match="n_minibatches"):
        PPO(tiny_actor(), make_envs(), tiny_config(1, n_minibatches=3), tmp_path)
    with pytest.raises(ConfigError, match="less than one iteration"):
        PPO(tiny_actor(), make_envs(), tiny_config(1, total_env_steps=5), tmp_path)


def test_critic_warmup_leaves_the_actor_unchanged_while_the_critic_learns(tmp_path: Path) -> None:
    actor = tiny_actor()
    ppo = PPO(actor, make_envs(), tiny_config(2, critic_warmup_iterations=2), tmp_path)
    actor_before, critic_before = snapshot(actor), snapshot(ppo.critic)
    result = ppo.learn()
    for k, v in snapshot(actor).items():
        assert torch.equal(v, actor_before[k]), k
    assert any(not torch.equal(v, critic_before[k]) for k, v in snapshot(ppo.critic).items())
    assert result.last_stats["actor_updated"] == 0.0 and result.last_stats["approx_kl"] == 0.0


def test_tiny_target_kl_stops_the_epochs_early(tmp_path: Path) -> None:
    stopped = PPO(tiny_actor(), make_envs(), tiny_config(1, n_epochs=6, target_kl=1e-9), tmp_path / "a").learn()
    full = PPO(tiny_actor(), make_envs(), tiny_config(1, n_epochs=6), tmp_path / "b").learn()
    assert stopped.last_stats["epochs_run"] < 6
    assert full.last_stats["epochs_run"] == 6


class BaseAndHead(nn.Module):
    """A residual-style actor: a frozen ``base`` submodule adds its output to a trainable head's action."""

    def __init__(self) -> None:
        super().__init__()
        self.head = tiny_actor()
        self.base = nn.Linear(2, 1).requires_grad_(False)

    def sample(self, obs: Tensor, *, deterministic: bool = False) -> ActorOutput:
        out = self.head.sample(obs, deterministic=deterministic)
        with torch.no_grad():
            env_action = self.base(obs) + out.actor_action
        return out._replace(env_action=env_action)

    def evaluate(self, actor_obs: Tensor, actor_action: Tensor) -> tuple[Tensor, Tensor]:
        return self.head.evaluate(actor_obs, actor_action)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.trainable_parameters()


def test_only_trainable_parameters_are_optimized(tmp_path: Path) -> None:
    actor = BaseAndHead()
    base_before, head_before = snapshot(actor.base), snapshot(actor.head)
    ppo = PPO(actor, make_envs(), tiny_config(2), tmp_path)
    optimized = {id(p) for opt in ppo.optimizers.values() for group in opt.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in actor.base.parameters()}
    assert {id(p) for g in ppo.optimizers["actor"].param_groups for p in g["params"]} == {
        id(p) for p in actor.head.trainable_parameters()}
    ppo.learn()
    for k, v in snapshot(actor.base).items():
        assert torch.equal(v, base_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in snapshot(actor.head).items())

    # A parameter that requires grad but is not listed would collect gradients nothing applies.
    leaky = BaseAndHead()
    leaky.base.requires_grad_(True)
    with pytest.raises(ConfigError, match=r"\['base.weight', 'base.bias'\] require grad"):
        PPO(leaky, make_envs(), tiny_config(1), tmp_path / "leaky")


def test_nan_reward_raises_naming_the_env_and_step(tmp_path: Path) -> None:
    envs = make_envs(nan_reward_at=3)
    with pytest.raises(InputError, match=r"env 0 returned a non-finite reward \(nan\) at env step 6; envs with "
                                         r"non-finite values: \[0, 1\]"):
        PPO(tiny_actor(), envs, tiny_config(1), tmp_path).learn()


def test_truncation_bootstraps_from_the_final_observation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ppo = PPO(tiny_actor(), make_envs(max_steps=4), tiny_config(1), tmp_path)
    # Keep the critic as it was during the rollout, so the stored values can be recomputed.
    monkeypatch.setattr(ppo, "update", lambda buffer, **_: {"policy_loss": 0.0})
    ppo.learn()
    b = ppo.buffer
    assert b.truncated.sum() == 4 and not b.terminated.any()  # 10 steps, episodes of 4: ends at steps 3 and 7
    with torch.no_grad():
        for t, n in b.truncated.nonzero().tolist():
            x = b.obs[t, n, 0] + STEP_SIZE * b.actions[t, n, 0].clamp(-1, 1)
            final_obs = torch.stack([x, torch.tensor(1.0)])[None]  # t / max_steps = 1 at the time limit
            torch.testing.assert_close(b.next_values[t, n], ppo.critic(final_obs)[0])
            torch.testing.assert_close(b.obs[t + 1, n, 1], torch.tensor(0.0))  # the stored next obs is a reset
            assert not torch.isclose(b.next_values[t, n], b.values[t + 1, n])
        # Inside an episode the next value is the value of the next stored observation.
        inside = ~(b.truncated[:-1] | b.terminated[:-1])
        torch.testing.assert_close(b.next_values[:-1][inside], b.values[1:][inside])


def test_logs_checkpoints_and_policy_files_land_together(tmp_path: Path) -> None:
    def evaluate(actor: object, iteration: int) -> dict[str, float]:
        return {"success_rate": 0.1 * iteration, "mean_return": -1.0}

    def save_policy(directory: Path) -> None:
        # Like Policy.save: its own atomic write that replaces the directory it is given.
        with atomic_checkpoint_dir(directory) as tmp:
            (tmp / "policy.txt").write_text("head")

    envs = make_envs(max_steps=5)
    result = PPO(tiny_actor(), envs, tiny_config(3, eval_every=2, log_every=2, checkpoint_every=2), tmp_path,
                 evaluate_fn=evaluate, save_policy=save_policy, meta={"env": "point-mass"}).learn()
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 3]
    for key in ("env_steps", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "explained_variance",
                "epochs_run", "episode_return", "episode_length", "success_rate", "env_steps_per_second"):
        assert key in records[0], key
    assert records[0]["n_episodes"] == 8 and records[0]["episode_length"] == 5  # 40 steps of 2 envs / 5
    assert result.iterations == 3 and result.env_steps == 60 and result.best_checkpoint == tmp_path / "checkpoints/best"
    assert [h["iteration"] for h in result.history] == [2, 3]
    for directory in (result.last_checkpoint, result.best_checkpoint):
        assert (directory / "policy.txt").read_text() == "head"
        state = read_train_state(directory)
        assert {"actor", "critic", "actor_optimizer", "critic_optimizer", "reward_normalizer"} <= state.keys()
    assert read_meta(result.best_checkpoint)["success_rate"] == pytest.approx(0.3)
    assert read_meta(result.last_checkpoint)["env"] == "point-mass"
    assert list((tmp_path / "tb").iterdir())
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp dirs left
    assert np.isfinite(result.env_steps_per_second)


def test_eval_at_start_keeps_the_starting_actor_as_best_when_training_makes_it_worse(tmp_path: Path) -> None:
    def evaluate(actor: object, iteration: int) -> dict[str, float]:
        return {"success_rate": 0.9 - 0.1 * iteration}  # every update evaluates worse than the start

    actor = tiny_actor()
    start = snapshot(actor)
    result = PPO(actor, make_envs(max_steps=5), tiny_config(2, eval_every=1, eval_at_start=True), tmp_path,
                 evaluate_fn=evaluate).learn()
    assert [(h["iteration"], h["env_steps"]) for h in result.history] == [(0, 0), (1, 20), (2, 40)]
    assert read_meta(result.best_checkpoint)["success_rate"] == pytest.approx(0.9)
    best = read_train_state(result.best_checkpoint)
    assert best["iteration"] == 0
    for key, value in start.items():
        torch.testing.assert_close(best["actor"][key], value)
    assert any(not torch.equal(v, start[k]) for k, v in actor.state_dict().items())  # it did train

    # A resumed run does not evaluate its start again.
    resumed = PPO(tiny_actor(), make_envs(max_steps=5), tiny_config(3, eval_every=1, eval_at_start=True,
                                                                     resume=True), tmp_path,
                  evaluate_fn=evaluate).learn()
    assert [h["iteration"] for h in resumed.history] == [0, 1, 2, 3]


def test_async_vector_env_gives_the_same_run_as_sync(tmp_path: Path) -> None:
    def run(asynchronous: bool) -> list[dict[str, float]]:
        envs = make_envs(max_steps=6, asynchronous=asynchronous)
        try:
            PPO(tiny_actor(), envs, tiny_config(2), tmp_path / str(asynchronous)).learn()
        finally:
            envs.close()
        records = (tmp_path / str(asynchronous) / "train_log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(r).items() if k != "env_steps_per_second"} for r in records]

    assert run(asynchronous=True) == run(asynchronous=False)


def test_env_gets_actions_clipped_to_its_bounds_while_the_buffer_keeps_the_sample(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[np.ndarray] = []
    original_step = PointMass.step

    def recording_step(self: PointMass, action: np.ndarray) -> tuple:
        received.append(np.array(action))
        return original_step(self, action)

    monkeypatch.setattr(PointMass, "step", recording_step)
    torch.manual_seed(0)
    wide = GaussianMLP(2, 1, hidden_dims=(16,), init_logstd=1.0)  # std e: most samples fall outside [-1, 1]
    ppo = PPO(wide, make_envs(), tiny_config(1), tmp_path)
    monkeypatch.setattr(ppo, "update", lambda buffer, **_: {"policy_loss": 0.0})
    ppo.learn()
    assert np.abs(np.concatenate(received)).max() <= 1.0
    assert ppo.buffer.actions.abs().max() > 1.0


def test_env_groups_collect_the_rollout_of_one_vector_env(tmp_path: Path) -> None:
    """Two groups of 2 envs (stepped with step_async/step_wait, interleaved) fill the rollout buffer as one
    vector env of 4 does: same seeds per env, a near-deterministic actor, so only the stepping order differs."""
    def run(groups: bool) -> PPO:
        torch.manual_seed(0)
        actor = GaussianMLP(2, 1, hidden_dims=(16,), init_logstd=-12.0, last_layer_init_std=0.5)
        envs = [make_envs(2, max_steps=6, asynchronous=True) for _ in range(2)] if groups else make_envs(4, max_steps=6)
        ppo = PPO(actor, envs, tiny_config(1, n_envs=4, normalize_reward=False), tmp_path / str(groups))
        ppo.learn()
        for group in ppo.groups:
            group.close()
        return ppo

    grouped, single = run(groups=True), run(groups=False)
    assert grouped.n_envs == single.n_envs == 4 and grouped.group_rows == [slice(0, 2), slice(2, 4)]
    for name in ("obs", "rewards", "values", "next_values", "terminated", "truncated"):
        np.testing.assert_allclose(getattr(grouped.buffer, name).numpy(), getattr(single.buffer, name).numpy(),
                                   atol=1e-4, err_msg=name)
    assert grouped.buffer.terminated.any() or grouped.buffer.truncated.any()  # episodes ended mid-rollout
    with pytest.raises(ConfigError, match="step_async"):
        PPO(tiny_actor(), [make_envs(2), make_envs(2)], tiny_config(1, n_envs=4), tmp_path / "sync_groups")
