"""PPO core on a published reference: our ``PPO`` on ``HalfCheetah-v5`` with CleanRL's defaults, 1M env steps.

Reference: CleanRL's ``ppo_continuous_action.py`` reports 1442.6 +- 46.0 on HalfCheetah-v4 after 1M steps (3 seeds,
``docs/benchmark/ppo_continuous_action.md``; see ``/work/shared/research/anchors.md`` section 14). This script trains
``roboloop.residual_rl.ppo.PPO`` with the same settings:

* env: ``SyncVectorEnv`` of 1 ``HalfCheetah-v5`` with ``AutoresetMode.SAME_STEP``; inside the sub-env (per-env
  gymnasium wrappers, as CleanRL stacks them) ``NormalizeObservation`` then ``TransformObservation`` clipping to
  [-10, 10]. Actions are clipped to the action space by PPO itself (CleanRL's ``ClipAction``); rewards are
  normalized by PPO's built-in ``normalize_reward`` (running std of the discounted return, clip 10; CleanRL's
  ``NormalizeReward`` + ``TransformReward`` clip);
* PPO: num_steps 2048, 32 minibatches (of 64), 10 epochs, lr 3e-4 for actor and critic, annealed linearly to 0,
  gamma 0.99, lambda 0.95, clip 0.2, clipped value loss, entropy 0, vf 0.5, max grad norm 0.5, no target KL;
  1M // 2048 = 488 iterations = 999,424 env steps (CleanRL rounds down the same way);
* actor: ``GaussianMLP(17, 6, (64, 64), tanh)``, learned state-independent log std initialized at 0, orthogonal
  init (gain sqrt(2) hidden, 0.01 on the mean layer); critic: ``ValueMLP`` 64x64 tanh, output gain 1.

Known differences from CleanRL (none is expected to lower the return): the time-limit truncation at 1000 steps
bootstraps from the final observation's value (CleanRL treats it as terminal); actor and critic have separate Adam
optimizers (same lr, eps 1e-5) and their gradient norms are clipped separately (CleanRL: one optimizer, one joint
clip); the mean layer has no bias; the reward normalizer restarts its discounted return at every episode end
(gymnasium's ``NormalizeReward`` only on termination, which HalfCheetah never signals).

Figures:

* ``train_return_last10pct``: the mean undiscounted (raw) return of the training episodes (each 1000 steps, the
  stochastic policy) that ended in the iterations ending after 90% of the run's env steps (49 of 488 iterations,
  about 100 episodes), from PPO's ``train_log.jsonl`` (``log_every=1``; per iteration ``n_episodes`` and their
  mean ``episode_return``, weighted by ``n_episodes``). This is what CleanRL's "average episodic return" is;
* ``eval_return``: the final actor's mean action (``actor.sample(obs, deterministic=True)``), 10 episodes of a
  fresh env with the same wrappers whose ``NormalizeObservation`` is frozen (``update_running_mean=False``) at the
  training env's running mean/var/count, seeds 100000..100009;
* ``env_steps_per_second``: env steps / wall time of ``PPO.learn()`` (rollouts, updates, logging, checkpoints);
* the training return per tenth of the run (the learning curve, coarse).

Targets: both returns >= 1400. ``--quick`` trains 20k steps (9 iterations) and evaluates 2 episodes: it checks only
the plumbing (the run completes and both returns are finite). Training logs and checkpoints go to
``outputs/bench[_quick]/ppo_halfcheetah/seed<seed>`` (removed first: every run starts from scratch).

    .venv/bin/python benchmarks/ppo_halfcheetah.py [--seed 1] [--device cpu] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from common import REPO_ROOT, Target, finish, fmt, markdown_table, parse_args, target
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import NormalizeObservation, TransformObservation
from gymnasium.wrappers.utils import RunningMeanStd

from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.residual_rl.ppo import PPO, PPOConfig

NAME = "ppo_halfcheetah"
ENV_ID = "HalfCheetah-v5"
OBS_CLIP = 10.0
STEPS, QUICK_STEPS = 1_000_000, 20_000
EVAL_EPISODES, QUICK_EVAL_EPISODES = 10, 2
EVAL_SEED = 100_000
LAST_FRACTION = 0.1  # the training return is measured over the last 10% of the env steps
MIN_RETURN = 1400.0
#: CleanRL ppo_continuous_action.py, HalfCheetah-v4, 1M steps, 3 seeds (docs/benchmark/ppo_continuous_action.md).
CLEANRL_RETURN, CLEANRL_STD = 1442.6, 46.0


def make_env(obs_clip: float = OBS_CLIP) -> gym.Env:
    """HalfCheetah with CleanRL's observation wrappers: running mean/std normalization, then clipping."""
    env = NormalizeObservation(gym.make(ENV_ID))
    space = gym.spaces.Box(-obs_clip, obs_clip, env.observation_space.shape, np.float32)
    return TransformObservation(env, lambda obs: np.clip(obs, -obs_clip, obs_clip).astype(np.float32), space)


