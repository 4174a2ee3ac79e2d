"""Env speed: env steps/s against a bare ``mj_step`` loop doing the same physics, and 84x84 rendering rate.

1. Step overhead (target: ratio >= 0.85 for Lift, PegInsert, PushAround; informational for the
   Fetch adapters, which wrap third-party code). For each task, a fixed pregenerated random action
   sequence drives the env made by ``gym.make`` (all default wrappers, state only), resetting with
   seeds ``0, 1, 2...`` whenever an episode ends. One untimed pass records ``data.ctrl`` after every
   step (plus the mocap targets for Fetch, whose arm is mocap-driven) and the MuJoCo integration
   state after every reset. The reference loop restores those states at the same points and, each
   step, copies the recorded controls into ``data`` and calls ``mj_step(model, data,
   nstep=n_substeps)``: the same physics without the env. It is checked to be the same physics by
   comparing the integration state at the end of every episode with the env's (bit for bit). Env
   and reference are timed alternately, in 20 rounds of 500 steps (short rounds, so a burst of
   load from elsewhere on this 2-core VM spoils few of them); the figure is the median of the
   per-round ratios ``env steps/s / reference steps/s`` (both include the resets / state
   restores). The ratio of the fastest env round to the fastest reference round is reported too.

2. Rendering at 84x84 (target: >= 200 frames/s on one core, for our three tasks; Fetch
   informational). In a subprocess pinned to one CPU (affinity set before it starts) with
   ``LP_NUM_THREADS=1`` (Mesa llvmpipe renders with one thread), so one core is really one core:

   - frames/s = ``env.step`` rate with ``cameras=[<camera>]``, ``image_size=84`` (the target);
   - the state-only step rate on the same core, and the implied cost of the camera,
     ``1 / (1/camera rate - 1/state rate)`` frames/s;
   - frames/s of just ``renderer.update_scene + renderer.render`` on a fixed state.

Why: the env must not add much over the simulator it wraps, and pixel-based collection and
evaluation on CPU-only machines needs a few hundred frames per second per core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from common import DEFAULT_CAMERA, OUR_TASKS, Target, finish, fmt, markdown_table, parse_args, target, yes_no

import roboloop  # noqa: F401  (registers the env ids, sets MUJOCO_GL=egl)
from roboloop.envs import TASKS, make

NAME = "env_speed"
MIN_STEP_RATIO = 0.85
MIN_RENDER_FPS = 200.0
IMAGE_SIZE = 84
_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
FETCH_NOTE = (
    "Fetch rows are informational. Their reference replays `data.ctrl` and the mocap targets; FetchPush-v4's "
    "own step also re-locks the fingers (`block_gripper`) and calls `mj_forward` after `mj_step` "
    "(`_step_callback`), which the bare loop does not do, so its trajectory differs (with that step added "
    "it matches bit for bit). Most of the Fetch adapters' overhead is gymnasium-robotics' Python observation "
    "code (per-joint name lookups), which runs twice per step: in Fetch's own `step`, and again in the "
    "adapter after a fresh `mj_forward`."
)


# ---------------------------------------------------------------------------------------- step overhead
@dataclass
class Recording:
    """What the reference needs to redo an env run: where episodes start, their states, the controls."""

    starts: list[int]  # step index at which each episode starts
    reset_states: list[np.ndarray]  # integration state right after each reset
    end_states: list[np.ndarray]  # integration state at the end of each episode (for the check)
    ctrl: np.ndarray  # (steps, nu) data.ctrl after each step
    mocap: np.ndarray | None  # (steps, nmocap * 7) mocap_pos and mocap_quat after each step (Fetch)


def _integration_state(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    state = np.empty(mujoco.mj_stateSize(model, _SPEC))
    mujoco.mj_getState(model, data, state, _SPEC)
    return state


def n_substeps(env: gym.Env) -> int:
    inner = env.unwrapped
    return int(inner.fetch_env.n_substeps if hasattr(inner, "fetch_env") else inner.n_substeps)


def time_env(env: gym.Env, actions: np.ndarray) -> float:
    """Seconds to step ``env`` through ``actions``, resetting with seeds 1, 2... at episode ends."""
    env.reset(seed=0)
    episode = 0
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            episode += 1
            env.reset(seed=episode)
    return time.perf_counter() - start


def record(env: gym.Env, actions: np.ndarray, with_mocap: bool) -> Recording:
    """The untimed recording pass: exactly the run :func:`time_env` times, with its controls and states."""
    model, data = env.unwrapped.model, env.unwrapped.data
    env.reset(seed=0)
    rec = Recording([0], [_integration_state(model, data)], [], np.empty((len(actions), model.nu)),
                    np.empty((len(actions), model.nmocap * 7)) if with_mocap else None)
    episode = 0
    for i, action in enumerate(actions):
        _, _, terminated, truncated, _ = env.step(action)
        rec.ctrl[i] = data.ctrl
        if rec.mocap is not None:
            rec.mocap[i] = np.concatenate([data.mocap_pos.ravel(), data.mocap_quat.ravel()])
        if terminated or truncated:
            rec.end_states.append(_integration_state(model, data))
            episode += 1
            env.reset(seed=episode)
            if i + 1 < len(actions):
                rec.starts.append(i + 1)
                rec.reset_states.append(_integration_state(model, data))
    if len(rec.end_states) < len(rec.starts):
        rec.end_states.append(_integration_state(model, data))
    return rec


def run_reference(model: mujoco.MjModel, data: mujoco.MjData, rec: Recording, nstep: int,
                  end_states: list[np.ndarray] | None = None) -> float:
    """Seconds of the bare loop; with ``end_states``, also collect each episode's final state."""
    bounds = [*rec.starts[1:], len(rec.ctrl)]
    mocap_pos, mocap_quat = data.mocap_pos, data.mocap_quat
    n_pos = model.nmocap * 3
    t0 = time.perf_counter()
    for start, stop, state in zip(rec.starts, bounds, rec.reset_states, strict=True):
        mujoco.mj_setState(model, data, state, _SPEC)
        for i in range(start, stop):
            data.ctrl[:] = rec.ctrl[i]
            if rec.mocap is not None:
                mocap_pos[:] = rec.mocap[i, :n_pos].reshape(-1, 3)
                mocap_quat[:] = rec.mocap[i, n_pos:].reshape(-1, 4)
            mujoco.mj_step(model, data, nstep=nstep)
        if end_states is not None:
            end_states.append(_integration_state(model, data))
    return time.perf_counter() - t0


