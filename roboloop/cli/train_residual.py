"""``roboloop train-residual base=<bc checkpoint>``: refine a frozen BC policy with residual PPO (ResiP)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from roboloop.cli.train_bc import evaluation_fn
from roboloop.core.checkpoint import file_fingerprint, load_policy, read_meta, read_policy_config
from roboloop.core.config import config_changes, config_to_dict
from roboloop.core.errors import CheckpointError, ConfigError, InputError
from roboloop.datasets.collection import make_vector_env
from roboloop.envs import task_info
from roboloop.envs.evaluation import EvalConfig, evaluate, plot_success_curve
from roboloop.residual_rl import PPO, PPOConfig, PPOResult, ResidualConfig, ResidualPolicy, ResidualVecEnv
from roboloop.residual_rl.policy import BASE_DIR
from roboloop.training import distributed
from roboloop.utils.io import write_json

logger = logging.getLogger(__name__)


def residual_ppo_defaults() -> PPOConfig:
    """ResiP's PPO settings (``base_residual_rl.yaml``) scaled to a 2-core CPU: episodic rollouts (every
    iteration resets all envs and runs one episode's worth of steps), a critic learning rate well above the
    actor's, KL early stopping, reward normalization, no entropy bonus, a critic warm-up."""
    return PPOConfig(total_env_steps=500_000, n_steps=100, n_epochs=10, n_minibatches=4, gamma=0.99,
                     gae_lambda=0.95, clip_coef=0.2, ent_coef=0.0, vf_coef=1.0, max_grad_norm=1.0, target_kl=0.1,
                     actor_lr=3e-4, critic_lr=1e-3, anneal_lr=True, critic_warmup_iterations=2, critic_last_bias=0.25,
                     reset_each_iteration=True, checkpoint_every=5, eval_every=10)


@dataclass
class TrainResidualConfig:
    """``roboloop train-residual base=outputs/train_bc/PegInsert_diffusion/checkpoints/best``.

    Trains a Gaussian residual head with PPO on sparse task rewards on top of the frozen BC policy ``base``. The
    base runs inside the training env (``ResidualVecEnv``) with ``residual.base_num_inference_steps`` denoising
    steps; the head sees the normalized observation and base action (``residual.mode=step``, ResiP) or the
    observation alone and corrects whole chunks (``residual.mode=chunk``, Policy Decorator). The base is
    evaluated first with the same settings, then the deterministic residual every ``ppo.eval_every``
    iterations; checkpoints (``last``, ``best`` by success) are residual policies that ``roboloop eval`` loads
    like any other and that carry a copy of their base. A killed run continues with ``ppo.resume=true``.

    Attributes:
        base: BC checkpoint directory to refine (its weights are never changed).
        init: A residual checkpoint to start from instead of a zero head: its base is the base (``base`` may be
            left out) and its head, with its residual config, is trained further, e.g. in an identified simulation
            (``roboloop sim2real``). The critic starts afresh, with the warm-up. ``residual.previous_action=true``
            gives a head trained without it the previously executed action as a new input (zero weights at first,
            so the policy starts unchanged); the other ``residual.*`` settings are the checkpoint's.
        task: Task to train on (default: the base's task; another task must have the same spaces).
        env_kwargs: Env constructor arguments on top of the base's (e.g. ``clearance``).
        residual: The head and how its delta is applied (mode, scale, widths, std).
        ppo: PPO settings (rollout length, epochs, learning rates, budget, checkpoints, evaluation cadence).
        n_envs: Parallel training environments.
        vectorization: ``sync`` (one process) or ``async`` (one process per env).
        reward_shaping: Coefficient of potential-based shaping added to the task's sparse reward (0: ResiP's
            sparse reward alone). ``Phi = reward_shaping * (sum of the env's shaped terms)``; the optimal policy
            stays the sparse task's (see ``ResidualVecEnv``). For a base that rarely succeeds within a rollout,
            where a sparse reward gives PPO nothing to compare.
        reward_shaping_terms: Which of the env's shaped terms form ``Phi`` (e.g. ``[align,insert]`` on PegInsert,
            leaving out the reach term, which only varies while the peg slips in the fingers); None: all.
        reward_shaping_mode: ``potential`` (above) or ``dense``: ``reward_shaping * Phi(s')`` added at every step,
            a dense objective of its own (see ``ResidualVecEnv``).
        reward_shaping_floor: Clip each shaped term below at minus this (None: unclipped), so only states near
            the goal are told apart.
        env_groups: The ``n_envs`` split into this many groups that PPO steps in turn: each group's step (physics
            and the base's planning) runs on its wrapper's thread while the other groups step and the head
            computes; torch then runs single-threaded in each of these threads, so the groups share the cores. 1
            steps every env at once.
        align_chunks: Step mode: an env whose episode restarts cuts its first base chunk short so that it replans
            with the other envs of its group, in one batched call (``ResidualVecEnv``): about a third of the base
            calls. False replans every episode on evaluation's exact schedule.
        out_dir: Output directory (``{task}`` and ``{mode}`` are filled in).
        eval: How the base and the residual are evaluated (episodes, seeds, parallel envs).
        device: ``auto``, ``cpu`` or ``cuda`` for the base and the head.
    """

    base: str | None = None
    init: str | None = None
    task: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    ppo: PPOConfig = field(default_factory=residual_ppo_defaults)
    n_envs: int = 8
    vectorization: str = "sync"
    reward_shaping: float = 0.0
    reward_shaping_terms: list[str] | None = None
    reward_shaping_mode: str = "potential"
    reward_shaping_floor: float | None = None
    env_groups: int = 2
    align_chunks: bool = True
    out_dir: str = "outputs/train_residual/{task}_{mode}"
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_episodes=50))
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.n_envs < 1:
            raise ConfigError(f"n_envs must be >= 1, got {self.n_envs}")
        if self.vectorization not in ("sync", "async"):
            raise ConfigError(f"vectorization must be sync or async, got {self.vectorization!r}")
        if self.reward_shaping < 0:
            raise ConfigError(f"reward_shaping must be >= 0, got {self.reward_shaping}")
        if self.env_groups < 1 or self.n_envs % self.env_groups:
            raise ConfigError(f"env_groups must be >= 1 and divide n_envs ({self.n_envs}), got {self.env_groups}")


