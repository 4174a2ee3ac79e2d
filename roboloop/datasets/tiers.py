"""D4RL-style dataset tiers of a roboloop task, made by its scripted expert at three skill levels.

* ``expert``: the expert without noise (``source=expert``).
* ``medium``: the expert with the per-task noise at which about half the episodes succeed (``source=medium``;
  the levels come from ``benchmarks/experts.py``'s noise table: Lift 0.4 (56%), PegInsert 0.1 (55%),
  PushAround 0.2 (52%), FetchPush-v4 0.4 (52%), FetchPickAndPlace-v4 0.2 (48%)).
* ``mixed``: the medium episodes, plus half as many again from a much noisier expert (``source=noisy``, mostly
  failures and partial progress) and a quarter as many of uniformly random actions (``source=random``).

Every episode carries ``source`` and ``success`` attributes and ``mask/success`` lists the successes, so
filtered BC (``mask/success``) and offline RL (all of it, with rewards) read the same files. Seeds of the parts
are disjoint (``seed + part * 1_000_000 + k``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from roboloop.core.errors import ConfigError
from roboloop.datasets.collection import CollectConfig, CollectSummary, collect
from roboloop.envs import task_info

TIERS = ("expert", "medium", "mixed")
#: Expert noise at which about half the episodes succeed (benchmarks/experts.py, 200 episodes per level).
MEDIUM_NOISE = {"Lift": 0.4, "PegInsert": 0.1, "PushAround": 0.2, "FetchPush-v4": 0.4, "FetchPickAndPlace-v4": 0.2}
NOISY = 0.5  # the "failures" part of mixed: PegInsert 0%, Lift 28%, PushAround 8% at this level
SEED_STRIDE = 1_000_000


@dataclass
class TiersConfig:
    """``roboloop make-tiers task=PegInsert n_episodes=200``.

    Attributes:
        task: Task name.
        n_episodes: Episodes of ``expert`` and of ``medium``; ``mixed`` holds ``n_episodes`` medium ones plus
            ``n_episodes // 2`` noisy and ``n_episodes // 4`` random ones.
        tiers: Which tiers to make.
        medium_noise: Noise of ``medium`` (None: the task's level in ``MEDIUM_NOISE``).
        out_dir: Output directory (``{task}`` is filled in); tiers go to ``<out_dir>/<tier>.hdf5``.
        seed: First seed.
        n_envs: Parallel environments of the collection.
        env_kwargs: Env constructor arguments.
        progress: Progress bars.
    """

    task: str = "PegInsert"
    n_episodes: int = 200
    tiers: list[str] = field(default_factory=lambda: list(TIERS))
    medium_noise: float | None = None
    out_dir: str = "data/tiers/{task}"
    seed: int = 0
    n_envs: int = 1
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        self.task = task_info(self.task).name
        if self.n_episodes < 4:
            raise ConfigError(f"n_episodes must be >= 4 (mixed adds n/2 noisy and n/4 random ones), got "
                              f"{self.n_episodes}")
        unknown = sorted(set(self.tiers) - set(TIERS))
        if unknown or not self.tiers:
            raise ConfigError(f"unknown tier(s) {unknown}; tiers are {list(TIERS)}")
        if self.medium_noise is None and self.task not in MEDIUM_NOISE:
            raise ConfigError(f"no medium noise level known for {self.task}: pass medium_noise=")
        if self.medium_noise is not None and not 0.0 <= self.medium_noise <= 1.0:
            raise ConfigError(f"medium_noise must be in [0, 1], got {self.medium_noise}")

    @property
    def noise(self) -> float:
        return MEDIUM_NOISE[self.task] if self.medium_noise is None else float(self.medium_noise)

    @property
    def directory(self) -> Path:
        return Path(self.out_dir.replace("{task}", self.task))


def make_tiers(cfg: TiersConfig) -> dict[str, list[CollectSummary]]:
    """Write the asked-for tiers; returns each tier's collection summaries (one per part)."""
    directory = cfg.directory
    directory.mkdir(parents=True, exist_ok=True)

    def part(path: Path, index: int, source: str, noise: float, n: int, mode: str) -> CollectSummary:
        return collect(CollectConfig(task=cfg.task, n_episodes=n, noise=noise, seed=cfg.seed + index * SEED_STRIDE,
                                     output=str(path), mode=mode, source=source, n_envs=cfg.n_envs,
                                     env_kwargs=dict(cfg.env_kwargs), progress=cfg.progress))

    done: dict[str, list[CollectSummary]] = {}
    medium_path = directory / "medium.hdf5"
    if "expert" in cfg.tiers:
        done["expert"] = [part(directory / "expert.hdf5", 0, "expert", 0.0, cfg.n_episodes, "w")]
    if "medium" in cfg.tiers or "mixed" in cfg.tiers:
        medium = part(medium_path if "medium" in cfg.tiers else directory / ".medium.tmp.hdf5", 1, "medium",
                      cfg.noise, cfg.n_episodes, "w")
        if "medium" in cfg.tiers:
            done["medium"] = [medium]
    if "mixed" in cfg.tiers:
        # The same medium episodes (same seeds, so identical), then the noisy and random parts appended.
        mixed_path, pending = directory / "mixed.hdf5", directory / ".mixed.tmp.hdf5"
        shutil.copyfile(medium.path, pending)
        parts = [medium,
                 part(pending, 2, "noisy", NOISY, cfg.n_episodes // 2, "a"),
                 part(pending, 3, "random", 1.0, cfg.n_episodes // 4, "a")]
        pending.replace(mixed_path)  # a killed run never leaves a partial mixed.hdf5
        done["mixed"] = [replace(p, path=mixed_path) for p in parts]
        (directory / ".medium.tmp.hdf5").unlink(missing_ok=True)
    return done
