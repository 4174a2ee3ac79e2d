"""D4RL-style dataset tiers of a roboloop task, made by its scripted expert at three skill levels.

* ``expert``: the expert without noise (``source=expert``).
* ``medium``: the expert with the per-task noise at which about half the episodes succeed (``source=medium``;
  the levels come from ``benchmarks/experts.py``'s noise table: Lift 0.4 (56%), PegInsert 0.1 (55%),
  PushAround 0.2 (52%), FetchPush-v4 0.4 (52%), FetchPickAndPlace-v4 0.2 (48%)).
* ``mixed``: the medium episodes, plus half as many again from a much noisier expert (``source=noisy``, mostly
  failures and partial progress) and a quarter as many of uniformly random actions (``source=random``).

The locomotion benchmarks (``Hopper-v5``, ``HalfCheetah-v5``) have no scripted expert: their tiers come from
snapshots of a stable-baselines3 agent trained here, D4RL's way (:mod:`roboloop.datasets.agent_tiers`), with the
same make-up (``mixed``'s noisy part is the agent's first, poor snapshot).

Every episode carries ``source`` and ``success`` attributes and ``mask/success`` lists the successes, so
filtered BC (``mask/success``) and offline RL (all of it, with rewards) read the same files. Seeds of the parts
are disjoint (``seed + part * 1_000_000 + k``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from roboloop.core.errors import ConfigError
from roboloop.datasets.agent_tiers import (
    AgentConfig,
    RandomActor,
    SB3Actor,
    agent_directory,
    pick_snapshots,
    train_agent,
)
from roboloop.datasets.collection import Actor, CollectConfig, CollectSummary, collect
from roboloop.envs import make, task_info

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
        agent: The trained agent the locomotion tasks' tiers come from (ignored for tasks with a scripted expert).
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
    agent: AgentConfig = field(default_factory=AgentConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        self.task = task_info(self.task).name
        if self.n_episodes < 4:
            raise ConfigError(f"n_episodes must be >= 4 (mixed adds n/2 noisy and n/4 random ones), got "
                              f"{self.n_episodes}")
        unknown = sorted(set(self.tiers) - set(TIERS))
        if unknown or not self.tiers:
            raise ConfigError(f"unknown tier(s) {unknown}; tiers are {list(TIERS)}")
        if self.medium_noise is None and self.task not in MEDIUM_NOISE and self.scripted:
            raise ConfigError(f"no medium noise level known for {self.task}: pass medium_noise=")
        if self.medium_noise is not None and not 0.0 <= self.medium_noise <= 1.0:
            raise ConfigError(f"medium_noise must be in [0, 1], got {self.medium_noise}")

    @property
    def scripted(self) -> bool:
        """Tiers from the task's scripted expert (else from a trained agent)."""
        return task_info(self.task).expert is not None

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
    sources = _scripted_sources(cfg) if cfg.scripted else _agent_sources(cfg)

    def part(path: Path, index: int, source: str, n: int, mode: str) -> CollectSummary:
        noise, make_actors, policy_id = sources[source]
        actors = None if make_actors is None else [make_actors() for _ in range(cfg.n_envs)]
        return collect(CollectConfig(task=cfg.task, n_episodes=n, noise=noise, seed=cfg.seed + index * SEED_STRIDE,
                                     output=str(path), mode=mode, source=source, n_envs=cfg.n_envs,
                                     env_kwargs=dict(cfg.env_kwargs), progress=cfg.progress),
                       actors, policy_id)

    done: dict[str, list[CollectSummary]] = {}
    medium_path = directory / "medium.hdf5"
    if "expert" in cfg.tiers:
        done["expert"] = [part(directory / "expert.hdf5", 0, "expert", cfg.n_episodes, "w")]
    if "medium" in cfg.tiers or "mixed" in cfg.tiers:
        medium = part(medium_path if "medium" in cfg.tiers else directory / ".medium.tmp.hdf5", 1, "medium",
                      cfg.n_episodes, "w")
        if "medium" in cfg.tiers:
            done["medium"] = [medium]
    if "mixed" in cfg.tiers:
        # The same medium episodes (same seeds, so identical), then the noisy and random parts appended.
        mixed_path, pending = directory / "mixed.hdf5", directory / ".mixed.tmp.hdf5"
        shutil.copyfile(medium.path, pending)
        parts = [medium, part(pending, 2, "noisy", cfg.n_episodes // 2, "a"),
                 part(pending, 3, "random", cfg.n_episodes // 4, "a")]
        pending.replace(mixed_path)  # a killed run never leaves a partial mixed.hdf5
        done["mixed"] = [replace(p, path=mixed_path) for p in parts]
        (directory / ".medium.tmp.hdf5").unlink(missing_ok=True)
    return done


#: source -> (scripted-expert noise, a factory of one env's actor (None: the scripted expert), policy id)
Sources = dict[str, tuple[float, Callable[[], Actor] | None, str | None]]


def _scripted_sources(cfg: TiersConfig) -> Sources:
    return {"expert": (0.0, None, None), "medium": (cfg.noise, None, None), "noisy": (NOISY, None, None),
            "random": (1.0, None, None)}


def _agent_sources(cfg: TiersConfig) -> Sources:
    """The agent's snapshots (trained first if need be), sampled stochastically as D4RL's were."""
    index = train_agent(cfg.task, cfg.agent, cfg.seed, progress=cfg.progress)
    picked = pick_snapshots(index, cfg.agent.medium_fraction)
    directory = agent_directory(cfg.task, cfg.agent, cfg.seed)
    probe = make(cfg.task, **cfg.env_kwargs)
    action_space = probe.action_space
    probe.close()

    def snapshot(source: str) -> tuple[float, Callable[[], Actor], str]:
        chosen = picked[source]
        path = directory / chosen["name"]
        return (0.0, lambda: SB3Actor(path), f"sb3-PPO({chosen['name']}, eval return {chosen['eval_return']:.0f})")

    return {"expert": snapshot("expert"), "medium": snapshot("medium"), "noisy": snapshot("noisy"),
            "random": (0.0, lambda: RandomActor(action_space), "uniform random actions")}
