"""Offline RL: IQL on Hopper-v5 ``medium`` against its behavior data; offline-to-online Cal-QL and IQL on PegInsert.

Cases (``--cases hopper,peginsert``; each case's result, and each PegInsert algorithm's, is kept in
``benchmarks/results/offline_rl.json`` with the commit it ran at until it is run again):

* ``hopper``: ``roboloop make-tiers task=Hopper-v5 tiers=[medium] n_episodes=1000`` (which first trains the
  stable-baselines3 PPO agent, 1M env steps, cached in ``data/agents/``), then ``roboloop train-offline algo=iql``
  on it with IQL's D4RL locomotion settings (expectile 0.7, temperature 3, rewards scaled by
  1000 / (max - min episode return)) for ``--hopper-steps`` updates, evaluated on 10 episodes. Target: IQL's mean
  return >= the behavior data's mean episode return.
* ``peginsert``: ``roboloop make-tiers task=PegInsert tiers=[mixed] n_episodes=200``; for Cal-QL and IQL side by side:
  ``train-offline`` (``--offline-steps`` updates), then ``finetune-online`` for ``--online-steps`` env steps
  (``--n-envs`` envs, default 1, stepped together, with ``--utd-ratio`` updates, default 1, per step of them all;
  half of each batch offline), evaluated every ``--eval-every`` updates on ``--episodes`` episodes. Targets (each
  algorithm): final success >= offline success + 20 points; no evaluation in the first 20k online steps more than 10
  points below the offline success (the Cal-QL claim). Runs of one recipe at different ``--seed`` accumulate: the
  algorithm's entry is then their mean (the gain is the mean of each seed's, the dip the worst seed's), since one
  50-episode evaluation swings 10-15 points; a run of another recipe replaces them. Cal-QL samples ``--calql-n-actions``
  actions per state for each part of its conservative term (default 4, not the reference 10: the term's cost is linear
  in it; on 2 CPU threads the update alone runs about 14/s with 10 and 30/s with 4, and the trainer, with its env
  steps and evaluations, about 17/s with 4). Cal-QL learns from ``10 r - 5`` by default, its AntMaze setting for
  sparse 0/1 rewards (on Q-values in [0, 1] its conservative term at weight 5 outweighs the TD error: a run at scale 1
  diverged by 10k offline updates, Q 8.4 and the actor's entropy collapsed). ``--calql-reward-scale 1
  --calql-reward-bias 0`` keeps the rewards as they are; the conservative weight (``--calql-cql-alpha``) and the
  initial entropy temperature (``--calql-init-alpha``) scale with them (0.1 and 0.01 at scale 1: at a temperature of
  1 the actor stays near uniform). IQL keeps its locomotion settings (expectile 0.7,
  temperature 3, rewards as they are): with its AntMaze ones (``r - 1``, 0.9, 10; commit a468016) it was at 0% offline
  and at every evaluation of 40k online steps, against 14% offline with these. With 0/1 rewards these weight nearly
  every transition alike (advantages of about 0.01), so offline IQL is close to imitating the whole mixed tier.
  ``--exploration-noise`` makes the online phase act with the actor's mode plus Gaussian noise of that std instead of
  the actor's own samples. ``--iql-extraction ddpg_bc --iql-bc-alpha A`` extracts IQL's actor by DDPG+BC instead of
  AWR, and ``--calql-bc-alpha A`` adds TD3+BC's data term to Cal-QL's actor (``IQLConfig`` / ``CalQLConfig``):
  with AWR, IQL's policy stalls at the grasp where its critic prefers closing the gripper, and Cal-QL's actor, with
  nothing holding it to the data while its critic learns, never reaches the peg.

    .venv/bin/python benchmarks/offline_rl.py [--cases hopper,peginsert] [--algos calql,iql] [--quick]

Cal-QL and IQL can run side by side, one core each: ``OMP_NUM_THREADS=1 ... --algos iql`` in one clone and
``OMP_NUM_THREADS=1 ... --algos calql`` in another (each writes its tiers and runs under its own ``outputs/``); copy
the first one's result file into the second clone before the second finishes, which then keeps both.

``--quick`` runs both cases at toy sizes (plumbing only; no targets but finiteness).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import REPO_ROOT, Target, finish, fmt, git_commit, markdown_table, parse_args, pct, result_path, target

from roboloop.cli.train_offline import TrainOfflineConfig, train_offline
from roboloop.datasets import EpisodeStore
from roboloop.datasets.agent_tiers import AgentConfig
from roboloop.datasets.tiers import TiersConfig, make_tiers
from roboloop.envs.evaluation import EvalConfig
from roboloop.offline_rl.calql import EXTRACTIONS as CALQL_EXTRACTIONS
from roboloop.offline_rl.calql import CalQLConfig
from roboloop.offline_rl.iql import EXTRACTIONS, IQLConfig
from roboloop.offline_rl.trainer import OffPolicyConfig

NAME = "offline_rl"
CASES = ("hopper", "peginsert")
ALGOS = ("calql", "iql")
DIP_WINDOW, MAX_DIP, MIN_GAIN = 20_000, 0.10, 0.20
#: The rewards ``scale * r + bias`` each algorithm learns from (see the module docstring).
REWARDS = {"calql": {"reward_scale": 10.0, "reward_bias": -5.0}, "iql": {"reward_scale": 1.0, "reward_bias": 0.0}}
EVAL_SEED = 300_000


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--hopper-steps", type=int, default=100_000, help="IQL updates on Hopper medium")
    parser.add_argument("--hopper-episodes", type=int, default=1000, help="episodes of the Hopper medium tier")
    parser.add_argument("--offline-steps", type=int, default=100_000, help="PegInsert offline updates")
    parser.add_argument("--online-steps", type=int, default=200_000, help="PegInsert online env steps")
    parser.add_argument("--eval-every", type=int, default=10_000, help="PegInsert updates between evaluations")
    parser.add_argument("--episodes", type=int, default=50, help="PegInsert evaluation episodes")
    parser.add_argument("--calql-n-actions", type=int, default=4,
                        help="Cal-QL's sampled actions per state for each part of the conservative term")
    parser.add_argument("--iql-temperature", type=float, default=IQLConfig.temperature,
                        help="IQL's advantage temperature beta (default: its locomotion setting, 3)")
    parser.add_argument("--iql-extraction", default=IQLConfig.extraction, choices=EXTRACTIONS,
                        help="IQL's actor extraction: advantage-weighted regression (IQL's) or DDPG+BC")
    parser.add_argument("--iql-bc-alpha", type=float, default=IQLConfig.bc_alpha,
                        help="IQL's DDPG+BC weight of the Q term (with --iql-extraction ddpg_bc)")
    parser.add_argument("--calql-cql-alpha", type=float, default=CalQLConfig.cql_alpha,
                        help="weight of Cal-QL's conservative term (default 5, its AntMaze setting)")
    parser.add_argument("--calql-reward-scale", type=float, default=REWARDS["calql"]["reward_scale"],
                        help="Cal-QL learns from scale * r + bias (default 10 r - 5, its AntMaze setting)")
    parser.add_argument("--calql-reward-bias", type=float, default=REWARDS["calql"]["reward_bias"])
    parser.add_argument("--calql-init-alpha", type=float, default=CalQLConfig.init_alpha,
                        help="Cal-QL's initial entropy temperature (default 1, its reference setting)")
    parser.add_argument("--calql-bc-alpha", type=float, default=None,
                        help="Cal-QL's actor with TD3+BC's data term at this alpha (default: none, Cal-QL's actor)")
    parser.add_argument("--calql-extraction", default=CalQLConfig.extraction, choices=CALQL_EXTRACTIONS,
                        help="where Cal-QL's actor queries the critics: its samples (SAC) or its mode (DDPG+BC, "
                             "needs --calql-bc-alpha)")
    parser.add_argument("--calql-max-target-backup", action=argparse.BooleanOptionalAction,
                        default=CalQLConfig.max_target_backup,
                        help="Cal-QL's target at the best of --calql-n-actions draws from pi(s') (its reference)")
    parser.add_argument("--exploration-noise", type=float, default=None,
                        help="online actions: the actor's mode plus noise of this std (default: the actor's samples)")
    parser.add_argument("--n-envs", type=int, default=1,
                        help="PegInsert online envs; --utd-ratio updates per step of them all (n_envs env steps)")
    parser.add_argument("--utd-ratio", type=int, default=1,
                        help="PegInsert updates per online vector-env step (Cal-QL's reference: 1 per env step)")
    parser.add_argument("--seed", type=int, default=0,
                        help="PegInsert training seed (batches, online env resets, networks; evaluations stay fixed)")
    parser.add_argument("--algos", default=",".join(ALGOS),
                        help="PegInsert algorithms to run; the others keep their stored result")


def episode_returns(path: Path) -> np.ndarray:
    with EpisodeStore(path) as store:
        return np.array([float(np.sum(store.read(d, "rewards"))) for d in store.demos])


def stored_cases(quick: bool) -> dict[str, Any]:
    """The cases of the stored result (empty if none): each case's result is kept until it is run again."""
    path = result_path(NAME, quick)
    return json.loads(path.read_text())["figures"]["cases"] if path.exists() else {}