def step_overhead(task: str, rounds: int, steps: int) -> dict[str, Any]:
    """Env vs bare-``mj_step`` steps/s of ``task``, ``rounds`` interleaved rounds of ``steps`` steps."""
    env = make(task)
    rng = np.random.default_rng(0)
    space = env.action_space
    actions = rng.uniform(space.low, space.high, (steps, *space.shape)).astype(np.float32)
    nstep = n_substeps(env)
    rec = record(env, actions, with_mocap=TASKS[task].third_party)
    model = env.unwrapped.model
    data = mujoco.MjData(model)
    ref_ends: list[np.ndarray] = []
    run_reference(model, data, rec, nstep, ref_ends)
    same = len(ref_ends) == len(rec.end_states) and all(
        np.array_equal(a, b) for a, b in zip(ref_ends, rec.end_states, strict=True))
    divergence = max(float(np.max(np.abs(a - b))) for a, b in zip(ref_ends, rec.end_states, strict=True))

    time_env(env, actions[: min(200, steps)])  # warm-up (caches, first-step checks of the wrappers)
    per_round = []
    for r in range(rounds):
        if r % 2 == 0:
            env_t = time_env(env, actions)
            ref_t = run_reference(model, data, rec, nstep)
        else:
            ref_t = run_reference(model, data, rec, nstep)
            env_t = time_env(env, actions)
        per_round.append({"env_s": env_t, "ref_s": ref_t, "ratio": ref_t / env_t})
    env.close()
    return {
        "n_substeps": nstep, "steps_per_round": steps, "rounds": per_round, "episodes_per_round": len(rec.starts),
        "same_physics": same, "end_state_max_divergence": divergence,
        "env_steps_per_s": statistics.median(steps / r["env_s"] for r in per_round),
        "ref_steps_per_s": statistics.median(steps / r["ref_s"] for r in per_round),
        "ratio": statistics.median(r["ratio"] for r in per_round),
        "best_of_rounds_ratio": min(r["ref_s"] for r in per_round) / min(r["env_s"] for r in per_round),
    }


