"""``PPO``: proximal policy optimization of any ``Actor`` on a flat-vector ``gymnasium.vector`` env.

The algorithm owns what the actor does not: the critic (``ValueMLP`` on the env observation), one Adam
optimizer for the actor's ``trainable_parameters()`` and one for the critic (separate learning rates, as in
ResiP), the rollout buffer, reward normalization, critic warm-up, KL early stopping, logging and
checkpoints. For residual RL the actor is the residual head and a vector-env wrapper makes the frozen base
part of the environment, so this file knows nothing about residuals.

One iteration (``learn``) reads top to bottom, CleanRL style: roll out ``n_steps`` steps of every env,
compute GAE advantages (truncated episodes bootstrap from the value of their final observation, terminated
ones do not), run ``n_epochs`` epochs of minibatch updates (``update``), then log, evaluate and checkpoint.

Exact resume: the global RNGs and the minibatch order are seeded from (seed, iteration), so with
``reset_each_iteration=True`` (every iteration starts from freshly seeded envs) a run killed and resumed
from ``checkpoints/last`` produces the same iterations as an uninterrupted one. Without it the envs'
episodes in progress are not part of the checkpoint: a resumed run restarts them from seeded resets.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from torch import Tensor, nn
from tqdm import tqdm

from roboloop.core.checkpoint import (
    META_FILE,
    TRAIN_STATE_FILE,
    atomic_checkpoint_dir,
    base_meta,
    load_state_dict_strict,
    read_meta,
    read_train_state,
    train_state_exists,
)
from roboloop.core.config import config_changes, config_to_dict
from roboloop.core.errors import CheckpointError, ConfigError, InputError, TrainingError
from roboloop.core.policy import Actor, ActorOutput
from roboloop.policies.gaussian_mlp import ACTIVATIONS, hidden_layers
from roboloop.residual_rl.buffers import RewardNormalizer, RolloutBuffer
from roboloop.training.distributed import resolve_device
from roboloop.training.trainer import seed_everything

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[Actor, int], dict[str, float]]  # (actor, iteration) -> metrics, optionally "success_rate"
SavePolicyFn = Callable[[Path], None]  # writes the policy's checkpoint files into an existing directory

# Config fields a resumed run may change: they do not alter what the run computes.
RESUMABLE_CHANGES = ("total_env_steps", "device", "log_every", "checkpoint_every", "eval_every", "eval_at_start",
                     "resume", "progress")


@dataclass
class PPOConfig:
    """PPO hyperparameters and run settings. One iteration collects ``n_steps`` steps from each of the N envs
    (a batch of ``n_steps * N`` transitions), then runs ``n_epochs`` passes of ``n_minibatches`` updates."""

    total_env_steps: int = 1_000_000
    """Environment steps to train for, summed over envs (rounded down to whole iterations)."""
    n_steps: int = 256
    """Rollout length per env per iteration."""
    n_epochs: int = 10
    """Update epochs over each rollout."""
    n_minibatches: int = 32
    """Minibatches per epoch; must divide ``n_steps * n_envs``."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (1: Monte-Carlo returns, 0: one-step TD)."""
    clip_coef: float = 0.2
    """Surrogate clipping: the probability ratio is clipped to [1 - clip_coef, 1 + clip_coef]."""
    clip_vloss: bool = True
    """Clip the value update around the rollout's values by ``clip_coef`` too (CleanRL / original PPO)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Clip the gradient norm of the actor and of the critic (each separately) to this."""
    target_kl: float | None = None
    """Stop the epochs of an iteration early when an epoch's mean approximate KL exceeds this (None: never)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic (ResiP uses a much larger one than the actor's)."""
    anneal_lr: bool = True
    """Decay both learning rates linearly to 0 over the iterations."""
    normalize_advantage: bool = True
    """Normalize advantages to zero mean and unit std per minibatch."""
    normalize_reward: bool = True
    """Divide rewards by the running std of the discounted return (``RewardNormalizer``)."""
    reward_clip: float = 10.0
    """Clip normalized rewards to [-reward_clip, reward_clip]."""
    critic_warmup_iterations: int = 0
    """The first k iterations update only the critic (the actor keeps its weights)."""
    critic_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of the critic MLP."""
    critic_activation: str = "relu"
    """Critic activation: ``relu`` or ``tanh``."""
    critic_last_bias: float = 0.0
    """Initial bias of the critic's output (ResiP: 0.25, an optimistic start for sparse success rewards)."""
    reset_each_iteration: bool = False
    """Start every iteration by resetting all envs with seeds from (seed, iteration): episodic rollouts as in
    ResiP (set ``n_steps`` to the episode length), and exact resume."""
    seed: int = 0
    """Seeds the critic initialization, env resets, sampling noise and minibatch order."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``..."""
    log_every: int = 1
    """Iterations between logged records (TensorBoard and ``train_log.jsonl``), averaged over the window; keep
    ``checkpoint_every`` a multiple of it so that a resumed run's windows (and log lines) match."""
    checkpoint_every: int = 10
    """Iterations between ``last`` checkpoints (and at the end)."""
    eval_every: int = 0
    """Iterations between evaluations (0: only at the end); evaluation needs an ``evaluate_fn``."""
    eval_at_start: bool = False
    """Also evaluate the actor before its first update (iteration 0, not on resume), as a candidate for the best
    checkpoint: a run that continues a trained actor (finetuning it where it does worse) then never ends with a
    best checkpoint that evaluated worse than where it started."""
    resume: bool = False
    """Continue from ``<out_dir>/checkpoints/last`` if it exists."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("total_env_steps", "n_steps", "n_epochs", "n_minibatches", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ppo.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "critic_warmup_iterations", "seed", "ent_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ppo.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("clip_coef", "vf_coef", "max_grad_norm", "actor_lr", "critic_lr", "reward_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ppo.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"ppo.gamma must be in (0, 1], got {self.gamma}")
        if not 0 <= self.gae_lambda <= 1:
            raise ConfigError(f"ppo.gae_lambda must be in [0, 1], got {self.gae_lambda}")
        if self.target_kl is not None and not self.target_kl > 0:
            raise ConfigError(f"ppo.target_kl must be None or > 0, got {self.target_kl}")
        if not self.critic_hidden_dims or min(self.critic_hidden_dims) < 1:
            raise ConfigError(f"ppo.critic_hidden_dims must be positive widths, got {self.critic_hidden_dims}")
        if self.critic_activation not in ACTIVATIONS:
            raise ConfigError(f"ppo.critic_activation must be one of {sorted(ACTIVATIONS)}, "
                              f"got {self.critic_activation!r}")


@dataclass
class PPOResult:
    env_steps: int
    iterations: int
    seconds: float  # wall time of this ``learn()`` call
    env_steps_per_second: float  # env steps collected by this call / seconds
    last_checkpoint: Path
    best_checkpoint: Path | None
    history: list[dict[str, float]] = field(default_factory=list)  # evaluation records
    last_stats: dict[str, float] = field(default_factory=dict)  # the last train_log record


class ValueMLP(nn.Module):
    """The critic: observation (B, obs_dim) -> value (B,). Orthogonal init, output layer gain 1 (CleanRL) and
    bias ``last_bias``."""

    def __init__(self, obs_dim: int, hidden_dims: Sequence[int] = (256, 256), activation: str = "relu",
                 last_bias: float = 0.0) -> None:
        super().__init__()
        self.trunk, width = hidden_layers(obs_dim, hidden_dims, activation)
        self.head = nn.Linear(width, 1)
        nn.init.orthogonal_(self.head.weight, gain=1.0)
        nn.init.constant_(self.head.bias, last_bias)

    def forward(self, obs: Tensor) -> Tensor:
        return self.head(self.trunk(obs)).squeeze(-1)


def derived_seed(seed: int, iteration: int, stream: int = 0) -> int:
    """A 32-bit seed for (seed, iteration, stream), well mixed (NumPy ``SeedSequence``) so that neighbouring
    iterations and envs never share one."""
    return int(np.random.SeedSequence([seed, iteration, stream]).generate_state(1)[0])


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, 0 no better than a constant."""
    var = returns.var()
    return float("nan") if var == 0 else float(1 - (returns - values).var() / var)


