"""Teacher-student distillation: does the image student reach 80% of its state teacher's success on the real proxy?

In one run:

1. the teacher: ``roboloop quickstart out_dir=outputs/bench/quickstart_Lift`` (kept once made): Lift demonstrations,
   a diffusion policy on ``observation.state`` and residual PPO on it; the teacher is that BC + residual policy
   (``residual/checkpoints/best``), as in ResiP;
2. ``roboloop distill <teacher> ...`` (timed): round 0 labels ``--episodes-per-round`` teacher rollouts, then
   ``--rounds`` DAgger rounds (the student acts with probability 1 - 0.5^r), every visited observation labelled with
   the teacher's action, all under visual randomization (camera pose and angle, light, colours) in the teacher's
   simulation; after each round the image student (84x84 ``front`` and ``wrist`` cameras and
   ``observation.proprio``, never the object poses) trains on every label so far (``--train-steps`` per round);
3. at the end, teacher and student on the same ``real_episodes`` starts of the real proxy (secret seed
   ``--secret-seed``: hidden physics, one step of action latency on seed 0, and its own camera pose, lighting and
   colours, which the student has not seen).

The student is a CPU-sized diffusion policy: its camera encoders have channels [16, 32, 32, 64] (the default
[32, 64, 64, 128] trains at about 0.94 s per batch of 64 on 2 cores, 0.26 s for these: measured on this machine),
batch 64; the rest is the default diffusion config (UNet [32, 64], 2 observation steps, horizon 16, 8 actions
executed, 10 DDIM steps).

Target (issue 6): student / teacher real success >= 0.8.

    .venv/bin/python benchmarks/distill.py [--secret-seed 0] [--rounds 2] [--train-steps 3000] [--quick]

``--quick`` distills ``bc_success.py --quick``'s tiny Lift base through one tiny round (plumbing only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bc_success import roboloop_exe, run_measured, shown
from common import REPO_ROOT, finish, markdown_table, parse_args, target

from roboloop.core.checkpoint import checkpoint_exists
from roboloop.core.metrics import format_rate

NAME = "distill"
TEACHER_DIR = Path("outputs/bench/quickstart_Lift")
TEACHER = TEACHER_DIR / "residual" / "checkpoints" / "best"
QUICK_TEACHER = Path("outputs/bench_quick/Lift_diffusion/checkpoints/last")
STUDENT = ["student.vision.channels=[16,32,32,64]", "train.batch_size=64"]
QUICK = ["rounds=1", "episodes_per_round=2", "train.steps=2", "train.batch_size=4", "eval_episodes=1",
         "real_episodes=2", "student.vision.channels=[8,8]", "student.down_dims=[8,16]"]
MIN_RATIO = 0.8


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret-seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="DAgger rounds after round 0")
    parser.add_argument("--episodes-per-round", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=3000, help="student gradient steps per round")
    parser.add_argument("--real-episodes", type=int, default=50, help="real-proxy episodes for each of them")


def make_teacher() -> dict[str, Any] | None:
    """Make the quickstart's BC + residual policy on Lift unless ``TEACHER_DIR`` holds it; how it was made (None:
    it was kept from an earlier run)."""
    if checkpoint_exists(REPO_ROOT / TEACHER):
        return None
    cmd = [roboloop_exe(), "quickstart", f"out_dir={TEACHER_DIR}"]
    started = time.perf_counter()
    run = run_measured(cmd, REPO_ROOT / TEACHER_DIR / "bench_quickstart.log")
    if run["rc"] != 0:
        raise SystemExit(f"{NAME}: quickstart exited with status {run['rc']} (log: "
                         f"{TEACHER_DIR / 'bench_quickstart.log'})")
    return {"command": shown(cmd), "minutes": round((time.perf_counter() - started) / 60, 2)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra=_extra_args)
    if args.quick:
        teacher, made = QUICK_TEACHER, None
        if not checkpoint_exists(REPO_ROOT / teacher):
            raise SystemExit(f"{NAME}: {teacher} is missing: run benchmarks/bc_success.py --quick first")
    else:
        teacher, made = TEACHER, make_teacher()
    out = Path("outputs") / ("bench_quick" if args.quick else "bench") / f"distill_seed{args.secret_seed}"
    if args.quick:
        shutil.rmtree(REPO_ROOT / out, ignore_errors=True)
    settings = QUICK if args.quick else [f"rounds={args.rounds}", f"episodes_per_round={args.episodes_per_round}",
                                         f"train.steps={args.train_steps}", f"real_episodes={args.real_episodes}",
                                         *STUDENT]
    cmd = [roboloop_exe(), "distill", str(teacher), f"secret_seed={args.secret_seed}", f"out_dir={out}",
           "resume=true", *settings]
    started = time.perf_counter()
    run = run_measured(cmd, REPO_ROOT / out / "bench_distill.log")
    minutes = (time.perf_counter() - started) / 60
    if run["rc"] != 0:
        raise SystemExit(f"{NAME}: distill exited with status {run['rc']} (log: {out / 'bench_distill.log'})")
    report = json.loads((REPO_ROOT / out / "report.json").read_text())
    real, rounds = report["real"], report["rounds"]
    t, s = real["teacher"], real["student"]
    ratio = s["successes"] / t["successes"] if t["successes"] else float("nan")

    round_rows = [(r["round"], f"{r['beta']:.2f}", r["episodes"], f"{r['teacher_steps']} / {r['student_steps']}",
                   "" if r["sim_success"] is None else f"{100 * r['sim_success']:.0f}%") for r in rounds]
    teacher_sim = report.get("teacher_sim_success")  # the teacher on the same simulated episodes
    if teacher_sim is not None:
        round_rows.append(("teacher", "", "", "", f"{100 * teacher_sim:.0f}%"))
    table = (f"`{shown(cmd)}` ({minutes:.1f} min; teacher: `{teacher}`"
             + (f", made by `{made['command']}` in {made['minutes']:.1f} min" if made else "") + "):\n\n"
             + markdown_table(["round", "beta (teacher's share)", "labelled episodes",
                               "steps executed by teacher / student", "success, randomized sim (same episodes)"],
                              round_rows)
             + "\n\n" + markdown_table(
                 [f"real proxy (secret seed {args.secret_seed}), same {t['episodes']} starts",
                  "real success [Wilson 95%]"],
                 [("teacher (state)", format_rate(t["successes"], t["episodes"])),
                  ("image student (cameras + proprio)", format_rate(s["successes"], s["episodes"])),
                  ("student / teacher", f"{ratio:.2f}")]))
    figures = {"secret_seed": args.secret_seed, "teacher": str(teacher), "teacher_made": made, "minutes": minutes,
               "peak_mb": run["peak_mb"], "command": shown(cmd), "rounds": rounds, "teacher_sim_success": teacher_sim,
               "real": real, "ratio": ratio, "output": str(out)}
    detail = (f"student {format_rate(s['successes'], s['episodes'])} vs teacher "
              f"{format_rate(t['successes'], t['episodes'])}")
    targets = ([target("episodes_counted", s["episodes"], "==", t["episodes"])] if args.quick else
               [target("student_over_teacher_real_success", round(ratio, 4), ">=", MIN_RATIO, detail)])
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
