"""Replay: collected episodes re-simulate exactly from their stored first state, randomization and actions.

What is measured: scripted-expert episodes are collected with :func:`collect` into episode files
(in a temporary directory) and every episode of every file is replayed with :func:`replay`, which
restores the stored first state and randomization sample, re-applies the stored actions and
compares each observation with the stored one. Datasets:

* every task, state only;
* every task with randomization that includes observation noise and action latency (plus
  friction and object mass), collected in 2 vector sub-envs;
* ``Lift`` with the ``front`` camera and visual randomization (colours, light, camera pose), and
  ``FetchPush-v4`` with ``external_camera_0``, so images are compared too.

Figures: the largest ``|replayed - stored|`` per observation key and the largest state mismatch
(informational; it should be 0). Target: the largest observation mismatch of every dataset is
<= 1e-6.

Why: datasets are only worth keeping if they can be re-simulated (re-rendered with other cameras,
relabelled, audited); replay drift means the stored state or randomization is incomplete.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
from common import Target, finish, fmt, markdown_table, parse_args, target

import roboloop  # noqa: F401  (registers the env ids)
from roboloop.datasets.collection import CollectConfig, collect
from roboloop.datasets.replay import ReplayConfig, replay
from roboloop.envs import TASKS

NAME = "replay"
TOLERANCE = 1e-6
DYNAMICS_RANDOMIZATION: dict[str, Any] = {
    "friction_scale": (0.8, 1.2),
    "object_mass_scale": (0.8, 1.2),
    "obs_noise_std": 0.01,
    "action_latency_steps": (0, 2),
}
VISUAL_RANDOMIZATION: dict[str, Any] = {
    "object_rgb_jitter": 0.1,
    "table_rgb_jitter": 0.1,
    "light_intensity_scale": (0.7, 1.3),
    "camera_pos_jitter": 0.01,
    "camera_angle_jitter": 0.03,
}


@dataclass
class Dataset:
    """One episode file to collect and replay."""

    name: str
    task: str
    cameras: list[str] = field(default_factory=list)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    n_envs: int = 1


def datasets() -> list[Dataset]:
    out = [Dataset(f"{task} state", task) for task in TASKS]
    out += [Dataset(f"{task} randomized", task, env_kwargs={"randomization": DYNAMICS_RANDOMIZATION}, n_envs=2)
            for task in TASKS]
    out.append(Dataset("Lift camera front + visual randomization", "Lift", cameras=["front"],
                       env_kwargs={"randomization": {**DYNAMICS_RANDOMIZATION, **VISUAL_RANDOMIZATION}}))
    out.append(Dataset("FetchPush-v4 camera external_camera_0", "FetchPush-v4", cameras=["external_camera_0"]))
    return out


def perturbation_detected(source: Path, copy: Path) -> float:
    """Negative control: the mismatch replay reports after one stored action is changed.

    It must be well above the tolerance, or the zero mismatches above would prove nothing.
    """
    shutil.copyfile(source, copy)
    with h5py.File(copy, "r+") as f:
        actions = f["data/demo_0/actions"]
        first = actions[0]
        first[0] = 0.5 if first[0] < 0 else -0.5
        actions[0] = first
    return replay(ReplayConfig(file=str(copy), episodes=[0])).worst


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n_episodes = 3 if args.quick else 20
    figures: dict[str, Any] = {"episodes_per_dataset": n_episodes, "tolerance": TOLERANCE, "datasets": {}}
    rows: list[tuple[Any, ...]] = []
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="roboloop-bench-replay-") as tmp:
        for i, ds in enumerate(datasets()):
            t0 = time.perf_counter()
            summary = collect(CollectConfig(task=ds.task, n_episodes=n_episodes, output=str(Path(tmp) / f"{i}.hdf5"),
                                            cameras=ds.cameras, env_kwargs=ds.env_kwargs, n_envs=ds.n_envs,
                                            progress=False))
            result = replay(ReplayConfig(file=str(summary.path), episodes=[]))
            all_replayed = len(result.episodes) == summary.episodes and result.steps == summary.steps
            figures["datasets"][ds.name] = {
                "task": ds.task, "cameras": ds.cameras, "env_kwargs": ds.env_kwargs, "n_envs": ds.n_envs,
                "episodes": summary.episodes, "steps": summary.steps, "expert_successes": summary.successes,
                "replayed_episodes": len(result.episodes), "replayed_steps": result.steps,
                "max_obs_error": result.max_obs_error, "max_state_error": result.max_state_error,
                "worst": result.worst,
            }
            per_key = ", ".join(f"{k.removeprefix('observation.')}: {fmt(v)}" for k, v in result.max_obs_error.items())
            rows.append((ds.name, f"{summary.successes}/{summary.attempted}",
                         f"{len(result.episodes)}/{summary.episodes}", result.steps, per_key,
                         fmt(result.max_state_error), fmt(result.worst)))
            targets.append(target(f"max_obs_mismatch[{ds.name}]", result.worst, "<=", TOLERANCE,
                                  "" if all_replayed else "not every collected episode was replayed"))
            if not all_replayed:
                targets.append(target(f"all_replayed[{ds.name}]", False, "==", True))
            print(f"{ds.name}: worst {result.worst:.3g} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                  flush=True)
        control = perturbation_detected(Path(tmp) / "0.hdf5", Path(tmp) / "perturbed.hdf5")
    worst = max(d["worst"] for d in figures["datasets"].values())
    figures["max_obs_error_overall"] = worst
    figures["max_state_error_overall"] = max(d["max_state_error"] for d in figures["datasets"].values())
    figures["negative_control_mismatch"] = control
    targets.append(target("negative_control_detected", control, ">", TOLERANCE,
                          "replay of a copy of the first dataset with one action of demo_0 changed"))
    table = markdown_table(["dataset", "expert success", "episodes replayed", "steps", "max obs mismatch per key",
                            "max state mismatch", "max obs mismatch"], rows)
    table += (f"\n\nLargest observation mismatch over all datasets: {fmt(worst)}; largest state mismatch: "
              f"{fmt(figures['max_state_error_overall'])}. Negative control (one stored action of one episode "
              f"changed by 0.5): the replay reports a mismatch of {fmt(control)}.")
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
