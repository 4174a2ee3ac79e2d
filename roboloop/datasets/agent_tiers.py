"""Dataset tiers of the locomotion benchmarks (``Hopper-v5``, ``HalfCheetah-v5``) from stable-baselines3 agents
trained here: D4RL's recipe, with no download.

D4RL recorded ``expert`` with a fully trained agent and ``medium`` with one stopped at about a third of the
expert's return, both sampling their stochastic policy. Here stable-baselines3's PPO (fast on 2 CPU cores, with
observation and reward normalization as rl-zoo trains it on MuJoCo) is trained once per task and seed into
``<agent_dir>``, saving a snapshot and its deterministic evaluation return every ``checkpoint_every`` env steps:

* ``expert``: the snapshot with the best evaluation return;
* ``medium``: the first snapshot whose evaluation return reaches ``medium_fraction`` (1/3) of the expert's;
* ``mixed``: the medium episodes, plus half as many again from the first snapshot (an early, poor policy:
  ``source=noisy``) and a quarter as many of uniformly random actions (``source=random``): the same make-up as the
  manipulation tasks' ``mixed``.

A killed training resumes from its last snapshot (weights, optimizer and normalization statistics); a
finished one is reused (its ``agent.json`` lists the snapshots and their returns). Collection samples each
snapshot's Gaussian with its own seeded generator, so a tier is reproducible from the seed.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from roboloop.core.errors import CheckpointError, ConfigError
from roboloop.envs import task_info
from roboloop.utils.io import atomic_path
from roboloop.utils.sb3 import silence_logger

logger = logging.getLogger(__name__)

AGENT_INDEX = "agent.json"


@dataclass
class AgentConfig:
    """The stable-baselines3 PPO agent a locomotion task's tiers are recorded from.

    Attributes:
        total_env_steps: Training env steps (rl-zoo trains PPO on MuJoCo for 1M).
        checkpoint_every: Env steps between snapshots (each evaluated deterministically on ``eval_episodes``).
        eval_episodes: Episodes of each snapshot's evaluation.
        medium_fraction: ``medium`` is the first snapshot reaching this fraction of the best return (D4RL: 1/3).
        agent_dir: Where snapshots go (``{task}`` and ``{seed}`` are filled in); reused when already complete.
    """

    total_env_steps: int = 1_000_000
    checkpoint_every: int = 50_000
    eval_episodes: int = 5
    medium_fraction: float = 1 / 3
    agent_dir: str = "data/agents/{task}_ppo_seed{seed}"

    def __post_init__(self) -> None:
        if self.checkpoint_every < 2048 or self.total_env_steps < self.checkpoint_every:
            raise ConfigError(f"agent.checkpoint_every must be >= 2048 (one PPO rollout) and <= total_env_steps, got "
                              f"{self.checkpoint_every} and {self.total_env_steps}")
        if self.eval_episodes < 1 or not 0.0 < self.medium_fraction < 1.0:
            raise ConfigError(f"agent.eval_episodes must be >= 1 and medium_fraction in (0, 1), got "
                              f"{self.eval_episodes}, {self.medium_fraction}")


class SB3Actor:
    """A saved stable-baselines3 PPO snapshot as a collection actor: normalizes observations with the snapshot's
    running statistics and samples its Gaussian (or takes the mean) with its own generator."""

    def __init__(self, snapshot: Path, *, deterministic: bool = False) -> None:
        from stable_baselines3 import PPO

        if not (snapshot / "model.zip").exists() or not (snapshot / "obs_rms.npz").exists():
            raise CheckpointError(f"{str(snapshot)!r} is not a PPO snapshot (model.zip and obs_rms.npz)")
        self.model = PPO.load(snapshot / "model.zip", device="cpu")
        stats = np.load(snapshot / "obs_rms.npz")
        self.mean, self.std, self.clip = stats["mean"], np.sqrt(stats["var"] + 1e-8), float(stats["clip"])
        self.deterministic = deterministic
        self.low, self.high = self.model.action_space.low, self.model.action_space.high
        self.generator = torch.Generator()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.generator.manual_seed(seed)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = np.clip((obs["observation.state"] - self.mean) / self.std, -self.clip, self.clip)
        dist = self.model.policy.get_distribution(torch.as_tensor(state, dtype=torch.float32)[None]).distribution
        action = dist.mean if self.deterministic else dist.mean + dist.stddev * torch.randn(
            dist.mean.shape, generator=self.generator)
        return np.clip(action[0].numpy(), self.low, self.high).astype(np.float32)


class RandomActor:
    """Uniformly random actions from the action space, seeded per episode."""

    def __init__(self, action_space: gym.spaces.Box) -> None:
        self.low, self.high = action_space.low, action_space.high
        self.rng = np.random.default_rng()

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


def agent_directory(task: str, cfg: AgentConfig, seed: int) -> Path:
    return Path(cfg.agent_dir.replace("{task}", task_info(task).name).replace("{seed}", str(seed)))


def train_agent(task: str, cfg: AgentConfig, seed: int = 0, *, progress: bool = False) -> dict[str, Any]:
    """Train (or resume, or reuse) the PPO agent of a locomotion task; returns its index (``agent.json``):
    the snapshots with their env steps and evaluation returns."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    info = task_info(task)
    if info.expert is not None:
        raise ConfigError(f"{info.name} has a scripted expert; agent tiers are for the locomotion tasks")
    gym_id = info.name  # the adapters wrap gymnasium's env of the same name
    directory = agent_directory(task, cfg, seed)
    index_path = directory / AGENT_INDEX
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.exists() else {"snapshots": []}
    if index.get("complete") and index.get("total_env_steps") == cfg.total_env_steps:
        return index
    directory.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # two 64-unit MLPs: threads cost more than they give
    inner = make_vec_env(gym_id, n_envs=1, seed=seed)
    if index["snapshots"]:  # resume from the last snapshot, normalization statistics included
        last = directory / index["snapshots"][-1]["name"]
        venv = VecNormalize.load(str(last / "vec_normalize.pkl"), inner)
        model = PPO.load(last / "model.zip", env=venv, device="cpu")
        logger.info("resuming %s's agent at %d env steps", info.name, model.num_timesteps)
    else:
        venv = VecNormalize(inner, gamma=0.99)
        model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0)
    silence_logger(model)
    while model.num_timesteps < cfg.total_env_steps:
        model.learn(cfg.checkpoint_every, reset_num_timesteps=False, progress_bar=progress)
        name = f"step_{model.num_timesteps:08d}"
        snapshot = directory / name
        snapshot.mkdir(exist_ok=True)
        with atomic_path(snapshot / "obs_rms.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=venv.obs_rms.mean, var=venv.obs_rms.var, count=venv.obs_rms.count,
                     clip=venv.clip_obs)
        with atomic_path(snapshot / "vec_normalize.pkl") as tmp:
            venv.save(str(tmp))
        with atomic_path(snapshot / "model.zip") as tmp:
            model.save(tmp)
        returns = evaluate_snapshot(task, snapshot, cfg.eval_episodes, seed=10_000 + seed)
        index["snapshots"].append({"name": name, "env_steps": int(model.num_timesteps),
                                   "eval_return": float(np.mean(returns))})
        logger.info("%s agent: %d env steps, eval return %.1f", info.name, model.num_timesteps, np.mean(returns))
        _write_index(index_path, index)
    index.update(complete=True, total_env_steps=cfg.total_env_steps)
    _write_index(index_path, index)
    venv.close()
    return index


