"""Run every benchmark in sequence and print a summary table.

``.venv/bin/python benchmarks/run_all.py [--quick]`` runs every ``benchmarks/<name>.py`` in its own
subprocess (passing ``--quick`` through), streams its output, then reads the result file it wrote
and prints one summary row per benchmark. Exit status 0 if every benchmark passed, 1 otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence

import readme_table
from common import BENCH_DIR, markdown_table, parse_args, result_path

#: Run first, in this order (cheap contract checks first, the long expert sweep last); any other
#: ``benchmarks/*.py`` script follows, alphabetically.
ORDER = ("env_contract", "bad_input", "replay", "env_speed", "dataset_memory", "experts")
NOT_BENCHMARKS = frozenset({"common", "run_all", "readme_table"})


def benchmarks() -> list[str]:
    """Every benchmark script in ``benchmarks/``: the known ones in :data:`ORDER`, then the rest."""
    names = [p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_BENCHMARKS and not p.stem.startswith("_")]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    rows = []
    failed = []
    for name in benchmarks():
        print(f"\n===== {name} =====", flush=True)
        started, t0 = time.time(), time.perf_counter()
        proc = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), *(["--quick"] if args.quick else [])],
                              check=False)
        seconds = time.perf_counter() - t0
        path = result_path(name, args.quick)
        targets: list[dict[str, object]] = []
        passed, failing = 0, "no result file from this run"
        if path.exists() and path.stat().st_mtime >= started:  # not a file left by an earlier run
            try:
                targets = json.loads(path.read_text())["targets"]
                passed = sum(bool(t["passed"]) for t in targets)
                failing = ", ".join(str(t["name"]) for t in targets if not t["passed"])
            except (OSError, json.JSONDecodeError, KeyError) as err:
                failing = f"unreadable result file: {err}"
        status = "PASS" if proc.returncode == 0 else ("FAIL" if proc.returncode == 1 else f"ERROR ({proc.returncode})")
        if proc.returncode != 0:
            failed.append(name)
        rows.append((name, status, f"{passed}/{len(targets)}" if targets else "-", failing, f"{seconds:.0f}"))
    print(f"\n## Summary{' (quick)' if args.quick else ''}\n")
    print(markdown_table(["benchmark", "status", "targets passed", "failing targets", "seconds"], rows))
    if not args.quick:
        readme_table.update()  # the README's results table always reflects the latest full results
        print("README.md results section regenerated from benchmarks/results/*.json")
    print("PASS" if not failed else f"FAIL: {', '.join(failed)}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
