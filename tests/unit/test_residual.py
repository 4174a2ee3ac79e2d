"""ResidualPolicy and ResidualVecEnv: a zero head is the base, the base stays frozen, the training env runs
exactly what evaluation runs, checkpoints carry their base, and bad input gets a clear error (tiny nets)."""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from roboloop.core.errors import CheckpointError, ConfigError, InputError
from roboloop.core.policy import Policy
from roboloop.core.spec import PolicySpec
from roboloop.datasets.collection import make_vector_env
from roboloop.datasets.stats import compute_stats
from roboloop.envs import make, task_info
from roboloop.envs.executor import ChunkExecutor
from roboloop.policies import DiffusionConfig, DiffusionPolicy, MLPConfig, MLPPolicy
from roboloop.residual_rl.env import ResidualVecEnv, generator_from_global_rng
from roboloop.residual_rl.policy import ResidualConfig, ResidualPolicy

TO, TP, TA = 2, 8, 4


def lift_spec() -> PolicySpec:
    env = make("Lift")
    spec = PolicySpec.from_env(env, obs_keys=["observation.state"], n_obs_steps=TO, horizon=TP, n_action_steps=TA)
    env.close()
    return spec


def make_base(lift_demos: Path, kind: str = "mlp") -> Policy:
    spec = lift_spec()
    torch.manual_seed(0)
    if kind == "mlp":
        base: Policy = MLPPolicy(MLPConfig(hidden_dims=[16], n_obs_steps=TO, horizon=TP, n_action_steps=TA), spec)
    else:
        base = DiffusionPolicy(DiffusionConfig(down_dims=[16, 32], step_embed_dim=16, n_groups=4, n_obs_steps=TO,
                                               horizon=TP, n_action_steps=TA), spec)
    base.normalizer.fit(compute_stats(lift_demos, obs_keys=["observation.state"]))
    return base.eval()


def randomize_head(policy: ResidualPolicy) -> None:
    torch.manual_seed(1)
    torch.nn.init.normal_(policy.head.mean_layer.weight, std=0.5)


def lift_obs(batch: int = 3) -> dict[str, torch.Tensor]:
    env = make("Lift")
    obs, _ = env.reset(seed=0)
    env.close()
    state = torch.as_tensor(obs["observation.state"]).float()
    return {"observation.state": state.expand(batch, TO, -1).clone() + 0.01 * torch.randn(batch, TO, state.shape[0])}


@pytest.mark.parametrize("mode", ["step", "chunk"])
def test_a_zero_head_reproduces_the_base(lift_demos: Path, mode: str) -> None:
    base = make_base(lift_demos)
    policy = ResidualPolicy.from_base(base, ResidualConfig(mode=mode))
    obs = lift_obs()
    torch.testing.assert_close(policy.act(obs), base.act(obs), rtol=0, atol=0)
    # And through the executor, over real episodes: the same actions as the base's own executor.
    env_a, env_b = make("Lift"), make("Lift")
    ex_res, ex_base = ChunkExecutor(policy, 1), ChunkExecutor(base, 1)
    obs_a, _ = env_a.reset(seed=3)
    obs_b, _ = env_b.reset(seed=3)
    for _ in range(12):
        a = ex_res.act({k: v[None] for k, v in obs_a.items()})
        b = ex_base.act({k: v[None] for k, v in obs_b.items()})
        np.testing.assert_array_equal(a, b)
        obs_a, *_ = env_a.step(a[0])
        obs_b, *_ = env_b.step(b[0])


def test_the_base_is_frozen_three_ways(lift_demos: Path) -> None:
    base = make_base(lift_demos, "diffusion")
    policy = ResidualPolicy.from_base(base)
    assert not any(p.requires_grad for p in base.parameters())
    policy.train()
    assert policy.head.training and not base.training  # train() never reaches the base
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert trainable and not trainable & {id(p) for p in base.parameters()}
    assert base.config.num_inference_steps == 4  # the residual's base sampler setting (ResiP: 4 DDIM steps)


def step_mode_setup(lift_demos: Path) -> tuple[Policy, ResidualPolicy, dict[str, torch.Tensor], torch.Tensor]:
    """An MLP base, a step-mode residual with a random head (scale 0.2), Lift observations (B=3) and the
    base's current action for them (3, Da)."""
    base = make_base(lift_demos)
    policy = ResidualPolicy.from_base(base, ResidualConfig(scale=0.2))
    randomize_head(policy)
    obs = lift_obs()
    return base, policy, obs, base.act(obs)[:, 0]