@dataclass
class ResidualRunResult:
    base_success: float
    ppo: PPOResult
    success_curve: Path  # success against env steps, the base at 0


def train_residual(cfg: TrainResidualConfig) -> ResidualRunResult:
    """Load the base, wrap the task's vector env around it, train the head with our PPO."""
    if cfg.base is None and cfg.init is None:
        raise ConfigError("train-residual needs base=<BC checkpoint> (or init=<residual checkpoint> to continue "
                          "training a residual)")
    device = distributed.resolve_device(cfg.device)
    init = _load_init(cfg.init, device) if cfg.init is not None else None
    # A residual checkpoint carries a copy of its base, which is then the base.
    base_dir = Path(cfg.init) / BASE_DIR if cfg.init is not None else Path(cfg.base)  # type: ignore[arg-type]
    base = init.base if init is not None else load_policy(base_dir, device=device)
    if isinstance(base, ResidualPolicy):
        raise ConfigError(f"{str(base_dir)!r} is already a residual policy: refine its base, resume that run, or "
                          "continue it with init=")
    # The task and env_kwargs the base (or the residual continued) was trained with.
    meta = read_meta(cfg.init if cfg.init is not None else base_dir)
    task = cfg.task or meta.get("task")
    if task is None:
        raise ConfigError(f"{str(base_dir)!r} does not record its task: pass task=...")
    task = task_info(task).name
    env_kwargs = {**meta.get("env_kwargs", {}), **cfg.env_kwargs}
    torch.manual_seed(cfg.ppo.seed)
    residual = init if init is not None else ResidualPolicy.from_base(base, cfg.residual)
    if init is not None and cfg.residual.previous_action:
        residual = init.with_previous_action()
    out_dir = Path(cfg.out_dir.replace("{task}", task).replace("{mode}", residual.config.mode))
    _check_same_residual(out_dir / "checkpoints" / "last", residual)
    group_size = cfg.n_envs // cfg.env_groups
    if cfg.env_groups > 1 and device.type == "cpu":
        torch.set_num_threads(1)  # the groups' threads already keep the cores busy; more would oversubscribe
    try:
        envs = [ResidualVecEnv(make_vector_env(task, env_kwargs, group_size, cfg.vectorization), residual,
                               shaping=cfg.reward_shaping, gamma=cfg.ppo.gamma,
                               shaping_terms=cfg.reward_shaping_terms, shaping_mode=cfg.reward_shaping_mode,
                               shaping_floor=cfg.reward_shaping_floor, align_chunks=cfg.align_chunks)
                for _ in range(cfg.env_groups)]
    except InputError as err:
        raise InputError(f"base checkpoint {str(base_dir)!r} does not fit {task}: {err}") from None
    if meta.get("task") not in (None, task):  # it fits (checked above), so this is a deliberate transfer
        logger.warning("the base was trained on %s, refining it on %s", meta["task"], task)

    evaluate_residual = evaluation_fn(task, cfg.eval, env_kwargs)
    summary_path = out_dir / "base_eval.json"
    if summary_path.exists():
        base_success = json.loads(summary_path.read_text())["success_rate"]  # a resumed run: measured already
    else:
        # The base alone, sampled exactly as inside the residual (its head is still zero): the reference.
        base_result = evaluate(base, task, replace(cfg.eval, env_kwargs={**env_kwargs, **cfg.eval.env_kwargs},
                                                   video=False, progress=False))
        base_success = base_result.success_rate
        write_json(summary_path, {"success_rate": base_success, "n_episodes": base_result.n_episodes,
                                  "success_ci": list(base_result.success_ci),
                                  "base_num_inference_steps": cfg.residual.base_num_inference_steps})
    logger.info("base success %.1f%% over %d episodes", 100 * base_success, cfg.eval.n_episodes)

    run_meta = {"task": task, "env_kwargs": env_kwargs, "base_checkpoint": str(base_dir),
                "base_sha256": file_fingerprint(base_dir / "model.safetensors"), "base_success": base_success,
                "init": cfg.init}
    ppo = PPO(residual.head, envs, cfg.ppo, out_dir,
              evaluate_fn=lambda _head, iteration: evaluate_residual(residual, iteration),
              save_policy=lambda directory: residual.save(directory, meta=run_meta), meta=run_meta)
    try:
        result = ppo.learn()
    finally:
        for group in envs:
            group.close()
    evaluated = [h for h in result.history if "success_rate" in h]
    # The curve starts from the base (the zero head) unless ppo.eval_at_start measured the starting policy.
    if not evaluated or evaluated[0]["env_steps"] > 0:
        evaluated = [{"env_steps": 0, "success_rate": base_success}, *evaluated]
    curve = plot_success_curve([int(h["env_steps"]) for h in evaluated],
                               [h["success_rate"] for h in evaluated], cfg.eval.n_episodes,
                               out_dir / "success_curve.png", title=f"residual PPO on {task}",
                               reference=("base", base_success))
    return ResidualRunResult(base_success, result, curve)


