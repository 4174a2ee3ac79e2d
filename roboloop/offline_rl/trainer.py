"""``OffPolicyTrainer``: offline gradient steps on a dataset, then (optionally) online finetuning with its data.

One loop for IQL, Cal-QL and SAC/RLPD (anything with ``update(batch) -> metrics``, ``actor``, ``state_dict`` /
``load_state_dict``):

1. offline: ``offline_steps`` updates on batches from the offline buffer;
2. online: every env step the actor samples an action in each of the N envs (SAME_STEP autoreset vector env),
   the transitions go into the online buffer (a finished episode's ``next_obs`` is its final observation, so
   truncation bootstraps and termination does not), then ``utd_ratio`` updates on batches mixing offline and
   online data (``MixedSampler``, RLPD's half and half by default). Online data is made as the offline buffer's
   was: its rewards get the same scale and bias, and when the offline buffer has returns-to-go, every finished
   online episode's are computed with the same discount (Cal-QL calibrates online data as it does offline data).

Checkpoints (``checkpoints/last``, atomic) hold the agent, the online buffer, the counters, the RNG states and
the evaluation history: a killed run continues with ``resume=True``. The offline buffer is rebuilt from its file.
The envs' episodes in progress are not part of the checkpoint: a resumed online phase restarts them from seeded
resets. Logs: ``train_log.jsonl``, TensorBoard under ``tb/``, and the evaluations so far in ``history.json``
(rewritten at each one).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from torch import nn
from tqdm import tqdm

from roboloop.core.checkpoint import read_train_state, save_train_state, train_state_exists
from roboloop.core.errors import ConfigError, InputError
from roboloop.offline_rl.replay import MixedSampler, ReplayBuffer, Transitions, discounted_returns
from roboloop.residual_rl.ppo import EpisodeTracker, final_observations
from roboloop.training.trainer import rng_state, seed_everything, set_rng_state
from roboloop.utils.io import write_json

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module, int], dict[str, float]]  # (actor, total updates) -> metrics


class Agent(Protocol):
    actor: nn.Module
    device: torch.device  # where the actor and the critics live (the online phase's observations go there)

    def update(self, batch: Transitions) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class OffPolicyConfig:
    """Attributes:
        offline_steps: Gradient steps on the offline data alone.
        online_env_steps: Env steps of online finetuning (per env summed: N envs take N per step); 0: none.
        batch_size: Transitions per update.
        utd_ratio: Updates per online vector-env step (RLPD: 20 with one env).
        offline_fraction: Share of each online-phase batch drawn from the offline data (RLPD: 0.5).
        exploration_noise: How the online phase acts. None: samples of the actor's own distribution (SAC, IQL,
            Cal-QL). A value: the actor's mode plus Gaussian noise of this std in action units, clipped to the
            action space (TD3's exploration), for tasks that need more precision than the learned spread allows
            (PegInsert: 0% success at expert noise 0.3, while IQL's learned std on its mixed tier is 0.43-0.58).
        online_capacity: Size of the online buffer.
        log_every: Updates between log records.
        eval_every: Updates between evaluations (0: only at the end).
        checkpoint_every: Updates between checkpoints.
        seed: Seeds sampling, the env resets and the networks' noise.
        resume: Continue from ``checkpoints/last``.
        progress: Show a progress bar.
    """

    offline_steps: int = 100_000
    online_env_steps: int = 0
    batch_size: int = 256
    utd_ratio: int = 1
    offline_fraction: float = 0.5
    exploration_noise: float | None = None
    online_capacity: int = 1_000_000
    log_every: int = 1000
    eval_every: int = 10_000
    checkpoint_every: int = 10_000
    seed: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.offline_steps < 0 or self.online_env_steps < 0:
            raise ConfigError(f"offline_steps and online_env_steps must be >= 0, got {self.offline_steps}, "
                              f"{self.online_env_steps}")
        if min(self.batch_size, self.utd_ratio, self.online_capacity, self.log_every, self.checkpoint_every) < 1:
            raise ConfigError("batch_size, utd_ratio, online_capacity, log_every and checkpoint_every must be >= 1")
        if not 0.0 <= self.offline_fraction <= 1.0:
            raise ConfigError(f"offline_fraction must be in [0, 1], got {self.offline_fraction}")
        if self.exploration_noise is not None and not self.exploration_noise >= 0:
            raise ConfigError(f"exploration_noise must be None (the actor's own samples) or >= 0, got "
                              f"{self.exploration_noise}")
        if self.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.eval_every}")


class EpisodeReturns:
    """Writes each finished online episode's discounted returns-to-go into the buffer's ``mc_returns`` (with the
    buffer's ``returns_gamma``; nothing when it has none). Env i's transition of a step is the i-th of the N that
    step adds. Episodes still running at a resume are dropped: their transitions keep NaN returns."""

    def __init__(self, buffer: ReplayBuffer, n_envs: int) -> None:
        self.buffer = buffer
        self.indices: list[list[int]] = [[] for _ in range(n_envs)]
        self.rewards: list[list[float]] = [[] for _ in range(n_envs)]

    def step(self, first_index: int, rewards: np.ndarray, done: np.ndarray) -> None:
        """One vector step: rewards and done (N,), its transitions added at ``first_index`` onwards."""
        gamma = self.buffer.returns_gamma
        if gamma is None:
            return
        for i, (reward, finished) in enumerate(zip(rewards, done, strict=True)):
            self.indices[i].append(first_index + i)
            self.rewards[i].append(float(reward))
            if finished:
                self.buffer.set_mc_returns(np.asarray(self.indices[i]),
                                           discounted_returns(np.asarray(self.rewards[i]), gamma))
                self.indices[i], self.rewards[i] = [], []


@dataclass
class OffPolicyResult:
    updates: int
    online_env_steps: int
    seconds: float
    history: list[dict[str, float]]
    last_checkpoint: Path


class OffPolicyTrainer:
    """Train ``agent`` on ``offline`` data, then online in ``envs`` (needed when ``online_env_steps > 0``)."""

    def __init__(self, agent: Agent, offline: ReplayBuffer, cfg: OffPolicyConfig, out_dir: str | Path, *,
                 envs: VectorEnv | None = None, evaluate_fn: EvaluateFn | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        if cfg.online_env_steps and envs is None:
            raise ConfigError("online finetuning (online_env_steps > 0) needs envs")
        if envs is not None:
            if envs.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
                raise ConfigError("online finetuning needs a vector env with SAME_STEP autoreset (the final "
                                  "observation of an episode is stored as its last next_obs)")
            obs_dim, action_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
            if (obs_dim, action_dim) != (offline.obs_dim, offline.action_dim):
                raise InputError(f"the dataset's (observation, action) dims {(offline.obs_dim, offline.action_dim)} "
                                 f"do not match the env's {(obs_dim, action_dim)}")
        self.agent, self.offline, self.cfg, self.envs = agent, offline, cfg, envs
        self.evaluate_fn, self.meta = evaluate_fn, dict(meta or {})
        self.out_dir = Path(out_dir)
        self.last_dir = self.out_dir / "checkpoints" / "last"
        self.online = ReplayBuffer(offline.obs_dim, offline.action_dim, cfg.online_capacity, offline.obs_keys,
                                   reward_scale=offline.reward_scale, reward_bias=offline.reward_bias,
                                   returns_gamma=offline.returns_gamma)
        self.sampler = MixedSampler(offline, self.online, cfg.offline_fraction)
        self.updates = 0
        self.online_env_steps = 0
        self.history: list[dict[str, float]] = []
        self.generator = torch.Generator().manual_seed(cfg.seed)  # batch draws; checkpointed for exact resume

    # ------------------------------------------------------------------------------------ the loop
    def learn(self) -> OffPolicyResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        if train_state_exists(self.last_dir):
            if not cfg.resume:
                raise ConfigError(f"{str(self.last_dir)!r} exists: pass resume=true to continue that run, or choose "
                                  f"another output directory")
            self._restore()
            logger.info("resumed at %d updates, %d online env steps", self.updates, self.online_env_steps)
        else:
            seed_everything(cfg.seed)
        generator = self.generator
        writer = self._tensorboard()
        window: list[dict[str, float]] = []
        n_envs = self.envs.num_envs if self.envs is not None else 1
        total_updates = cfg.offline_steps + cfg.online_env_steps // n_envs * cfg.utd_ratio
        bar = tqdm(total=total_updates, initial=self.updates, desc="off-policy", unit="update",
                   disable=not cfg.progress)
        try:
            # --- offline phase: the dataset alone
            while self.updates < cfg.offline_steps:
                window.append(self.agent.update(self.offline.sample(cfg.batch_size, generator)))
                self._after_update(window, writer, bar, phase="offline")

            # --- online phase: act, store, update on mixed batches
            if cfg.online_env_steps and self.envs is not None:
                obs, _ = self.envs.reset(seed=[cfg.seed * 1000 + self.online_env_steps + i for i in range(n_envs)])
                episodes = EpisodeTracker(n_envs)
                returns = EpisodeReturns(self.online, n_envs)
                while self.online_env_steps < cfg.online_env_steps:
                    action = self._explore(obs, generator)
                    next_obs, env_reward, terminated, truncated, infos = self.envs.step(action)
                    reward = self.online.env_rewards(env_reward)
                    self.online_env_steps += n_envs
                    done = np.logical_or(terminated, truncated)
                    # SAME_STEP: a finished episode's returned obs already starts the next one; store its final one.
                    final = final_observations(next_obs, done, infos, self.online_env_steps)
                    first_index = self.online.added
                    self.online.add(obs, action, reward, final, terminated, truncated)
                    returns.step(first_index, reward, done)
                    episodes.step(np.asarray(env_reward, dtype=np.float64), done, infos)
                    obs = next_obs
                    for _ in range(cfg.utd_ratio):
                        window.append(self.agent.update(self.sampler.sample(cfg.batch_size, generator)))
                        self._after_update(window, writer, bar, phase="online", episodes=episodes)
        finally:
            bar.close()
            writer.close()
        if not self.history or self.history[-1]["updates"] != self.updates:
            self._evaluate(writer=None)
        self._save()
        return OffPolicyResult(self.updates, self.online_env_steps, time.perf_counter() - t0, self.history,
                               self.last_dir)

    def _explore(self, obs: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """The online phase's actions (N, A) for observations (N, D), in the action space (``exploration_noise``)."""
        noise = self.cfg.exploration_noise
        with torch.no_grad():
            out = self.agent.actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=self.agent.device),
                                          deterministic=noise is not None)
        action = out.env_action.cpu()
        if noise:
            action = action + noise * torch.randn(action.shape, generator=generator)
        space = self.envs.single_action_space
        return np.clip(action.numpy(), space.low, space.high).astype(space.dtype)

    def _after_update(self, window: list[dict[str, float]], writer: Any, bar: tqdm, *, phase: str,
                      episodes: EpisodeTracker | None = None) -> None:
        cfg = self.cfg
        self.updates += 1
        bar.update(1)
        bad = [k for k, v in window[-1].items() if not np.isfinite(v)]
        if bad:
            raise InputError(f"non-finite {bad} at update {self.updates} ({phase}); last checkpoint: {self.last_dir}")
        if self.updates % cfg.log_every == 0:
            record: dict[str, Any] = {"updates": self.updates, "online_env_steps": self.online_env_steps,
                                      "phase": phase, **{k: float(np.mean([w[k] for w in window if k in w]))
                                                         for k in window[-1]},
                                      **(episodes.summary() if episodes is not None else {})}
            window.clear()
            with open(self.out_dir / "train_log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if isinstance(v, float):
                    writer.add_scalar(f"train/{k}", v, self.updates)
        if cfg.eval_every and self.updates % cfg.eval_every == 0:
            self._evaluate(writer)
        if self.updates % cfg.checkpoint_every == 0:
            self._save()

    def _evaluate(self, writer: Any) -> None:
        if self.evaluate_fn is None:
            return
        was_training = self.agent.actor.training
        self.agent.actor.eval()
        try:
            metrics = {k: float(v) for k, v in self.evaluate_fn(self.agent.actor, self.updates).items()}
        finally:
            self.agent.actor.train(was_training)
        self.history.append({"updates": self.updates, "online_env_steps": self.online_env_steps, **metrics})
        # Rewritten at every evaluation, so a running (or killed) run's curve can be read without TensorBoard.
        write_json(self.out_dir / "history.json", self.history)
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"eval/{k}", v, self.updates)

    # ------------------------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        state = {"agent": self.agent.state_dict(), "online": self.online.state_dict(), "updates": self.updates,
                 "online_env_steps": self.online_env_steps, "history": json.dumps(self.history),
                 "rng": rng_state(), "generator": self.generator.get_state()}
        save_train_state(self.last_dir, state, meta={**self.meta, "updates": self.updates,
                                                     "online_env_steps": self.online_env_steps})

    def _restore(self) -> None:
        state = read_train_state(self.last_dir)
        self.agent.load_state_dict(state["agent"])
        self.online.load_state_dict(state["online"])
        self.updates, self.online_env_steps = int(state["updates"]), int(state["online_env_steps"])
        self.history = json.loads(state["history"])
        set_rng_state(state["rng"])
        self.generator.set_state(state["generator"])

    def _tensorboard(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(str(self.out_dir / "tb"))
