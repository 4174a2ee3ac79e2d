"""Our PPO against stable-baselines3's PPO: throughput and final performance on the same vector env, in one run.

Both algorithms train on the same kind of gymnasium vector env (SAME_STEP autoreset, flat Box spaces), with the
same hyperparameters and env-step budget, alternately (ours, SB3, ours, SB3, ... for ``--repeats``; repeat r uses
seed ``--seed + r`` for both), so load from elsewhere on the machine affects both alike. SB3 runs through
``roboloop.residual_rl.sb3.sb3_ppo`` (our ``PPOConfig`` translated to ``stable_baselines3.PPO``, reward
normalization by ``VecNormalize(norm_obs=False)``, the env adapted by ``make_sb3_vec_env``).

Envs (``--env``):

* ``residual`` (default): the residual-RL training env of ``roboloop train-residual`` with the settings of the
  PegInsert recipe that reaches >= 95% (``residual_success.CASES["PegInsert"]``, composed through
  ``TrainResidualConfig``, so the comparison runs what we train with): ``ResidualVecEnv(make_vector_env(task,
  env_kwargs, n_envs, "sync"), ResidualPolicy.from_base(Policy.load(base), residual), shaping=...)`` with the
  task and env_kwargs from the base's ``meta.json``; step mode with ``align_chunks`` (train-residual's default: a
  restarted env's first base chunk ends at its group's next replanning step, so the base plans for the group in
  one call), scale 0.25, head 2x256 relu, log std from -2 learned by both (SB3 always learns it unless frozen;
  ``--std fixed`` keeps it in both, as the recipe and ResiP do, SB3's frozen by ``sb3_ppo(learn_std=False)``;
  the 4-seed run of 6a4c503, ours fixed and SB3 learning, gave ours 29.8% against 35.0%), zero-initialized mean
  layer for ours; the sparse reward plus the dense ``align`` cost floored at -1. Every run builds a fresh
  ``ResidualPolicy`` (so neither algorithm trains the other's head). PPO:
  32 envs, n_steps 150, 4 minibatches (of 1200), 10 epochs, lr 3e-4 (actor and critic) annealed, gamma 0.99,
  lambda 0.95, clip 0.2, vf_coef 1.0, max_grad_norm 1.0, target KL 0.05, reward normalization, critic 2x256 relu,
  480k env steps (``--steps``; the recipe's 3M-step run evaluated 56% at 480k), 100 evaluation episodes. Ours steps
  the 32 envs as ``train-residual`` does, in two groups of 16 (two ``ResidualVecEnv`` around one policy,
  ``env_groups=2``): each group's step (physics, resets, the base's planning) runs on its wrapper's thread, so
  the two groups step at once while the head and critic compute. SB3's ``VecEnv`` API steps all envs at once
  (``step_async`` then at once ``step_wait``), so it gets one ``ResidualVecEnv`` of 32: the same envs, base,
  head and seeds; the overlap is what our rollout loop adds. Both run torch single-threaded in each thread
  (``--threads``), as ``train-residual`` runs with env groups (SB3 with 2 torch threads measured slower: 550
  against 570 env steps/s over 3 iterations). With the default ``ResidualConfig`` (scale 0.1, log std -1, no
  shaping) and 16 envs this measured 1.115x, and neither algorithm learned in 100k steps (8% and 10% against the
  base's 20%). ``--base`` defaults to ``bc_success.py``'s PegInsert_diffusion output.
* ``pendulum``: gymnasium ``Pendulum-v1``, a self-contained sanity case needing no checkpoint: 4 envs, n_steps
  1024, 64 minibatches (of 64), 10 epochs, lr 1e-3 annealed, gamma 0.9, lambda 0.95, clip 0.2, vf 0.5, max grad
  norm 0.5, reward normalization, actor and critic 2x64 tanh, log std 0 learned, mean layer gain 0.01 (RL Zoo's
  Pendulum settings without gSDE), 100k env steps, 10 evaluation episodes.

For fairness ours runs with ``reset_each_iteration=False`` (SB3 never resets between rollouts), no critic warm-up,
one learning rate for actor and critic, on the CPU (``sb3_ppo`` puts SB3 on the CPU), no evaluation during
training and a single checkpoint at the end (SB3 saves none). One untimed iteration of each runs first, so that
one-time costs (imports, thread pools) fall on neither. Same n_envs, n_steps, n_epochs, minibatch size,
lr and its annealing, gamma, lambda, clip, value clipping, coefficients, gradient clipping, target KL, widths
and activation; what SB3 still does differently is listed in the output (``SB3_DIFFERENCES`` and the notes below).

Figures, per algorithm and repeat:

* ``env_steps_per_second``: env steps / wall time of building the algorithm (networks, optimizer) and its
  ``learn`` call: rollouts, updates and each library's own logging; the env is built before and evaluation runs
  after. Ours' budget is ``total_env_steps`` rounded down to whole iterations and SB3 is given exactly that many,
  which it also collects as whole rollouts (checked: ``same_env_step_budget``);
* ``speed_ratio``: ours / SB3, from the summed steps and seconds of all repeats (per-repeat ratios are listed);
* final evaluation: each trained actor's deterministic action (ours: ``actor.sample(obs, deterministic=True)``,
  clipped to the action space as in training; SB3: ``model.predict(obs, deterministic=True)``) in a fresh env of
  the same kind, ``--episodes`` episodes with seeds 200000, 200001, ... (run n_envs at a time, each round starting
  from seeded resets; an env that finishes keeps stepping until the round ends, uncounted), global torch/NumPy
  RNGs seeded the same way for both (a diffusion base samples from them): mean undiscounted return and success
  rate (``is_success`` of the final step; none for Pendulum).

Targets: ``speed_ratio >= 1.3`` for the residual env (the issue's target); for every env, both runs used the same
env-step budget and every evaluation return is finite. ``--quick`` (Pendulum unless ``--env`` is given) trains
4096 steps with 2 envs and evaluates 2 episodes: plumbing only.

    .venv/bin/python benchmarks/ppo_vs_sb3.py [--env residual --base CHECKPOINT | --env pendulum]
        [--n-envs 32] [--steps N] [--repeats 4] [--seed 0] [--episodes N] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from common import REPO_ROOT, Target, finish, fmt, markdown_table, parse_args, pct, target
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv
from residual_success import CASES

from roboloop.cli.main import compose_config
from roboloop.cli.train_residual import TrainResidualConfig
from roboloop.core.checkpoint import read_meta
from roboloop.core.policy import Policy
from roboloop.datasets.collection import make_vector_env
from roboloop.envs import task_info
from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.residual_rl import ResidualPolicy, ResidualVecEnv
from roboloop.residual_rl.ppo import PPO, PPOConfig
from roboloop.residual_rl.sb3 import SB3_DIFFERENCES, sb3_ppo

NAME = "ppo_vs_sb3"
MIN_SPEED_RATIO = 1.3  # the target, for the residual env
EVAL_SEED = 200_000
DEFAULT_BASE, RECIPE = CASES["PegInsert"]
#: The PegInsert recipe's settings; the budget and evaluation are this benchmark's own.
RECIPE_OVERRIDES = [o for o in RECIPE if not o.startswith(("ppo.total_env_steps=", "ppo.eval_every=", "eval."))]
#: What else differs between the two implementations (read from SB3 2.9's ``PPO.train`` / ``OnPolicyAlgorithm``
#: and our ``ppo.py``), beyond ``SB3_DIFFERENCES``.
OTHER_DIFFERENCES = (
    "value loss: SB3 uses mse(returns, v) without CleanRL's factor 0.5, so its value weight is 2 x vf_coef",
    "value clipping: SB3's clip_range_vf regresses the clipped prediction alone; ours takes max(unclipped, clipped)",
    "gradient clipping: SB3 clips the joint norm of actor and critic; ours clips each separately",
    "lr annealing: SB3's first update already uses lr * (1 - 1/iterations) and its last lr 0; ours 1 ... 1/iterations",
    "target_kl: SB3 stops at a minibatch whose KL > 1.5 * target_kl; ours after an epoch whose mean KL > target_kl",
)

Action = Callable[[np.ndarray], np.ndarray]


@dataclass
class Setup:
    """One env and the hyperparameters both algorithms get on it."""

    env: str
    description: str
    cfg: PPOConfig  # the budget, rollout and update settings; the seed is set per repeat
    n_envs: int
    hidden_dims: list[int]
    activation: str
    init_logstd: float
    learn_std: bool  # both algorithms
    eval_episodes: int
    #: (n_envs, seed, groups) -> (the env, or ``groups`` envs of n_envs / groups each, and our fresh actor)
    build: Callable[[int, int, int], tuple[Any, GaussianMLP]]
    ours_groups: int = 1  # env groups of our PPO (SB3 steps one vector env of n_envs)


def pendulum_setup(quick: bool, steps: int | None) -> Setup:
    n_envs, n_steps, n_minibatches = (2, 256, 8) if quick else (4, 1024, 64)
    total = steps or (4096 if quick else 100_000)
    cfg = PPOConfig(total_env_steps=total, n_steps=n_steps, n_epochs=10, n_minibatches=n_minibatches, gamma=0.9,
                    gae_lambda=0.95, clip_coef=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, actor_lr=1e-3,
                    critic_lr=1e-3, critic_hidden_dims=[64, 64], critic_activation="tanh")

    def build(n: int, seed: int, groups: int = 1) -> tuple[VectorEnv, GaussianMLP]:
        assert groups == 1, "Pendulum runs as one vector env"
        envs = SyncVectorEnv([lambda: gym.make("Pendulum-v1") for _ in range(n)],
                             autoreset_mode=AutoresetMode.SAME_STEP)
        torch.manual_seed(seed)
        actor = GaussianMLP(envs.single_observation_space.shape[0], envs.single_action_space.shape[0],
                            hidden_dims=(64, 64), activation="tanh", init_logstd=0.0, learn_std=True,
                            last_layer_init_std=0.01)
        return envs, actor

    return Setup("pendulum", "gymnasium Pendulum-v1", cfg, n_envs, [64, 64], "tanh", 0.0, True,
                 2 if quick else 10, build)


def residual_setup(base: Path, quick: bool, steps: int | None, n_envs: int | None = None,
                   learn_std: bool = True) -> Setup:
    if not (base / "meta.json").exists():
        raise SystemExit(f"{NAME}: error: --base {str(base)!r} is not a BC checkpoint directory (no meta.json); "
                         f"train one first, e.g. benchmarks/bc_success.py --cases PegInsert_diffusion")
    meta = read_meta(base)
    if meta.get("task") is None:
        raise SystemExit(f"{NAME}: error: {str(base)!r} does not record its task")
    task = task_info(meta["task"]).name
    env_kwargs = dict(meta.get("env_kwargs", {}))
    # The recipe that takes PegInsert's base to >= 95% (residual_success.py), read through train-residual's own
    # config, so that the comparison runs the settings we train with. The fairness settings come on top in main().
    recipe: TrainResidualConfig = compose_config("train-residual", TrainResidualConfig, RECIPE_OVERRIDES)
    residual, ppo = recipe.residual, recipe.ppo
    residual = replace(residual, learn_std=learn_std)  # the recipe's is fixed (ResiP); --std fixed for both
    if quick:
        residual = replace(residual, hidden_dims=[16])
    n_envs = n_envs or (2 if quick else recipe.n_envs)
    if n_envs % 2:
        raise SystemExit(f"{NAME}: error: --n-envs must be even (ours runs two groups), got {n_envs}")
    total = steps or (400 if quick else 480_000)
    cfg = replace(ppo, total_env_steps=total, n_steps=50 if quick else ppo.n_steps,
                  critic_hidden_dims=list(residual.hidden_dims), critic_activation=residual.activation)

    def build(n: int, seed: int, groups: int = 1) -> tuple[Any, GaussianMLP]:
        torch.manual_seed(seed)
        policy = ResidualPolicy.from_base(Policy.load(base), residual)  # a fresh head (and base) every time
        envs = [ResidualVecEnv(make_vector_env(task, env_kwargs, n // groups, "sync"), policy,
                               shaping=recipe.reward_shaping, gamma=cfg.gamma,
                               shaping_terms=recipe.reward_shaping_terms, shaping_mode=recipe.reward_shaping_mode,
                               shaping_floor=recipe.reward_shaping_floor, align_chunks=recipe.align_chunks)
                for _ in range(groups)]
        return (envs[0] if groups == 1 else envs), policy.head

    description = (f"residual ({residual.mode} mode, scale {residual.scale}) on {task}, base {base}, env_kwargs "
                   f"{env_kwargs}, reward shaping {recipe.reward_shaping_mode} x{recipe.reward_shaping} on "
                   f"{recipe.reward_shaping_terms} (floor {recipe.reward_shaping_floor}), align_chunks "
                   f"{recipe.align_chunks}")
    return Setup("residual", description, cfg, n_envs, list(residual.hidden_dims), residual.activation,
                 residual.init_logstd, residual.learn_std, 2 if quick else 100, build, ours_groups=2)


def final_success(infos: dict[str, Any], i: int) -> bool | None:
    """``is_success`` of env i's finished episode (SAME_STEP: under ``final_info``), None when not reported."""
    final = infos.get("final_info")
    if not isinstance(final, dict) or "is_success" not in final:
        return None
    mask = final.get("_is_success")
    return bool(final["is_success"][i]) if mask is None or mask[i] else None