# ---------------------------------------------------------------------------------------- rendering
def _rate(env: gym.Env, actions: np.ndarray) -> float:
    return len(actions) / time_env(env, actions)


def _gl_renderer() -> str | None:
    """The OpenGL renderer string of the current context (e.g. ``llvmpipe``), if PyOpenGL can read it."""
    try:
        from OpenGL import GL

        value = GL.glGetString(GL.GL_RENDERER)
        return value.decode() if isinstance(value, bytes) else str(value)
    except Exception:  # noqa: BLE001  (informational only)
        return None


def render_worker(tasks: Sequence[str], rounds: int, steps: int) -> dict[str, Any]:
    """Runs in the pinned subprocess: per task, step rates with/without a camera and the bare render rate."""
    out: dict[str, Any] = {"affinity": sorted(os.sched_getaffinity(0)),
                           "LP_NUM_THREADS": os.environ.get("LP_NUM_THREADS"), "tasks": {}}
    for task in tasks:
        camera = DEFAULT_CAMERA[task]
        state_env = make(task)
        cam_env = make(task, cameras=[camera], image_size=IMAGE_SIZE)
        space = state_env.action_space
        actions = np.random.default_rng(0).uniform(space.low, space.high, (steps, *space.shape)).astype(np.float32)
        _rate(cam_env, actions[: min(50, steps)])  # warm-up: creates the GL context and the renderer
        _rate(state_env, actions[: min(50, steps)])
        cam_rates, state_rates, render_rates = [], [], []
        renderer = mujoco.Renderer(cam_env.unwrapped.model, IMAGE_SIZE, IMAGE_SIZE)
        data = cam_env.unwrapped.data
        for _ in range(rounds):
            cam_rates.append(_rate(cam_env, actions))
            state_rates.append(_rate(state_env, actions))
            t0 = time.perf_counter()
            for _ in range(steps):
                renderer.update_scene(data, camera=camera)
                renderer.render()
            render_rates.append(steps / (time.perf_counter() - t0))
        out.setdefault("gl_renderer", _gl_renderer())
        renderer.close()
        cam_env.close()
        state_env.close()
        cam, state = statistics.median(cam_rates), statistics.median(state_rates)
        out["tasks"][task] = {
            "camera": camera, "steps": steps, "rounds": rounds,
            "camera_steps_per_s": cam, "state_steps_per_s": state,
            "camera_cost_fps": 1.0 / (1.0 / cam - 1.0 / state) if cam < state else float("inf"),
            "bare_render_fps": statistics.median(render_rates),
            "per_round": {"camera": cam_rates, "state": state_rates, "bare_render": render_rates},
        }
        print(f"  [render worker] {task}: {cam:.0f} frames/s", file=sys.stderr, flush=True)
    out["threads_at_end"] = len(os.listdir("/proc/self/task"))
    return out


