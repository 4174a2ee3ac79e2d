"""Env contract: gymnasium's env checker, and "same seed, same trajectory", for every registered env.

What is measured, per registered task (our three and the two Fetch adapters):

* ``gymnasium.utils.env_checker.check_env(env.unwrapped)`` passes, state-only and with one camera
  (``render_mode="rgb_array"``, so the render checks run too). Every warning it emits is a failure
  unless it is on the short list of justified warnings below; the justified ones are reported.
* Same seed, same trajectory: two fresh envs, the same reset seed and the same pregenerated random
  action sequence (long enough to cross at least one time-limit reset; later resets are unseeded,
  so they also test that the env's own generator is reproducible) give bit-identical
  observations, rewards, terminated/truncated flags and infos. Checked state-only, with a camera
  (images included) and with randomization (friction, mass, observation noise, action latency).
* Informational: the state part of the trajectory is the same with and without a camera (the
  envs promise that rendering does not perturb the physics).

Why: everything downstream (seeded datasets, replay, evaluation with confidence intervals)
assumes that an env is a deterministic function of its seed and actions.
"""

from __future__ import annotations

import re
import struct
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from common import DEFAULT_CAMERA, Target, finish, markdown_table, parse_args, target, yes_no
from gymnasium.utils.env_checker import check_env

import roboloop  # noqa: F401  (registers the env ids, sets MUJOCO_GL)
from roboloop.envs import TASKS, make

NAME = "env_contract"
#: Warnings of check_env that are not failures, with the reason.
JUSTIFIED_WARNINGS: dict[str, str] = {
    r"A Box observation space (minimum|maximum) value is -?infinity": (
        "observation.state holds unbounded quantities (positions, velocities, goal offsets); infinite "
        "bounds are the gymnasium convention for them (gymnasium's own MuJoCo envs do the same)"
    ),
}
RANDOMIZATION: dict[str, Any] = {
    "friction_scale": (0.8, 1.2),
    "object_mass_scale": (0.8, 1.2),
    "obs_noise_std": 0.01,
    "action_latency_steps": (0, 2),
}
SEED = 123


def run_check_env(task: str, env_kwargs: dict[str, Any]) -> tuple[bool, list[str], list[str]]:
    """``(passed, unjustified problems, justified warnings)`` of ``check_env`` on a fresh env."""
    env = make(task, **env_kwargs)
    problems: list[str] = []
    justified: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
    except Exception as err:  # noqa: BLE001  (any failure of the checker is the finding)
        problems.append(f"{type(err).__name__}: {err}")
    finally:
        env.close()
    for w in caught:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(w.message)).strip()
        if any(re.search(pattern, message) for pattern in JUSTIFIED_WARNINGS):
            if message not in justified:
                justified.append(message)
        else:
            problems.append(f"{w.category.__name__}: {message}")
    return not problems, problems, justified