def evaluate(setup: Setup, act: Action, n_episodes: int) -> dict[str, Any]:
    """Mean return and success of ``act`` (observations (N, D) -> actions (N, Da)) over ``n_episodes`` seeded
    episodes of a fresh env, ``setup.n_envs`` at a time."""
    envs, _ = setup.build(setup.n_envs, EVAL_SEED)
    n = envs.num_envs
    torch.manual_seed(EVAL_SEED)
    np.random.seed(EVAL_SEED)
    returns: list[float] = []
    successes: list[bool | None] = []
    try:
        for start in range(0, n_episodes, n):
            k = min(n, n_episodes - start)
            obs, _ = envs.reset(seed=[EVAL_SEED + start + i for i in range(n)])
            total = np.zeros(n)
            finished = np.zeros(n, dtype=bool)
            success: list[bool | None] = [None] * n
            while not finished[:k].all():
                obs, reward, terminated, truncated, infos = envs.step(act(obs))
                total += np.where(finished, 0.0, np.asarray(reward, dtype=np.float64))
                ended = (np.asarray(terminated) | np.asarray(truncated)) & ~finished
                for i in np.flatnonzero(ended):
                    success[i] = final_success(infos, i)
                finished |= ended
            returns += total[:k].tolist()
            successes += success[:k]
    finally:
        envs.close()
    known = [s for s in successes if s is not None]
    return {"episodes": len(returns), "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "success_rate": float(np.mean(known)) if known else None, "seeds": [EVAL_SEED, EVAL_SEED + n_episodes - 1]}


def ours_action(actor: GaussianMLP, space: gym.spaces.Box) -> Action:
    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=actor.device), deterministic=True)
        return np.clip(out.env_action.cpu().numpy(), space.low, space.high).astype(space.dtype)

    return act