def obs_normalizer(env: gym.Env) -> NormalizeObservation:
    """The ``NormalizeObservation`` wrapper inside ``env``'s wrapper stack."""
    current: Any = env
    while not isinstance(current, NormalizeObservation):
        if not isinstance(current, gym.Wrapper):
            raise RuntimeError(f"no NormalizeObservation wrapper in {env}")
        current = current.env
    return current


def ppo_config(total_env_steps: int, seed: int, device: str, progress: bool) -> PPOConfig:
    """CleanRL ``ppo_continuous_action.py`` defaults expressed as our ``PPOConfig``."""
    return PPOConfig(total_env_steps=total_env_steps, n_steps=2048, n_epochs=10, n_minibatches=32, gamma=0.99,
                     gae_lambda=0.95, clip_coef=0.2, clip_vloss=True, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5,
                     target_kl=None, actor_lr=3e-4, critic_lr=3e-4, anneal_lr=True, normalize_advantage=True,
                     normalize_reward=True, reward_clip=10.0, critic_warmup_iterations=0, critic_hidden_dims=[64, 64],
                     critic_activation="tanh", critic_last_bias=0.0, reset_each_iteration=False, seed=seed,
                     device=device, log_every=1, checkpoint_every=50, eval_every=0, progress=progress)


def read_train_log(out_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines() if line]


def mean_return(records: Sequence[dict[str, float]]) -> tuple[float, int]:
    """Mean raw return of the episodes that ended in ``records`` (per-iteration means weighted by their counts)."""
    with_episodes = [r for r in records if r.get("n_episodes", 0) > 0]
    n = int(sum(r["n_episodes"] for r in with_episodes))
    if n == 0:
        return float("nan"), 0
    return float(sum(r["n_episodes"] * r["episode_return"] for r in with_episodes) / n), n


