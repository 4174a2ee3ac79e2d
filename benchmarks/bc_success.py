"""Behavior cloning success: each CPU preset trained from scripted-expert demos, then evaluated over 200 episodes.

A case is ``<task>_<policy>``: ``roboloop train-bc task=<task> policy=<policy>`` with the CPU preset
(``roboloop/configs/train_bc/preset/<task>_<policy>.yaml``) into ``outputs/bench/<case>`` (with
``train.resume=true``: a killed benchmark continues where it stopped, a finished training returns at once),
then ``roboloop eval`` of its ``best`` checkpoint (``last`` when there is none) over ``--episodes`` seeded
episodes (4 envs). Both run as subprocesses; the peak memory is the summed RSS of the process tree, polled every
0.5 s (shared pages are counted once per process, so it errs high). Evaluation seeds start at 200000, disjoint
from the demonstrations (seeds 0...) and from the 20 episodes (seeds 100000...) that picked ``best`` during
training. For ``Lift_diffusion`` the same checkpoint is also evaluated with DDIM 4 and 10 steps and DDPM 100
steps, next to the DDPM-100 / DDIM-10 latency ratio of ``benchmarks/results/diffusion_latency.json``.

Results accumulate: ``benchmarks/results/bc_success.json`` keeps every case run so far (each with its commit) and
an invocation replaces only the cases it runs, so the cases can be run in separate sessions. Targets are computed
over every case present: success >= 95% (Lift_diffusion), >= 90% (PushAround_diffusion,
FetchPickAndPlace-v4_diffusion), <= 80% (PegInsert_*: room left for residual RL), PushAround_mlp at least 20
points below PushAround_diffusion (when both are present); every preset trains in <= 30 minutes with peak memory
<= 4000 MB. PushAround_act is reported only.

    .venv/bin/python benchmarks/bc_success.py [--cases Lift_diffusion,PushAround_mlp] [--episodes 200] [--quick]

``--quick`` trains tiny networks for 20 steps on 4 demos into ``outputs/bench_quick/<case>`` (removed first, so
every smoke test starts from scratch), evaluates 4 episodes and only checks the plumbing (the run completes, the
episodes are counted); by default it runs Lift_diffusion and PushAround_mlp.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psutil
from common import REPO_ROOT, Target, finish, git_commit, markdown_table, parse_args, result_path, target, write_result

from roboloop.core.checkpoint import checkpoint_exists, read_meta
from roboloop.core.metrics import format_rate, wilson_interval

NAME = "bc_success"
#: Every case, in the order of the issue's acceptance figures.
CASES = ("Lift_diffusion", "PushAround_diffusion", "PushAround_mlp", "PushAround_act",
         "FetchPickAndPlace-v4_diffusion", "PegInsert_diffusion", "PegInsert_act")
QUICK_CASES = ("Lift_diffusion", "PushAround_mlp")
MIN_SUCCESS = {"Lift_diffusion": 0.95, "PushAround_diffusion": 0.90, "FetchPickAndPlace-v4_diffusion": 0.90}
MAX_SUCCESS = {"PegInsert_diffusion": 0.80, "PegInsert_act": 0.80}  # leaves room for residual RL
#: PushAround_mlp (unimodal) must be at least this far below PushAround_diffusion.
GAP_CASES, MIN_GAP = ("PushAround_diffusion", "PushAround_mlp"), 0.20
MAX_TRAIN_MINUTES = 30.0
MAX_PEAK_MB = 4000.0  # MB = 1e6 bytes
EPISODES, QUICK_EPISODES = 200, 4
EVAL_ENVS = 4
#: Evaluation episode k uses seed EVAL_SEED + k: disjoint from demos (0...) and from training's evaluation (100000...).
EVAL_SEED = 200_000
#: (label, sampler, steps): the Lift_diffusion checkpoint evaluated with each sampler.
LIFT_SAMPLERS = (("DDIM-4", "ddim", 4), ("DDIM-10", "ddim", 10), ("DDPM-100", "ddpm", 100))
SAMPLER_CASE = "Lift_diffusion"
LATENCY_KEYS = {"DDIM-4": "unet ddim-4", "DDIM-10": "unet ddim-10", "DDPM-100": "unet ddpm-100"}
QUICK_STEPS = 20
QUICK_TRAIN = ["n_demos=4", "train.batch_size=16", "train.eval_every=0", "evaluate=false"]
QUICK_POLICY = {
    "diffusion": ["policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.n_groups=4"],
    "act": ["policy.dim_model=16", "policy.n_heads=2", "policy.dim_feedforward=32", "policy.n_encoder_layers=1",
            "policy.n_vae_encoder_layers=1", "policy.latent_dim=4"],
    "mlp": ["policy.hidden_dims=[16]"],
}
POLICIES = tuple(QUICK_POLICY)
POLL_SECONDS = 0.5
#: Written into a case's output directory when its training ends: its figures, for a later invocation.
STORED_TRAIN = "bench_train.json"


# ------------------------------------------------------------------------------------------ subprocesses
def roboloop_exe() -> str:
    """The ``roboloop`` console script of this interpreter's environment."""
    exe = Path(sys.executable).parent / "roboloop"
    return str(exe) if exe.exists() else (shutil.which("roboloop") or "roboloop")


