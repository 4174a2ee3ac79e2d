"""Shared plumbing of the benchmark scripts: arguments, targets, markdown tables and result files.

Every benchmark ``benchmarks/<name>.py``:

* takes ``--quick`` (a much smaller run for smoke tests; the default is the full measurement),
* prints a markdown table, then one final line ``PASS`` or ``FAIL: <target>, ...``,
* writes ``benchmarks/results/<name>.json`` (``<name>.quick.json`` for quick runs, so a smoke test
  never overwrites a full result) with the figures, the targets, the command line, the commit, the
  machine, a timestamp and the wall time,
* exits 0 when every target passes and 1 otherwise.

Import it from a benchmark script as ``from common import ...``: the scripts run as
``.venv/bin/python benchmarks/<name>.py``, which puts ``benchmarks/`` first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
#: Our own tasks (the Fetch tasks are third-party adapters and get informational figures only).
OUR_TASKS = ("Lift", "PegInsert", "PushAround")
#: One camera per task for the "with a camera" variants.
DEFAULT_CAMERA = {
    "Lift": "front", "PegInsert": "front", "PushAround": "front",
    "FetchPush-v4": "external_camera_0", "FetchPickAndPlace-v4": "external_camera_0",
}

_STARTED = time.perf_counter()


@dataclass
class Target:
    """One pass/fail criterion: ``value <op> threshold``.

    ``op`` is one of ``>=``, ``>``, ``<=``, ``<``, ``==``. ``value`` may be a bool with
    ``op="=="`` and ``threshold=True`` for yes/no targets.
    """

    name: str
    value: Any
    op: str
    threshold: Any
    passed: bool
    detail: str = ""


_OPS = {
    ">=": lambda v, t: v >= t,
    ">": lambda v, t: v > t,
    "<=": lambda v, t: v <= t,
    "<": lambda v, t: v < t,
    "==": lambda v, t: v == t,
}


def target(name: str, value: Any, op: str, threshold: Any, detail: str = "") -> Target:
    """A :class:`Target`, evaluated now. A NaN or ``None`` value always fails."""
    if op not in _OPS:
        raise ValueError(f"unknown comparison {op!r}; use one of {sorted(_OPS)}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        passed = False
    else:
        passed = bool(_OPS[op](value, threshold))
    return Target(name, value, op, threshold, passed, detail)


def parse_args(description: str, argv: Sequence[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The common command line: ``--quick``, plus whatever ``extra`` adds to the parser."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a much smaller run for smoke-testing (writes <name>.quick.json)")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def fmt(value: float, digits: int = 3) -> str:
    """A float with ``digits`` significant digits (``"nan"`` for NaN)."""
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}g}"


def pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; ``|`` and newlines inside cells are escaped."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> str:
    rows = [(t.name, _short(t.value), f"{t.op} {_short(t.threshold)}", "pass" if t.passed else "**FAIL**", t.detail)
            for t in targets]
    return markdown_table(["target", "value", "threshold", "result", "detail"], rows)


def _short(value: Any) -> str:
    return fmt(value, 4) if isinstance(value, float) else str(value)


#: Outputs of the benchmarks themselves: changing them does not change what is measured.
_OUTPUT_PATHS = ("benchmarks/results/", "README.md")


def git_commit() -> str:
    """``git rev-parse --short HEAD``, plus ``-dirty`` when tracked files other than the benchmarks'
    own outputs (result files, the README's generated table) have uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = any(line and not line.startswith("??") and not line[3:].startswith(_OUTPUT_PATHS)
                for line in status.splitlines())
    return head + ("-dirty" if dirty else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where the figures were measured. The load average matters: speed ratios are measured in one
    run, but a busy machine still adds noise (and the absolute render rate depends on it)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "versions": {p: _version(p) for p in ("roboloop", "torch", "mujoco", "gymnasium", "gymnasium-robotics",
                                              "numpy", "h5py")},
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def current_rss_mb() -> float:
    """Current resident set size of this process, MB (``VmRSS`` of ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmRSS in /proc/self/status")


def result_path(name: str, quick: bool) -> Path:
    return RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")


def write_result(name: str, figures: dict[str, Any], targets: Sequence[Target], table_md: str, *,
                 quick: bool) -> Path:
    """Write ``benchmarks/results/<name>[.quick].json`` and return its path."""
    record = {
        "benchmark": name,
        "quick": quick,
        "figures": figures,
        "targets": [asdict(t) for t in targets],
        "passed": all(t.passed for t in targets),
        "table_md": table_md,
        "command": shlex.join(sys.orig_argv),
        "commit": git_commit(),
        "machine": machine_info(),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - _STARTED, 2),
    }
    path = result_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finish(name: str, figures: dict[str, Any], targets: Sequence[Target], table_md: str, *, quick: bool) -> int:
    """Print the table and the targets, write the result file, print ``PASS``/``FAIL: ...``; the exit status."""
    full_md = f"{table_md}\n\n{targets_table(targets)}"
    print(f"\n## {name}{' (quick)' if quick else ''}\n")
    print(full_md)
    path = write_result(name, figures, targets, full_md, quick=quick)
    print(f"\nresult: {path.relative_to(REPO_ROOT)}  ({time.perf_counter() - _STARTED:.1f} s)")
    failed = [t.name for t in targets if not t.passed]
    print("PASS" if not failed else f"FAIL: {', '.join(failed)}", flush=True)
    return 0 if not failed else 1
