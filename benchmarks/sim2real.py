"""Iterative sim-to-real on the real proxy's PegInsert: does ``roboloop sim2real`` reach 90% within 100 real episodes?

In one run:

1. ``roboloop sim2real <nominal residual> secret_seed=<s> real_budget=100`` (timed): iteration 0 deploys the
   residual policy trained in the nominal simulation by ``residual_success.py`` (``outputs/bench/residual_PegInsert``);
   after each deployment 5 identification probes run on the proxy (the settling scripted expert); each iteration
   identifies the proxy from the probes so far, continues the residual in the identified simulation and deploys it
   again (20 real episodes per deployment; 3 iterations: 95 real episodes in all). Retraining and deployment run
   with ``hold_steps`` = the identified latency (``hold_for_latency``, the default): each retraining continues the
   residual (the nominal one first) for 960k env steps with 10 iterations of critic warm-up, and deploys the better
   of its best and last checkpoints on 100 further episodes of the identified simulation (``confirm_episodes``);
2. the nominal policy and the loop's final policy are each evaluated on the same ``--eval-episodes`` further
   real-proxy episodes (measurement only: these do not train anything), side by side;
3. every identification is scored against the proxy's hidden truth (``reveal_parameters``, benchmark-only).

Targets (issue 6): final real success >= 90% with <= 100 real episodes used by the loop; >= 20 points above the
nominal policy on the same evaluation episodes; the loop within 2 hours on 2 cores.

    .venv/bin/python benchmarks/sim2real.py [--secret-seed 0] [--eval-episodes 50] [--quick]

``--quick`` runs ``bc_success.py --quick``'s tiny Lift base through one tiny iteration (plumbing only).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from common import REPO_ROOT, finish, markdown_table, parse_args, target

from roboloop.cli.sim2real import sim_success_text
from roboloop.core.checkpoint import load_policy, read_meta
from roboloop.core.metrics import format_rate
from roboloop.sim2real import RealProxy, RealRobotEnv
from roboloop.sim2real.deploy import deploy
from roboloop.sim2real.real_robot import HIDDEN_SCALES, proxy_env_kwargs

NOMINAL = REPO_ROOT / "outputs" / "bench" / "residual_PegInsert" / "checkpoints" / "best"
QUICK_NOMINAL = REPO_ROOT / "outputs" / "bench_quick" / "Lift_diffusion" / "checkpoints" / "last"
QUICK = ["iterations=1", "episodes_per_iteration=3", "confirm_episodes=2", "probe_episodes=3", "real_budget=9",
         "identification.max_evaluations=16", "identification.popsize=4", "identification.rounds=1",
         "identification.min_steps=60", "train.n_envs=2", "train.ppo.n_steps=10", "train.ppo.total_env_steps=40",
         "train.ppo.eval_every=1", "train.ppo.critic_warmup_iterations=1", "train.eval.n_episodes=2",
         "train.reward_shaping=0", "train.reward_shaping_terms=null"]
MAX_MINUTES = 120.0


def main() -> int:
    def extra(parser) -> None:
        parser.add_argument("--secret-seed", type=int, default=0)
        parser.add_argument("--eval-episodes", type=int, default=50)

    args = parse_args(__doc__.splitlines()[0], extra=extra)
    nominal = QUICK_NOMINAL if args.quick else NOMINAL
    if not nominal.exists():
        raise SystemExit(f"{nominal} is missing: run benchmarks/{'bc' if args.quick else 'residual'}_success.py"
                         f"{' --quick' if args.quick else ''} first")
    out = REPO_ROOT / "outputs" / "bench" / ("sim2real_quick" if args.quick else f"sim2real_seed{args.secret_seed}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "roboloop.cli.main", "sim2real", str(nominal),
                    f"secret_seed={args.secret_seed}", f"out_dir={out}", "resume=true", "identification.n_workers=2",
                    *(QUICK if args.quick else [])], check=True, cwd=REPO_ROOT)
    minutes = (time.perf_counter() - started) / 60
    report = json.loads((out / "report.json").read_text())
    iterations = report["iterations"]
    final = iterations[-1]
    truth = RealProxy(report["task"], secret_seed=args.secret_seed).reveal_parameters()

    # The nominal and the final policy on the same further real-proxy episodes (measurement, not training data).
    episodes = 2 if args.quick else args.eval_episodes
    side_by_side = {}
    for name, checkpoint in (("nominal", str(nominal)), ("sim2real", final["checkpoint"])):
        # Each policy runs at the rate it was trained at (hold_steps in its env_kwargs), on the same hidden physics.
        kwargs = proxy_env_kwargs(read_meta(checkpoint).get("env_kwargs", {}))
        robot = RealRobotEnv(RealProxy(report["task"], secret_seed=args.secret_seed, env_kwargs=kwargs),
                             episode_budget=episodes)
        result = deploy(load_policy(checkpoint), robot, episodes, seed=77_000_000)
        robot.close()
        side_by_side[name] = {"successes": result.successes, "episodes": episodes, "rate": result.success_rate}
        print(f"{name}: {result.summary()}", flush=True)

    rows = []
    for entry in iterations:
        ident = report["trainings"].get(str(entry["iteration"]), {}).get("identification", {})
        # A scale sysid disowns is trained under the fallback range, so its estimate's error is not shown.
        errors = ", ".join(f"{k.replace('_scale', '')} {100 * (ident[k] / getattr(truth, k) - 1):+.0f}%"
                           if ident.get("identifiable", {}).get(k, True) else
                           f"{k.replace('_scale', '')} not identifiable (fallback range)"
                           for k in HIDDEN_SCALES if k in ident)
        hold = report["trainings"].get(str(entry["iteration"]), {}).get("hold_steps", 0)
        latency = (f"latency {ident['action_latency_steps']} (true {truth.action_latency_steps}); decides every "
                   f"{1 + hold} control steps") if ident else ""
        rows.append((entry["iteration"], format_rate(entry["real_successes"], entry["real_episodes"]),
                     entry["real_episodes_total"], sim_success_text(entry),
                     "; ".join(x for x in (errors, latency) if x) or "(nominal simulation)"))
    table = markdown_table(["iteration", "real success [Wilson 95%]", "real episodes used",
                            "success in its identified sim (best evaluation; deployed checkpoint)",
                            "identification error vs. the hidden truth"], rows)
    nominal_row, final_row = side_by_side["nominal"], side_by_side["sim2real"]
    table += "\n\n" + markdown_table(
        [f"same {episodes} further real-proxy episodes", "real success [Wilson 95%]"],
        [("trained once in the nominal simulation", format_rate(nominal_row["successes"], episodes)),
         (f"after the loop (iteration {final['iteration']})", format_rate(final_row["successes"], episodes))])
    table += f"\n\nLoop time: {minutes:.1f} min on this machine."
    figures = {"secret_seed": args.secret_seed, "minutes": minutes, "iterations": iterations,
               "trainings": report["trainings"], "side_by_side": side_by_side,
               "output": str(out.relative_to(REPO_ROOT))}
    targets = [
        target("final real success (loop's last deployment)", final["real_success"], ">=", 0.9),
        target("real episodes used by the loop", final["real_episodes_total"], "<=", 100),
        target("final minus nominal real success, same episodes", final_row["rate"] - nominal_row["rate"], ">=",
               0.2),
        target("loop time (minutes)", minutes, "<=", MAX_MINUTES),
    ]
    return finish("sim2real", figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