class _Step(NamedTuple):
    """What ``PPO._act`` sent for one group: kept until ``_record`` stores the transition."""

    obs: Tensor  # (n, obs_dim)
    out: ActorOutput
    value: Tensor  # (n,)
    env_action: np.ndarray  # (n, action_dim), clipped to the action space


class EpisodeTracker:
    """Raw (unnormalized) return, length and success of the episodes that end during training."""

    def __init__(self, n_envs: int) -> None:
        self.returns = np.zeros(n_envs, dtype=np.float64)
        self.lengths = np.zeros(n_envs, dtype=np.int64)
        self.finished: list[tuple[float, int, bool | None]] = []

    def reset(self) -> None:
        """All envs were reset: the episodes in progress are dropped, not counted."""
        self.returns[:] = 0.0
        self.lengths[:] = 0

    def step(self, rewards: np.ndarray, dones: np.ndarray, infos: dict[str, Any], envs: slice = slice(None)) -> None:
        """One step of the envs ``envs`` (all by default): their rewards and dones, ``infos`` of that group."""
        returns, lengths = self.returns[envs], self.lengths[envs]  # views: updated in place
        returns += rewards
        lengths += 1
        for i in np.flatnonzero(dones):
            self.finished.append((float(returns[i]), int(lengths[i]), _final_success(infos, i)))
            returns[i], lengths[i] = 0.0, 0

    def summary(self) -> dict[str, float]:
        """Means over the episodes finished since the last call (empty when none finished)."""
        episodes, self.finished = self.finished, []
        if not episodes:
            return {}
        out = {"n_episodes": len(episodes), "episode_return": float(np.mean([e[0] for e in episodes])),
               "episode_length": float(np.mean([e[1] for e in episodes]))}
        successes = [e[2] for e in episodes if e[2] is not None]
        if successes:
            out["success_rate"] = float(np.mean(successes))
        return out


