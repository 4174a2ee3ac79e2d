"""``roboloop sysid``: identify a task's simulation from real episodes, with a report."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from roboloop.core.errors import ConfigError
from roboloop.datasets.store import EpisodeStore
from roboloop.envs import task_info
from roboloop.envs.experts import make_expert
from roboloop.sim2real.real_robot import REAL_SOURCE, RealProxy, RealRobotEnv
from roboloop.sim2real.sysid import Identification, IdentificationConfig, SettlingActor, identify
from roboloop.utils.io import atomic_path


@dataclass
class SysIdConfig:
    """Identify a task's simulation (physics scales, action latency, sensor noise) from real episodes.

    With ``real_log`` unset, the episodes are run on the real proxy (hidden parameters from ``secret_seed``) by the
    task's scripted expert, slowed down to act on settled observations (``settle_steps``), within a budget of
    ``episodes``, and logged to ``<output_dir>/real_episodes.hdf5``. With ``real_log=FILE``, the episodes of that
    file whose source is ``real`` are identified from (a physical robot's log). Writes ``identification.json``
    (estimates, relative stds, the randomization ranges for training), ``report.md`` and ``sysid_loss.png``.
    """

    task: str = "PegInsert"
    real_log: str | None = None
    secret_seed: int = 0
    episodes: int = 20
    settle_steps: int = 3
    seed: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    identification: IdentificationConfig = field(default_factory=IdentificationConfig)
    output_dir: str = "outputs/sysid/${task}"

    def __post_init__(self) -> None:
        self.task = task_info(self.task).name
        if self.episodes < 1 or self.settle_steps < 1:
            raise ConfigError(f"sysid episodes and settle_steps must be >= 1, got {self.episodes}, "
                              f"{self.settle_steps}")


def run_real_episodes(cfg: SysIdConfig, log_path: Path) -> None:
    """Run ``cfg.episodes`` episodes of the settling expert on the real proxy, logging them to ``log_path``."""
    proxy = RealProxy(cfg.task, secret_seed=cfg.secret_seed, env_kwargs=cfg.env_kwargs)
    log_path.unlink(missing_ok=True)  # a rerun identifies from its own episodes only
    real = RealRobotEnv(proxy, episode_budget=cfg.episodes, log_path=log_path, policy_id="expert-settling")
    # The expert reads only geometry from an env (never its state): a nominal one of the same task will do.
    nominal = gym.make(task_info(cfg.task).env_id, **cfg.env_kwargs)
    actor = SettlingActor(make_expert(cfg.task, nominal, seed=cfg.seed), cfg.settle_steps)
    try:
        for i in range(cfg.episodes):
            obs, _ = real.reset(seed=cfg.seed * 100_003 + i)
            actor.reset(seed=cfg.seed * 100_003 + i)
            done = False
            while not done:
                obs, _, terminated, truncated, _ = real.step(actor.act(obs))
                done = terminated or truncated
    finally:
        real.close()
        nominal.close()


def read_real_episodes(path: Path) -> list[Any]:
    with EpisodeStore(path) as store:
        return [store.episode(i) for i in range(len(store)) if store.attrs(i).get("source") == REAL_SOURCE]


def report(ident: Identification, cfg: SysIdConfig, seconds: float) -> str:
    ranges = ident.randomization(cfg.identification)
    rows = []
    for name, value in ident.estimates.items():
        std = ident.relative_stds[name]
        shown_std = f"{100 * std:.1f}%" if math.isfinite(std) else "inf"
        low, high = ranges[name]
        rows.append(f"| {name} | {value:.3f} | {shown_std} | {'yes' if ident.identifiable[name] else 'no'} | "
                    f"[{low:.3f}, {high:.3f}] |")
    latency = ", ".join(f"{i}: {loss:.3g}" for i, loss in enumerate(ident.latency_losses))
    overrides = " ".join(f"env_kwargs.randomization.{k}=[{v[0]:.4g},{v[1]:.4g}]" for k, v in ranges.items()
                         if isinstance(v, tuple))
    return "\n".join([
        f"# System identification: {ident.task}", "",
        f"{ident.n_episodes} real episodes ({ident.n_steps} steps), {ident.evaluations} replays of the log, "
        f"{seconds:.0f} s. Replay error (mean squared, observation.state units): nominal simulation "
        f"{ident.nominal_loss:.3g}, identified {ident.loss:.3g} ({ident.nominal_loss / max(ident.loss, 1e-300):.0f}x "
        "lower).", "",
        "| parameter | estimate (x nominal) | relative std | identifiable | randomization range |",
        "|---|---|---|---|---|", *rows,
        f"| action_latency_steps | {ident.action_latency_steps} | | | [{ident.action_latency_steps}, "
        f"{ident.action_latency_steps}] |",
        f"| obs_noise_std | {ident.obs_noise_std:.3g} | | | {ident.obs_noise_std:.3g} |", "",
        f"Replay error by latency (nominal physics): {latency}.", "",
        "Train in the identified simulation with these randomization overrides:", "", f"    {overrides} "
        f"env_kwargs.randomization.obs_noise_std={ident.obs_noise_std:.3g}", ""])


def plot_history(ident: Identification, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    ax.semilogy(range(1, len(ident.history) + 1), ident.history, marker=".")
    ax.axhline(ident.nominal_loss, color="gray", linestyle="--", label="nominal simulation")
    ax.set_xlabel("CMA-ES generation")
    ax.set_ylabel("replay error (mean squared)")
    ax.set_title(f"system identification: {ident.task}")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def run_sysid(cfg: SysIdConfig) -> int:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.real_log is None:
        log_path = out / "real_episodes.hdf5"
        started = time.perf_counter()
        run_real_episodes(cfg, log_path)
        print(f"ran {cfg.episodes} episodes on the real proxy in {time.perf_counter() - started:.0f} s -> {log_path}")
    else:
        log_path = Path(cfg.real_log)
    episodes = read_real_episodes(log_path)
    started = time.perf_counter()
    ident = identify(cfg.task, episodes, cfg.identification, env_kwargs=cfg.env_kwargs,
                     progress=lambda n, loss: print(f"  {n} replays: error {loss:.4g}", flush=True))
    seconds = time.perf_counter() - started
    ident.save(out / "identification.json")
    text = report(ident, cfg, seconds)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    plot_history(ident, out / "sysid_loss.png")
    print(text)
    print(f"wrote {out / 'identification.json'}, {out / 'report.md'}, {out / 'sysid_loss.png'}")
    return 0
