"""What each ``roboloop`` command does: build objects from the typed config, call the library, print."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from roboloop.core.errors import ConfigError
from roboloop.core.metrics import format_rate
from roboloop.datasets.collection import CollectConfig, collect
from roboloop.datasets.replay import ReplayConfig, replay
from roboloop.datasets.store import EpisodeStore
from roboloop.utils.io import atomic_path

__all__ = ["CollectConfig", "InfoConfig", "QuickstartConfig", "ReplayConfig", "run_collect", "run_info",
           "run_quickstart", "run_replay"]


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}"
        size /= 1024
    return ""


def run_collect(cfg: CollectConfig) -> int:
    summary = collect(cfg)
    print(f"wrote {summary.episodes} episodes ({summary.steps} steps) to {summary.path} ({_size(summary.path)})")
    print(f"expert success: {format_rate(summary.successes, summary.attempted)}")
    print(f"time: {summary.seconds:.1f} s ({summary.steps / max(summary.seconds, 1e-9):.0f} env steps/s)")
    return 0


def run_replay(cfg: ReplayConfig) -> int:
    result = replay(cfg)
    print(f"replayed {len(result.episodes)} episode(s), {result.steps} steps")
    for key, err in result.max_obs_error.items():
        print(f"  max |replayed - stored| {key}: {err:.3g}")
    print(f"  max state mismatch: {result.max_state_error:.3g}")
    if result.video is not None:
        print(f"video: {result.video}")
    exact = result.worst <= cfg.tolerance
    print("replay matches the stored observations" if exact
          else f"replay DIFFERS from the stored observations (tolerance {cfg.tolerance:g})")
    return 0 if exact else 1


@dataclass
class InfoConfig:
    """``roboloop info FILE``: what an episode file holds.

    Attributes:
        file: Episode file.
        episodes: Also list every episode (length, success, source, seed).
    """

    file: str = ""
    episodes: bool = False

    def __post_init__(self) -> None:
        if not self.file:
            raise ConfigError("info needs an episode file: roboloop info FILE")


def describe(path: str | Path, *, per_episode: bool = False) -> str:
    lines = []
    with EpisodeStore(path) as store:
        env_args = store.env_args
        lengths = np.array([store.num_samples(d) for d in store.demos], dtype=int)
        lines.append(f"file:      {store.path} ({_size(store.path)})")
        lines.append(f"env:       {env_args.get('env_name')}  kwargs={env_args.get('env_kwargs', {})}")
        if not len(lengths):
            lines.append("episodes:  0")
            return "\n".join(lines)
        lines.append(f"episodes:  {len(lengths)}")
        lines.append(f"steps:     {lengths.sum()} (length min {lengths.min()}, mean {lengths.mean():.1f}, "
                     f"max {lengths.max()})")
        attrs = [store.attrs(d) for d in store.demos]
        flags = [bool(a["success"]) for a in attrs if "success" in a]
        if flags:
            lines.append(f"success:   {format_rate(sum(flags), len(flags))}")
        sources = Counter(str(a.get("source", "?")) for a in attrs)
        lines.append("sources:   " + ", ".join(f"{k}: {v}" for k, v in sources.items()))
        masks = store.masks()
        if masks:
            lines.append("masks:     " + ", ".join(f"{k} ({len(v)})" for k, v in masks.items()))
        lines.append(f"keys ({store.demos[0]}, T = {lengths[0]}):")
        for key in store.keys(0):
            ds = store.dataset(0, key)
            dims = [str(n) for n in ds.shape]
            if dims and ds.shape[0] == lengths[0]:
                dims[0] = "T"
            shape = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
            virtual = "  (virtual: obs shifted by one)" if ds.is_virtual else ""
            lines.append(f"  {key:<40} {shape:<20} {ds.dtype}{virtual}")
        if per_episode:
            lines.append("episodes:")
            for demo, n, a in zip(store.demos, lengths, attrs, strict=True):
                lines.append(f"  {demo:<10} length {n:<5} success {a.get('success', '?')!s:<6} "
                             f"source {a.get('source', '?'):<16} seed {a.get('seed', '?')}")
    return "\n".join(lines)


def run_info(cfg: InfoConfig) -> int:
    print(describe(cfg.file, per_episode=cfg.episodes))
    return 0


@dataclass
class QuickstartConfig:
    """``roboloop quickstart``: the main pipeline on the default task, end to end, with a report.

    Collect scripted-expert demonstrations, check that they replay exactly, train a diffusion policy
    briefly (CPU-sized), evaluate it over seeded episodes with a video, and write a markdown report.

    Attributes:
        task: Task to run.
        n_episodes: Demonstrations to collect.
        n_envs: Parallel environments for collection and evaluation.
        video_episodes: Demonstrations replayed into the replay video.
        train_steps: Gradient steps of the diffusion policy (the default state UNet, executing Ta = 4 actions
            per chunk as in the Lift preset, which trains twice as long).
        batch_size: Training batch size.
        eval_episodes: Evaluation episodes (seeds disjoint from the demonstrations).
        eval_videos: Evaluation episodes recorded as videos.
        out_dir: Where the dataset, checkpoints, videos and report go.
        seed: Base seed.
    """

    task: str = "Lift"
    n_episodes: int = 100
    n_envs: int = 4
    video_episodes: int = 2
    train_steps: int = 3000
    batch_size: int = 256
    eval_episodes: int = 50
    eval_videos: int = 2
    out_dir: str = "outputs/quickstart"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.video_episodes < 1 or self.video_episodes > self.n_episodes:
            raise ConfigError(f"video_episodes must be in [1, n_episodes={self.n_episodes}], got {self.video_episodes}")
        if self.train_steps < 1 or self.batch_size < 1 or self.eval_episodes < 1 or self.n_envs < 1:
            raise ConfigError("train_steps, batch_size, eval_episodes and n_envs must be >= 1")
        if not 0 <= self.eval_videos <= self.eval_episodes:
            raise ConfigError(f"eval_videos must be in [0, eval_episodes={self.eval_episodes}]")


def run_quickstart(cfg: QuickstartConfig) -> int:
    from roboloop.cli.train_bc import TrainBCConfig, train_bc
    from roboloop.core.policy import Policy
    from roboloop.envs.evaluation import EvalConfig, evaluate, write_eval_outputs
    from roboloop.policies.diffusion import DiffusionConfig
    from roboloop.training import TrainConfig

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/4] collecting {cfg.n_episodes} {cfg.task} demonstrations")
    collect_cfg = CollectConfig(task=cfg.task, n_episodes=cfg.n_episodes, n_envs=cfg.n_envs, seed=cfg.seed,
                                output=str(out / "demos.hdf5"))
    summary = collect(collect_cfg)
    print(f"[2/4] replaying {cfg.video_episodes} episode(s) into a video")
    replayed = replay(ReplayConfig(file=str(summary.path), episodes=list(range(cfg.video_episodes)),
                                   video=str(out / "replay.mp4")))
    print(f"[3/4] training a diffusion policy for {cfg.train_steps} steps")
    t_train = time.perf_counter()
    trained = train_bc(TrainBCConfig(
        task=cfg.task, policy=DiffusionConfig(n_action_steps=4),
        dataset=str(summary.path), out_dir=str(out / "diffusion"),
        evaluate=False, train=TrainConfig(steps=cfg.train_steps, batch_size=cfg.batch_size, seed=cfg.seed,
                                          checkpoint_every=max(cfg.train_steps // 4, 1),
                                          log_every=max(cfg.train_steps // 20, 1), resume=True)))
    train_seconds = time.perf_counter() - t_train
    print(f"[4/4] evaluating it over {cfg.eval_episodes} episodes")
    policy = Policy.load(trained.last_checkpoint)
    result = evaluate(policy, cfg.task, EvalConfig(n_episodes=cfg.eval_episodes, n_envs=cfg.n_envs,
                                                   video=cfg.eval_videos > 0, n_videos=cfg.eval_videos),
                      video_dir=out / "videos")
    files = write_eval_outputs(result, out / "eval")
    videos = ", ".join(f"[{v.name}](videos/{v.name})" for v in result.videos) or "none"
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join([
            f"# roboloop quickstart: {cfg.task}",
            "",
            "| stage | result |",
            "|---|---|",
            f"| demonstrations | {summary.episodes} episodes, {summary.steps} steps: `{summary.path}` |",
            f"| expert success | {format_rate(summary.successes, summary.attempted)} |",
            f"| replay mismatch (max over {replayed.steps} steps) | {replayed.worst:.3g} (video `{replayed.video}`) |",
            f"| diffusion policy | {trained.steps} steps in {train_seconds:.0f} s, "
            f"final loss {trained.final_loss:.4f}: `{trained.last_checkpoint}` |",
            f"| policy success ({result.n_episodes} episodes, Wilson 95%) | "
            f"{format_rate(result.successes, result.n_episodes)} |",
            f"| policy return / length | {result.mean_return:.3f} / {result.mean_length:.1f} steps |",
            f"| evaluation videos | {videos} |",
            f"| evaluation files | `{files['json']}`, `{files['plot']}` |",
            f"| wall time | {time.perf_counter() - t0:.0f} s |",
            "",
            "```",
            describe(summary.path),
            "```",
            "",
            f"Re-evaluate with `roboloop eval checkpoint={trained.last_checkpoint} n_episodes=200 video=true`;",
            f"train the full CPU preset with `roboloop train-bc task={cfg.task} policy=diffusion`.",
            "",
            f"Config: `{asdict(cfg)}`, on {os.cpu_count()} CPU core(s).",
            "",
        ]))
    print(report.read_text())
    print(f"report: {report}")
    return 0