def run_ours(setup: Setup, cfg: PPOConfig, n_eval: int) -> dict[str, Any]:
    envs, actor = setup.build(setup.n_envs, cfg.seed, setup.ours_groups)
    groups = envs if isinstance(envs, list) else [envs]
    space = groups[0].single_action_space
    try:
        with tempfile.TemporaryDirectory(prefix="ppo_vs_sb3_") as out_dir:
            start = time.perf_counter()
            result = PPO(actor, envs, cfg, out_dir).learn()
            seconds = time.perf_counter() - start
    finally:
        for group in groups:
            group.close()
    actor.eval()
    return {"env_steps": result.env_steps, "iterations": result.iterations, "seconds": seconds,
            "env_steps_per_second": result.env_steps / seconds,
            "eval": evaluate(setup, ours_action(actor, space), n_eval)}


def run_sb3(setup: Setup, cfg: PPOConfig, n_eval: int) -> dict[str, Any]:
    envs, _ = setup.build(setup.n_envs, cfg.seed)
    try:
        start = time.perf_counter()
        model = sb3_ppo(envs, cfg, hidden_dims=setup.hidden_dims, activation=setup.activation,
                        init_logstd=setup.init_logstd, learn_std=setup.learn_std)
        model.learn(cfg.total_env_steps, progress_bar=False)
        seconds = time.perf_counter() - start
    finally:
        envs.close()
    dtype = envs.single_action_space.dtype

    def act(obs: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(obs, deterministic=True)[0], dtype=dtype)

    steps = int(model.num_timesteps)
    return {"env_steps": steps, "iterations": steps // (cfg.n_steps * setup.n_envs), "seconds": seconds,
            "env_steps_per_second": steps / seconds, "eval": evaluate(setup, act, n_eval)}


