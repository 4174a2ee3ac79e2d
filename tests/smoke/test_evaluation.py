"""``evaluate`` end to end on Lift with tiny untrained MLP policies: records, outputs, videos, cameras."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.spec import PolicySpec
from roboloop.envs import make, task_info
from roboloop.envs.evaluation import EvalConfig, EvalResult, _Episode, evaluate, write_eval_outputs
from roboloop.policies.encoders import VisionConfig
from roboloop.policies.mlp import MLPConfig, MLPPolicy

STATE = "observation.state"
FRONT = "observation.images.front"


def tiny_mlp(obs_keys: list[str], image_size: int = 32) -> MLPPolicy:
    cameras = [k.rsplit(".", 1)[-1] for k in obs_keys if k.startswith("observation.images.")]
    env = make("Lift", cameras=cameras, image_size=image_size)
    spec = PolicySpec.from_env(env, n_obs_steps=2, horizon=8, n_action_steps=4, obs_keys=obs_keys)
    env.close()
    torch.manual_seed(0)
    config = MLPConfig(hidden_dims=[16], n_obs_steps=2, horizon=8, n_action_steps=4, obs_keys=obs_keys,
                       vision=VisionConfig(channels=[8, 8], num_keypoints=4, feature_dim=8))
    policy = MLPPolicy(config, spec)
    dim = spec.obs_shapes[STATE][0]
    stats = {STATE: {"min": -np.ones(dim), "max": np.ones(dim)}, "action": {"min": -np.ones(5), "max": np.ones(5)}}
    if FRONT in obs_keys:
        stats[FRONT] = {"mean": np.full(3, 127.0), "std": np.full(3, 64.0)}
    policy.normalizer.fit(stats)
    return policy


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    # Tiny convs are dominated by thread synchronisation: on a busy 2-core machine two threads run ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def state_policy() -> MLPPolicy:
    return tiny_mlp([STATE])


def test_evaluate_records_every_seeded_episode(state_policy: MLPPolicy, tmp_path: Path) -> None:
    cfg = EvalConfig(n_episodes=3, n_envs=2, seed=500, progress=False)
    state_policy.train()
    result = evaluate(state_policy, "Lift", cfg)
    assert state_policy.training  # the mode is restored
    assert result.task == "Lift" and result.n_episodes == 3 and result.seconds > 0
    assert [e["episode"] for e in result.episodes] == [0, 1, 2]
    assert [e["seed"] for e in result.episodes] == [500, 501, 502]
    limit = task_info("Lift").max_episode_steps
    for episode in result.episodes:
        assert 1 <= episode["length"] <= limit
        assert isinstance(episode["terminated"], bool) and isinstance(episode["truncated"], bool)
        assert episode["terminated"] or episode["truncated"]
        # Lift ends early only on success; otherwise the time limit truncates it.
        assert episode["truncated"] == (episode["length"] == limit and not episode["terminated"])
        assert episode["video"] is None
        # Lift's shaped terms, each at its best over the episode: -distance, a 0/1 grasp, lifted fraction.
        terms = episode["best_terms"]
        assert set(terms) == {"reward_reach", "reward_grasp", "reward_lift"}
        assert terms["reward_reach"] <= 0 and terms["reward_grasp"] in (0.0, 1.0) and 0 <= terms["reward_lift"] <= 1
    assert 0.0 <= result.success_ci[0] <= result.success_rate <= result.success_ci[1] <= 1.0
    assert result.mean_length == pytest.approx(np.mean([e["length"] for e in result.episodes]))
    assert len(result.summary().splitlines()) == 4 + 3 and "success:" in result.summary()

    paths = write_eval_outputs(result, tmp_path / "out")
    assert set(paths) == {"json", "plot"}
    data = json.loads(paths["json"].read_text())
    assert data["n_episodes"] == 3 and data["episodes"] == result.episodes and data["config"]["seed"] == 500
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_video_records_the_counted_episode_without_changing_it(state_policy: MLPPolicy, tmp_path: Path) -> None:
    # Dense rewards make the return a fingerprint of the trajectory.
    base = dict(n_episodes=3, n_envs=2, env_kwargs={"reward_type": "dense"}, progress=False)
    plain = evaluate(state_policy, "Lift", EvalConfig(**base))
    filmed = evaluate(state_policy, "Lift", EvalConfig(**base, video=True, n_videos=1, video_size=64),
                      video_dir=tmp_path)
    assert [e["return"] for e in filmed.episodes] == [e["return"] for e in plain.episodes]
    assert len(filmed.videos) == 1 and filmed.videos[0].parent == tmp_path
    assert filmed.episodes[0]["video"] == str(filmed.videos[0]) and filmed.episodes[1]["video"] is None
    assert filmed.videos[0].stat().st_size > 0
    import imageio.v2 as imageio

    with imageio.get_reader(filmed.videos[0]) as reader:
        frames = [f for f in reader]
    assert len(frames) == filmed.episodes[0]["length"] + 1  # the reset frame, then one per step
    assert frames[0].shape == (64, 64, 3)


def test_async_evaluation_films_in_process_and_counts_the_same_episodes(state_policy: MLPPolicy,
                                                                        tmp_path: Path) -> None:
    base = dict(n_episodes=3, n_envs=2, env_kwargs={"reward_type": "dense"}, progress=False)
    plain = evaluate(state_policy, "Lift", EvalConfig(**base))
    filmed = evaluate(state_policy, "Lift", EvalConfig(**base, vectorization="async", video=True, n_videos=1,
                                                       video_size=32), video_dir=tmp_path)
    assert [e["seed"] for e in filmed.episodes] == [e["seed"] for e in plain.episodes]
    np.testing.assert_allclose([e["return"] for e in filmed.episodes], [e["return"] for e in plain.episodes],
                               rtol=1e-5)
    assert len(filmed.videos) == 1 and filmed.videos[0].stat().st_size > 0


def test_image_policy_gets_its_camera(tmp_path: Path) -> None:
    policy = tiny_mlp([STATE, FRONT], image_size=32)
    result = evaluate(policy, "Lift", EvalConfig(n_episodes=2, n_envs=2, n_action_steps=2, progress=False))
    assert result.n_episodes == 2
    ensembled = evaluate(policy, "Lift", EvalConfig(n_episodes=1, temporal_ensemble_coeff=0.01, progress=False))
    assert ensembled.n_episodes == 1


def test_incompatible_policy_and_bad_options(state_policy: MLPPolicy, tmp_path: Path) -> None:
    spec = PolicySpec(obs_shapes={STATE: (7,)}, action_dim=5, action_low=(-1,) * 5, action_high=(1,) * 5,
                      n_obs_steps=2, horizon=8, n_action_steps=4)
    wrong = MLPPolicy(MLPConfig(hidden_dims=[4], n_obs_steps=2, horizon=8, n_action_steps=4), spec)
    with pytest.raises(InputError, match="task Lift"):
        evaluate(wrong, "Lift", EvalConfig(n_episodes=1, progress=False))
    with pytest.raises(ConfigError, match="video_dir"):
        evaluate(state_policy, "Lift", EvalConfig(n_episodes=1, video=True, progress=False))
    with pytest.raises(ConfigError, match="video_camera"):
        evaluate(state_policy, "Lift", EvalConfig(n_episodes=1, video=True, video_camera="nope", progress=False),
                 video_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown task"):
        evaluate(state_policy, "NoSuchTask", EvalConfig(n_episodes=1, progress=False))


@pytest.mark.parametrize("kwargs", [
    {"n_episodes": 0}, {"n_envs": 0}, {"seed": -1}, {"env_kwargs": {"cameras": ["front"]}},
    {"n_action_steps": 0}, {"n_action_steps": 2, "temporal_ensemble_coeff": 0.1}, {"n_videos": -1},
    {"video_size": 8}, {"vectorization": "threads"},
])
def test_eval_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        EvalConfig(**kwargs)


def test_result_figures() -> None:
    episodes = [{"episode": k, "seed": k, "success": k < 3, "terminated": k < 3, "truncated": k >= 3,
                 "return": float(k < 3), "length": 10 if k < 3 else 80, "video": None} for k in range(4)]
    result = EvalResult("Lift", episodes, seconds=1.0)
    assert (result.successes, result.success_rate, result.mean_length) == (3, 0.75, 27.5)
    assert result.summary().splitlines()[1] == "success: 75.0% [30.1, 95.4] (3/4)"
    assert result.to_dict()["success_ci"] == list(result.success_ci)


def test_best_terms_keep_each_terms_maximum_over_the_episode() -> None:
    episode = _Episode(0, 0, record_video=False)
    # A vector env's infos: one value per sub-env, and a ``_key`` mask of the sub-envs that reported the key.
    steps = [{"reward_align": np.array([-3.0, -9.0]), "_reward_align": np.array([True, True]),
              "reward_insert": np.array([0.0, 0.5]), "_reward_insert": np.array([False, True]), "is_success": [0, 0]},
             {"reward_align": np.array([-9.0, -1.0]), "_reward_align": np.array([True, True])},
             {"reward_align": np.array([-0.5, -2.0]), "_reward_align": np.array([True, True]),
              "reward_insert": np.array([0.2, 0.9]), "_reward_insert": np.array([True, True])}]
    for infos in steps:
        episode.track_terms(infos, 0)
    record = episode.record(success=False, terminated=False, truncated=True, video=None)
    assert record["best_terms"] == {"reward_align": -0.5, "reward_insert": 0.2}  # sub-env 1's values never count

    records = [{"success": s, "best_terms": {"reward_align": a}} for s, a in
               [(True, -0.1), (False, -20.0), (False, -0.4), (False, -7.0)]]
    lines = EvalResult("PegInsert", [{**r, "return": 0.0, "length": 1} for r in records]).summary().splitlines()
    assert lines[-1] == "best reward_align per episode, median: successful -0.100 (1), failed -7.000 (3)"