def _final_success(infos: dict[str, Any], i: int) -> bool | None:
    """``is_success`` of env i's finished episode: with SAME_STEP autoreset the last step's info is under
    ``infos["final_info"]`` (the top-level info already belongs to the new episode)."""
    final = infos.get("final_info")
    if not isinstance(final, dict) or "is_success" not in final:
        return None
    mask = final.get("_is_success")
    return bool(final["is_success"][i]) if mask is None or mask[i] else None


def _check_finite(what: str, values: np.ndarray, *, env_steps: int, first_env: int = 0) -> None:
    """Rows of ``values`` are envs ``first_env``, ``first_env + 1``, ... (a group's rows start at its offset)."""
    bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"env {first_env + i} returned a non-finite {what} ({values[i]}) at env step {env_steps}; "
                         f"envs with non-finite values: {(first_env + np.flatnonzero(bad)).tolist()}")


def final_observations(next_obs: np.ndarray, done: np.ndarray, infos: dict[str, Any], env_steps: int) -> np.ndarray:
    """A SAME_STEP vector env's next_obs (N, D) with the rows of finished episodes replaced by their final
    observations (what a truncated episode bootstraps from); a missing ``final_obs`` is an error."""
    if not done.any():
        return next_obs
    has_final = infos.get("_final_obs", np.zeros_like(done))
    missing = np.flatnonzero(done & ~has_final)
    if missing.size:
        raise InputError(f"env(s) {missing.tolist()} ended an episode at env step {env_steps} but infos has no "
                         f"'final_obs' for them: keep SAME_STEP autoreset and the vector env's infos intact")
    bootstrap = np.array(next_obs, copy=True)
    for i in np.flatnonzero(done):
        bootstrap[i] = infos["final_obs"][i]
    _check_finite("final observation", bootstrap, env_steps=env_steps)
    return bootstrap