def run_hopper(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    quick = args.quick
    agent = AgentConfig(total_env_steps=6144, checkpoint_every=2048, eval_episodes=1,
                        agent_dir=str(out / "agent")) if quick else AgentConfig()
    tiers = TiersConfig(task="Hopper-v5", tiers=["medium"], n_episodes=4 if quick else args.hopper_episodes,
                        agent=agent, out_dir=str(out / "tiers"), progress=False)
    make_tiers(tiers)
    dataset = tiers.directory / "medium.hdf5"
    returns = episode_returns(dataset)
    scale = 1000.0 / max(float(returns.max() - returns.min()), 1e-6)  # IQL's locomotion reward normalization
    steps = 200 if quick else args.hopper_steps
    shutil.rmtree(out / "iql", ignore_errors=True)  # a fresh run each time (train-offline refuses to overwrite one)
    cfg = TrainOfflineConfig(algo="iql", dataset=str(dataset), reward_scale=scale,
                             train=OffPolicyConfig(offline_steps=steps, eval_every=steps // 4, checkpoint_every=steps,
                                                   log_every=max(steps // 20, 1), progress=False),
                             eval=EvalConfig(n_episodes=2 if quick else 10, seed=EVAL_SEED, progress=False),
                             out_dir=str(out / "iql"))
    run = train_offline(cfg)
    history = run["result"].history
    with EpisodeStore(dataset) as store:
        transitions = store.total_steps
        policy_id = store.attrs(store.demos[0])["policy_id"]
    return {"dataset": str(dataset.relative_to(REPO_ROOT)), "episodes": len(returns), "transitions": transitions,
            "behavior": policy_id, "behavior_mean_return": float(returns.mean()),
            "behavior_std_return": float(returns.std()),
            "reward_scale": scale, "updates": steps, "seconds": run["result"].seconds,
            "curve": [{"updates": h["updates"], "mean_return": h["mean_return"]} for h in history],
            "iql_mean_return": history[-1]["mean_return"], "eval_episodes": cfg.eval.n_episodes, "commit": git_commit()}


def run_peginsert(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Each of ``--algos``, offline then online. The result keeps the stored runs of the other algorithms if they
    were measured at the same sizes, read when this one ends: Cal-QL and IQL can run in two processes, one core
    each (two clones, or ``--algos`` one after the other)."""
    quick = args.quick
    algos = [a for a in args.algos.split(",") if a]
    if set(algos) - set(ALGOS):
        raise SystemExit(f"{NAME}: unknown algorithm(s) {sorted(set(algos) - set(ALGOS))}; algorithms are {ALGOS}")
    tiers = TiersConfig(task="PegInsert", tiers=["mixed"], n_episodes=4 if quick else 200, out_dir=str(out / "tiers"),
                        progress=False)
    make_tiers(tiers)
    dataset = tiers.directory / "mixed.hdf5"
    offline_steps, online_steps = (100, 100) if quick else (args.offline_steps, args.online_steps)
    eval_every = 50 if quick else args.eval_every
    eval_cfg = EvalConfig(n_episodes=2 if quick else args.episodes, seed=EVAL_SEED, progress=False)
    calql = CalQLConfig(n_actions=args.calql_n_actions, bc_alpha=args.calql_bc_alpha, cql_alpha=args.calql_cql_alpha,
                        init_alpha=args.calql_init_alpha, extraction=args.calql_extraction,
                        max_target_backup=args.calql_max_target_backup)
    iql = IQLConfig(temperature=args.iql_temperature, extraction=args.iql_extraction, bc_alpha=args.iql_bc_alpha)
    result: dict[str, Any] = {"dataset": str(dataset.relative_to(REPO_ROOT)), "offline_steps": offline_steps,
                              "online_env_steps": online_steps, "eval_episodes": eval_cfg.n_episodes,
                              "algorithms": {}}
    runs: dict[str, dict[str, Any]] = {}
    for algo in algos:
        for run_dir in (out / algo, out / f"{algo}_online"):
            shutil.rmtree(run_dir, ignore_errors=True)
        rewards = ({"reward_scale": args.calql_reward_scale, "reward_bias": args.calql_reward_bias}
                   if algo == "calql" else REWARDS[algo])
        base = TrainOfflineConfig(algo=algo, dataset=str(dataset), eval=eval_cfg, out_dir=str(out / algo), calql=calql,
                                  iql=iql, n_envs=args.n_envs, **rewards,
                                  train=OffPolicyConfig(offline_steps=offline_steps, eval_every=offline_steps,
                                                        seed=args.seed,
                                                        checkpoint_every=eval_every, log_every=max(eval_every // 10, 1),
                                                        progress=False))
        offline = train_offline(base)
        offline_success = offline["result"].history[-1]["success_rate"]
        online_cfg = replace(base, init=str(out / algo), out_dir=str(out / f"{algo}_online"),
                             train=replace(base.train, offline_steps=0, online_env_steps=online_steps,
                                           eval_every=eval_every, exploration_noise=args.exploration_noise,
                                           utd_ratio=args.utd_ratio))
        online = train_offline(online_cfg)
        curve = [{"online_env_steps": h["online_env_steps"], "success_rate": h["success_rate"]}
                 for h in online["result"].history]
        early = [c["success_rate"] for c in curve if c["online_env_steps"] <= DIP_WINDOW]
        runs[algo] = {
            "offline_success": offline_success, "final_success": curve[-1]["success_rate"],
            "min_success_first_20k": min(early) if early else None, "curve": curve,
            "offline_seconds": offline["result"].seconds, "online_seconds": online["result"].seconds,
            "torch_threads": torch.get_num_threads(), "commit": git_commit(), **rewards,
            "exploration_noise": args.exploration_noise, "n_envs": args.n_envs, "seed": args.seed,
            "utd_ratio": args.utd_ratio,
            **({"n_actions": calql.n_actions, "bc_alpha": calql.bc_alpha, "cql_alpha": calql.cql_alpha,
                "init_alpha": calql.init_alpha, "extraction": calql.extraction,
                "max_target_backup": calql.max_target_backup}
               if algo == "calql" else
               {"expectile": iql.expectile, "temperature": iql.temperature, "extraction": iql.extraction,
                **({"bc_alpha": iql.bc_alpha} if iql.extraction == "ddpg_bc" else {})})}
    stored = stored_cases(quick).get("peginsert")
    same_sizes = stored is not None and all(stored.get(k) == result[k] for k in ("offline_steps", "online_env_steps",
                                                                                 "eval_episodes"))
    stored_algorithms = stored["algorithms"] if same_sizes else {}
    for algo, run in runs.items():
        earlier = [r for r in seed_runs(stored_algorithms.get(algo)) if recipe(r) == recipe(run)
                   and r["seed"] != run["seed"]]
        result["algorithms"][algo] = over_seeds(earlier + [run])
    result["algorithms"] = {**{a: r for a, r in stored_algorithms.items() if a not in algos},
                            **result["algorithms"]}
    return result


#: A PegInsert run's measurements; every other key of its record is its recipe.
RUN_KEYS = ("offline_success", "final_success", "min_success_first_20k", "curve", "offline_seconds",
            "online_seconds", "torch_threads", "commit", "seed")


# What a run stored before these fields were recorded did: seed 0, one update per vector step.
BEFORE_RECORDED = {"seed": 0, "utd_ratio": 1}


def recipe(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k not in RUN_KEYS}


def seed_runs(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The single-seed runs a stored algorithm entry summarizes (an entry from before seeds accumulated is one),
    each with the fields it predates filled in."""
    return [] if entry is None else [{**BEFORE_RECORDED, **run} for run in entry.get("runs", [entry])]


def over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One algorithm's entry from its runs of one recipe at different seeds (50-episode evaluations swing 10-15
    points, so one seed's final evaluation says little). Success figures and the curve are means over the seeds;
    ``gain`` is the mean of each seed's final minus its offline success, ``worst_dip`` the largest fall below the
    offline success in the first 20k of any seed. One run is its own entry."""
    if len(runs) == 1:
        return runs[0]
    runs = sorted(runs, key=lambda r: r["seed"])
    steps = [c["online_env_steps"] for c in runs[0]["curve"]]
    if any([c["online_env_steps"] for c in r["curve"]] != steps for r in runs):
        raise SystemExit(f"{NAME}: seeds {[r['seed'] for r in runs]} of one recipe evaluated at different steps")

    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    lowest = [r["min_success_first_20k"] for r in runs]
    dips = [] if None in lowest else [r["offline_success"] - low for r, low in zip(runs, lowest, strict=True)]
    return {**recipe(runs[-1]), "seeds": [r["seed"] for r in runs], "runs": runs,
            "offline_success": mean([r["offline_success"] for r in runs]),
            "final_success": mean([r["final_success"] for r in runs]),
            "min_success_first_20k": mean(lowest) if dips else None,
            "gain": mean([r["final_success"] - r["offline_success"] for r in runs]),
            "worst_dip": max(dips) if dips else None,
            "curve": [{"online_env_steps": step, "success_rate": mean([r["curve"][i]["success_rate"] for r in runs])}
                      for i, step in enumerate(steps)],
            "offline_seconds": mean([r["offline_seconds"] for r in runs]),
            "online_seconds": mean([r["online_seconds"] for r in runs]),
            "torch_threads": runs[-1]["torch_threads"], "commit": "/".join(sorted({r["commit"] for r in runs}))}


def case_targets(cases: dict[str, Any], quick: bool) -> list[Target]:
    targets: list[Target] = []
    if "hopper" in cases:
        h = cases["hopper"]
        targets.append(target("finite[hopper]", bool(np.isfinite(h["iql_mean_return"])), "==", True))
        if not quick:
            targets.append(target("iql_minus_behavior_return[Hopper-v5 medium]",
                                  round(h["iql_mean_return"] - h["behavior_mean_return"], 1), ">=", 0.0,
                                  f"IQL {fmt(h['iql_mean_return'], 4)} vs behavior "
                                  f"{fmt(h['behavior_mean_return'], 4)}"))
    if "peginsert" in cases:
        for algo, a in cases["peginsert"]["algorithms"].items():
            if quick:
                targets.append(target(f"finite[{algo}]", a["final_success"] is not None, "==", True))
                continue
            seeds = f" (mean of seeds {a['seeds']})" if "seeds" in a else ""
            gain = a.get("gain", a["final_success"] - a["offline_success"])
            targets.append(target(f"online_gain[{algo}]", round(gain, 3), ">=", MIN_GAIN,
                                  f"offline {pct(a['offline_success'])} -> {pct(a['final_success'])}{seeds}"))
            if a["min_success_first_20k"] is not None:
                means = "the largest fall of any seed; means: " if "seeds" in a else ""
                targets.append(target(f"dip_first_20k[{algo}]",
                                      round(a.get("worst_dip", a["offline_success"] - a["min_success_first_20k"]), 3),
                                      "<=", MAX_DIP, f"{means}lowest {pct(a['min_success_first_20k'])} vs offline "
                                      f"{pct(a['offline_success'])}"))
    return targets


def report(cases: dict[str, Any]) -> str:
    parts = []
    if "hopper" in cases:
        h = cases["hopper"]
        parts.append(f"Hopper-v5 `medium` ({h['episodes']} episodes, {h['transitions']} transitions, {h['behavior']}), "
                     f"IQL {h['updates']} updates:")
        rows = [("behavior data", fmt(h["behavior_mean_return"], 4), f"+- {fmt(h['behavior_std_return'], 3)}"),
                ("IQL", fmt(h["iql_mean_return"], 4), f"{h['eval_episodes']} episodes")]
        parts.append(markdown_table(["policy", "mean return", "detail"], rows))
    if "peginsert" in cases:
        p = cases["peginsert"]
        parts.append(f"PegInsert `mixed`, {p['offline_steps']} offline updates then {p['online_env_steps']} online env "
                     f"steps; success over {p['eval_episodes']} episodes:")
        rows = [(algo + (f" (mean of seeds {a['seeds']})" if "seeds" in a else ""), pct(a["offline_success"]),
                 "-" if a["min_success_first_20k"] is None else
                 pct(a["min_success_first_20k"]), pct(a["final_success"]),
                 " ".join(f"{c['online_env_steps'] // 1000}k:{100 * c['success_rate']:.0f}" for c in a["curve"]),
                 f"{a.get('reward_scale', 1):g} r {a.get('reward_bias', 0):+g}",
                 f"{(a['offline_seconds'] + a['online_seconds']) / 60:.0f} min, {a.get('torch_threads', '?')} threads")
                for algo, a in p["algorithms"].items()]
        parts.append(markdown_table(["algorithm", "offline", "lowest in first 20k", "final", "curve (k steps:%)",
                                     "rewards", "time"], rows))
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra_args)
    wanted = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(wanted) - set(CASES))
    if unknown:
        raise SystemExit(f"{NAME}: unknown case(s) {unknown}; cases are {list(CASES)}")
    out = REPO_ROOT / "outputs" / ("bench_quick" if args.quick else "bench") / NAME
    cases = stored_cases(args.quick)
    for case in wanted:
        print(f"\n=== {case} ===", file=sys.stderr, flush=True)
        cases[case] = (run_hopper if case == "hopper" else run_peginsert)(args, out / case)
    return finish(NAME, {"cases": cases}, case_targets(cases, args.quick), report(cases), quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
