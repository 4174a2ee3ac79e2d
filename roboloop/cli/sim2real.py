"""``roboloop sysid`` (identify a task's simulation from real episodes), ``roboloop sim2real`` (iterative
sim-to-real against the real proxy), ``roboloop distill`` (teacher-student distillation to an image policy) and
``roboloop self-improve`` (SAIL-style rounds on a task variant), each with a report."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym

from roboloop.cli.reclone import RecloneConfig, reclone_base
from roboloop.cli.train_residual import TrainResidualConfig, train_residual
from roboloop.core.checkpoint import load_policy, read_meta, read_policy_config
from roboloop.core.errors import ConfigError
from roboloop.core.metrics import format_rate, wilson_interval
from roboloop.datasets.store import EpisodeStore
from roboloop.envs import task_info
from roboloop.envs.evaluation import EvalConfig, evaluate
from roboloop.residual_rl import ResidualPolicy
from roboloop.sim2real.deploy import deploy, run_episodes
from roboloop.sim2real.distill import DistillConfig, distill, student_env_kwargs, student_eval_kwargs
from roboloop.sim2real.real_robot import REAL_SOURCE, RealProxy, RealRobotEnv, proxy_env_kwargs
from roboloop.sim2real.self_improve import SelfImproveConfig, self_improve
from roboloop.sim2real.sysid import Identification, IdentificationConfig, ProbeConfig, identify, probe_actor
from roboloop.utils.io import atomic_path, prepare_run_dir, write_json

#: The policy id of identification episodes (``probe_actor``: the settling expert, dragging what it grasps) in a
#: real-episode log.
PROBE_ID = "sysid-probe"


@dataclass
class SysIdConfig:
    """Identify a task's simulation (physics scales, action latency, sensor noise) from real episodes.

    With ``real_log`` unset, the episodes are run on the real proxy (hidden parameters from ``secret_seed``) by the
    task's scripted expert, slowed down to act on settled observations, which after its first grasp drags the object
    over the table (``probe``, see ``ProbeConfig``), within a budget of ``episodes``, and logged to
    ``<output_dir>/real_episodes.hdf5``. With ``real_log=FILE``, the episodes of that file whose source is ``real``
    are identified from (a physical robot's log). Writes ``identification.json`` (estimates, relative stds, the
    randomization ranges for training), ``report.md`` and ``sysid_loss.png``.
    """

    task: str = "PegInsert"
    real_log: str | None = None
    secret_seed: int = 0
    episodes: int = 20
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    identification: IdentificationConfig = field(default_factory=IdentificationConfig)
    output_dir: str = "outputs/sysid/${task}"

    def __post_init__(self) -> None:
        self.task = task_info(self.task).name
        if self.episodes < 1:
            raise ConfigError(f"sysid episodes must be >= 1, got {self.episodes}")
        if self.real_log is None and self.episodes < self.identification.min_episodes:
            # Refused before any real episode is spent on it.
            raise ConfigError(f"identification needs at least {self.identification.min_episodes} episodes of real "
                              f"data; episodes={self.episodes} would not be enough")


def run_probe_episodes(robot: RealRobotEnv, n_episodes: int, *, probe: ProbeConfig, seed: int,
                       env_kwargs: dict[str, Any]) -> None:
    """Run ``n_episodes`` identification episodes (``probe_actor``: the task's settling expert, dragging what it
    grasps) on ``robot`` (which logs them).

    The expert reads only geometry from an env (never its state), so a nominal one of the same task serves.
    """
    nominal = gym.make(task_info(robot.robot.task).env_id, **env_kwargs)
    actor = probe_actor(robot.robot.task, nominal, probe, seed=seed)
    try:
        run_episodes(robot, actor, n_episodes, seed=seed)
    finally:
        nominal.close()


def run_real_episodes(cfg: SysIdConfig, log_path: Path) -> None:
    """Run ``cfg.episodes`` episodes of the settling expert on the real proxy, logging them to ``log_path``."""
    proxy = RealProxy(cfg.task, secret_seed=cfg.secret_seed, env_kwargs=cfg.env_kwargs)
    log_path.unlink(missing_ok=True)  # a rerun identifies from its own episodes only
    real = RealRobotEnv(proxy, episode_budget=cfg.episodes, log_path=log_path, policy_id=PROBE_ID)
    try:
        run_probe_episodes(real, cfg.episodes, probe=cfg.probe, seed=cfg.seed * 100_003,
                           env_kwargs=cfg.env_kwargs)
    finally:
        real.close()


def read_real_episodes(path: Path, *, policy_id: str | None = None, latest: int | None = None) -> list[Any]:
    """The real episodes of an episode file (only those of ``policy_id`` unless None; the last ``latest``)."""
    with EpisodeStore(path) as store:
        ids = [i for i in range(len(store)) if store.attrs(i).get("source") == REAL_SOURCE
               and policy_id in (None, store.attrs(i).get("policy_id"))]
        if latest is not None:
            ids = ids[-latest:]
        return [store.episode(i) for i in ids]


def report(ident: Identification, cfg: SysIdConfig, seconds: float) -> str:
    ranges = ident.randomization(cfg.identification)
    rows = []
    for name, value in ident.estimates.items():
        std = ident.relative_stds[name]
        shown_std = f"{100 * std:.1f}%" if math.isfinite(std) else "inf"
        low, high = ranges[name]
        z = ident.profile_zs.get(name)
        shown_z = "" if z is None else (f"{z:.1f}" if math.isfinite(z) else str(z))
        rows.append(f"| {name} | {value:.3f} | {shown_std} | {shown_z} | {'yes' if ident.identifiable[name] else 'no'}"
                    f" | [{low:.3f}, {high:.3f}] |")
    latency = ", ".join(f"{i}: {loss:.3g}" for i, loss in enumerate(ident.latency_losses))
    overrides = " ".join(f"env_kwargs.randomization.{k}=[{v[0]:.4g},{v[1]:.4g}]" for k, v in ranges.items()
                         if isinstance(v, tuple))
    return "\n".join([
        f"# System identification: {ident.task}", "",
        f"{ident.n_episodes} real episodes ({ident.n_steps} steps), {ident.evaluations} replays of the log, "
        f"{seconds:.0f} s. Replay error (mean squared, observation.state units): nominal simulation "
        f"{ident.nominal_loss:.3g}, identified {ident.loss:.3g} ({ident.nominal_loss / max(ident.loss, 1e-300):.0f}x "
        "lower).", "",
        "| parameter | estimate (x nominal) | relative std | profile z "
        f"(+-{200 * cfg.identification.max_relative_std:.0f}%) | identifiable | randomization range |",
        "|---|---|---|---|---|---|", *rows,
        f"| action_latency_steps | {ident.action_latency_steps} | | | | [{ident.action_latency_steps}, "
        f"{ident.action_latency_steps}] |",
        f"| obs_noise_std | {ident.obs_noise_std:.3g} | | | | {ident.obs_noise_std:.3g} |", "",
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


@dataclass
class Sim2RealConfig:
    """``roboloop sim2real CHECKPOINT``: iterative sim-to-real (i-S2R) against the real proxy.

    Iteration 0 deploys ``checkpoint``, trained in the nominal simulation (a residual checkpoint, or a BC checkpoint
    that the first retraining puts a residual head on), on the real proxy for ``episodes_per_iteration``
    episodes. After each deployment ``probe_episodes`` identification episodes run on the real proxy too (the
    task's scripted expert acting on settled observations and dragging what it grasps, as ``roboloop sysid`` runs
    them), and the simulation is identified from the latest ``identification_episodes`` of those. A task policy's
    own episodes identify badly: a jammed or half-inserted peg diverges chaotically between the replay and the log,
    and that divergence swamps the effect of the parameters. ``probe_episodes=0`` identifies from the deployed
    policy's episodes instead.
    Each iteration then trains the residual further in the identified simulation with randomization around it
    (``train``, a train-residual config; its ``init``/``base``, ``env_kwargs.randomization`` and ``out_dir`` are set
    per iteration) and deploys its best checkpoint (confirmed, see below); the config sets
    ``train.ppo.eval_at_start``, so the policy it continues competes for that checkpoint and a retraining that did
    worse in the identified simulation deploys its start again. The ``best`` checkpoint is the maximum of many noisy
    evaluations, which overstates it: with ``confirm_episodes``, ``best`` and ``last`` are evaluated again on that
    many further episodes of the identified simulation and the one that does better there is deployed (and
    continued by the next iteration).
    With ``hold_for_latency`` (the default) that retraining and the deployment after it run with the env's
    ``hold_steps`` set to the identified action latency: the policy decides every ``1 + latency`` control steps and
    holds in between, so its command has taken effect before it observes again. A policy trained at full rate
    fails under a latency it does not know (the real proxy's one step of latency takes the nominal PegInsert residual
    from 92% to 18% in simulation) and PPO at full rate under that latency learns slowly (continuing that residual it
    stays near 40% for 960k env steps; a latency-aware head trained from zero evaluated at most 18% within 1.15M), while
    the same policy holding every other step keeps about 85% before any retraining. The time limit stays in control
    steps, so holding gets no more time (holding at the nominal action scale, even the scripted expert times out in 10
    of 40 proxy episodes). With ``reclone.enabled`` (off by default: on the real proxy's PegInsert, continuing the
    held residual did better) the first retraining that must hold a policy trained at another rate re-clones it
    instead (``reclone``): the scripted expert demonstrates in the identified simulation at that rate with
    ``reclone.max_delta_pos_factor`` times the action scale, a new base is cloned from those demonstrations with the old
    base's policy config, and a new residual is trained on it from a zero head (``reclone.residual``, ``reclone.ppo``;
    the rest of ``train`` as above); later iterations continue that residual. The deployment runs at the same action
    scale (the checkpoint's ``env_kwargs.max_delta_pos``). The loop stops after ``iterations`` retrainings, when the
    real budget is spent, or when a deployment reaches ``target_success``. Everything the real proxy saw is in
    ``real_episodes.hdf5``; ``report.md``/``report.json`` give per iteration the real success, the success in the
    identified simulation and the identified parameters, and ``sim2real_success.png`` plots real success against real
    episodes used. A killed run continues with ``resume=true``.

    Attributes:
        checkpoint: The policy trained in the nominal simulation.
        secret_seed: The real proxy's hidden parameters.
        iterations: Retrainings at most.
        episodes_per_iteration: Real episodes per deployment.
        real_budget: Real episodes in all (deployments and identification probes).
        probe_episodes: Identification episodes run after each deployment (0: identify from deployments).
        probe: How the probes act (the expert's settling, the drag after its grasp).
        hold_for_latency: Retrain and deploy with ``hold_steps`` = the identified action latency (see above).
        identification_episodes: Identify from at most this many of the latest probe (or real) episodes.
        target_success: Stop once a deployment's success reaches this.
        confirm_episodes: Episodes of the identified simulation on which each retraining's ``best`` and ``last``
            are evaluated again to choose the one deployed (0: deploy ``best``).
        identification: How each identification searches.
        train: The retraining (residual PPO) settings.
        reclone: The re-clone of a policy that must hold (demonstrations, BC, the new residual's PPO).
        seed: Real episode starts: deployment ``i`` episode ``k`` resets with ``seed * 1_000_003 + 1000 i + k``.
        resume: Continue a killed run in ``out_dir``.
        out_dir: Output directory (``{task}`` is filled in).
    """

    checkpoint: str | None = None
    secret_seed: int = 0
    iterations: int = 3
    episodes_per_iteration: int = 20
    real_budget: int = 100
    probe_episodes: int = 5
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    hold_for_latency: bool = True
    identification_episodes: int = 40
    target_success: float = 0.9
    confirm_episodes: int = 100
    identification: IdentificationConfig = field(default_factory=IdentificationConfig)
    train: TrainResidualConfig = field(default_factory=TrainResidualConfig)
    reclone: RecloneConfig = field(default_factory=RecloneConfig)
    seed: int = 0
    resume: bool = False
    out_dir: str = "outputs/sim2real/{task}"

    def __post_init__(self) -> None:
        if self.checkpoint is None:
            raise ConfigError("sim2real needs the checkpoint of a policy trained in the nominal simulation")
        if min(self.iterations, self.episodes_per_iteration, self.real_budget, self.identification_episodes) < 1:
            raise ConfigError("sim2real iterations, episodes_per_iteration, real_budget and identification_episodes "
                              "must be >= 1")
        if self.probe_episodes < 0 or self.confirm_episodes < 0:
            raise ConfigError(f"sim2real probe_episodes and confirm_episodes must be >= 0, got {self.probe_episodes} "
                              f"and {self.confirm_episodes}")
        if not 0 < self.target_success <= 1:
            raise ConfigError(f"target_success must be in (0, 1], got {self.target_success}")


def _real_episodes_logged(path: Path) -> int:
    if not path.exists():
        return 0
    with EpisodeStore(path) as store:
        return len(store)


def _max_delta_pos(task: str, env_kwargs: dict[str, Any]) -> float:
    """The position action scale of ``task``'s env under ``env_kwargs`` (metres per full-scale action)."""
    env = gym.make(task_info(task).env_id, **env_kwargs)
    try:
        return float(env.unwrapped.max_delta_pos)
    finally:
        env.close()


def confirm_checkpoint(checkpoints: Path, task: str, eval_cfg: EvalConfig) -> tuple[Path, dict[str, float]]:
    """The one of ``checkpoints/best`` and ``checkpoints/last`` that succeeds more often over ``eval_cfg``'s episodes
    (``best`` on a tie), and each one's success there. ``best`` won the maximum of many evaluations, so its own
    figure is biased upward; ``eval_cfg``'s episodes (another seed) are new to both. With ``eval_cfg.n_episodes=0``
    or only one of them saved, that one is returned unevaluated."""
    candidates = [c for c in (checkpoints / "best", checkpoints / "last") if c.exists()]
    if not candidates:
        raise ConfigError(f"{checkpoints} holds neither a best nor a last checkpoint")
    if eval_cfg.n_episodes == 0 or len(candidates) == 1:
        return candidates[0], {}
    best, last = candidates
    if read_meta(best).get("env_steps") == read_meta(last).get("env_steps"):  # the same weights: evaluate once
        rate = evaluate(load_policy(best), task, eval_cfg).success_rate
        return best, {"best": rate, "last": rate}
    success = {c.name: evaluate(load_policy(c), task, eval_cfg).success_rate for c in candidates}
    return max(candidates, key=lambda c: success[c.name]), success


def run_sim2real(cfg: Sim2RealConfig) -> int:
    assert cfg.checkpoint is not None  # checked by the config
    meta = read_meta(cfg.checkpoint)
    task = task_info(meta.get("task") or "PegInsert").name
    # The probes and their replays in identification run the robot at every control step (the probes' expert
    # settles by itself), whatever rate the policies run at.
    probe_kwargs = {k: v for k, v in proxy_env_kwargs(meta.get("env_kwargs", {})).items() if k != "hold_steps"}
    out = Path(cfg.out_dir.replace("{task}", task))
    state_path, log_path = out / "report.json", out / "real_episodes.hdf5"
    prepare_run_dir(out, resume=cfg.resume)
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.exists() else {
        "task": task, "policy": cfg.checkpoint, "secret_seed": cfg.secret_seed, "iterations": [], "trainings": {}}
    if state["policy"] != cfg.checkpoint or state["secret_seed"] != cfg.secret_seed:
        raise ConfigError(f"{out} holds a run of policy {state['policy']} on secret seed {state['secret_seed']}; "
                          "use another out_dir")
    iterations: list[dict[str, Any]] = state["iterations"]
    checkpoint = cfg.checkpoint
    for it in range(cfg.iterations + 1):
        if it > 0:
            # A run from before confirm_episodes existed deployed best.
            best = out / f"iteration{it}" / "checkpoints" / "best"
            checkpoint = state["trainings"][str(it)].get("deployed", str(best))
        if it == len(iterations):
            # Deploy: real episodes, counted against the budget (an interrupted deployment's episodes too).
            used = _real_episodes_logged(log_path)
            n = min(cfg.episodes_per_iteration, cfg.real_budget - used)
            if n < 1:
                break
            # The proxy runs at the rate the policy was trained at (its hold_steps); the hidden physics are the same.
            deploy_kwargs = proxy_env_kwargs(read_meta(checkpoint).get("env_kwargs", {}))
            robot = RealRobotEnv(RealProxy(task, secret_seed=cfg.secret_seed, env_kwargs=deploy_kwargs),
                                 episode_budget=n, log_path=log_path, policy_id=f"iteration{it}")
            try:
                result = deploy(load_policy(checkpoint), robot, n, seed=cfg.seed * 1_000_003 + 1000 * it)
            finally:
                robot.close()
            iterations.append({"iteration": it, "checkpoint": checkpoint, "real_episodes": n,
                               "real_episodes_total": used + n, "real_successes": result.successes,
                               "real_success": result.success_rate, **state["trainings"].get(str(it), {})})
            write_json(state_path, state)
            print(f"iteration {it}: {result.summary()} ({used + n}/{cfg.real_budget} real episodes used)", flush=True)
        entry = iterations[it]
        if (it == cfg.iterations or entry["real_success"] >= cfg.target_success
                or entry["real_episodes_total"] >= cfg.real_budget):
            break

        # Identification probes, then identify from the latest of them and retrain in the identified simulation.
        if cfg.probe_episodes and "probe_episodes" not in entry:
            used = _real_episodes_logged(log_path)
            n = min(cfg.probe_episodes, cfg.real_budget - used)
            if n > 0:
                robot = RealRobotEnv(RealProxy(task, secret_seed=cfg.secret_seed, env_kwargs=probe_kwargs),
                                     episode_budget=n, log_path=log_path, policy_id=PROBE_ID)
                try:
                    run_probe_episodes(robot, n, probe=cfg.probe,
                                       seed=cfg.seed * 1_000_003 + 1000 * it + 500, env_kwargs=probe_kwargs)
                finally:
                    robot.close()
            entry["probe_episodes"] = n
            entry["real_episodes_total"] = used + n
            write_json(state_path, state)
        ident_path = out / f"iteration{it + 1}" / "identification.json"
        if ident_path.exists():
            ident = Identification.load(ident_path)
        else:
            episodes = read_real_episodes(log_path, policy_id=PROBE_ID if cfg.probe_episodes else None,
                                          latest=cfg.identification_episodes)
            ident = identify(task, episodes, cfg.identification, env_kwargs=probe_kwargs)
            ident.save(ident_path)
        ranges = ident.randomization(cfg.identification)
        training_dir = out / f"iteration{it + 1}"
        env_kwargs: dict[str, Any] = {**cfg.train.env_kwargs, "randomization": ranges}
        if cfg.hold_for_latency:
            env_kwargs["hold_steps"] = ident.action_latency_steps
        trained_at = read_meta(checkpoint).get("env_kwargs", {}).get("hold_steps", 0)
        reclone: dict[str, Any] = {}
        if cfg.reclone.enabled and env_kwargs.get("hold_steps", 0) > 0 and trained_at != env_kwargs["hold_steps"]:
            # A policy that must now hold gets a new base, cloned at that rate and a larger action scale, and a new
            # residual trained on it from a zero head (see RecloneConfig).
            env_kwargs["max_delta_pos"] = cfg.reclone.max_delta_pos_factor * _max_delta_pos(task, probe_kwargs)
            base, bc_success = reclone_base(checkpoint, task, env_kwargs, cfg.reclone, training_dir / "bc",
                                            seed=10_000_000 + 1000 * cfg.seed)
            reclone = {"base": str(base), "bc_success": bc_success, "demos": cfg.reclone.n_demos,
                       "max_delta_pos": env_kwargs["max_delta_pos"]}
            train_cfg = replace(cfg.train, base=str(base), init=None, residual=cfg.reclone.residual,
                                ppo=replace(cfg.reclone.ppo, resume=True), out_dir=str(training_dir),
                                env_kwargs=env_kwargs)
        else:
            is_residual = read_policy_config(checkpoint)[0] == ResidualPolicy.name
            start_from = {"init": checkpoint, "base": None} if is_residual else {"base": checkpoint, "init": None}
            train_cfg = replace(cfg.train, **start_from, out_dir=str(training_dir), env_kwargs=env_kwargs,
                                ppo=replace(cfg.train.ppo, resume=True))
        run = train_residual(train_cfg)
        evaluated = [h["success_rate"] for h in run.ppo.history if "success_rate" in h]
        confirm_eval = replace(cfg.train.eval, n_episodes=cfg.confirm_episodes, seed=20_000_000 + 1000 * cfg.seed + it,
                               env_kwargs={**env_kwargs, **cfg.train.eval.env_kwargs}, video=False, progress=False)
        deployed, confirmed = confirm_checkpoint(training_dir / "checkpoints", task, confirm_eval)
        # What the next iteration's policy was trained on, and how it did in that simulation.
        state["trainings"][str(it + 1)] = {"identification": {**ident.simulation(), "identifiable": ident.identifiable},
                                           "hold_steps": env_kwargs.get("hold_steps", 0),
                                           "sim_success": max(evaluated) if evaluated else None,
                                           "deployed": str(deployed), "confirmed": confirmed,
                                           **({"reclone": reclone} if reclone else {})}
        write_json(state_path, state)
    text = _sim2real_report(state, cfg)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    _plot_sim2real(state, out / "sim2real_success.png")
    print(text)
    return 0


def _sim2real_report(state: dict[str, Any], cfg: Sim2RealConfig) -> str:
    rows = []
    for entry in state["iterations"]:
        ident = entry.get("identification", {})
        # A scale identification disowns was trained under the fallback range, not under its estimate.
        physics = ", ".join(f"{k.replace('_scale', '')} {v:.2f}" if ident.get("identifiable", {}).get(k, True)
                            else f"{k.replace('_scale', '')} fallback range" for k, v in ident.items()
                            if k.endswith("_scale"))
        latency = (f"latency {ident['action_latency_steps']}, noise {ident['obs_noise_std']:.2g}; decides every "
                   f"{1 + entry.get('hold_steps', 0)} control steps") if ident else ""
        reclone = entry.get("reclone")
        if reclone:
            bc = reclone["bc_success"]
            latency += (f"; re-cloned at max_delta_pos {reclone['max_delta_pos']:.3g} from {reclone['demos']} expert "
                        f"demonstrations (BC {'-' if bc is None else f'{100 * bc:.0f}%'} there), new residual")
        rows.append(f"| {entry['iteration']} | {format_rate(entry['real_successes'], entry['real_episodes'])} | "
                    f"{entry['real_episodes_total']} | {sim_success_text(entry)} | "
                    f"{physics}{'; ' if physics and latency else ''}{latency} |")
    first, last = state["iterations"][0], state["iterations"][-1]
    return "\n".join([
        f"# Iterative sim-to-real: {state['task']} on the real proxy (secret seed {state['secret_seed']})", "",
        f"Policy trained in the nominal simulation: `{state['policy']}`. Real success went from "
        f"{100 * first['real_success']:.0f}% (iteration 0) to {100 * last['real_success']:.0f}% "
        f"(iteration {last['iteration']}), using {last['real_episodes_total']} of {cfg.real_budget} real episodes.",
        "", "| iteration | real success [Wilson 95%] | real episodes used | its success in the identified sim (best "
        "evaluation; the deployed checkpoint's on further episodes) | the simulation it was trained in (identified "
        "from the real episodes before it) |",
        "|---|---|---|---|---|",
        *rows, ""])


def sim_success_text(entry: dict[str, Any]) -> str:
    """An iteration's success in its identified simulation: the best training evaluation, then (when
    ``confirm_episodes`` chose the deployed checkpoint) that checkpoint's success on the further episodes."""
    best, confirmed = entry.get("sim_success"), entry.get("confirmed") or {}
    text = "" if best is None else f"{100 * best:.0f}%"
    deployed = Path(entry.get("deployed", "best")).name
    if deployed in confirmed:
        text += f"; deployed {deployed}: {100 * confirmed[deployed]:.0f}%"
    return text


def _plot_sim2real(state: dict[str, Any], path: Path) -> None:
    entries = state["iterations"]
    plot_success_points([e["real_episodes_total"] for e in entries], [(e["real_successes"], e["real_episodes"])
                                                                      for e in entries], path,
                        xlabel="real episodes used", ylabel="real success (%)",
                        title=f"iterative sim-to-real: {state['task']}",
                        labels=[f"it {e['iteration']}" for e in entries])


def plot_success_points(x: list[float], counts: list[tuple[int, int]], path: Path, *, xlabel: str, ylabel: str,
                        title: str, labels: list[str] | None = None) -> None:
    """Success rates (successes, episodes) at ``x`` with their Wilson 95% intervals as error bars."""
    from matplotlib.figure import Figure

    y = [100 * k / n for k, n in counts]
    ci = [wilson_interval(k, n) for k, n in counts]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    ax.errorbar(x, y, yerr=[[v - 100 * lo for v, (lo, _) in zip(y, ci)], [100 * hi - v for v, (_, hi) in zip(y, ci)]],
                marker="o", capsize=3)
    for label, xi, yi in zip(labels or [], x, y):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xticks(x)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-5, 105)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def run_self_improve(cfg: SelfImproveConfig) -> int:
    results = self_improve(cfg, progress=lambda r: print(
        f"round {r.round}: success {format_rate(r.successes, r.episodes)}; kept {r.kept}, dataset "
        f"{r.dataset_episodes} episodes", flush=True))
    first, last = results[0], results[-1]
    rows = [f"| {r.round} | {format_rate(r.successes, r.episodes)} | {r.kept} | {r.dataset_episodes} | "
            f"`{r.checkpoint}` |" for r in results]
    text = "\n".join([
        f"# Self-improvement on {cfg.env_kwargs or 'the nominal task'}", "",
        f"Success on the variant went from {100 * first.success_rate:.0f}% to {100 * last.success_rate:.0f}% "
        f"({100 * (last.success_rate - first.success_rate):+.0f} points) in {cfg.rounds} rounds of "
        f"{cfg.episodes_per_round} rollouts (keep={cfg.keep}, {cfg.train.steps} finetuning steps each).", "",
        "| round | success on the variant [Wilson 95%] | rollouts kept | dataset episodes | policy |",
        "|---|---|---|---|---|", *rows, ""])
    out = Path(cfg.out_dir.replace("{task}", read_meta(str(cfg.checkpoint))["task"]))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    plot_success_points([r.round for r in results], [(r.successes, r.episodes) for r in results],
                        out / "self_improve_success.png", xlabel="round (0: the BC policy)",
                        ylabel="success on the variant (%)", title="self-improvement")
    print(text)
    return 0


def run_distill(cfg: DistillConfig) -> int:
    rounds = distill(cfg, progress=lambda r: print(
        f"round {r.round}: beta {r.beta:.2f}, {r.teacher_steps} teacher / {r.student_steps} student steps; student "
        f"success in the randomized simulation: {'-' if r.sim_success is None else f'{100 * r.sim_success:.0f}%'}",
        flush=True))
    assert cfg.teacher is not None  # checked by the config
    meta = read_meta(cfg.teacher)
    task = task_info(meta.get("task") or "Lift").name
    out = Path(cfg.out_dir.replace("{task}", task))
    student_checkpoint = rounds[-1].checkpoint
    teacher_sim = None
    if cfg.eval_episodes:
        # The teacher on the students' evaluation episodes (same seeds, same randomization): the reference for their
        # success in simulation.
        teacher_sim = evaluate(load_policy(cfg.teacher), task, EvalConfig(
            n_episodes=cfg.eval_episodes, env_kwargs=student_eval_kwargs(meta.get("env_kwargs", {}), cfg),
            progress=False)).success_rate
        print(f"teacher in the randomized simulation: {100 * teacher_sim:.0f}%", flush=True)
    real: dict[str, Any] = {}
    if cfg.real_episodes:
        # Teacher and student on the same real-proxy starts; the proxy renders the student's cameras.
        proxy_kwargs = proxy_env_kwargs(student_env_kwargs(meta.get("env_kwargs", {}), cfg))
        log_path = out / "real_episodes.hdf5"
        log_path.unlink(missing_ok=True)
        for name, checkpoint in (("teacher", cfg.teacher), ("student", student_checkpoint)):
            robot = RealRobotEnv(RealProxy(task, secret_seed=cfg.secret_seed, env_kwargs=proxy_kwargs),
                                 episode_budget=cfg.real_episodes, log_path=log_path, policy_id=name)
            try:
                result = deploy(load_policy(checkpoint), robot, cfg.real_episodes, seed=cfg.seed + 9_000_000)
            finally:
                robot.close()
            real[name] = {"successes": result.successes, "episodes": cfg.real_episodes}
            print(f"{name} on the real proxy: {result.summary()}", flush=True)
    rows = [f"| {r.round} | {r.beta:.2f} | {r.teacher_steps} / {r.student_steps} | "
            f"{'' if r.sim_success is None else f'{100 * r.sim_success:.0f}%'} | `{r.checkpoint}` |" for r in rounds]
    lines = [f"# Teacher-student distillation: {task}", "",
             f"Teacher `{cfg.teacher}` (state) -> image student ({', '.join(cfg.student.obs_keys)}, "
             f"{cfg.image_size}x{cfg.image_size}), {cfg.episodes_per_round} labelled episodes per round under visual "
             "randomization.", "",
             "| round | beta (teacher's share) | steps executed by teacher / student | student success, randomized sim "
             "| student |", "|---|---|---|---|---|", *rows, ""]
    if teacher_sim is not None:
        last = rounds[-1].sim_success
        ratio_text = f"; last student / teacher = {last / teacher_sim:.2f}" if last is not None and teacher_sim else ""
        lines += [f"The teacher on the same {cfg.eval_episodes} episodes of the randomized simulation: "
                  f"{100 * teacher_sim:.0f}%{ratio_text}.", ""]
    if real:
        t, s = real["teacher"], real["student"]
        ratio = s["successes"] / t["successes"] if t["successes"] else float("nan")
        lines += [f"On the real proxy (secret seed {cfg.secret_seed}, its camera and lighting shift): teacher "
                  f"{format_rate(t['successes'], t['episodes'])}, student {format_rate(s['successes'], s['episodes'])}"
                  f"; student / teacher = {ratio:.2f}.", ""]
    write_json(out / "report.json", {"rounds": [vars(r) for r in rounds], "teacher_sim_success": teacher_sim,
                                     "real": real})
    text = "\n".join(lines)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    print(text)
    return 0