@torch.no_grad()
def evaluate(actor: GaussianMLP, obs_rms: RunningMeanStd, n_episodes: int) -> list[float]:
    """Undiscounted returns of the actor's mean action over ``n_episodes`` seeded episodes, with the observation
    normalization frozen at the statistics ``obs_rms`` (the training env's)."""
    env = make_env()
    norm = obs_normalizer(env)
    norm.obs_rms = copy.deepcopy(obs_rms)
    norm.update_running_mean = False
    low, high = env.action_space.low, env.action_space.high
    was_training = actor.training
    actor.eval()
    returns = []
    try:
        for episode in range(n_episodes):
            obs, _ = env.reset(seed=EVAL_SEED + episode)
            total, done = 0.0, False
            while not done:
                out = actor.sample(torch.as_tensor(obs, dtype=torch.float32, device=actor.device)[None],
                                   deterministic=True)
                action = np.clip(out.env_action[0].cpu().numpy(), low, high).astype(env.action_space.dtype)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        actor.train(was_training)
        env.close()
    return returns


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=1, help="seed of the PPO run (critic/actor init, envs, noise)")
    parser.add_argument("--device", default="cpu", help="torch device for PPO (CleanRL's figures are CPU runs)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra_args)
    total_steps = QUICK_STEPS if args.quick else STEPS
    n_eval = QUICK_EVAL_EPISODES if args.quick else EVAL_EPISODES
    out_dir = REPO_ROOT / "outputs" / ("bench_quick" if args.quick else "bench") / NAME / f"seed{args.seed}"
    if out_dir.exists():
        shutil.rmtree(out_dir)  # this benchmark's own output from an earlier run: start from scratch

    cfg = ppo_config(total_steps, args.seed, args.device, progress=not args.quick)  # a tqdm bar on stderr
    envs = SyncVectorEnv([make_env], autoreset_mode=AutoresetMode.SAME_STEP)
    obs_dim = envs.single_observation_space.shape[0]
    action_dim = envs.single_action_space.shape[0]
    torch.manual_seed(args.seed)
    actor = GaussianMLP(obs_dim, action_dim, hidden_dims=(64, 64), activation="tanh", init_logstd=0.0,
                        learn_std=True, last_layer_init_std=0.01)
    ppo = PPO(actor, envs, cfg, out_dir, meta={"benchmark": NAME, "env_id": ENV_ID})
    print(f"{ENV_ID}: {ppo.num_iterations} iterations of {ppo.batch_size} steps, seed {args.seed}, "
          f"torch threads {torch.get_num_threads()}", file=sys.stderr, flush=True)
    try:
        result = ppo.learn()
        obs_rms = copy.deepcopy(obs_normalizer(envs.envs[0]).obs_rms)
    finally:
        envs.close()
    print(f"trained {result.env_steps} steps in {result.seconds:.0f} s ({result.env_steps_per_second:.0f} steps/s)",
          file=sys.stderr, flush=True)

    log = read_train_log(out_dir)
    cutoff = (1.0 - LAST_FRACTION) * result.env_steps
    last = [r for r in log if r["env_steps"] > cutoff]
    train_return, train_episodes = mean_return(last)
    window_steps = int(last[-1]["env_steps"] - last[0]["env_steps"] + ppo.batch_size) if last else 0
    eval_returns = evaluate(actor, obs_rms, n_eval)
    eval_return = float(np.mean(eval_returns))
    deciles = []
    for k in range(10):
        lo, hi = k / 10 * result.env_steps, (k + 1) / 10 * result.env_steps
        deciles.append(mean_return([r for r in log if lo < r["env_steps"] <= hi])[0])

    figures: dict[str, Any] = {
        "env_id": ENV_ID, "seed": args.seed, "device": args.device, "torch_threads": torch.get_num_threads(),
        "ppo_config": dataclasses.asdict(cfg),
        "actor": {"hidden_dims": [64, 64], "activation": "tanh", "init_logstd": 0.0, "learn_std": True,
                  "last_layer_init_std": 0.01},
        "obs_clip": OBS_CLIP,
        "env_steps": result.env_steps, "iterations": result.iterations, "train_seconds": result.seconds,
        "env_steps_per_second": result.env_steps_per_second,
        "train_return_last10pct": train_return, "train_episodes_last10pct": train_episodes,
        "train_window_env_steps": window_steps, "train_window_iterations": len(last),
        "train_return_by_tenth": [None if math.isnan(d) else d for d in deciles],  # None: no episode ended
        "eval_return": eval_return, "eval_return_std": float(np.std(eval_returns)), "eval_returns": eval_returns,
        "eval_episodes": n_eval, "eval_seeds": [EVAL_SEED, EVAL_SEED + n_eval - 1],
        "obs_rms": {"mean": obs_rms.mean, "var": obs_rms.var, "count": float(obs_rms.count)},
        "last_train_stats": result.last_stats,
        "reference": {"cleanrl_halfcheetah_v4_return": CLEANRL_RETURN, "cleanrl_std": CLEANRL_STD},
    }

    rows = [
        ("training return, last 10% of steps (stochastic policy)", fmt(train_return, 5),
         f"{train_episodes} episodes ending in the last {len(last)} iterations ({window_steps} steps)"),
        ("evaluation return (deterministic, frozen obs normalization)", fmt(eval_return, 5),
         f"{n_eval} episodes, std {fmt(float(np.std(eval_returns)), 3)}, seeds {EVAL_SEED}..."),
        ("CleanRL reference (HalfCheetah-v4, 1M steps, 3 seeds)", f"{CLEANRL_RETURN} +- {CLEANRL_STD}", ""),
        ("env steps / s (rollouts + updates)", f"{result.env_steps_per_second:.0f}",
         f"{result.env_steps} steps in {result.seconds:.0f} s, {torch.get_num_threads()} torch threads"),
        ("training return per tenth of the run", ", ".join(fmt(d, 4) for d in deciles), ""),
    ]
    table = "\n\n".join([
        f"Our PPO on {ENV_ID}, CleanRL ppo_continuous_action defaults, {result.env_steps} env steps, seed "
        f"{args.seed}:",
        markdown_table(["figure", "value", "detail"], rows),
    ])
    targets: list[Target]
    if args.quick:
        targets = [target("completes_with_finite_returns", math.isfinite(train_return) and math.isfinite(eval_return),
                          "==", True, "quick: plumbing only (training-window and evaluation returns finite)")]
    else:
        targets = [
            target("train_return_last10pct", round(train_return, 1), ">=", MIN_RETURN,
                   f"mean raw return of the {train_episodes} training episodes ending in the last 10% of steps"),
            target("eval_return", round(eval_return, 1), ">=", MIN_RETURN,
                   f"deterministic actor, {n_eval} episodes, frozen observation normalization"),
        ]
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