def warm_up(setup: Setup, cfg: PPOConfig) -> None:
    """One untimed iteration of each algorithm: one-time costs (torch's first optimizer imports ``torch._dynamo``,
    about 1.3 s here; TensorBoard's import; thread pools) would otherwise fall on whichever runs first."""
    cfg = replace(cfg, total_env_steps=cfg.n_steps * setup.n_envs)
    envs, actor = setup.build(setup.n_envs, cfg.seed, setup.ours_groups)
    try:
        with tempfile.TemporaryDirectory(prefix="ppo_vs_sb3_") as out_dir:
            PPO(actor, envs, cfg, out_dir).learn()
    finally:
        for group in envs if isinstance(envs, list) else [envs]:
            group.close()
    envs, _ = setup.build(setup.n_envs, cfg.seed)
    try:
        sb3_ppo(envs, cfg, hidden_dims=setup.hidden_dims, activation=setup.activation,
                init_logstd=setup.init_logstd, learn_std=setup.learn_std).learn(cfg.total_env_steps)
    finally:
        envs.close()


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", choices=("residual", "pendulum"), default=None,
                        help="residual (default; needs --base) or pendulum (default with --quick)")
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"BC checkpoint directory (default {DEFAULT_BASE})")
    parser.add_argument("--steps", type=int, default=None, help="env-step budget of each run (default per env)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="alternating (ours, SB3) pairs (default: 4 on the residual env, 2 on pendulum)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat (repeat r: seed + r)")
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes (default per env)")
    parser.add_argument("--n-envs", type=int, default=None, help="residual env: parallel envs (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of both algorithms (default 1)")
    parser.add_argument("--std", choices=("learned", "fixed"), default="learned",
                        help="residual env: both algorithms learn the log std from the recipe's init_logstd "
                             "(default), or keep it there (as train-residual and ResiP do)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra_args)
    env = args.env or ("pendulum" if args.quick else "residual")
    # Final success at this budget spreads by 8-17 points between seeds of one algorithm (25% and 33% for ours, 42%
    # and 35% for SB3 in the 2-seed run of 7a37b4b), so the residual comparison pools 4 seeds.
    if args.repeats is None:
        args.repeats = 4 if env == "residual" else 2
    if args.repeats < 1:
        raise SystemExit(f"{NAME}: error: --repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    base = Path(args.base) if Path(args.base).is_absolute() else REPO_ROOT / args.base
    setup = pendulum_setup(args.quick, args.steps) if env == "pendulum" else residual_setup(
        base, args.quick, args.steps, args.n_envs, learn_std=args.std == "learned")
    batch = setup.cfg.n_steps * setup.n_envs
    budget = setup.cfg.total_env_steps // batch * batch
    if budget < batch:
        raise SystemExit(f"{NAME}: error: --steps {setup.cfg.total_env_steps} is less than one iteration ({batch})")
    base_cfg = replace(setup.cfg, total_env_steps=budget, reset_each_iteration=False, critic_warmup_iterations=0,
                       critic_last_bias=0.0, critic_lr=setup.cfg.actor_lr, device="cpu", eval_every=0,
                       checkpoint_every=10**9, log_every=1, progress=False)
    n_eval = args.episodes or setup.eval_episodes
    print(f"{setup.description}: {budget} env steps per run ({budget // batch} iterations of {setup.n_envs} x "
          f"{setup.cfg.n_steps}), {args.repeats} repeat(s), torch threads {torch.get_num_threads()}",
          file=sys.stderr, flush=True)

    warm_up(setup, base_cfg)
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        cfg = replace(base_cfg, seed=args.seed + repeat)
        for algo, run in (("ours", run_ours), ("sb3", run_sb3)):
            record = {"algorithm": algo, "repeat": repeat, "seed": cfg.seed, **run(setup, cfg, n_eval)}
            runs.append(record)
            print(f"repeat {repeat} {algo}: {record['env_steps']} steps in {record['seconds']:.1f} s "
                  f"({record['env_steps_per_second']:.0f}/s), eval return {record['eval']['mean_return']:.4g}",
                  file=sys.stderr, flush=True)

    def total_rate(algo: str) -> float:
        mine = [r for r in runs if r["algorithm"] == algo]
        return sum(r["env_steps"] for r in mine) / sum(r["seconds"] for r in mine)

    ours_rate, sb3_rate = total_rate("ours"), total_rate("sb3")
    ratio = ours_rate / sb3_rate
    pairs = [(runs[2 * i], runs[2 * i + 1]) for i in range(args.repeats)]
    per_repeat = [o["env_steps_per_second"] / s["env_steps_per_second"] for o, s in pairs]
    same_budget = all(o["env_steps"] == s["env_steps"] == budget for o, s in pairs)
    finite = all(math.isfinite(r["eval"]["mean_return"]) for r in runs)

    def eval_mean(algo: str, key: str) -> float | None:
        values = [r["eval"][key] for r in runs if r["algorithm"] == algo and r["eval"][key] is not None]
        return float(np.mean(values)) if values else None

    figures: dict[str, Any] = {
        "env": env, "description": setup.description, "env_step_budget": budget, "repeats": args.repeats,
        "n_envs": setup.n_envs, "ours_env_groups": setup.ours_groups, "ppo_config": dataclasses.asdict(base_cfg),
        "actor": {"hidden_dims": setup.hidden_dims, "activation": setup.activation, "init_logstd": setup.init_logstd,
                  "learn_std": setup.learn_std},
        "torch_threads": torch.get_num_threads(), "eval_episodes": n_eval,
        "runs": runs, "ours_env_steps_per_second": ours_rate, "sb3_env_steps_per_second": sb3_rate,
        "speed_ratio": ratio, "speed_ratio_per_repeat": per_repeat,
        "ours_eval_return": eval_mean("ours", "mean_return"), "sb3_eval_return": eval_mean("sb3", "mean_return"),
        "ours_eval_success": eval_mean("ours", "success_rate"), "sb3_eval_success": eval_mean("sb3", "success_rate"),
        "sb3_differences": list(SB3_DIFFERENCES), "other_differences": list(OTHER_DIFFERENCES),
    }

    def success(value: float | None) -> str:
        return "-" if value is None else pct(value)

    rows = [(r["algorithm"], r["repeat"], r["seed"], r["env_steps"], f"{r['seconds']:.1f}",
             f"{r['env_steps_per_second']:.0f}", fmt(r["eval"]["mean_return"], 4), success(r["eval"]["success_rate"]))
            for r in runs]
    rows.append(("ours / sb3", "all", "", "", "", f"{ratio:.2f}x", "", ""))
    table = "\n\n".join([
        f"{setup.description}; {budget} env steps per run ({setup.n_envs} envs x {setup.cfg.n_steps} steps x "
        f"{budget // batch} iterations), {base_cfg.n_epochs} epochs of {base_cfg.n_minibatches} minibatches; "
        f"{args.repeats} alternating repeat(s); evaluation: {n_eval} deterministic episodes, seeds {EVAL_SEED}...:",
        markdown_table(["algorithm", "repeat", "seed", "env steps", "seconds", "env steps/s", "eval return",
                        "eval success"], rows),
        "SB3 differences (`SB3_DIFFERENCES`): " + "; ".join(SB3_DIFFERENCES) + ".",
        "Further differences (benchmark notes): " + "; ".join(OTHER_DIFFERENCES) + ".",
    ])
    targets: list[Target] = [
        target("same_env_step_budget", same_budget, "==", True, f"ours and SB3 each ran {budget} env steps"),
        target("finite_eval_returns", finite, "==", True, "every evaluation return is finite"),
    ]
    if env == "residual" and not args.quick:
        targets.append(target("speed_ratio_ours_over_sb3[residual]", round(ratio, 3), ">=", MIN_SPEED_RATIO,
                              "env steps/s incl. updates, summed over the repeats"))
        ours_success, sb3_success = figures["ours_eval_success"], figures["sb3_eval_success"]
        if ours_success is not None and sb3_success is not None:
            targets.append(target("final_success_ours_minus_sb3[residual]", round(ours_success - sb3_success, 4),
                                  ">=", 0.0, f"ours {pct(ours_success)}, SB3 {pct(sb3_success)} over {args.repeats} x "
                                  f"{n_eval} episodes each (the issue: equal or better)"))
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