def _load_init(path: str, device: torch.device) -> ResidualPolicy:
    """The residual checkpoint ``init=`` names."""
    policy = load_policy(path, device=device)
    if not isinstance(policy, ResidualPolicy):
        raise ConfigError(f"init={path!r} is a {type(policy).__name__}, not a residual checkpoint: pass a BC "
                          "checkpoint as base= instead")
    return policy


def _check_same_residual(last: Path, residual: ResidualPolicy) -> None:
    """A run resumed with another residual config (e.g. ``scale``) would mix two experiments: refuse it."""
    if not (last / "config.json").exists():
        return
    _, saved = read_policy_config(last)
    current = json.loads(json.dumps(config_to_dict(residual.config)))
    if diffs := config_changes(saved, current, prefix="residual."):
        raise CheckpointError(f"cannot resume: {str(last)!r} was trained with another residual config ({diffs}); "
                              f"use a new out_dir")


def run_train_residual(cfg: TrainResidualConfig) -> int:
    run = train_residual(cfg)
    result = run.ppo
    final = next((h for h in reversed(result.history) if "success_rate" in h), None)
    print(f"base success: {100 * run.base_success:.1f}%")
    if final is not None:
        print(f"residual success: {100 * final['success_rate']:.1f}% (iteration {final.get('iteration')})")
    print(f"{result.env_steps} env steps in {result.seconds:.0f} s ({result.env_steps_per_second:.0f} steps/s); "
          f"checkpoints: {result.last_checkpoint}" + (f", {result.best_checkpoint}" if result.best_checkpoint else ""))
    print(f"success curve: {run.success_curve}")
    return 0


__all__ = ["TrainResidualConfig", "run_train_residual", "train_residual"]
