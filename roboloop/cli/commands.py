"""What each ``roboloop`` command does: build objects from the typed config, call the library, print."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from roboloop.core.errors import ConfigError
from roboloop.core.metrics import format_rate
from roboloop.datasets.collection import CollectConfig, collect
from roboloop.datasets.replay import ReplayConfig, replay
from roboloop.datasets.store import EpisodeStore
from roboloop.datasets.tiers import TiersConfig, make_tiers
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


def run_make_tiers(cfg: TiersConfig) -> int:
    for tier, parts in make_tiers(cfg).items():
        episodes = sum(p.episodes for p in parts)
        successes = sum(p.successes for p in parts)
        mean_return = sum(p.total_return for p in parts) / max(episodes, 1)
        print(f"{tier}: {episodes} episodes, {format_rate(successes, episodes)} successful, mean return "
              f"{mean_return:.4g} -> {parts[0].path} ({_size(parts[0].path)})")
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
class ExportMinariConfig:
    """``roboloop export-minari FILE dataset_id=roboloop/peginsert-mixed-v0``: an episode file as a Minari dataset.

    The dataset keeps the env's id and spaces (``minari.load_dataset(id).recover_environment()`` rebuilds the
    env once roboloop is imported) and ``terminations``/``truncations`` apart; image observations are left out.
    ``roboloop train-offline dataset=minari:<dataset_id>`` reads it back (as it reads Minari's own datasets).

    Attributes:
        file: Episode file (e.g. from ``roboloop make-tiers``).
        dataset_id: Minari id, ``namespace/name-vN``.
        root: Minari's datasets directory (default: ``MINARI_DATASETS_PATH``, else ``~/.minari/datasets``).
        description: The dataset's description (default: names the file).
    """

    file: str = ""
    dataset_id: str = ""
    root: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if not self.file or not self.dataset_id:
            raise ConfigError("export-minari needs an episode file and a dataset id: roboloop export-minari FILE "
                              "dataset_id=namespace/name-v0")


def run_export_minari(cfg: ExportMinariConfig) -> int:
    from roboloop.datasets.minari_io import export_minari

    dataset = export_minari(cfg.file, cfg.dataset_id, root=cfg.root, description=cfg.description)
    print(f"Minari dataset {cfg.dataset_id}: {dataset.total_episodes} episodes, {dataset.total_steps} steps "
          f"(from {cfg.file}); train on it with roboloop train-offline dataset=minari:{cfg.dataset_id}")
    return 0


@dataclass
class QuickstartConfig:
    """``roboloop quickstart``: the main pipeline on the default task, end to end, with a report.

    Collect scripted-expert demonstrations, check that they replay exactly, train a diffusion policy
    briefly (CPU-sized), refine it with residual PPO, evaluate both over the same seeded episodes with
    videos, and write a markdown report with a table of BC against residual success and the residual's
    success against env steps.

    Attributes:
        task: Task to run.
        n_episodes: Demonstrations to collect.
        n_envs: Parallel environments for collection, residual PPO and evaluation.
        video_episodes: Demonstrations replayed into the replay video.
        train_steps: Gradient steps of the diffusion policy (the default state UNet, executing Ta = 4 actions
            per chunk as in the Lift preset, which trains twice as long).
        batch_size: Training batch size.
        residual_env_steps: Env steps of residual PPO on top of the diffusion policy (0 skips the stage).
        residual_eval_every: PPO iterations between evaluations of the residual (the success curve's points).
        eval_episodes: Evaluation episodes (seeds disjoint from the demonstrations), for BC and residual alike.
        eval_videos: Evaluation episodes recorded as videos, per policy.
        out_dir: Where the dataset, checkpoints, videos and report go.
        seed: Base seed.
    """

    task: str = "Lift"
    n_episodes: int = 100
    n_envs: int = 8
    video_episodes: int = 2
    train_steps: int = 3000
    batch_size: int = 256
    residual_env_steps: int = 16000
    residual_eval_every: int = 5
    eval_episodes: int = 50
    eval_videos: int = 2
    out_dir: str = "outputs/quickstart"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.video_episodes < 1 or self.video_episodes > self.n_episodes:
            raise ConfigError(f"video_episodes must be in [1, n_episodes={self.n_episodes}], got {self.video_episodes}")
        if self.train_steps < 1 or self.batch_size < 1 or self.eval_episodes < 1 or self.n_envs < 1:
            raise ConfigError("train_steps, batch_size, eval_episodes and n_envs must be >= 1")
        if self.residual_env_steps < 0 or self.residual_eval_every < 1:
            raise ConfigError("residual_env_steps must be >= 0 and residual_eval_every >= 1")
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
    n_stages = 5 if cfg.residual_env_steps else 4
    print(f"[1/{n_stages}] collecting {cfg.n_episodes} {cfg.task} demonstrations")
    collect_cfg = CollectConfig(task=cfg.task, n_episodes=cfg.n_episodes, n_envs=cfg.n_envs, seed=cfg.seed,
                                output=str(out / "demos.hdf5"))
    summary = collect(collect_cfg)
    print(f"[2/{n_stages}] replaying {cfg.video_episodes} episode(s) into a video")
    replayed = replay(ReplayConfig(file=str(summary.path), episodes=list(range(cfg.video_episodes)),
                                   video=str(out / "replay.mp4")))
    print(f"[3/{n_stages}] training a diffusion policy for {cfg.train_steps} steps")
    t_train = time.perf_counter()
    trained = train_bc(TrainBCConfig(
        task=cfg.task, policy=DiffusionConfig(n_action_steps=4),
        dataset=str(summary.path), out_dir=str(out / "diffusion"),
        evaluate=False, train=TrainConfig(steps=cfg.train_steps, batch_size=cfg.batch_size, seed=cfg.seed,
                                          checkpoint_every=max(cfg.train_steps // 4, 1),
                                          log_every=max(cfg.train_steps // 20, 1), resume=True)))
    train_seconds = time.perf_counter() - t_train
    eval_cfg = EvalConfig(n_episodes=cfg.eval_episodes, n_envs=cfg.n_envs, video=cfg.eval_videos > 0,
                          n_videos=cfg.eval_videos)
    print(f"[4/{n_stages}] evaluating it over {cfg.eval_episodes} episodes")
    policy = Policy.load(trained.last_checkpoint)
    result = evaluate(policy, cfg.task, eval_cfg, video_dir=out / "videos")
    files = write_eval_outputs(result, out / "eval")
    rows = [_policy_row(f"diffusion (BC, {trained.steps} steps, {train_seconds:.0f} s)", result,
                        trained.last_checkpoint)]
    lines = []
    if cfg.residual_env_steps:
        print(f"[5/{n_stages}] refining it with residual PPO for {cfg.residual_env_steps} env steps")
        residual_rows, lines = _quickstart_residual(cfg, trained.last_checkpoint, eval_cfg, out)
        rows += residual_rows
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
            f"| diffusion evaluation videos | {videos} |",
            f"| evaluation files | `{files['json']}`, `{files['plot']}` |",
            f"| wall time | {time.perf_counter() - t0:.0f} s |",
            "",
            f"Success over the same {cfg.eval_episodes} seeded episodes (Wilson 95%):",
            "",
            "| policy | success | return / length | checkpoint |",
            "|---|---|---|---|",
            *rows,
            "",
            *lines,
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


def _policy_row(name: str, result: Any, checkpoint: Path) -> str:
    return (f"| {name} | {format_rate(result.successes, result.n_episodes)} | {result.mean_return:.3f} / "
            f"{result.mean_length:.1f} | `{checkpoint}` |")


def _quickstart_residual(cfg: QuickstartConfig, base: Path, eval_cfg: Any, out: Path) -> tuple[list[str], list[str]]:
    """Residual PPO on the BC checkpoint ``base``; its evaluation on the same episodes. Returns the report's
    table rows and lines (the success curve, the videos)."""
    from roboloop.cli.train_residual import TrainResidualConfig, residual_ppo_defaults, train_residual
    from roboloop.core.policy import Policy
    from roboloop.envs.evaluation import evaluate, write_eval_outputs

    ppo = replace(residual_ppo_defaults(), total_env_steps=cfg.residual_env_steps, eval_every=cfg.residual_eval_every,
                  seed=cfg.seed, resume=True, progress=True)
    run = train_residual(TrainResidualConfig(base=str(base), n_envs=cfg.n_envs, ppo=ppo, out_dir=str(out / "residual"),
                                             eval=replace(eval_cfg, video=False)))
    checkpoint = run.ppo.last_checkpoint
    result = evaluate(Policy.load(checkpoint), cfg.task, eval_cfg, video_dir=out / "videos_residual")
    write_eval_outputs(result, out / "eval_residual")
    curve = run.success_curve.relative_to(out)
    videos = ", ".join(f"[{v.name}](videos_residual/{v.name})" for v in result.videos) or "none"
    rows = [_policy_row(f"residual PPO on it ({run.ppo.env_steps} env steps, {run.ppo.seconds:.0f} s)", result,
                        checkpoint)]
    lines = [f"Residual success against env steps (the base at 0): ![success curve]({curve})", "",
             f"Residual evaluation videos: {videos}", ""]
    return rows, lines