def test_a_step_mode_head_corrects_from_the_base_action(lift_demos: Path) -> None:
    base, policy, obs, base_action = step_mode_setup(lift_demos)
    corrected = policy.correct(obs, base_action)
    head_in = policy.head_obs(obs, base_action)
    assert head_in.shape == (3, policy.obs_dim + base.spec.action_dim)
    delta = policy.head(head_in)[0]
    assert (delta.abs() > 1).any()  # the bound matters for this head
    expected = policy.unnormalize_action(policy.normalize_action(base_action) + 0.2 * delta.clamp(-1, 1))
    torch.testing.assert_close(corrected, expected)
    assert not torch.allclose(corrected, base_action)


def test_a_head_that_sees_the_previous_action(lift_demos: Path) -> None:
    base, policy, obs, base_action = step_mode_setup(lift_demos)
    previous = torch.rand(3, base.spec.action_dim) * 2 - 1
    # Given the new input, a trained head starts out acting exactly as before, whatever the previous action.
    wider = policy.with_previous_action()
    assert wider.sees_previous_action and not policy.sees_previous_action
    torch.testing.assert_close(wider.correct(obs, base_action, previous_action=previous),
                               policy.correct(obs, base_action))  # a wider matmul: rounding only
    head_in = wider.head_obs(obs, base_action, previous)
    assert head_in.shape == (3, policy.obs_dim + 2 * base.spec.action_dim)
    torch.testing.assert_close(head_in[:, -base.spec.action_dim:], wider.normalize_action(previous))
    # Once its new weights are not zero, the previous action changes the correction.
    torch.nn.init.normal_(wider.head.trunk[0].weight, std=0.5)
    assert not torch.allclose(wider.correct(obs, base_action, previous_action=previous),
                              wider.correct(obs, base_action, previous_action=torch.zeros_like(previous)))
    with pytest.raises(InputError, match="previous_action"):
        wider.correct(obs, base_action)
    with pytest.raises(ConfigError, match="ChunkExecutor"):
        wider.act(obs)
    with pytest.raises(ConfigError, match="step-mode"):
        ResidualConfig(mode="chunk", previous_action=True)


