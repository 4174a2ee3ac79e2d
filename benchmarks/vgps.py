"""Value-guided policy steering (V-GPS): success of diffusion and ACT bases against the number of sampled chunks.

For each task, a critic is trained offline once (``roboloop make-tiers`` ``mixed``, then ``roboloop train-offline
algo=iql``; its Q-ensemble is the critic) and steers both of the task's bases at deployment: each query samples
``n`` chunks from the base (``sample_actions``: the diffusion sampler's noise, ACT's CVAE prior) and executes one
drawn with probability proportional to ``exp(Q / temperature)`` of its first action (``roboloop eval ...
steer=<critic> n_samples=n steer_temperature=t``; ``--temperature``, 0.03 by default for the critics' Q in [0, 1];
0 is V-GPS's argmax). ``n = 1`` is the unsteered base sampling the same way. Every ``n`` of a base runs the same
``--episodes`` seeded episodes.

Why a temperature: ACT's candidates at a state are nearly the same chunk (first actions with a std of 0.07 on Lift,
against 0.4 for diffusion), their scores differ by less than the critic resolves (0.006 against 0.045), and argmax
then follows the critic's slight preference for saturated actions at every step. With argmax, Lift ACT went 35%
(n=1) -> 35% (n=4) -> 5% (n=16) over 40 episodes; with temperature 0.03, 65% and 65%. The Lift diffusion base kept
its gain (85% at n=4 against argmax's 83%).

Each query executes one action (``n_action_steps=1`` at evaluation; the bases are trained executing 4): the critic
scores a candidate's first action, so that is the action that should run, and every step gets its own choice, as
in V-GPS. (Executing the whole 4-action chunk of the chosen candidate steered one action in four: the Lift
diffusion base went 35% -> 52% at n=4 over 40 episodes, against 25% -> 85% with one action per query.)

Tasks and bases: each base is trained here with ``roboloop train-bc`` if its checkpoint is missing, on
demonstrations of the scripted expert with per-step action noise (``Base.noise``): the mixed-quality data that
V-GPS's generalist policies learn from, so that the sampled chunks differ and some are better than others. (Bases
cloned from clean expert demonstrations sample nearly the same chunk every time, and steering them changed nothing,
69/69/70% and 20/20/20% on Lift.) The noise is as much as each base still learns from:

* Lift diffusion: the ``medium`` tier (noise 0.4, about half the episodes succeed).
* Lift ACT: noise 0.2 (97.5% succeed). From the ``medium`` tier ACT's base scored 0/4/1% at n=1/4/16, and ACT
  without its CVAE, or an MLP, 0/20: these regressors do not pull the expert out of 40% random actions.
* PushAround, both: noise 0.05 (about 80% succeed). Its expert cannot recover from much noise: a diffusion base
  cloned from its ``medium`` tier (noise 0.2) succeeded 0/20 times. Its expert goes left or right of the obstacle
  by a coin flip the state does not show. That alone does not sink ACT: the ``PushAround_act`` BC preset (clean
  demonstrations, ACT's kl_weight, dropout 0) scores 92%. Its ACT base trains with ``kl_weight=0.004`` for 8000
  steps (see below).
* FetchPush-v4, both: noise 0.2 (85% succeed). From its ``medium`` tier (noise 0.4) at 3000 steps the diffusion
  base scored 3% at every n; from noise 0.2 at 10000 steps, 6/8/6% at n=1/4/16 (14% over 50 episodes with its own
  4 actions per chunk). ACT with ``ACT_NO_DROPOUT`` scores 65/66/55%: a good base that the critic does not improve.

PushAround's and FetchPush's ACT bases train with ``ACT_NO_DROPOUT`` (dropout 0, lr 3e-4): with ``ACT`` the
FetchPush base scored 1/4/5%. On PushAround it did not help (0/1/1%, against 0/0/0%).

ACT trains with ``kl_weight=0.001``: the reconstruction loss is a mean over the chunk's Tp x Da entries and the KL
a sum over the latent, so at larger weights encoding one noisy action costs more than it saves; the latent
collapses (KL about 0.001 on Lift at ACT's 10 and at 1, 0.04 and falling at 0.1; about 3.5 at 0.001) and every
sampled chunk is the same. PushAround's ACT base is the exception, at 0.004 and 8000 steps: at 0.001 its decoder
leans on a latent (KL 5.2) that the prior's draws do not match, and it scored 0/1/1% at n=1/4/16 (z = 0: 2%; one
latent kept for a whole episode: 0%). Trained 8000 steps and evaluated over 50 episodes at n=1 (then n=4 and 16,
where measured), by kl_weight, with the KL at the end of training: 0.002 (KL 2.9): 10%; 0.004 (KL 1.06):
30/30/36%; 0.01 (KL 0.018): 36/34%; 0.1 (KL 0.00002): 36/34%. From 0.01 up the latent has collapsed, the
candidates are one chunk and steering cannot help; of the weights tried, 0.004 is the largest that keeps a spread.
ACT trains with ``loss=mse`` (see ``ACTConfig.loss``): with L1 both ACT bases scored 0%. ACT's mean latent (z = 0)
scores 0% on Lift: its chunks are sampled from the prior.

* ``Lift``, ``PushAround`` and ``FetchPush-v4``, each with a diffusion and an ACT base.

Target (the issue's): on two tasks, both the diffusion and the ACT base gain >= 5 points from steering at the same
``n`` (``best_common_n``: the ``n`` with the most such tasks, then the largest smallest gain over their bases).
Each base's best gain is reported too. Results accumulate in ``benchmarks/results/vgps.json``: ``--tasks`` reruns
only those tasks, and a base, critic or evaluation already in ``outputs/bench/vgps`` is reused if it was made
with the same arguments (each run dir records them in ``recipe.json``; one made otherwise is discarded).

    .venv/bin/python benchmarks/vgps.py [--tasks Lift,PushAround,FetchPush-v4] [--episodes 100] [--samples 1,4,16]
        [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import REPO_ROOT, Target, finish, markdown_table, parse_args, pct, result_path, target

from roboloop.cli.main import main as roboloop_main
from roboloop.core.checkpoint import checkpoint_exists
from roboloop.core.metrics import format_rate
from roboloop.utils.io import write_json

NAME = "vgps"
MIN_GAIN = 0.05
EVAL_SEED = 400_000
#: ACT as its CPU presets train it (lr 1e-4; at ACT's default 1e-5, 3000 steps left Lift's base at 4%), with the
#: small kl_weight that keeps its latent (see above) and the mse loss (see ``ACTConfig.loss``).
ACT = ("train.steps=6000", "train.batch_size=64", "train.optimizer.lr=1e-4", "train.optimizer.weight_decay=1e-4",
       "policy.n_action_steps=4", "policy.kl_weight=0.001", "policy.loss=mse")


def overridden(overrides: tuple[str, ...], *changes: str) -> tuple[str, ...]:
    """``overrides`` with each ``key=value`` of ``changes`` replacing the one of its key (or appended)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return (*(o for o in overrides if o.split("=", 1)[0] not in keys), *changes)