def measure_rendering(quick: bool) -> dict[str, Any]:
    """Start the render worker pinned to one CPU with ``LP_NUM_THREADS=1``; return its figures."""
    cpu = max(os.sched_getaffinity(0))
    env = {**os.environ, "LP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--render-worker", *(["--quick"] if quick else [])]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    if proc.returncode != 0:
        raise RuntimeError(f"render worker failed with exit status {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["pinned_cpu"] = cpu
    return result


# ---------------------------------------------------------------------------------------- main
def _spread(rounds: Sequence[dict[str, float]]) -> str:
    ratios = np.array([r["ratio"] for r in rounds])
    q1, q3 = np.percentile(ratios, [25, 75])
    return f"{ratios.min():.3f} / {q1:.3f}-{q3:.3f} / {ratios.max():.3f}"


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--render-worker", action="store_true", help=argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, _extra_args)
    if args.render_worker:
        rounds, steps = (1, 100) if args.quick else (3, 1000)
        print(json.dumps(render_worker(list(TASKS), rounds, steps)))
        return 0

    rounds, steps = (6, 250) if args.quick else (20, 500)
    figures: dict[str, Any] = {"step_overhead": {}, "rendering": {}}
    targets: list[Target] = []
    step_rows = []
    for task in TASKS:
        res = step_overhead(task, rounds, steps)
        figures["step_overhead"][task] = res
        ours = task in OUR_TASKS
        step_rows.append((task if ours else f"{task} (info)", res["n_substeps"], f"{res['env_steps_per_s']:.0f}",
                          f"{res['ref_steps_per_s']:.0f}", f"{res['ratio']:.3f}", _spread(res["rounds"]),
                          f"{res['best_of_rounds_ratio']:.3f}",
                          yes_no(res["same_physics"]) if ours or res["same_physics"]
                          else f"no (max diff {fmt(res['end_state_max_divergence'])})"))
        if ours:
            targets.append(target(f"step_ratio[{task}]", round(res["ratio"], 4), ">=", MIN_STEP_RATIO,
                                  "median of per-round env/bare-mj_step steps/s"))
            if not res["same_physics"]:
                targets.append(target(f"reference_same_physics[{task}]", False, "==", True,
                                      f"end states differ by up to {fmt(res['end_state_max_divergence'])}"))
        print(f"{task}: ratio {res['ratio']:.3f}", file=sys.stderr, flush=True)

    rendering = measure_rendering(args.quick)
    figures["rendering"] = rendering
    render_rows = []
    for task, res in rendering["tasks"].items():
        ours = task in OUR_TASKS
        render_rows.append((task if ours else f"{task} (info)", res["camera"], f"{res['camera_steps_per_s']:.0f}",
                            f"{res['state_steps_per_s']:.0f}", f"{res['camera_cost_fps']:.0f}",
                            f"{res['bare_render_fps']:.0f}"))
        if ours:
            targets.append(target(f"render_fps_84[{task}]", round(res["camera_steps_per_s"], 1), ">=",
                                  MIN_RENDER_FPS, f"env.step with one {IMAGE_SIZE}x{IMAGE_SIZE} camera, one core"))

    table = "\n\n".join([
        f"State-only env steps/s vs a bare `mj_step` loop doing the same physics ({rounds} interleaved rounds of "
        f"{steps} steps; ratio = median of per-round ratios):",
        markdown_table(["task", "substeps", "env steps/s", "bare mj_step steps/s", "ratio (median)",
                        "per-round ratios: min / quartiles / max", "fastest env / fastest bare round",
                        "same physics"], step_rows),
        FETCH_NOTE,
        f"Rendering {IMAGE_SIZE}x{IMAGE_SIZE} on one core (CPU {rendering['pinned_cpu']}, LP_NUM_THREADS="
        f"{rendering['LP_NUM_THREADS']}, GL renderer: {rendering.get('gl_renderer')}); frames/s = env steps/s with "
        "one camera:",
        markdown_table(["task", "camera", "frames/s (steps/s with camera)", "steps/s without camera",
                        "camera cost as frames/s", "bare update_scene+render frames/s"], render_rows),
    ])
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