@pytest.mark.parametrize("mode", ["step", "chunk", "step_previous_action"])
def test_the_training_env_runs_what_evaluation_runs(lift_demos: Path, mode: str) -> None:
    """Residual env driven by the head's mean == ChunkExecutor(residual policy) on the same seeded episode."""
    config = ResidualConfig(mode="step", previous_action=True) if mode == "step_previous_action" else (
        ResidualConfig(mode=mode))
    policy = ResidualPolicy.from_base(make_base(lift_demos, "diffusion"), config)
    randomize_head(policy)
    venv = ResidualVecEnv(make_vector_env("Lift", {}, 1, "sync"), policy)
    assert venv.single_observation_space.shape == (policy.head.obs_dim,)
    # The base plans chunk k right after the env step that precedes it (at reset for the first): seed there.
    torch.manual_seed(5)
    head_obs, _ = venv.reset(seed=11)
    wrapper_states = []
    steps_per_call = TA if mode == "chunk" else 1
    for _ in range(16 // steps_per_call):
        torch.manual_seed(5)  # the base's sampling noise: the same draw on both sides
        delta = policy.head.sample(torch.from_numpy(head_obs), deterministic=True).actor_action.numpy()
        head_obs, _, terminated, truncated, _ = venv.step(delta)
        assert not (terminated | truncated).any()
        wrapper_states.append(venv.envs.call("get_state")[0].copy())

    env = make("Lift")
    obs, _ = env.reset(seed=11)
    executor = ChunkExecutor(policy, 1)
    eval_states = []
    for t in range(16):
        if t % TA == 0:
            torch.manual_seed(5)
            noise = generator_from_global_rng("cpu")  # what the wrapper's step plans from
        obs, *_ = env.step(executor.act({k: v[None] for k, v in obs.items()}, generator=noise)[0])
        if (t + 1) % steps_per_call == 0:
            eval_states.append(env.unwrapped.get_state().copy())
    np.testing.assert_allclose(np.stack(wrapper_states), np.stack(eval_states), rtol=0, atol=1e-12)


def test_finished_episodes_report_their_final_observation(lift_demos: Path) -> None:
    policy = ResidualPolicy.from_base(make_base(lift_demos))
    venv = ResidualVecEnv(make_vector_env("Lift", {"max_episode_steps": 5}, 2, "sync"), policy)
    head_obs, _ = venv.reset(seed=0)
    for _ in range(4):
        head_obs, _, terminated, truncated, infos = venv.step(np.zeros((2, 5), np.float32))
        assert "final_obs" not in infos
    head_obs, _, terminated, truncated, infos = venv.step(np.zeros((2, 5), np.float32))
    assert truncated.all() and not terminated.any() and infos["_final_obs"].all()
    assert infos["final_obs"][0].shape == head_obs[0].shape
    assert not np.allclose(infos["final_obs"][0], head_obs[0])  # the final one, not the reset one
    assert "is_success" in infos["final_info"]


def test_aligned_chunks_replan_restarted_envs_with_the_running_ones(lift_demos: Path) -> None:
    """Episodes that end at different times (time limits 5, 7 and 10 with Ta = 4) drift the envs' replanning steps
    apart; with ``align_chunks`` a restarted env replans with the running ones, so every step all queues hold the
    same number of actions and the base is called less often."""
    env_id = task_info("Lift").env_id
    queues, calls = {}, {}
    for align in (False, True):
        inner = SyncVectorEnv([lambda m=m: gym.make(env_id, max_episode_steps=m) for m in (5, 7, 10)],
                              autoreset_mode=AutoresetMode.DISABLED)
        venv = ResidualVecEnv(inner, ResidualPolicy.from_base(make_base(lift_demos)), align_chunks=align)
        venv.reset(seed=[0, 1, 2])
        queued = []
        for _ in range(30):
            *_, terminated, truncated, _ = venv.step(np.zeros((3, 5), np.float32))
            assert not terminated.any()  # the time limits decide when episodes end
            queued.append([venv.executor.n_queued(i) for i in range(3)])
        queues[align], calls[align] = np.array(queued), venv.base_queries
        venv.close()
    assert (queues[True] == queues[True][:, :1]).all()
    assert not (queues[False] == queues[False][:, :1]).all()
    assert calls[True] < calls[False]


def test_checkpoints_carry_their_base(lift_demos: Path, tmp_path: Path) -> None:
    policy = ResidualPolicy.from_base(make_base(lift_demos, "diffusion"), ResidualConfig(mode="chunk"))
    randomize_head(policy)
    policy.save(tmp_path / "residual")
    assert not any(k.startswith("base.") for k in policy.state_dict())
    loaded = Policy.load(tmp_path / "residual")
    assert isinstance(loaded, ResidualPolicy) and loaded.base.name == "diffusion"
    obs = lift_obs()
    torch.manual_seed(0)
    expected = policy.act(obs)
    torch.manual_seed(0)
    torch.testing.assert_close(loaded.act(obs), expected)

    shutil.rmtree(tmp_path / "residual" / "base")
    with pytest.raises(CheckpointError, match="has no base policy"):
        Policy.load(tmp_path / "residual")


class CorruptAfter(gym.Wrapper):
    """Lift whose observation (or reward) turns NaN at step ``at``: a broken simulator or sensor."""

    def __init__(self, at: int, what: str) -> None:
        super().__init__(gym.make("roboloop/Lift-v0"))
        self.at, self.what, self.t = at, what, 0

    def step(self, action: np.ndarray) -> tuple:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        if self.t >= self.at:
            if self.what == "obs":
                obs = {**obs, "observation.state": np.full_like(obs["observation.state"], np.nan)}
            else:
                reward = float("nan")
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("what", ["obs", "reward"])
def test_nan_from_the_environment_is_a_clear_error(lift_demos: Path, what: str) -> None:
    policy = ResidualPolicy.from_base(make_base(lift_demos))
    envs = SyncVectorEnv([lambda: CorruptAfter(3, what)], autoreset_mode=AutoresetMode.DISABLED)
    venv = ResidualVecEnv(envs, policy)
    venv.reset(seed=0)
    for _ in range(2):
        venv.step(np.zeros((1, 5), np.float32))
    with pytest.raises(InputError, match="sub-env\\(s\\) \\[0\\]"):
        venv.step(np.zeros((1, 5), np.float32))


def test_bad_input_is_refused(lift_demos: Path) -> None:
    policy = ResidualPolicy.from_base(make_base(lift_demos))
    with pytest.raises(InputError, match="the environment has no observation|the environment: observation"):
        ResidualVecEnv(make_vector_env("FetchPickAndPlace-v4", {}, 1, "sync"), policy)  # a Lift base elsewhere
    venv = ResidualVecEnv(make_vector_env("Lift", {}, 1, "sync"), policy)
    venv.reset(seed=0)
    with pytest.raises(InputError, match="NaN"):
        venv.step(np.full((1, 5), np.nan, np.float32))
    with pytest.raises(InputError, match="expected"):
        venv.step(np.zeros((1, 7), np.float32))
    with pytest.raises(InputError, match="NaN"):
        policy.head_obs({"observation.state": torch.full((1, TO, 16), float("nan"))}, torch.zeros(1, 5))
    with pytest.raises(ConfigError, match="reinforcement learning"):
        policy.compute_loss({})
    with pytest.raises(ConfigError, match="mode"):
        ResidualConfig(mode="sometimes")


def test_state_clip_bounds_what_the_head_and_the_base_see(lift_demos: Path) -> None:
    """Far outside the data's range, normalized inputs are clipped: the head's at its own 5, the base's at its own."""
    base = make_base(lift_demos)
    obs = lift_obs()
    obs["observation.state"][:, :, 0] = 100.0  # a gripper 100 m away: thousands in min_max units
    assert base.normalize_obs(obs)["observation.state"].abs().max() > 100  # the default base: no clip
    policy = ResidualPolicy.from_base(base)
    assert policy.config.state_clip == 5.0
    head_in = policy.head_obs(obs, torch.zeros(3, 5))
    assert head_in.abs().max() == pytest.approx(5.0)
    base.config.state_clip = 1.2
    assert base.normalize_obs(obs)["observation.state"].abs().max() == pytest.approx(1.2)
    with pytest.raises(ConfigError, match="state_clip"):
        MLPConfig(state_clip=0.0)


@pytest.mark.parametrize(("mode", "vectorization"), [("step", "sync"), ("step", "async"), ("chunk", "sync")])
def test_step_async_then_step_wait_is_step(lift_demos: Path, mode: str, vectorization: str) -> None:
    """The split step (physics on the wrapper's worker thread, or in the worker processes of an async inner env)
    runs exactly what ``step`` runs."""
    policy = ResidualPolicy.from_base(make_base(lift_demos), ResidualConfig(mode=mode))
    randomize_head(policy)
    envs = [ResidualVecEnv(make_vector_env("Lift", {}, 2, "sync"), policy),
            ResidualVecEnv(make_vector_env("Lift", {}, 2, vectorization), policy)]
    obs = [venv.reset(seed=[3, 4])[0] for venv in envs]
    np.testing.assert_array_equal(obs[0], obs[1])
    for _ in range(30):  # past Lift's successes/resets for some seeds: finished episodes restart alike
        delta = policy.head.sample(torch.from_numpy(obs[0]), deterministic=True).actor_action.numpy()
        direct = envs[0].step(delta)
        envs[1].step_async(delta)
        split = envs[1].step_wait()
        for a, b in zip(direct[:4], split[:4], strict=True):
            np.testing.assert_array_equal(a, b)
        assert direct[4].keys() == split[4].keys()
        obs = [direct[0], split[0]]
    with pytest.raises(InputError, match="without a step_async"):
        envs[1].step_wait()
    for venv in envs:
        venv.close()


@pytest.mark.parametrize("mode", ["step", "chunk"])
def test_groups_stepped_at_once_plan_what_a_seeded_step_plans(lift_demos: Path, mode: str) -> None:
    """Two env groups whose steps (physics and the diffusion base's planning) run at the same time on their
    wrappers' threads, while the caller draws from the global RNG, give what plain ``step`` gives under the
    same seeds: each step's base noise comes from a generator seeded on the caller's thread."""
    policy = ResidualPolicy.from_base(make_base(lift_demos, "diffusion"), ResidualConfig(mode=mode))
    randomize_head(policy)
    direct = ResidualVecEnv(make_vector_env("Lift", {}, 2, "sync"), policy)
    groups = [ResidualVecEnv(make_vector_env("Lift", {}, 2, "sync"), policy) for _ in range(2)]
    torch.manual_seed(0)
    obs = direct.reset(seed=[3, 4])[0]
    for group in groups:
        torch.manual_seed(0)
        np.testing.assert_array_equal(group.reset(seed=[3, 4])[0], obs)
    for k in range(12):
        delta = policy.head.sample(torch.from_numpy(obs), deterministic=True).actor_action.numpy()
        torch.manual_seed(k)
        expected = direct.step(delta)
        for group in groups:
            torch.manual_seed(k)
            group.step_async(delta)
        torch.randn(1000)  # the caller's own draws while the groups plan
        for group in groups:
            got = group.step_wait()
            for a, b in zip(expected[:4], got[:4], strict=True):
                np.testing.assert_array_equal(a, b)
        obs = expected[0]
    for venv in (direct, *groups):
        venv.close()


@pytest.mark.parametrize("terms", [None, ["reach"]])
def test_potential_based_shaping_adds_gamma_phi_next_minus_phi(lift_demos: Path, terms: list[str] | None) -> None:
    """reward = sparse + gamma * Phi(s') - Phi(s), Phi = shaping * sum of info['reward_*'] (or of the chosen
    terms), replayed on a plain env."""
    policy = ResidualPolicy.from_base(make_base(lift_demos))  # an MLP base and a zero head: deterministic
    venv = ResidualVecEnv(make_vector_env("Lift", {}, 1, "sync"), policy, shaping=2.0, gamma=0.9,
                          shaping_terms=terms)
    head_obs, _ = venv.reset(seed=[7])
    env = make("Lift")
    _, info = env.reset(seed=7)
    assert len([k for k in info if k.startswith("reward_")]) > 1  # so picking one term is a real choice

    def phi(values: dict) -> float:
        return 2.0 * sum(v for k, v in values.items() if k.startswith("reward_") and (terms is None or k[7:] in terms))

    previous = phi(info)
    for _ in range(10):
        action = venv._env_actions(np.zeros((1, 5), np.float32))[0]  # what the wrapper will execute
        _, shaped, terminated, truncated, _ = venv.step(np.zeros((1, 5), np.float32))
        _, sparse, term, _, info = env.step(action)
        current = 0.0 if term else phi(info)
        assert shaped[0] == pytest.approx(sparse + 0.9 * current - previous, abs=1e-9)
        previous = current
        if terminated[0] or truncated[0]:
            break
    with pytest.raises(ConfigError, match="shaping"):
        ResidualVecEnv(make_vector_env("Lift", {}, 1, "sync"), policy, shaping=-1.0)
    with pytest.raises(ConfigError, match=r"\['depth'\] are not shaped terms"):
        ResidualVecEnv(make_vector_env("Lift", {}, 1, "sync"), policy, shaping=1.0, shaping_terms=["depth"]).reset(
            seed=[0])


def test_dense_shaping_adds_the_floored_terms_of_the_next_state(lift_demos: Path) -> None:
    """shaping_mode=dense: reward = sparse + shaping * sum(max(term(s'), -floor)), replayed on a plain env; the floor
    really clips (Lift's reach term starts below it)."""
    policy = ResidualPolicy.from_base(make_base(lift_demos))
    floor = 0.05
    venv = ResidualVecEnv(make_vector_env("Lift", {}, 1, "sync"), policy, shaping=2.0, shaping_terms=["reach"],
                          shaping_mode="dense", shaping_floor=floor)
    venv.reset(seed=[7])
    env = make("Lift")
    _, info = env.reset(seed=7)
    assert info["reward_reach"] < -floor
    clipped = 0
    for _ in range(10):
        action = venv._env_actions(np.zeros((1, 5), np.float32))[0]
        _, shaped, terminated, truncated, _ = venv.step(np.zeros((1, 5), np.float32))
        _, sparse, _, _, info = env.step(action)
        clipped += info["reward_reach"] < -floor
        assert shaped[0] == pytest.approx(sparse + 2.0 * max(info["reward_reach"], -floor), abs=1e-9)
        if terminated[0] or truncated[0]:
            break
    assert clipped > 0
    with pytest.raises(ConfigError, match="shaping_mode"):
        ResidualVecEnv(make_vector_env("Lift", {}, 1, "sync"), policy, shaping=1.0, shaping_mode="sum")
    with pytest.raises(ConfigError, match="shaping_floor"):
        ResidualVecEnv(make_vector_env("Lift", {}, 1, "sync"), policy, shaping=1.0, shaping_floor=0.0)
