"""Evaluate a policy on a task: seeded episodes in gymnasium vector envs, success with its Wilson interval.

Episode ``k`` is reset with seed ``cfg.seed + k`` (default 100000 on: disjoint from demonstrations, which
are collected from seed 0), so two policies evaluated with the same config face exactly the same initial
states. Sub-envs are reset explicitly (``AutoresetMode.DISABLED``, as in collection) to give each episode
its seed; exactly ``n_episodes`` episodes run, each recorded as::

    {"episode": k, "seed": seed + k, "success": bool, "terminated": bool, "truncated": bool,
     "return": float, "length": int, "video": str | None, "best_terms": {"reward_<term>": float, ...}}

``success`` is ``info["is_success"]`` at the last step; ``terminated`` (the task ended, e.g. on success) and
``truncated`` (the time limit) stay separate fields. ``best_terms`` holds, for every shaped term the task reports
in ``info`` (``reward_reach``, ``reward_align``...), its best (largest) value over the episode: how far a failed
episode got (whether PegInsert's peg ever came within a millimetre of the hole, Lift's cube ever rose), which
success alone does not say. ``summary()`` prints their medians over successful and over failed episodes.

Videos show the very episodes the metrics count: the first ``n_videos`` episodes run in in-process sub-envs
whose camera ``video_camera`` is rendered after every step (rendering restores MuJoCo's warm start, so it
does not change the trajectory). With ``vectorization="async"`` those episodes run first in a small
synchronous vector env, the rest in the asynchronous one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from gymnasium.vector import SyncVectorEnv, VectorEnv
from tqdm import tqdm

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.metrics import format_rate, wilson_interval
from roboloop.core.policy import Policy
from roboloop.core.spec import IMAGE_PREFIX, PolicySpec
from roboloop.envs.base import refresh_derived
from roboloop.envs.executor import ChunkExecutor
from roboloop.envs.registration import register_all, task_info
from roboloop.envs.rendering import Renderers
from roboloop.utils.io import atomic_path, write_json
from roboloop.utils.video import write_mp4

logger = logging.getLogger(__name__)

#: Env constructor arguments ``evaluate`` sets itself (from the policy's spec and the video options).
RESERVED_ENV_KWARGS = frozenset({"cameras", "image_size", "render_mode", "render_size"})


@dataclass
class EvalConfig:
    """``roboloop eval``: run a policy for a fixed set of seeded episodes.

    Attributes:
        n_episodes: Episodes to run (exactly this many are counted).
        n_envs: Parallel sub-environments.
        seed: Episode ``k`` is reset with seed ``seed + k``. The default keeps evaluation episodes disjoint
            from demonstrations collected with seeds ``0..N``.
        env_kwargs: Extra constructor arguments of the env (e.g. ``randomization``). Cameras and image size
            come from the policy's spec and may not be set here.
        n_action_steps: Actions executed per policy query (default: the policy's Ta).
        temporal_ensemble_coeff: ACT temporal ensembling (query every step, average the predictions for the
            current step with weights ``exp(-coeff * i)``, oldest first); excludes ``n_action_steps``.
        deterministic: Passed to ``policy.act``.
        video: Record videos of the first ``n_videos`` episodes (``evaluate`` then needs ``video_dir``).
        n_videos: How many episodes to record.
        video_camera: Camera rendered into the videos (``front``, ``top``, ``wrist`` for roboloop tasks;
            ``external_camera_0`` ... for Fetch).
        video_size: Side of the video frames, in pixels.
        vectorization: ``sync`` (one process) or ``async`` (one process per sub-env).
        progress: Show a progress bar.
    """

    n_episodes: int = 50
    n_envs: int = 1
    seed: int = 100000
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    n_action_steps: int | None = None
    temporal_ensemble_coeff: float | None = None
    deterministic: bool = True
    video: bool = False
    n_videos: int = 4
    video_camera: str = "front"
    video_size: int = 256
    vectorization: str = "sync"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.n_episodes < 1:
            raise ConfigError(f"n_episodes must be >= 1, got {self.n_episodes}")
        if self.n_envs < 1:
            raise ConfigError(f"n_envs must be >= 1, got {self.n_envs}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0 (episode k uses seed + k), got {self.seed}")
        reserved = sorted(RESERVED_ENV_KWARGS & set(self.env_kwargs))
        if reserved:
            raise ConfigError(f"env_kwargs may not set {reserved}: cameras and image size come from the policy's "
                              "spec, rendering from the video options")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ConfigError(f"n_action_steps must be >= 1 (or None for the policy's Ta), got {self.n_action_steps}")
        if self.temporal_ensemble_coeff is not None:
            if self.n_action_steps is not None:
                raise ConfigError("temporal_ensemble_coeff and n_action_steps exclude each other: temporal "
                                  "ensembling queries the policy every step")
            if not np.isfinite(self.temporal_ensemble_coeff):
                raise ConfigError(f"temporal_ensemble_coeff must be finite, got {self.temporal_ensemble_coeff}")
        if self.n_videos < 0:
            raise ConfigError(f"n_videos must be >= 0, got {self.n_videos}")
        if not 16 <= self.video_size <= 640:
            # 640 is the offscreen buffer size of roboloop's scenes.
            raise ConfigError(f"video_size must be between 16 and 640, got {self.video_size}")
        if self.vectorization not in ("sync", "async"):
            raise ConfigError(f"vectorization must be 'sync' or 'async', got {self.vectorization!r}")


@dataclass
class EvalResult:
    """Per-episode records of one evaluation and the figures derived from them.

    Attributes:
        task: Task name.
        episodes: One record per episode, in episode order (see the module docstring for the fields).
        seconds: Wall time of the evaluation.
        videos: mp4 files written, in episode order.
        config: The ``EvalConfig`` as a dict, for the record.
    """

    task: str
    episodes: list[dict[str, Any]]
    seconds: float = 0.0
    videos: list[Path] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_episodes(self) -> int:
        return len(self.episodes)

    @property
    def successes(self) -> int:
        return sum(bool(e["success"]) for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / self.n_episodes if self.episodes else float("nan")

    @property
    def success_ci(self) -> tuple[float, float]:
        """Wilson 95% interval of the success rate."""
        return wilson_interval(self.successes, self.n_episodes)

    @property
    def mean_return(self) -> float:
        return float(np.mean([e["return"] for e in self.episodes])) if self.episodes else float("nan")

    @property
    def mean_length(self) -> float:
        return float(np.mean([e["length"] for e in self.episodes])) if self.episodes else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "n_episodes": self.n_episodes,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "success_ci": list(self.success_ci),
            "mean_return": self.mean_return,
            "mean_length": self.mean_length,
            "seconds": self.seconds,
            "videos": [str(v) for v in self.videos],
            "config": self.config,
            "episodes": self.episodes,
        }

    def summary(self) -> str:
        returns = [e["return"] for e in self.episodes]
        lengths = [e["length"] for e in self.episodes]
        return "\n".join([
            f"{self.task}: {self.n_episodes} episodes in {self.seconds:.1f} s",
            f"success: {format_rate(self.successes, self.n_episodes)}",
            f"return:  {np.mean(returns):.3f} +- {np.std(returns):.3f} (mean +- std)",
            f"length:  {np.mean(lengths):.1f} +- {np.std(lengths):.1f} steps",
            *self._terms_summary(),
        ])

    def _terms_summary(self) -> list[str]:
        """One line per shaped term: the median over successful and over failed episodes of its best value."""
        terms = sorted({t for e in self.episodes for t in e.get("best_terms", {})})
        lines = []
        for term in terms:
            parts = []
            for label, wanted in (("successful", True), ("failed", False)):
                values = [e["best_terms"][term] for e in self.episodes
                          if bool(e["success"]) == wanted and term in e.get("best_terms", {})]
                if values:
                    parts.append(f"{label} {np.median(values):.3f} ({len(values)})")
            lines.append(f"best {term} per episode, median: " + ", ".join(parts))
        return lines


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(policy: Policy, task: str, cfg: EvalConfig, *, video_dir: Path | None = None) -> EvalResult:
    """Run ``cfg.n_episodes`` seeded episodes of ``task`` with ``policy`` (in eval mode, restored after).

    Args:
        policy: Any policy whose spec fits the task; the env renders the cameras its spec names
            (``observation.images.<camera>``) at the size its spec gives.
        task: Task name or env id (``Lift``, ``roboloop/Lift-v0``, ...).
        cfg: Episodes, vectorization, execution and video options.
        video_dir: Where the videos go (needed when ``cfg.video``).

    Returns:
        The per-episode records, wall time and video paths.
    """
    info = task_info(task)
    register_all()
    if cfg.video and video_dir is None:
        raise ConfigError("cfg.video is set: pass video_dir, the folder the videos are written to")
    env_kwargs = env_kwargs_for(policy.spec, cfg.env_kwargs)
    n_videos = min(cfg.n_videos, cfg.n_episodes) if cfg.video else 0
    episodes = list(range(cfg.n_episodes))
    if n_videos and cfg.vectorization == "async":
        # Frames are rendered in this process, so the recorded episodes run in a synchronous vector env.
        phases = [(episodes[:n_videos], "sync"), (episodes[n_videos:], "async")]
    else:
        phases = [(episodes, cfg.vectorization)]

    # Imported here, not at module level: roboloop.datasets.collection imports roboloop.envs, which may
    # re-export this module.
    from roboloop.datasets.collection import make_vector_env

    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    was_training = policy.training
    policy.eval()
    bar = tqdm(total=cfg.n_episodes, desc=f"eval {info.name}", unit="ep", disable=not cfg.progress)
    try:
        for ids, vectorization in phases:
            if not ids:
                continue
            envs = make_vector_env(info.name, env_kwargs, min(cfg.n_envs, len(ids)), vectorization)
            recorder = None
            try:
                env_spec = PolicySpec.from_env(envs)
                policy.spec.check_compatible(env_spec, what=f"task {info.name}")
                if n_videos and ids[0] < n_videos:
                    assert video_dir is not None  # checked above
                    recorder = _FrameRecorder(envs, cfg.video_camera, cfg.video_size, Path(video_dir), n_videos)
                executor = ChunkExecutor(policy, envs.num_envs, n_action_steps=cfg.n_action_steps,
                                         temporal_ensemble_coeff=cfg.temporal_ensemble_coeff,
                                         deterministic=cfg.deterministic)
                _rollout(envs, executor, ids, seed=cfg.seed, task=info.name, recorder=recorder, records=records,
                         bar=bar)
            finally:
                if recorder is not None:
                    recorder.close()
                envs.close()
    finally:
        bar.close()
        policy.train(was_training)
    records.sort(key=lambda r: r["episode"])
    result = EvalResult(task=info.name, episodes=records, seconds=time.perf_counter() - t0,
                        videos=[Path(r["video"]) for r in records if r["video"] is not None], config=asdict(cfg))
    logger.info("evaluation of %s on %s\n%s", type(policy).__name__, info.name, result.summary())
    return result


def env_kwargs_for(spec: PolicySpec, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The env's constructor arguments: ``env_kwargs`` plus the cameras and image size the policy reads."""
    kwargs = dict(env_kwargs)
    if spec.image_keys:
        sizes = {spec.obs_shapes[k][:2] for k in spec.image_keys}
        if len(sizes) > 1:
            raise InputError(f"the policy's cameras have different image sizes {sorted(sizes)}; an env renders all "
                             "its cameras at one size")
        kwargs["cameras"] = [k[len(IMAGE_PREFIX):] for k in spec.image_keys if k.startswith(IMAGE_PREFIX)]
        kwargs["image_size"] = list(sizes.pop())
    return kwargs


class _Episode:
    """Running totals of one episode in progress."""

    def __init__(self, index: int, seed: int, record_video: bool) -> None:
        self.index, self.seed = index, seed
        self.ret, self.length = 0.0, 0
        self.best_terms: dict[str, float] = {}
        self.frames: list[np.ndarray] | None = [] if record_video else None

    def record(self, *, success: bool, terminated: bool, truncated: bool, video: Path | None) -> dict[str, Any]:
        return {"episode": self.index, "seed": self.seed, "success": success, "terminated": terminated,
                "truncated": truncated, "return": self.ret, "length": self.length,
                "video": None if video is None else str(video), "best_terms": self.best_terms}

    def track_terms(self, infos: dict[str, Any], i: int) -> None:
        """Keep the best value so far of each shaped term (``info["reward_*"]``) sub-env ``i`` reported."""
        for key, values in infos.items():
            # Vector envs report a key for every sub-env, with a ``_key`` mask of the ones that set it.
            mask = infos.get(f"_{key}")
            if key.startswith("reward_") and (mask is None or mask[i]):
                value = float(values[i])
                self.best_terms[key] = max(value, self.best_terms.get(key, value))


def _rollout(envs: VectorEnv, executor: ChunkExecutor, episode_ids: list[int], *, seed: int, task: str,
             recorder: _FrameRecorder | None, records: list[dict[str, Any]], bar: tqdm) -> None:
    """Run the episodes ``episode_ids`` to their end across the sub-envs of ``envs``; appends one record
    per episode to ``records`` as it finishes."""
    n = envs.num_envs
    pending = deque(episode_ids)
    running: list[_Episode | None] = [None] * n

    def start(mask: np.ndarray) -> dict[str, np.ndarray]:
        """Reset the masked sub-envs: each starts the next seeded episode while any is left, the rest idle
        (a finished sub-env must still be reset before the vector env steps it again)."""
        seeds: list[int | None] = [None] * n
        for i in np.flatnonzero(mask):
            running[i] = None
            if pending:
                k = pending.popleft()
                running[i] = _Episode(k, seed + k, record_video=recorder is not None and recorder.wants(k))
                seeds[i] = seed + k
        obs, _ = envs.reset(seed=seeds, options={"reset_mask": mask})
        executor.reset(np.flatnonzero(mask))
        if recorder is not None:
            for i in np.flatnonzero(mask):
                episode = running[i]
                if episode is not None and episode.frames is not None:
                    episode.frames.append(recorder.frame(i))
        return obs

    obs = start(np.ones(n, dtype=bool))
    while any(e is not None for e in running):
        active = np.array([e is not None for e in running])
        actions = executor.act(obs, active=active)
        # Idle sub-envs step too (with zero actions): gymnasium vector envs step every sub-env.
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        done = terminated | truncated
        for i in np.flatnonzero(active):
            episode = running[i]
            assert episode is not None  # active means running
            episode.ret += float(rewards[i])
            episode.length += 1
            episode.track_terms(infos, i)
            if recorder is not None and episode.frames is not None:
                episode.frames.append(recorder.frame(i))
            if not done[i]:
                continue
            video = None
            if recorder is not None and episode.frames is not None:
                video = recorder.write(f"{task}_episode{episode.index:03d}_seed{episode.seed}.mp4", episode.frames)
            records.append(episode.record(success=_is_success(infos, i, task), terminated=bool(terminated[i]),
                                          truncated=bool(truncated[i]), video=video))
            running[i] = None
            bar.update(1)
            bar.set_postfix(success=f"{np.mean([r['success'] for r in records]):.0%}")
        if done.any() and (pending or any(e is not None for e in running)):
            obs = start(done)


def _is_success(infos: dict[str, Any], i: int, task: str) -> bool:
    if "is_success" not in infos:
        raise InputError(f"task {task}: the env does not report info['is_success']; success cannot be measured")
    return bool(infos["is_success"][i])


class _FrameRecorder:
    """Renders one camera of the sub-envs of a synchronous vector env (in this process), for videos.

    Any env exposing MuJoCo ``model`` and ``data`` works (roboloop's tasks and the Fetch adapters). It renders
    like the envs' own cameras: derived poses refreshed without touching the warm start, so recording an
    episode does not change it.
    """

    def __init__(self, envs: VectorEnv, camera: str, size: int, out_dir: Path, n_videos: int) -> None:
        if not isinstance(envs, SyncVectorEnv):
            raise TypeError(f"videos are rendered in-process and need a SyncVectorEnv, got {type(envs).__name__}")
        self._envs = [env.unwrapped for env in envs.envs]
        model = self._envs[0].model
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            names = [model.camera(c).name for c in range(model.ncam)]
            raise ConfigError(f"video_camera {camera!r} is not a camera of this task; its cameras: {names}")
        self.camera, self.size = camera, (int(size), int(size))
        self.out_dir, self.n_videos = out_dir, n_videos
        self.fps = float(self._envs[0].metadata.get("render_fps", 10))
        self._renderers = [Renderers(env.model) for env in self._envs]

    def wants(self, episode_index: int) -> bool:
        """Whether episode ``episode_index`` is one of those recorded (the first ``n_videos``)."""
        return episode_index < self.n_videos

    def write(self, name: str, frames: list[np.ndarray]) -> Path:
        return write_mp4(self.out_dir / name, frames, self.fps)

    def frame(self, i: int) -> np.ndarray:
        """(size, size, 3) uint8 frame of sub-env ``i``'s current state."""
        env = self._envs[i]
        refresh_derived(env.model, env.data)
        return self._renderers[i].render(env.data, self.camera, self.size)

    def close(self) -> None:
        for renderers in self._renderers:
            renderers.close()


# -------------------------------------------------------------------------------------------- outputs
def write_eval_outputs(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``eval.json`` (the result with every episode) and ``success.png`` into ``out_dir``.

    Returns:
        ``{"json": path, "plot": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "eval.json", "plot": out_dir / "success.png"}
    write_json(paths["json"], result.to_dict())
    _plot_success(result, paths["plot"])
    return paths


def _plot_success(result: EvalResult, path: Path) -> None:
    """Cumulative success rate over episodes with its Wilson 95% band, and the count of each outcome."""
    # The object-oriented API (no pyplot) renders with Agg and leaves matplotlib's global backend alone.
    from matplotlib.figure import Figure

    success = np.array([bool(e["success"]) for e in result.episodes])
    n = np.arange(1, len(success) + 1)
    cumulative = np.cumsum(success)
    band = np.array([wilson_interval(int(s), int(k)) for s, k in zip(cumulative, n)])
    outcomes = {
        "success": int(success.sum()),
        "failed: time limit": sum(not e["success"] and e["truncated"] for e in result.episodes),
        "failed: terminated": sum(not e["success"] and e["terminated"] and not e["truncated"]
                                  for e in result.episodes),
    }

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_rate, ax_bar = fig.subplots(1, 2, width_ratios=[2, 1])
    ax_rate.fill_between(n, band[:, 0], band[:, 1], alpha=0.25, label="Wilson 95%")
    ax_rate.plot(n, cumulative / n, marker="." if len(n) <= 50 else None, label="success rate")
    ax_rate.set(xlabel="episodes", ylabel="cumulative success rate", ylim=(-0.02, 1.02), xlim=(1, max(len(n), 2)),
                title=f"{result.task}: {format_rate(result.successes, result.n_episodes)}")
    ax_rate.legend(loc="lower right")
    ax_rate.grid(alpha=0.3)
    bars = ax_bar.bar(list(outcomes), list(outcomes.values()), color=["tab:green", "tab:orange", "tab:red"])
    ax_bar.bar_label(bars)
    ax_bar.margins(y=0.12)  # room for the labels above the bars
    ax_bar.set(ylabel="episodes", title="outcomes")
    ax_bar.tick_params(axis="x", labelrotation=20)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_success_curve(env_steps: list[int], success_rates: list[float], n_episodes: int, path: str | Path, *,
                       title: str, reference: tuple[str, float] | None = None) -> Path:
    """Success rate against training env steps (each point evaluated over ``n_episodes``, with its Wilson 95%
    band) and an optional horizontal ``reference`` line ``(label, rate)``, e.g. the base policy's success."""
    from matplotlib.figure import Figure

    steps = np.asarray(env_steps, dtype=float)
    rates = np.asarray(success_rates, dtype=float)
    band = np.array([wilson_interval(round(r * n_episodes), n_episodes) for r in rates]).reshape(-1, 2)
    fig = Figure(figsize=(6.5, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(steps, band[:, 0], band[:, 1], alpha=0.25, label="Wilson 95%")
    ax.plot(steps, rates, marker="o", label=f"success ({n_episodes} episodes each)")
    if reference is not None:
        ax.axhline(reference[1], color="tab:gray", linestyle="--", label=f"{reference[0]}: {reference[1]:.0%}")
    ax.set(xlabel="training env steps", ylabel="success rate", ylim=(-0.02, 1.02), title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