def _write_index(path: Path, index: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(index, indent=2))


def evaluate_snapshot(task: str, snapshot: Path, episodes: int, seed: int) -> list[float]:
    """Deterministic returns of a snapshot on the roboloop env of ``task`` (seeds ``seed + k``)."""
    actor = SB3Actor(snapshot, deterministic=True)
    env = gym.make(task_info(task).env_id)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(actor.act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def pick_snapshots(index: dict[str, Any], medium_fraction: float) -> dict[str, dict[str, Any]]:
    """``expert`` (best evaluation return), ``medium`` (first at ``medium_fraction`` of it) and ``noisy`` (the
    first snapshot) from an agent index."""
    snapshots = index["snapshots"]
    if len(snapshots) < 3:
        raise ConfigError(f"an agent needs at least 3 snapshots to pick expert, medium and noisy ones, got "
                          f"{len(snapshots)}: lower agent.checkpoint_every")
    expert = max(snapshots, key=lambda s: s["eval_return"])
    if not math.isfinite(expert["eval_return"]) or expert["eval_return"] <= 0:
        raise ConfigError(f"the agent never got a positive evaluation return (best {expert['eval_return']}); "
                          f"train it longer")
    medium = next(s for s in snapshots if s["eval_return"] >= medium_fraction * expert["eval_return"])
    return {"expert": expert, "medium": medium, "noisy": snapshots[0]}