#: ACT with dropout 0 and lr 3e-4: on FetchPush-v4 (noise 0.2) it scored 58% (z = 0, 4 actions per chunk) and 62%
#: (sampled z, one action per query) over 50 episodes, against 6% and 4% with ``ACT``. Its encoder memory is two
#: tokens (latent and state), and dropping attention to one of them makes the target noisy. Lift's base predates it.
ACT_NO_DROPOUT = overridden(ACT, "train.optimizer.lr=3e-4", "policy.dropout=0")


@dataclass(frozen=True)
class Base:
    """How a base is made: the scripted expert's per-step action noise in its demonstrations (None: the task's
    ``medium`` tier) and its ``roboloop train-bc`` overrides."""

    noise: float | None
    overrides: tuple[str, ...]


#: task -> {policy: base}
BASES: dict[str, dict[str, Base]] = {
    "Lift": {"diffusion": Base(None, ("train.steps=3000", "policy.n_action_steps=4")), "act": Base(0.2, ACT)},
    "PushAround": {"diffusion": Base(0.05, ("train.steps=10000", "policy.n_action_steps=4")),
                   "act": Base(0.05, overridden(ACT_NO_DROPOUT, "train.steps=8000", "policy.kl_weight=0.004"))},
    "FetchPush-v4": {"diffusion": Base(0.2, ("train.steps=10000", "policy.n_action_steps=4")),
                     "act": Base(0.2, ACT_NO_DROPOUT)},
}
#: The issue's target: every base of this many tasks gains >= MIN_GAIN at one common n.
MIN_TASKS = 2
#: Actions executed per query at evaluation: the candidate's first, the one the critic scored.
STEERED_ACTION_STEPS = 1


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=",".join(BASES))  # results accumulate: --tasks runs only those
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--samples", default="1,4,16", help="numbers of sampled chunks (1 = unsteered)")
    parser.add_argument("--critic-steps", type=int, default=30_000, help="IQL updates of each task's critic")
    parser.add_argument("--temperature", type=float, default=0.03,
                        help="softmax temperature over the candidates' Q (0: argmax, V-GPS's choice)")