def shown(cmd: Sequence[str]) -> str:
    """The command as a user would type it (``roboloop ...``)."""
    return shlex.join(["roboloop", *cmd[1:]])


def tree_rss(proc: psutil.Process) -> int:
    """Summed RSS (bytes) of ``proc`` and all its descendants; processes that vanish meanwhile count 0."""
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def _pump(stream: IO[str], log: IO[str], prefix: str) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        print(f"{prefix}{line}", end="", flush=True)


def run_measured(cmd: list[str], log_path: Path) -> dict[str, Any]:
    """Run ``cmd`` from the repository root, streaming its output to the console and (appended) to ``log_path``.

    Returns the exit status, the wall seconds and the peak summed RSS of its process tree (MB).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shown(cmd)}", flush=True)
    peak = 0
    with open(log_path, "a") as log:
        log.write(f"\n# {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}  $ {shown(cmd)}\n")
        log.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        reader = threading.Thread(target=_pump, args=(proc.stdout, log, "    "), daemon=True)
        reader.start()
        try:
            root = psutil.Process(proc.pid)
            while True:
                peak = max(peak, tree_rss(root))
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    pass
        except psutil.NoSuchProcess:  # it ended before the first poll
            proc.wait()
        except BaseException:  # Ctrl-C or a kill of the benchmark: do not leave the child running
            proc.terminate()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        reader.join()
    return {"rc": proc.returncode, "wall_seconds": round(wall, 2), "peak_mb": round(peak / 1e6, 1)}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------ one case
def split_case(case: str) -> tuple[str, str]:
    task, _, policy = case.rpartition("_")
    if not task or policy not in POLICIES:
        raise SystemExit(f"bc_success: case {case!r} is not <task>_<policy> with policy one of {list(POLICIES)}")
    return task, policy


def train(case: str, out_dir: Path, quick: bool, previous: dict[str, Any] | None) -> dict[str, Any]:
    """Train (or resume, or find finished) one case; the training figures.

    ``train_seconds`` is ``summary.json``'s (the trainer's time, periodic evaluations included). A resumed run
    only times the resumed part: ``train_minutes`` then extrapolates it to the whole run. When the training had
    already finished, the figures of the earlier complete run are kept (from the previous result of this
    benchmark if it recorded the same run, else from the ``summary.json`` found before this invocation, whose
    peak memory is unknown).
    """
    task, policy = split_case(case)
    here = REPO_ROOT / out_dir  # out_dir is relative to the repository root, where the commands run
    last = here / "checkpoints" / "last"
    start_step = int(read_meta(last).get("step", 0)) if checkpoint_exists(last) else 0
    summary_before = _read_json(here / "summary.json")
    cmd = [roboloop_exe(), "train-bc", f"task={task}", f"policy={policy}", f"out_dir={out_dir}",
           "train.progress=false", "train.resume=true"]
    if quick:
        cmd += [*QUICK_TRAIN, f"train.steps={QUICK_STEPS}", *QUICK_POLICY[policy]]
    run = run_measured(cmd, here / "bench_train.log")
    summary = _read_json(here / "summary.json")
    record: dict[str, Any] = {"command": shown(cmd), "rc": run["rc"], "wall_seconds": run["wall_seconds"],
                              "start_step": start_step}
    if run["rc"] != 0 or summary is None:
        record["error"] = f"train-bc exited with status {run['rc']} (log: {out_dir / 'bench_train.log'})"
        return record
    steps = int(summary["steps"])
    record.update(steps=steps, final_loss=summary.get("final_loss"), best_success_during_training=summary.get(
        "best_success"), summary=summary)
    trained = steps - start_step
    if trained <= 0:  # finished before this invocation: keep the figures of the run that did the work
        # bench_train.json is written as soon as a training ends, so it survives a benchmark killed during
        # evaluation; the previous result of this benchmark is the fallback.
        old = _read_json(here / STORED_TRAIN) or (previous or {}).get("train") or {}
        if old.get("steps") == steps and "train_minutes" in old and "error" not in old:
            record.update({k: old.get(k) for k in ("train_seconds", "train_minutes", "peak_mb", "commit",
                                                   "measured_wall_seconds")})
            source = old.get("source", "measured")
            record["source"] = source if source.startswith("stored") else f"stored: {source}"
            return record
        # Trained outside this benchmark: only summary.json's time is known (and a finished run resumed
        # again rewrites summary.json with ~0 s, hence STORED_TRAIN below, which keeps this first reading).
        before = summary_before or summary
        record.update(train_seconds=before["train_seconds"], train_minutes=before["train_seconds"] / 60,
                      peak_mb=None, commit=None, source="stored: summary.json of a training finished before this "
                      "benchmark ran (peak memory not measured: move the output directory away to retrain)")
        (here / STORED_TRAIN).write_text(json.dumps(record, indent=2) + "\n")
        return record
    record.update(train_seconds=summary["train_seconds"], peak_mb=run["peak_mb"], measured_wall_seconds=run[
        "wall_seconds"])
    if start_step > 0:
        record["train_minutes"] = summary["train_seconds"] * steps / trained / 60
        record["source"] = (f"resumed at step {start_step} of {steps}: time extrapolated from the "
                            f"{trained} steps trained now, memory of the resumed part")
    else:
        record["train_minutes"] = summary["train_seconds"] / 60
        record["source"] = "measured"
    record["commit"] = git_commit()
    (here / STORED_TRAIN).write_text(json.dumps(record, indent=2) + "\n")
    return record


def evaluate(checkpoint: Path, out_dir: Path, episodes: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    """``roboloop eval`` of ``checkpoint`` into ``out_dir``; success, Wilson interval, return and length."""
    cmd = [roboloop_exe(), "eval", f"checkpoint={checkpoint}", f"n_episodes={episodes}", f"n_envs={EVAL_ENVS}",
           f"seed={EVAL_SEED}", "progress=false", f"out_dir={out_dir}", *extra]
    eval_json = REPO_ROOT / out_dir / "eval.json"
    eval_json.unlink(missing_ok=True)  # never read a file left by an earlier run
    run = run_measured(cmd, REPO_ROOT / out_dir / "bench_eval.log")
    record: dict[str, Any] = {"command": shown(cmd), "checkpoint": str(checkpoint), "out_dir": str(out_dir),
                              "rc": run["rc"], "wall_seconds": run["wall_seconds"], "peak_mb": run["peak_mb"]}
    result = _read_json(eval_json)
    if run["rc"] != 0 or result is None:
        record["error"] = f"eval exited with status {run['rc']} (log: {out_dir / 'bench_eval.log'})"
        return record
    n = len(result["episodes"])
    successes = sum(bool(e["success"]) for e in result["episodes"])
    record.update(n_episodes=n, successes=successes, success_rate=successes / n if n else float("nan"),
                  wilson95=list(wilson_interval(successes, n)) if n else None, mean_return=result["mean_return"],
                  mean_length=result["mean_length"], eval_seconds=result["seconds"])
    if n != episodes:
        record["error"] = f"eval.json holds {n} episodes, {episodes} were asked for"
    return record


def run_case(case: str, quick: bool, episodes: int, previous: dict[str, Any] | None) -> dict[str, Any]:
    task, policy = split_case(case)
    out_dir = Path("outputs") / ("bench_quick" if quick else "bench") / case
    if quick:
        shutil.rmtree(REPO_ROOT / out_dir, ignore_errors=True)  # the smoke test's own scratch directory
    print(f"\n=== {case} ===", flush=True)
    entry: dict[str, Any] = {"case": case, "task": task, "policy": policy, "commit": git_commit(), "quick": quick,
                             "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                             "out_dir": str(out_dir), "requested_episodes": episodes}
    t0 = time.perf_counter()
    entry["train"] = train(case, out_dir, quick, previous)
    if "error" in entry["train"]:
        entry["error"] = entry["train"]["error"]
        return entry
    best, last = out_dir / "checkpoints" / "best", out_dir / "checkpoints" / "last"
    checkpoint = best if checkpoint_exists(REPO_ROOT / best) else last
    entry["eval"] = evaluate(checkpoint, out_dir / f"eval{episodes}", episodes)
    if "error" in entry["eval"]:
        entry["error"] = entry["eval"]["error"]
    if case == SAMPLER_CASE:
        entry["samplers"] = {}
        for label, sampler, steps in LIFT_SAMPLERS:
            entry["samplers"][label] = evaluate(
                checkpoint, out_dir / f"eval{episodes}_{sampler}{steps}", episodes,
                [f"sampler={sampler}", f"num_inference_steps={steps}"])
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    return entry


# ------------------------------------------------------------------------------------------ targets, tables
def case_targets(cases: dict[str, dict[str, Any]], quick: bool) -> list[Target]:
    targets: list[Target] = []
    for case, e in cases.items():
        if "error" in e:
            targets.append(target(f"completed[{case}]", False, "==", True, e["error"]))
            continue
        ev, tr = e["eval"], e["train"]
        if quick:  # tiny networks trained for 20 steps: only the plumbing is checked
            targets.append(target(f"episodes_counted[{case}]", ev["n_episodes"], "==", e["requested_episodes"]))
            targets.append(target(f"train_steps[{case}]", tr["steps"], "==", QUICK_STEPS))
        elif case in MIN_SUCCESS:
            targets.append(target(f"success[{case}]", ev["success_rate"], ">=", MIN_SUCCESS[case],
                                  format_rate(ev["successes"], ev["n_episodes"])))
        elif case in MAX_SUCCESS:
            targets.append(target(f"success[{case}]", ev["success_rate"], "<=", MAX_SUCCESS[case],
                                  format_rate(ev["successes"], ev["n_episodes"]) + "; room left for residual RL"))
        targets.append(target(f"train_minutes[{case}]", _round(tr.get("train_minutes"), 2), "<=", MAX_TRAIN_MINUTES,
                              tr.get("source", "")))
        targets.append(target(f"peak_memory_mb[{case}]", tr.get("peak_mb"), "<=", MAX_PEAK_MB,
                              "summed RSS of the train-bc process tree" if tr.get("peak_mb") is not None
                              else tr.get("source", "")))
        for label, s in e.get("samplers", {}).items():
            if "error" in s:
                targets.append(target(f"completed[{case} {label}]", False, "==", True, s["error"]))
    diff, mlp = (cases.get(c) for c in GAP_CASES)
    if not quick and diff and mlp and "error" not in diff and "error" not in mlp:
        rate_diff, rate_mlp = diff["eval"]["success_rate"], mlp["eval"]["success_rate"]
        targets.append(target(f"success_gap[{GAP_CASES[0]} - {GAP_CASES[1]}]", round(rate_diff - rate_mlp, 4), ">=",
                              MIN_GAP, f"diffusion {100 * rate_diff:.1f}%, mlp {100 * rate_mlp:.1f}%"))
    return targets


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def goal(case: str) -> str:
    """The success target of ``case`` in words."""
    if case in MIN_SUCCESS:
        return f"≥ {100 * MIN_SUCCESS[case]:.0f}%"
    if case in MAX_SUCCESS:
        return f"≤ {100 * MAX_SUCCESS[case]:.0f}%"
    if case == GAP_CASES[1]:
        return f"≤ {GAP_CASES[0]} − {100 * MIN_GAP:.0f} points"
    return "reported"


def _target_text(case: str, targets: list[Target], quick: bool) -> str:
    if quick:
        return "plumbing only (quick)"
    mine = [t for t in targets if t.name.startswith(("success[", "success_gap[")) and t.name.endswith(f"{case}]")]
    if case == GAP_CASES[1] and not mine:
        return f"{goal(case)} (needs both)"
    return goal(case) + "".join(f": {'pass' if t.passed else '**FAIL**'}" for t in mine)


def cases_table(cases: dict[str, dict[str, Any]], order: Sequence[str], targets: list[Target], quick: bool) -> str:
    rows = []
    for case in order:
        e = cases.get(case)
        if e is None:
            rows.append((case, "not run", "", "", "", goal(case), ""))
            continue
        tr, ev = e["train"], e.get("eval") or {}
        if "error" in e:
            rows.append((case, f"**error**: {e['error']}", "", "", "", "", f"`{tr['command']}`"))
            continue
        minutes = tr.get("train_minutes")
        time_txt = "n/a" if minutes is None else f"{minutes:.1f} min"
        if tr.get("source", "measured") != "measured":
            time_txt += " (resumed, extrapolated)" if tr["source"].startswith("resumed") else " (stored)"
        peak_txt = "not measured" if tr.get("peak_mb") is None else f"{tr['peak_mb']:.0f} MB"
        rows.append((case, format_rate(ev["successes"], ev["n_episodes"]), ev["n_episodes"], time_txt, peak_txt,
                     _target_text(case, targets, quick), f"`{tr['command']}` then `{ev['command']}`"))
    return markdown_table(["case", "success [Wilson 95%]", "episodes", "train time", "peak memory", "target",
                           "command"], rows)


def latency() -> dict[str, Any] | None:
    """Batch-1 act latency (2 torch threads) per sampler and the DDPM-100 / DDIM-10 ratio, from diffusion_latency."""
    result = _read_json(result_path("diffusion_latency", quick=False)) or {}
    try:
        threads = result["figures"]["threads"]["2"]
        return {"ddpm100_over_ddim10": threads["ddpm100_over_ddim10"], "commit": result["commit"],
                "median_ms": {label: threads["cases"][key]["median_ms"] for label, key in LATENCY_KEYS.items()}}
    except (TypeError, KeyError):
        return None


def samplers_table(entry: dict[str, Any], lat: dict[str, Any] | None) -> str:
    rows = []
    for label, _, _ in LIFT_SAMPLERS:
        s = entry["samplers"].get(label, {})
        ms = f"{lat['median_ms'][label]:.2f}" if lat else "n/a"
        if "error" in s or not s:
            rows.append((label, f"**error**: {s.get('error', 'not run')}", "", ms, ""))
        else:
            rows.append((label, format_rate(s["successes"], s["n_episodes"]), f"{s['wall_seconds']:.0f}", ms,
                         f"`{s['command']}`"))
    ratio = (f"DDPM-100 / DDIM-10 latency: {lat['ddpm100_over_ddim10']:.1f}x (benchmarks/results/"
             f"diffusion_latency.json, commit {lat['commit']})") if lat else \
        "DDPM-100 / DDIM-10 latency: n/a (run benchmarks/diffusion_latency.py)"
    return (f"{SAMPLER_CASE}: the same checkpoint with each sampler (act latency: batch-1 median with 2 threads, "
            f"default UNet, from diffusion_latency). {ratio}.\n\n"
            + markdown_table(["sampler", "success [Wilson 95%]", "eval wall s", "act latency ms", "command"], rows))


# ------------------------------------------------------------------------------------------ main
def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default=None,
                        help=f"comma-separated cases (default: all: {','.join(CASES)}; quick: "
                             f"{','.join(QUICK_CASES)})")
    parser.add_argument("--episodes", type=int, default=None,
                        help=f"evaluation episodes per case (default {EPISODES}; quick {QUICK_EPISODES})")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra=_extra_args)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else \
        list(QUICK_CASES if args.quick else CASES)
    for case in wanted:
        split_case(case)
    episodes = args.episodes or (QUICK_EPISODES if args.quick else EPISODES)
    if episodes < 1:
        raise SystemExit("bc_success: --episodes must be >= 1")

    stored = _read_json(result_path(NAME, args.quick))
    cases: dict[str, dict[str, Any]] = dict((stored or {}).get("figures", {}).get("cases", {}))
    for case in wanted:
        entry = run_case(case, args.quick, episodes, cases.get(case))
        cases[case] = entry
        if "error" in entry:
            print(f"{case}: {entry['error']}", file=sys.stderr, flush=True)
        else:
            print(f"{case}: {format_rate(entry['eval']['successes'], entry['eval']['n_episodes'])}", flush=True)
        write_result(NAME, *report(cases, wanted, episodes, args.quick), quick=args.quick)  # kept if killed later
    return finish(NAME, *report(cases, wanted, episodes, args.quick), quick=args.quick)


def report(cases: dict[str, dict[str, Any]], wanted: Sequence[str], episodes: int,
           quick: bool) -> tuple[dict[str, Any], list[Target], str]:
    """Figures, targets and markdown over every case present (this invocation's and earlier ones)."""
    order = [*CASES, *sorted(set(cases) - set(CASES))]
    cases = {c: cases[c] for c in order if c in cases}
    targets = case_targets(cases, quick)
    lat = latency()
    parts = [f"Behavior cloning from scripted-expert demos with the CPU presets; this invocation ran "
             f"{', '.join(wanted)} ({episodes} evaluation episodes each, seeds from {EVAL_SEED}); any other case "
             f"comes from an earlier invocation (each case records its commit in the result file).",
             cases_table(cases, list(cases) if quick else order, targets, quick)]
    if len({e["commit"] for e in cases.values()}) > 1:
        parts.append("Commits: " + ", ".join(f"{c} {e['commit']}" for c, e in cases.items()) + ".")
    if SAMPLER_CASE in cases and "samplers" in cases[SAMPLER_CASE]:
        parts.append(samplers_table(cases[SAMPLER_CASE], lat))
    figures = {"cases": cases, "ran_now": list(wanted), "not_run": [c for c in CASES if c not in cases],
               "episodes": episodes, "eval_seed": EVAL_SEED, "eval_envs": EVAL_ENVS, "latency": lat,
               "limits": {"max_train_minutes": MAX_TRAIN_MINUTES, "max_peak_mb": MAX_PEAK_MB}}
    return figures, targets, "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