def rollout(task: str, env_kwargs: dict[str, Any], actions: np.ndarray, seed: int) -> list[tuple[Any, ...]]:
    """Every reset and step output of one fresh env driven by ``actions``, resetting when an episode ends."""
    env = make(task, **env_kwargs)
    try:
        obs, info = env.reset(seed=seed)
        records: list[tuple[Any, ...]] = [("reset", obs, info)]
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            records.append(("step", obs, reward, terminated, truncated, info))
            if terminated or truncated:
                obs, info = env.reset()
                records.append(("reset", obs, info))
    finally:
        env.close()
    return records


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where ``a`` and ``b`` differ bit for bit (arrays: dtype, shape and bytes), or ``None``."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        if a_arr.dtype != b_arr.dtype or a_arr.shape != b_arr.shape:
            return f"{path}: {a_arr.dtype}{a_arr.shape} vs {b_arr.dtype}{b_arr.shape}"
        if a_arr.tobytes() != b_arr.tobytes():
            return f"{path}: values differ (max |diff| {np.max(np.abs(a_arr.astype(float) - b_arr)):.3g})"
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            diff = first_difference(a[key], b[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if type(a) is not type(b):
        return f"{path}: type {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, float):
        return None if struct.pack("<d", a) == struct.pack("<d", b) else f"{path}: {a!r} vs {b!r}"
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def state_part(records: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The records with image observations dropped (to compare a camera run with a state-only run)."""
    out = []
    for record in records:
        obs = {k: v for k, v in record[1].items() if k == "observation.state"}
        out.append((record[0], obs, *record[2:]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    figures: dict[str, Any] = {"justified_warnings": JUSTIFIED_WARNINGS, "randomization": RANDOMIZATION,
                               "envs": {}}
    for task, info in TASKS.items():
        camera = DEFAULT_CAMERA[task]
        variants: dict[str, dict[str, Any]] = {
            "state": {},
            f"camera {camera}": {"cameras": [camera], "render_mode": "rgb_array"},
            "randomized": {"randomization": RANDOMIZATION},
        }
        n_steps = 60 if args.quick else info.max_episode_steps + 20
        probe = make(task)
        action_space = probe.action_space
        probe.close()
        rng = np.random.default_rng(0)
        actions = rng.uniform(action_space.low, action_space.high, (n_steps, *action_space.shape)).astype(np.float32)

        check: dict[str, Any] = {}
        for variant in ("state", f"camera {camera}"):
            ok, problems, justified = run_check_env(task, variants[variant])
            check[variant] = {"ok": ok, "problems": problems, "justified_warnings": justified}

        determinism: dict[str, Any] = {}
        runs: dict[str, list[tuple[Any, ...]]] = {}
        for variant, kwargs in variants.items():
            first = rollout(task, kwargs, actions, SEED)
            second = rollout(task, kwargs, actions, SEED)
            runs[variant] = first
            diff = first_difference(first, second)
            resets = sum(r[0] == "reset" for r in first) - 1  # after the seeded one
            determinism[variant] = {"ok": diff is None, "difference": diff, "steps": n_steps, "resets": resets}
        camera_diff = first_difference(state_part(runs["state"]), state_part(runs[f"camera {camera}"]))

        check_ok = all(c["ok"] for c in check.values())
        det_ok = all(d["ok"] for d in determinism.values())
        figures["envs"][task] = {"check_env": check, "deterministic": determinism,
                                 "camera_invariant_state": camera_diff is None, "camera_difference": camera_diff}
        rows.append((task, yes_no(check["state"]["ok"]), yes_no(check[f"camera {camera}"]["ok"]),
                     yes_no(determinism["state"]["ok"]), yes_no(determinism[f"camera {camera}"]["ok"]),
                     yes_no(determinism["randomized"]["ok"]), yes_no(camera_diff is None),
                     f"{n_steps} steps, {determinism['state']['resets']} unseeded reset(s)"))
        targets.append(target(f"check_env[{task}]", check_ok, "==", True,
                              "; ".join(p for c in check.values() for p in c["problems"])))
        targets.append(target(f"same_seed_same_trajectory[{task}]", det_ok, "==", True,
                              "; ".join(f"{v}: {d['difference']}" for v, d in determinism.items() if not d["ok"])))
        print(f"{task}: check_env {check_ok}, deterministic {det_ok}", file=sys.stderr, flush=True)

    table = markdown_table(
        ["env", "check_env ok (state)", "check_env ok (camera)", "deterministic (state)", "deterministic (camera)",
         "deterministic (randomized)", "state same with/without camera (info)", "compared"], rows)
    justified = sorted({w for e in figures["envs"].values() for c in e["check_env"].values()
                        for w in c["justified_warnings"]})
    notes = "\n".join(f"- justified check_env warning: `{w}`" for w in justified)
    reasons = "\n".join(f"  - `{p}`: {why}" for p, why in JUSTIFIED_WARNINGS.items())
    table = f"{table}\n\n{notes}\n{reasons}" if justified else table
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