def run(args: list[str]) -> None:
    rc = roboloop_main(args)
    if rc != 0:
        raise SystemExit(f"{NAME}: `roboloop {' '.join(args)}` exited with {rc}")


def run_once(run_dir: Path, args: list[str], done: Callable[[], bool]) -> None:
    """``roboloop args`` into ``run_dir`` unless it already holds a finished run (``done()``) of the same args.
    The args are recorded in ``run_dir/recipe.json``; a run dir made with other args (a changed preset, ``--quick``,
    or no record) is discarded first, so a stale base, critic or tier is never reused. An unfinished run of the same
    args is run again (the training commands resume with ``train.resume=true``)."""
    recipe = run_dir / "recipe.json"
    same = recipe.exists() and json.loads(recipe.read_text()) == args
    if same and done():
        return
    if not same and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(recipe, args)
    run(args)


def make_tiers(directory: Path, task: str, names: list[str], quick: bool, *overrides: str) -> Path:
    """``roboloop make-tiers`` into ``directory`` unless every tier in ``names`` is already there, made alike."""
    run_once(directory, ["make-tiers", f"task={task}", f"tiers=[{','.join(names)}]",
                         f"n_episodes={4 if quick else 200}", f"out_dir={directory}", "progress=false", *overrides],
             lambda: all((directory / f"{name}.hdf5").exists() for name in names))
    return directory


def task_tiers(task: str, out: Path, quick: bool) -> Path:
    """The task's ``medium`` and ``mixed`` tiers: the critic's data, and that of bases whose ``noise`` is None."""
    return make_tiers(out / "tiers" / task, task, ["medium", "mixed"], quick)


def base_data(task: str, noise: float | None, out: Path, quick: bool) -> Path:
    """A base's demonstrations: the task's ``medium`` tier, or the expert at ``noise``."""
    if noise is None:
        return task_tiers(task, out, quick) / "medium.hdf5"
    return make_tiers(out / "tiers" / f"{task}_noise{noise}", task, ["medium"], quick,
                      f"medium_noise={noise}") / "medium.hdf5"


def base_checkpoint(task: str, policy: str, out: Path, quick: bool) -> Path:
    run_dir = out / f"{task}_{policy}"
    checkpoint = run_dir / "checkpoints" / "last"
    base = BASES[task][policy]
    extra = ("train.steps=20", "train.batch_size=16") if quick else base.overrides
    run_once(run_dir, ["train-bc", f"task={task}", f"policy={policy}",
                       f"dataset={base_data(task, base.noise, out, quick)}", f"out_dir={run_dir}",
                       "train.progress=false", "train.eval_every=0", "evaluate=false", "train.resume=true", *extra],
             lambda: checkpoint_exists(checkpoint))
    return checkpoint


def critic_dir(task: str, out: Path, quick: bool, steps: int) -> Path:
    run_dir = out / f"{task}_critic"
    run_once(run_dir, ["train-offline", "algo=iql", f"dataset={task_tiers(task, out, quick) / 'mixed.hdf5'}",
                       f"out_dir={run_dir}", f"train.offline_steps={20 if quick else steps}", "train.eval_every=0",
                       "train.progress=false", "train.resume=true", "eval.n_episodes=1"],
             lambda: (run_dir / "critic" / "critic.json").exists())
    return run_dir / "critic"