class PPO:
    """Train ``actor`` on ``envs`` (flat Box observations and actions, SAME_STEP autoreset).

    Outputs under ``out_dir``: ``checkpoints/last`` (for resume) and ``checkpoints/best`` (by evaluation
    ``success_rate``), ``tb/`` (TensorBoard), ``train_log.jsonl``. A checkpoint directory holds
    ``train_state.pt`` (actor, critic, optimizers, reward normalizer, counters) and ``meta.json``, plus the
    files ``save_policy(dir)`` writes (e.g. a ``ResidualPolicy``'s config/spec/weights) in the same atomic
    write, so a checkpoint's policy and train state always belong together.
    """

    def __init__(self, actor: Actor, envs: VectorEnv | Sequence[VectorEnv], cfg: PPOConfig, out_dir: str | Path, *,
                 evaluate_fn: EvaluateFn | None = None, save_policy: SavePolicyFn | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        if not isinstance(actor, nn.Module) or not isinstance(actor, Actor):
            raise ConfigError(f"PPO trains an nn.Module implementing the Actor protocol (sample, evaluate, "
                              f"trainable_parameters), got {type(actor).__name__}")
        groups = [envs] if isinstance(envs, VectorEnv) else list(envs)
        if not groups:
            raise ConfigError("PPO needs a vector env (or a non-empty list of env groups)")
        for group in groups:
            if group.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
                raise ConfigError(
                    f"PPO needs a vector env with SAME_STEP autoreset (the final observation of an episode is needed "
                    f"to bootstrap truncated episodes), got {group.metadata.get('autoreset_mode')}; build it with "
                    f"SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP) (or AsyncVectorEnv)")
            if len(groups) > 1 and not (hasattr(group, "step_async") and hasattr(group, "step_wait")):
                raise ConfigError(f"env groups are stepped with step_async/step_wait (AsyncVectorEnv, "
                                  f"ResidualVecEnv); {type(group).__name__} has no step_async")
            if (group.single_observation_space != groups[0].single_observation_space
                    or group.single_action_space != groups[0].single_action_space):
                raise ConfigError("every env group must have the same observation and action spaces")
        envs = groups[0]
        obs_space, action_space = envs.single_observation_space, envs.single_action_space
        for what, space in (("observation", obs_space), ("action", action_space)):
            if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
                raise ConfigError(f"PPO needs a flat (1-D) Box {what} space, got {space}; flatten Dict observations "
                                  f"first (e.g. gymnasium.wrappers.vector.FlattenObservation)")
        # With several groups, a group's step (on its wrapper's thread) runs while the next group's actions are
        # computed and the other groups step.
        self.groups = groups
        starts = np.cumsum([0] + [g.num_envs for g in groups])
        self.group_rows = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        self.actor, self.cfg = actor, cfg
        self.evaluate_fn, self.save_policy, self.meta = evaluate_fn, save_policy, dict(meta or {})
        self.out_dir = Path(out_dir)
        self.last_dir = self.out_dir / "checkpoints" / "last"
        self.best_dir = self.out_dir / "checkpoints" / "best"
        self.device = resolve_device(cfg.device)
        self.n_envs, self.obs_dim, self.action_dim = int(starts[-1]), obs_space.shape[0], action_space.shape[0]
        # Env-side clipping only: the buffer keeps the unclipped sample, whose log-prob the update re-scores.
        # Infinite bounds make this a no-op for unbounded spaces.
        self.action_low = action_space.low.astype(np.float64)
        self.action_high = action_space.high.astype(np.float64)

        # --- sizes
        self.batch_size = cfg.n_steps * self.n_envs
        if self.batch_size % cfg.n_minibatches:
            raise ConfigError(f"ppo.n_minibatches ({cfg.n_minibatches}) must divide n_steps * n_envs "
                              f"({cfg.n_steps} * {self.n_envs} = {self.batch_size})")
        self.minibatch_size = self.batch_size // cfg.n_minibatches
        if cfg.normalize_advantage and self.minibatch_size < 2:
            raise ConfigError(f"minibatches of {self.minibatch_size} sample cannot normalize advantages: lower "
                              f"ppo.n_minibatches or set ppo.normalize_advantage=false")
        self.num_iterations = cfg.total_env_steps // self.batch_size
        if self.num_iterations < 1:
            raise ConfigError(f"ppo.total_env_steps ({cfg.total_env_steps}) is less than one iteration "
                              f"(n_steps * n_envs = {self.batch_size})")

        # --- networks (the critic's init is seeded without touching the caller's RNG)
        self.actor.to(self.device)
        fork_devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
            torch.manual_seed(cfg.seed)
            self.critic = ValueMLP(self.obs_dim, cfg.critic_hidden_dims, cfg.critic_activation,
                                   cfg.critic_last_bias).to(self.device)
            # One call on a zero observation tells the widths of what the actor wants stored.
            probe = self.actor.sample(torch.zeros(1, self.obs_dim, device=self.device))
        actor_obs_dim, actor_action_dim = self._check_actor_output(probe, 1)

        # --- optimizers: the actor's own trainable parameters and nothing else (a frozen base never enters)
        self.actor_params = self._checked_trainable_parameters()
        self.actor_optimizer = torch.optim.Adam(self.actor_params, lr=cfg.actor_lr, eps=1e-5)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=1e-5)
        self.optimizers = {"actor": self.actor_optimizer, "critic": self.critic_optimizer}
        in_actor_optimizer = {id(p) for group in self.actor_optimizer.param_groups for p in group["params"]}
        if in_actor_optimizer != {id(p) for p in self.actor_params}:
            raise ConfigError("the actor optimizer must hold exactly actor.trainable_parameters()")

        # --- rollout storage and reward scaling
        self.buffer = RolloutBuffer(cfg.n_steps, self.n_envs, self.obs_dim, actor_action_dim, self.device,
                                    actor_obs_dim=actor_obs_dim)
        self.reward_normalizer = RewardNormalizer(self.n_envs, cfg.gamma, clip=cfg.reward_clip)

    # ------------------------------------------------------------------------------------ the loop
    def learn(self) -> PPOResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        iteration, env_steps, best_score, history = 0, 0, None, []

        # --- resume
        if train_state_exists(self.last_dir):
            if not cfg.resume:
                raise ConfigError(f"{str(self.last_dir)!r} exists: pass resume=true to continue that run, or "
                                  f"choose another output directory")
            iteration, env_steps, best_score, history = self._restore()
            logger.info("resumed from %s at iteration %d (%d env steps)", self.last_dir, iteration, env_steps)
        start_steps = env_steps

        self.actor.train()
        self.critic.train()
        writer = self._tensorboard()
        bar = tqdm(total=self.num_iterations * self.batch_size, initial=env_steps, desc="ppo", unit="step",
                   disable=not cfg.progress)
        log_file = self.out_dir / "train_log.jsonl"
        window: list[dict[str, float]] = []
        window_t0, window_steps = time.perf_counter(), 0
        episodes = EpisodeTracker(self.n_envs)
        last_record: dict[str, float] = {}
        obs: list[np.ndarray] | None = None  # per env group
        try:
            if cfg.eval_at_start and self.evaluate_fn is not None and iteration == 0:
                best_score = self._evaluate_for_best(0, 0, best_score, history, writer)
            while iteration < self.num_iterations:
                # --- seeding: this iteration's sampling noise and minibatch order depend on (seed, iteration)
                seed_everything(derived_seed(cfg.seed, iteration))
                generator = torch.Generator().manual_seed(derived_seed(cfg.seed, iteration, stream=2))
                if obs is None or cfg.reset_each_iteration:
                    seeds = [int(s) for s in np.random.SeedSequence([cfg.seed, iteration, 1]).generate_state(
                        self.n_envs)]
                    obs = [group.reset(seed=seeds[rows])[0] for group, rows in zip(self.groups, self.group_rows,
                                                                                   strict=True)]
                    for group_obs in obs:
                        _check_finite("observation", group_obs, env_steps=env_steps)
                    episodes.reset()
                    self.reward_normalizer.reset()
                frac = 1.0 - iteration / self.num_iterations if cfg.anneal_lr else 1.0
                self.actor_optimizer.param_groups[0]["lr"] = frac * cfg.actor_lr
                self.critic_optimizer.param_groups[0]["lr"] = frac * cfg.critic_lr

                # --- rollout: n_steps steps of every env with the current actor, group by group: each group's
                # step is sent (``_act``) before the previous group's result is taken in (``_record``), so with
                # two groups of ResidualVecEnv the groups' steps (physics and base planning) run at once on their
                # wrappers' threads, beside the actor/critic passes
                self.buffer.reset()
                in_flight: list[_Step | None] = [None] * len(self.groups)
                for t in range(cfg.n_steps + 1):
                    for g in range(len(self.groups)):
                        if in_flight[g] is not None:
                            env_steps += self.groups[g].num_envs
                            obs[g] = self._record(g, t - 1, in_flight[g], episodes, env_steps)
                        in_flight[g] = self._act(g, obs[g]) if t < cfg.n_steps else None

                # --- advantages: GAE, truncation bootstraps from the final observation's value
                with torch.no_grad():
                    self.buffer.fill_next_values(self.critic(torch.as_tensor(np.concatenate(obs), dtype=torch.float32,
                                                                             device=self.device)))
                self.buffer.compute_advantages(cfg.gamma, cfg.gae_lambda)

                # --- update: critic only during warm-up, then actor and critic
                update_actor = iteration >= cfg.critic_warmup_iterations
                stats = self.update(self.buffer, update_actor=update_actor, generator=generator)
                stats.update(actor_lr=self.actor_optimizer.param_groups[0]["lr"],
                             critic_lr=self.critic_optimizer.param_groups[0]["lr"], actor_updated=float(update_actor))
                window.append(stats)
                window_steps += self.batch_size
                iteration += 1
                bar.update(self.batch_size)

                # --- log (means over the iterations since the last record)
                if iteration % cfg.log_every == 0 or iteration == self.num_iterations:
                    record: dict[str, float] = {"iteration": iteration, "env_steps": env_steps,
                                                **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                                                **episodes.summary()}
                    record["env_steps_per_second"] = window_steps / max(time.perf_counter() - window_t0, 1e-9)
                    window, window_t0, window_steps = [], time.perf_counter(), 0
                    last_record = record
                    if "episode_return" in record:
                        bar.set_postfix(ret=f"{record['episode_return']:.3g}")
                    with open(log_file, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    for k, v in record.items():
                        if k not in ("iteration", "env_steps"):
                            writer.add_scalar(f"train/{k}", v, env_steps)

                # --- evaluate, best checkpoint
                if self.evaluate_fn is not None and ((cfg.eval_every and iteration % cfg.eval_every == 0)
                                                     or iteration == self.num_iterations):
                    best_score = self._evaluate_for_best(iteration, env_steps, best_score, history, writer)

                # --- checkpoint
                if iteration % cfg.checkpoint_every == 0 or iteration == self.num_iterations:
                    self._save(self.last_dir, iteration, env_steps, best_score, history)
        finally:
            bar.close()
            writer.close()
        seconds = time.perf_counter() - t0
        best_exists = (self.best_dir / TRAIN_STATE_FILE).exists()
        return PPOResult(env_steps=env_steps, iterations=iteration, seconds=seconds,
                         env_steps_per_second=(env_steps - start_steps) / max(seconds, 1e-9),
                         last_checkpoint=self.last_dir, best_checkpoint=self.best_dir if best_exists else None,
                         history=history, last_stats=last_record)

    # ------------------------------------------------------------------------------------ one env step
    def _act(self, g: int, obs: np.ndarray) -> _Step:
        """Sample group ``g``'s actions for observations ``obs`` (n, obs_dim) and, when the envs are split into
        groups, send them (``step_async``); a single group is stepped in ``_record``."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            out = self.actor.sample(obs_t)
            value = self.critic(obs_t)
        self._check_actor_output(out, obs.shape[0])
        group = self.groups[g]
        env_action = np.clip(out.env_action.cpu().numpy(), self.action_low, self.action_high).astype(
            group.single_action_space.dtype)
        if len(self.groups) > 1:
            group.step_async(env_action)
        return _Step(obs_t, out, value, env_action)

    def _record(self, g: int, t: int, step: _Step, episodes: EpisodeTracker, env_steps: int) -> np.ndarray:
        """Complete group ``g``'s step ``t``: take in the env's result, store the transition in the rollout
        buffer's rows of the group and return the group's next observations. ``env_steps`` counts this step (for
        error messages)."""
        group, rows = self.groups[g], self.group_rows[g]
        if len(self.groups) > 1:
            next_obs, reward, terminated, truncated, infos = group.step_wait()
        else:
            next_obs, reward, terminated, truncated, infos = group.step(step.env_action)
        _check_finite("observation", next_obs, env_steps=env_steps, first_env=rows.start)
        _check_finite("reward", np.asarray(reward, dtype=np.float64), env_steps=env_steps, first_env=rows.start)
        done = np.logical_or(terminated, truncated)
        # The returned obs of a finished episode is already the next episode's first one; the value target
        # bootstraps from the finished episode's final observation. Other steps get the next step's value after
        # the rollout (``fill_next_values``).
        next_value = torch.zeros(group.num_envs, device=self.device)
        if done.any():
            ended = np.flatnonzero(done)
            final_obs = final_observations(next_obs, done, infos, env_steps)[ended]
            with torch.no_grad():
                next_value[ended] = self.critic(torch.as_tensor(final_obs, dtype=torch.float32, device=self.device))
        episodes.step(reward, done, infos, rows)
        if self.cfg.normalize_reward:
            reward = self.reward_normalizer(reward, done, rows)
        self.buffer.store(t, rows, obs=step.obs, actor_obs=step.out.actor_obs, actions=step.out.actor_action,
                          log_probs=step.out.log_prob,
                          rewards=torch.as_tensor(reward, dtype=torch.float32, device=self.device),
                          terminated=torch.as_tensor(terminated, device=self.device),
                          truncated=torch.as_tensor(truncated, device=self.device),
                          values=step.value, next_values=next_value)
        return next_obs

    # ------------------------------------------------------------------------------------ the update
    def update(self, buffer: RolloutBuffer, *, update_actor: bool = True,
               generator: torch.Generator | None = None) -> dict[str, float]:
        """``n_epochs`` passes of clipped-surrogate and value-loss minibatch steps over a full ``buffer``
        whose advantages are computed. ``update_actor=False`` (critic warm-up) steps only the critic.
        ``generator`` orders the minibatches. Returns means over the minibatches run, ``epochs_run`` (fewer
        than ``n_epochs`` when ``target_kl`` stopped early) and the critic's explained variance before it."""
        cfg = self.cfg
        sums: dict[str, float] = defaultdict(float)
        n_minibatches, epochs_run = 0, 0
        ev = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        for _epoch in range(cfg.n_epochs):
            epoch_kl = []
            for mb in buffer.minibatches(self.minibatch_size, generator):
                # Policy loss: the clipped surrogate on the ratio of new to rollout probabilities.
                with torch.set_grad_enabled(update_actor):
                    new_log_prob, entropy = self.actor.evaluate(mb.actor_obs, mb.actions)
                log_ratio = new_log_prob - mb.log_probs
                ratio = log_ratio.exp()
                with torch.no_grad():
                    # The low-variance, always-positive KL estimator (http://joschu.net/blog/kl-approx.html).
                    approx_kl = ((ratio - 1) - log_ratio).mean()
                    clipfrac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
                advantages = mb.advantages
                if cfg.normalize_advantage:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                policy_loss = torch.max(-advantages * ratio,
                                        -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                entropy_mean = entropy.mean()

                # Value loss, optionally clipped around the rollout's values.
                new_values = self.critic(mb.obs)
                value_loss = (new_values - mb.returns) ** 2
                if cfg.clip_vloss:
                    clipped = mb.values + (new_values - mb.values).clamp(-cfg.clip_coef, cfg.clip_coef)
                    value_loss = torch.max(value_loss, (clipped - mb.returns) ** 2)
                value_loss = 0.5 * value_loss.mean()

                loss = cfg.vf_coef * value_loss
                if update_actor:
                    loss = loss + policy_loss - cfg.ent_coef * entropy_mean
                if not torch.isfinite(loss):
                    raise TrainingError(f"the PPO loss became {loss.item()} (policy {policy_loss.item()}, value "
                                        f"{value_loss.item()}): training stopped; the last good checkpoint is "
                                        f"{str(self.last_dir)!r}. Lower the learning rates or check the rewards")
                self.actor_optimizer.zero_grad(set_to_none=True)
                self.critic_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                critic_grad_norm = float(nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm))
                self.critic_optimizer.step()
                actor_grad_norm = 0.0
                if update_actor:
                    actor_grad_norm = float(nn.utils.clip_grad_norm_(self.actor_params, cfg.max_grad_norm))
                    self.actor_optimizer.step()

                epoch_kl.append(approx_kl.item())
                for key, value in (("policy_loss", policy_loss), ("value_loss", value_loss),
                                   ("entropy", entropy_mean), ("approx_kl", approx_kl), ("clipfrac", clipfrac)):
                    sums[key] += value.item()
                sums["actor_grad_norm"] += actor_grad_norm
                sums["critic_grad_norm"] += critic_grad_norm
                n_minibatches += 1
            epochs_run += 1
            if cfg.target_kl is not None and float(np.mean(epoch_kl)) > cfg.target_kl:
                break
        return {**{k: v / n_minibatches for k, v in sums.items()}, "explained_variance": ev,
                "epochs_run": float(epochs_run)}

    # ------------------------------------------------------------------------------------ helpers
    def _checked_trainable_parameters(self) -> list[nn.Parameter]:
        """``actor.trainable_parameters()``, checked: unique, requiring grad, and the only actor parameters that
        require grad (anything else would collect gradients no optimizer ever applies)."""
        params = list(self.actor.trainable_parameters())
        ids = {id(p) for p in params}
        if not params:
            raise ConfigError(f"{type(self.actor).__name__}.trainable_parameters() is empty: nothing to train")
        if len(ids) != len(params):
            raise ConfigError(f"{type(self.actor).__name__}.trainable_parameters() lists a parameter twice")
        if not all(p.requires_grad for p in params):
            raise ConfigError(f"{type(self.actor).__name__}.trainable_parameters() includes parameters with "
                              f"requires_grad=False")
        stray = [name for name, p in self.actor.named_parameters() if p.requires_grad and id(p) not in ids]
        if stray:
            raise ConfigError(f"actor parameters {stray[:5]} require grad but are not in trainable_parameters(): "
                              f"freeze them (requires_grad_(False)) or list them")
        return params

    def _check_actor_output(self, out: ActorOutput, n: int) -> tuple[int, int]:
        """Shapes of one ``actor.sample`` on n observations; returns (actor_obs_dim, actor_action_dim)."""
        if not isinstance(out, ActorOutput):
            raise InputError(f"actor.sample must return an ActorOutput, got {type(out).__name__}")
        if tuple(out.env_action.shape) != (n, self.action_dim):
            raise InputError(f"actor env_action has shape {tuple(out.env_action.shape)}, the env needs "
                             f"({n}, {self.action_dim})")
        for name in ("actor_obs", "actor_action"):
            x = getattr(out, name)
            if x.ndim != 2 or x.shape[0] != n:
                raise InputError(f"actor {name} has shape {tuple(x.shape)}, PPO stores flat ({n}, D) vectors")
        if tuple(out.log_prob.shape) != (n,):
            raise InputError(f"actor log_prob has shape {tuple(out.log_prob.shape)}, expected ({n},)")
        return out.actor_obs.shape[1], out.actor_action.shape[1]

    def _evaluate_for_best(self, iteration: int, env_steps: int, best_score: float | None,
                           history: list[dict[str, float]], writer: Any) -> float | None:
        """Evaluate, log, append to ``history``; save ``best`` when the success rate beats ``best_score``.
        Returns the best score so far."""
        metrics = self._evaluate(iteration)
        for k, v in metrics.items():
            writer.add_scalar(f"eval/{k}", v, env_steps)
        history.append({"iteration": iteration, "env_steps": env_steps, **metrics})
        score = metrics.get("success_rate")
        if score is not None and (best_score is None or score > best_score):
            best_score = float(score)
            self._save(self.best_dir, iteration, env_steps, best_score, history, extra={"success_rate": best_score})
        return best_score

    def _evaluate(self, iteration: int) -> dict[str, float]:
        was_training = self.actor.training
        self.actor.eval()
        try:
            metrics = {k: float(v) for k, v in self.evaluate_fn(self.actor, iteration).items()}
        finally:
            self.actor.train(was_training)
        logger.info("iteration %d: %s", iteration, ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
        return metrics

    def _tensorboard(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out_dir / "tb"))

    def _config_json(self) -> str:
        return json.dumps({**config_to_dict(self.cfg), "n_envs": self.n_envs, "obs_dim": self.obs_dim,
                           "action_dim": self.action_dim})

    def _save(self, path: Path, iteration: int, env_steps: int, best_score: float | None,
              history: list[dict[str, float]], *, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint directory atomically: the policy files from ``save_policy`` (if given), then
        ``train_state.pt`` and ``meta.json`` into the same temporary directory, renamed into place together."""
        train_state = {"iteration": iteration, "env_steps": env_steps, "actor": self.actor.state_dict(),
                       "critic": self.critic.state_dict(), "actor_optimizer": self.actor_optimizer.state_dict(),
                       "critic_optimizer": self.critic_optimizer.state_dict(),
                       "reward_normalizer": self.reward_normalizer.state_dict(), "best_score": best_score,
                       "history": json.dumps(history), "config": self._config_json()}
        with atomic_checkpoint_dir(path) as tmp:
            if self.save_policy is not None:
                # First: a Policy.save(tmp) replaces the directory it is given (its own atomic write).
                self.save_policy(tmp)
            policy_meta = read_meta(tmp) if (tmp / META_FILE).exists() else {}
            torch.save(train_state, tmp / TRAIN_STATE_FILE)
            meta = base_meta({**policy_meta, **self.meta, "algorithm": "ppo", "iteration": iteration,
                              "env_steps": env_steps, **(extra or {})})
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    def _restore(self) -> tuple[int, int, float | None, list[dict[str, float]]]:
        state = read_train_state(self.last_dir)
        saved, current = json.loads(state["config"]), json.loads(self._config_json())
        if diffs := config_changes(saved, current, ignore=RESUMABLE_CHANGES):
            raise CheckpointError(f"cannot resume: {str(self.last_dir)!r} was trained with another PPO config or "
                                  f"env ({diffs}); use a new out_dir")
        load_state_dict_strict(self.actor, state["actor"], source=f"{self.last_dir} (actor)")
        load_state_dict_strict(self.critic, state["critic"], source=f"{self.last_dir} (critic)")
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.reward_normalizer.load_state_dict(state["reward_normalizer"])
        iteration = int(state["iteration"])
        # Drop log lines written after the checkpoint (the resumed run writes them again).
        log_file = self.out_dir / "train_log.jsonl"
        if log_file.exists():
            lines = [ln for ln in log_file.read_text().splitlines() if ln and json.loads(ln)["iteration"] <= iteration]
            log_file.write_text("".join(ln + "\n" for ln in lines))
        return iteration, int(state["env_steps"]), state["best_score"], json.loads(state["history"])