def evaluate(checkpoint: Path, critic: Path, n: int, temperature: float, episodes: int,
             out_dir: Path) -> dict[str, Any]:
    """Success of ``checkpoint`` steered with ``n`` samples at ``temperature``; an evaluation already in ``out_dir``
    (named after n and the temperature) of the same checkpoint, episodes and seed is reused (a rerun after an
    interruption picks up where it stopped)."""
    stored = out_dir / "eval.json"
    if stored.exists():
        result = json.loads(stored.read_text())
        config = result.get("config", {})
        if (result.get("n_episodes") == episodes and config.get("seed") == EVAL_SEED
                and config.get("n_action_steps") == STEERED_ACTION_STEPS
                and stored.stat().st_mtime > (checkpoint / "model.safetensors").stat().st_mtime):
            return {"success_rate": result["success_rate"], "successes": result["successes"]}
    run(["eval", f"checkpoint={checkpoint}", f"steer={critic}", f"n_samples={n}", f"steer_temperature={temperature}",
         f"n_action_steps={STEERED_ACTION_STEPS}", f"n_episodes={episodes}", f"seed={EVAL_SEED}", "n_envs=4",
         f"out_dir={out_dir}", "progress=false", "video=false"])
    result = json.loads((out_dir / "eval.json").read_text())
    return {"success_rate": result["success_rate"], "successes": result["successes"]}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra_args)
    tasks = [t for t in args.tasks.split(",") if t]
    samples = sorted({int(n) for n in args.samples.split(",")})
    if 1 not in samples:
        samples = [1, *samples]
    episodes = 2 if args.quick else args.episodes
    out = REPO_ROOT / "outputs" / ("bench_quick" if args.quick else "bench") / NAME
    stored_path = result_path(NAME, args.quick)
    cases: dict[str, Any] = json.loads(stored_path.read_text())["figures"]["cases"] if stored_path.exists() else {}
    for task in tasks:
        critic = critic_dir(task, out, args.quick, args.critic_steps)
        for policy in BASES[task]:
            checkpoint = base_checkpoint(task, policy, out, args.quick)
            curve = {}
            for n in samples:
                print(f"{task} {policy} n_samples={n}", file=sys.stderr, flush=True)
                name = f"eval_n{n}" if n == 1 or args.temperature == 0 else f"eval_n{n}_t{args.temperature:g}"
                curve[str(n)] = evaluate(checkpoint, critic, n, args.temperature, episodes,
                                         out / f"{task}_{policy}" / name)
            cases[f"{task}_{policy}"] = {"task": task, "policy": policy, "episodes": episodes,
                                         "temperature": args.temperature, "curve": curve}
    common = [str(n) for n in samples if n > 1 and all(str(n) in c["curve"] for c in cases.values())]

    def gain(case: dict[str, Any], n: str) -> float:
        return case["curve"][n]["success_rate"] - case["curve"]["1"]["success_rate"]

    by_task: dict[str, list[dict[str, Any]]] = {}
    for case in cases.values():
        by_task.setdefault(case["task"], []).append(case)

    def passing_tasks(n: str) -> list[str]:
        """Tasks each of whose bases (diffusion and ACT) gains >= MIN_GAIN at n."""
        return [t for t, bases in by_task.items() if len(bases) == len(BASES.get(t, bases))
                and all(gain(c, n) >= MIN_GAIN for c in bases)]

    # The n at which most tasks pass, then the one with the largest smallest gain over those tasks' bases.
    best_n = max(common, key=lambda n: (len(passing_tasks(n)),
                                        min((gain(c, n) for t in passing_tasks(n) for c in by_task[t]),
                                            default=0.0))) if common else None
    rows = [(name, *(format_rate(c["curve"][str(n)]["successes"], c["episodes"]) if str(n) in c["curve"] else "-"
                     for n in samples)) for name, c in cases.items()]
    table = "\n\n".join([
        f"Success over the same seeded episodes against the number of sampled chunks (1 = unsteered), candidates "
        f"drawn by softmax(Q / {args.temperature:g}) (0: argmax); critics: IQL on each task's `mixed` tier; best "
        f"common n: {best_n}:",
        markdown_table(["base", *(f"n={n}" for n in samples)], rows)])
    targets: list[Target] = [target(f"evaluated[{name}]", len(case["curve"]) > 1, "==", True)
                             for name, case in cases.items()]
    # Each base's best gain, reported; the target is the task-level one below.
    best_gains = {}
    for name, case in cases.items():
        best = max((n for n in case["curve"] if n != "1"), key=lambda n: gain(case, n), default=None)
        if best is not None:
            best_gains[name] = {"n": best, "gain": round(gain(case, best), 3),
                                "detail": f"{pct(case['curve']['1']['success_rate'])} -> "
                                          f"{pct(case['curve'][best]['success_rate'])}"}
    if best_n is not None and not args.quick:
        passing = passing_tasks(best_n)
        targets.append(target("tasks_where_every_base_gains_at_best_common_n", len(passing), ">=", MIN_TASKS,
                              f"n={best_n}: {', '.join(passing) or 'none'} (of {', '.join(by_task)}); gains "
                              + ", ".join(f"{name} {100 * gain(c, best_n):+.0f}" for name, c in cases.items())))
    figures = {"cases": cases, "samples": samples, "temperature": args.temperature, "best_common_n": best_n,
               "best_gain_per_base": best_gains}
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
