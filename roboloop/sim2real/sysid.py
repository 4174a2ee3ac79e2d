"""System identification: the simulator parameters under which logged real episodes replay best.

A logged real episode has observations and actions but no simulator state. It is replayed open loop in the
simulation from the start poses its first observation shows (``ManipulationEnv.episode_poses_from_observation``),
under candidate parameters. The error is the mean squared difference between the replayed and the logged
``observation.state`` over its physical parts: the gripper's pose, velocity and finger gap, and the movable objects'
poses. The task's derived features (relative poses, the 4x-yaw terms) only repeat those, amplified. Sensor noise
enters every part with the same std, in that part's units, so the unweighted squared error is the Gaussian
log-likelihood up to constants.

:func:`identify` runs in four stages:

1. **Action latency** (an integer): the best of 0..``max_latency_steps`` under nominal physics. One step of latency
   shifts the whole gripper trajectory by a control period, which is far more than any physical scale moves it.
   After stage 2 the neighbouring latencies are checked again under the estimated physics.
2. **Physical scales**, in log space, by CMA-ES (the ``cma`` package; a shrinking grid for a single scale). The
   search starts at nominal and stays in ``bounds``. It is gradient-free because contacts make the error rugged.
   It is staged: the actuator scales (gain, damping) first, from each episode's free-motion prefix (up to the
   first closing grip command: the gripper touches nothing there); then the mass from each episode's carry prefix
   (up to the first lowering after a lift with the grip closed: the object hangs in the fingers and touches
   nothing else, :func:`carry_prefixes`); then the rest (friction) over whole episodes with those held.
3. **Uncertainty**: the sandwich (robust) covariance with episodes as the independent units, ``H^-1 V H^-1 /
   n_episodes``. ``V`` is the covariance of the episodes' gradients of the error in the log scales and ``H`` the
   Gauss-Newton Hessian of the mean error, from the residuals' Jacobian; both by central finite differences. Being
   full matrices, they widen the stds of scales that trade off along a valley (gain and damping). Contacts make a
   replay jump when a grasp or a collision turns out differently; ``V`` counts those jumps as noise, where a
   Gauss-Newton covariance alone would count them as information. A scale whose std exceeds ``max_relative_std`` (or
   that loads on a direction of zero curvature) is reported as not identifiable from these episodes. Domain
   randomization then keeps its ``fallback_range`` for it. A scale searched on the carry prefixes is judged on them
   too. Curvature from a small finite-difference step can be fooled on a flat but rugged error (friction seen only
   through a few contacts came out 0.62 +- 3% against 1.2 true), so a scale must also pass a **profile check**: moved
   ``2 * max_relative_std`` either way (alone), the error must rise on the episodes with a paired z of at least
   ``profile_z`` on both sides. Pick-and-place alone barely depends on sliding friction; the probes of ``roboloop
   sysid`` therefore drag what they grasp over the table (:class:`DragProbe`), and they weigh it (hold it still
   aloft) before, for the mass.
4. **Sensor noise**: the std of the residuals' step-to-step differences, divided by sqrt(2). Model error is smooth
   in time and white noise is not, so differencing separates the two.

:meth:`Identification.randomization` turns the result into randomization ranges: the estimate +- ``range_stds``
stds, at least +- ``min_relative_range``, for domain randomization around the identified simulation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from roboloop.core.errors import ConfigError, InputError
from roboloop.datasets.store import Episode
from roboloop.envs import task_info
from roboloop.envs.base import GRIP_INDEX, PROPRIO_STRUCTURE, STATE_KEY, ManipulationEnv, hold_action
from roboloop.envs.experts import make_expert
from roboloop.utils.io import write_json

#: Observations a start pose is estimated from, and how far (m, or units of a quaternion) an object's observed pose
#: may move within them before it counts as moved rather than noise.
START_WINDOW, REST_TOLERANCE = 10, 0.003
#: The physical scales identification can estimate (names of ``RandomizationSpec`` fields and sample entries).
IDENTIFIABLE = ("actuator_gain_scale", "actuator_damping_scale", "object_mass_scale", "friction_scale")
#: The scales of the gripper's own servos, which its free motion shows without any contact.
ACTUATOR_SCALES = ("actuator_gain_scale", "actuator_damping_scale")
#: The scale a carried object's weight and inertia show (``carry_prefixes``).
MASS_SCALE = "object_mass_scale"
#: The action's z increment, and how large (in action units) a command must be to count as moving up or down.
Z_INDEX, MOVE_TOLERANCE = 2, 1e-3


def closes_grip(actions: np.ndarray) -> np.ndarray:
    """Whether each action (..., action_dim) commands the grip closed: where free motion ends and a grasp begins
    (for the probes' drag and for the free-motion prefixes alike)."""
    return np.asarray(actions)[..., GRIP_INDEX] > 0


@dataclass
class IdentificationConfig:
    """How :func:`identify` searches and how sure it must be.

    Attributes:
        parameters: The physical scales to estimate (a subset of ``IDENTIFIABLE``); the others stay nominal.
        bounds: The range every scale is searched in (multipliers of nominal).
        max_latency_steps: Latencies 0..this are tried.
        min_episodes, min_steps: Less logged data than this is refused (the estimate would be noise).
        sigma0: CMA-ES's initial step, in log scale (0.2: about 20%).
        popsize: Candidates per CMA-ES generation.
        max_evaluations: Replays of the whole log CMA-ES may spend (each is every episode once), over all rounds.
        rounds: CMA-ES searches, each after refining the start poses under the estimate so far (and with half the
            previous step).
        tol_log_scale: CMA-ES stops once its steps in log scale are below this (1e-3: 0.1%).
        fd_step: Finite-difference step in log scale for the uncertainty (wide enough to average over contacts).
        max_relative_std: A scale with a larger relative std is reported as not identifiable.
        profile_z: A scale moved ``2 * max_relative_std`` either way must raise the episodes' errors by at least
            this many standard errors (paired over episodes) on both sides, or it is not identifiable.
        range_stds: Randomization range half-width, in stds.
        min_relative_range: The smallest randomization half-width, relative to the estimate.
        fallback_range: The randomization range of a scale that could not be identified.
        n_workers: Processes that replay candidates in parallel (1: in this process).
        seed: Seeds CMA-ES.
    """

    parameters: list[str] = field(default_factory=lambda: list(IDENTIFIABLE))
    bounds: tuple[float, float] = (0.4, 2.5)
    max_latency_steps: int = 3
    min_episodes: int = 3
    min_steps: int = 150
    sigma0: float = 0.2
    popsize: int = 8
    max_evaluations: int = 400
    rounds: int = 2
    tol_log_scale: float = 1e-3
    fd_step: float = 0.05
    max_relative_std: float = 0.1
    profile_z: float = 2.0
    range_stds: float = 2.0
    min_relative_range: float = 0.05
    fallback_range: tuple[float, float] = (0.6, 1.6)
    n_workers: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.parameters = list(self.parameters)
        unknown = sorted(set(self.parameters) - set(IDENTIFIABLE))
        if unknown or not self.parameters:
            raise ConfigError(f"sysid parameters must be a non-empty subset of {list(IDENTIFIABLE)}, got "
                              f"{self.parameters}")
        self.bounds = tuple(float(b) for b in self.bounds)  # type: ignore[assignment]
        self.fallback_range = tuple(float(b) for b in self.fallback_range)  # type: ignore[assignment]
        for name in ("bounds", "fallback_range"):
            low, high = getattr(self, name)
            if not 0 < low < 1 < high:
                raise ConfigError(f"sysid {name} must satisfy 0 < low < 1 < high (they bracket nominal), "
                                  f"got {(low, high)}")
        if self.max_latency_steps < 0 or self.min_episodes < 1 or self.min_steps < 1 or self.rounds < 1:
            raise ConfigError("sysid max_latency_steps must be >= 0, min_episodes, min_steps and rounds >= 1")
        if self.popsize < 4 or self.max_evaluations < self.popsize * self.rounds or self.n_workers < 1:
            raise ConfigError(f"sysid needs popsize >= 4, max_evaluations >= popsize * rounds and n_workers >= 1, "
                              f"got {self.popsize}, {self.max_evaluations}, {self.n_workers}")
        for name in ("sigma0", "tol_log_scale", "fd_step", "max_relative_std", "profile_z", "range_stds",
                     "min_relative_range"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"sysid {name} must be > 0, got {getattr(self, name)}")


@dataclass
class Identification:
    """What :func:`identify` found: estimates, their uncertainty, and how well the log replays.

    Attributes:
        task: The task whose simulation was identified.
        estimates: Scale -> estimate (multiplier of nominal).
        relative_stds: Scale -> std of the estimate, relative to it (sandwich over episodes; inf when the error
            has no positive curvature in it).
        identifiable: Scale -> whether its relative std is within ``max_relative_std`` and it passed the profile
            check (``profile_zs``).
        profile_zs: Scale -> the smaller of the two paired z-values of the profile check (inf: no spread at all).
        action_latency_steps: The identified latency.
        latency_losses: Replay error (mean squared, nominal physics) of latency 0, 1, ...
        obs_noise_std: Estimated sensor noise std (units of ``observation.state``).
        loss, nominal_loss: Replay error at the estimates and under the nominal simulation (latency 0).
        n_episodes, n_steps: The log identified from.
        evaluations: Replays of the whole log spent.
        history: Best replay error after each CMA-ES generation.
    """

    task: str
    estimates: dict[str, float]
    relative_stds: dict[str, float]
    identifiable: dict[str, bool]
    action_latency_steps: int
    latency_losses: list[float]
    obs_noise_std: float
    loss: float
    nominal_loss: float
    n_episodes: int
    n_steps: int
    evaluations: int
    history: list[float]
    profile_zs: dict[str, float] = field(default_factory=dict)

    def simulation(self) -> dict[str, Any]:
        """The identified parameters as entries of a randomization sample (the most likely simulation)."""
        return {**self.estimates, "action_latency_steps": self.action_latency_steps,
                "obs_noise_std": self.obs_noise_std}

    def randomization(self, cfg: IdentificationConfig | None = None) -> dict[str, Any]:
        """Randomization overrides (``RandomizationSpec`` fields) around the identified simulation.

        Each identified scale gets its estimate +- ``range_stds`` stds (at least +- ``min_relative_range``); one that
        could not be identified gets ``fallback_range``. Latency is the identified value and sensor noise the
        estimated std.
        """
        cfg = cfg or IdentificationConfig()
        out: dict[str, Any] = {}
        for name, value in self.estimates.items():
            if self.identifiable[name]:
                half = max(cfg.range_stds * self.relative_stds[name], cfg.min_relative_range)
                out[name] = (value * math.exp(-half), value * math.exp(half))
            else:
                out[name] = cfg.fallback_range
        out["action_latency_steps"] = (self.action_latency_steps, self.action_latency_steps)
        out["obs_noise_std"] = self.obs_noise_std
        return out

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically (a killed write leaves the previous file)."""
        # inf (a scale the log does not depend on) is not JSON: store it as null.
        data = asdict(self)
        for key in ("relative_stds", "profile_zs"):
            data[key] = {k: (v if math.isfinite(v) else None) for k, v in getattr(self, key).items()}
        write_json(path, data)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Identification:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            for key in ("relative_stds", "profile_zs"):
                data[key] = {k: (math.inf if v is None else float(v)) for k, v in data.get(key, {}).items()}
            return cls(**data)
        except FileNotFoundError:
            raise InputError(f"{path}: no identification there (run `roboloop sysid` first)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path}: not an identification written by roboloop sysid ({e})") from e


def check_log(episodes: Sequence[Episode], cfg: IdentificationConfig) -> None:
    """Refuse a log that cannot identify anything: too little of it, no state observations, or NaNs."""
    n_steps = sum(len(ep) for ep in episodes)
    if len(episodes) < cfg.min_episodes or n_steps < cfg.min_steps:
        raise InputError(f"identification needs at least {cfg.min_episodes} episodes and {cfg.min_steps} steps of "
                         f"real data, got {len(episodes)} episode(s) of {n_steps} steps in total: run more real "
                         "episodes (or lower min_episodes / min_steps knowingly)")
    for i, ep in enumerate(episodes):
        if STATE_KEY not in ep.observations:
            raise InputError(f"real episode {i} has no {STATE_KEY!r} (keys: {sorted(ep.observations)}); "
                             "identification compares state observations")
        if not (np.isfinite(ep.observations[STATE_KEY]).all() and np.isfinite(ep.actions).all()):
            raise InputError(f"real episode {i} contains NaN or inf in its observations or actions")


class EpisodeReplayer:
    """Replays logged episodes open loop in the simulation, under any parameters.

    Args:
        task: The task the episodes were logged on.
        episodes: The log (only ``observation.state`` and the actions are used).
        env_kwargs: The task's constructor arguments (geometry such as ``clearance``); cameras are dropped.
    """

    def __init__(self, task: str, episodes: Sequence[Episode], env_kwargs: Mapping[str, Any] | None = None) -> None:
        kwargs = {k: v for k, v in dict(env_kwargs or {}).items() if k not in ("cameras", "render_mode")}
        env = gym.make(task_info(task).env_id, **kwargs).unwrapped
        if not isinstance(env, ManipulationEnv):
            raise ConfigError(f"{task}: identification replays roboloop's own manipulation tasks")
        self.env = env
        slices = env.observation_slices()
        parts = [*PROPRIO_STRUCTURE, *env.object_observation_parts]
        #: Indices of the physical parts of observation.state that are compared.
        self.dims = np.concatenate([np.arange(slices[p].start, slices[p].stop) for p in parts])
        self.starts = [self._resting_start(np.asarray(ep.observations[STATE_KEY], dtype=np.float64))
                       for ep in episodes]
        self.actions = [np.asarray(ep.actions, dtype=np.float64) for ep in episodes]
        self.logged = [np.asarray(ep.observations[STATE_KEY], dtype=np.float64)[:, self.dims] for ep in episodes]
        self.n_values = sum(x.size for x in self.logged)

    def _resting_start(self, states: np.ndarray) -> dict[str, float]:
        """Start poses from an episode's first observations: objects averaged over the steps before anything moved them.

        One noisy observation puts the start poses off by the sensor noise, and that offset persists through the
        whole replay (at 0.5 mm it costs more replay error than a 50% error in friction). Objects rest until the
        gripper reaches them, so their poses are averaged over the first ``START_WINDOW`` observations that stay
        within ``REST_TOLERANCE`` of the first.
        """
        objects = np.concatenate([np.arange(s.start, s.stop) for name, s in self.env.observation_slices().items()
                                  if name in self.env.object_observation_parts])
        moved = np.abs(states[:START_WINDOW, objects] - states[0, objects]).max(axis=1) > REST_TOLERANCE
        resting = states[: int(np.argmax(moved)) if moved.any() else START_WINDOW]
        poses = [self.env.episode_poses_from_observation(s) for s in resting]
        start = dict(poses[0])
        for key in start:
            if not key.startswith("gripper."):
                start[key] = float(np.mean([p[key] for p in poses]))
        return start

    def refine_gripper_starts(self, params: Mapping[str, Any]) -> None:
        """Correct each start's gripper pose by the mean replay error of its first ``START_WINDOW`` steps.

        The gripper moves from the first step, so its start cannot be averaged like the objects'. But a position
        servo follows its setpoint whatever its gains, and the setpoint starts at the start pose, so an error in
        the start shows as a constant offset of the early replay; its mean over the window is the correction.
        """
        slices = self.env.observation_slices()
        x, y = slices["eef_pos"].start, slices["eef_pos"].start + 1
        cos, sin = slices["eef_yaw_cos_sin"].start, slices["eef_yaw_cos_sin"].start + 1
        where = {int(d): i for i, d in enumerate(self.dims)}
        for start, replayed, logged in zip(self.starts, self.replay(params), self.logged):
            window = slice(0, min(START_WINDOW, len(logged)))
            error = logged[window] - replayed[window]
            start["gripper.x"] += float(np.mean(error[:, where[x]]))
            start["gripper.y"] += float(np.mean(error[:, where[y]]))
            yaw_logged = np.arctan2(logged[window, where[sin]], logged[window, where[cos]])
            yaw_replayed = np.arctan2(replayed[window, where[sin]], replayed[window, where[cos]])
            start["gripper.yaw"] += float(np.mean(np.angle(np.exp(1j * (yaw_logged - yaw_replayed)))))

    def replay(self, params: Mapping[str, Any]) -> list[np.ndarray]:
        """Replayed compared observations per episode, each (T + 1, n_dims), under ``params`` (sample entries)."""
        out = []
        for start, actions in zip(self.starts, self.actions):
            sample = {**start, "action_latency_steps": 0, **params, "obs_noise_std": 0.0}
            obs, _ = self.env.reset(options={"randomization": sample})
            states = np.empty((len(actions) + 1, len(self.dims)))
            states[0] = obs[STATE_KEY][self.dims]
            for t, action in enumerate(actions):
                obs, *_ = self.env.step(action)
                states[t + 1] = obs[STATE_KEY][self.dims]
            out.append(states)
        return out

    def episode_residuals(self, params: Mapping[str, Any]) -> list[np.ndarray]:
        """Replayed minus logged per episode, each (T + 1, n_dims)."""
        return [r - x for r, x in zip(self.replay(params), self.logged)]

    def residuals(self, params: Mapping[str, Any]) -> np.ndarray:
        """Replayed minus logged, all episodes concatenated: (sum of T + 1, n_dims)."""
        return np.concatenate(self.episode_residuals(params))

    def loss(self, params: Mapping[str, Any]) -> float:
        """Mean squared replay error."""
        return float(np.mean(self.residuals(params) ** 2))

    def episode_losses(self, params: Mapping[str, Any]) -> np.ndarray:
        """(n_episodes,) each episode's share of the squared error, scaled so that their mean is :meth:`loss`."""
        squared = [np.sum((r - x) ** 2) for r, x in zip(self.replay(params), self.logged)]
        return np.asarray(squared) * len(squared) / self.n_values


# A process pool's workers each hold one replayer per set of episodes (whole episodes, carry prefixes): the
# episodes are sent once, candidates many times.
_WORKER_REPLAYERS: dict[str, EpisodeReplayer] = {}


def _init_worker(task: str, episode_sets: Mapping[str, Sequence[Episode]], env_kwargs: Mapping[str, Any]) -> None:
    _WORKER_REPLAYERS.update({key: EpisodeReplayer(task, eps, env_kwargs) for key, eps in episode_sets.items()})


def _worker_loss(job: tuple[str, list[dict[str, float]], Mapping[str, Any]]) -> float:
    key, starts, params = job
    replayer = _WORKER_REPLAYERS[key]
    replayer.starts = starts  # the main process refines the starts between rounds
    return replayer.loss(params)


def _sandwich_stds(episode_residuals: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray, h: float,
                   names: Sequence[str]) -> dict[str, float]:
    """Relative stds of the estimates: the sandwich covariance ``H^-1 V H^-1 / n_episodes`` in log scale.

    ``episode_residuals(x)`` gives each episode's replayed-minus-logged states. ``H`` is the Gauss-Newton Hessian of
    the mean squared error, ``2 J^T J / n_values`` with the residuals' Jacobian ``J`` by central differences (step
    ``h``); ``V`` the covariance over episodes of each episode's gradient, by the same differences. A Hessian of
    finite differences of the error itself is not used: on contact-rich replays (a grasped peg dragged over the
    table) its mixed terms came out indefinite, and one flat direction (the peg's mass) then made every scale's std
    infinite. Gauss-Newton's is positive semi-definite, and the sandwich's ``V`` still counts an episode whose replay
    jumps (a grasp turning out differently) as noise. ``H`` being a full matrix, two scales that trade off (gain and
    damping) widen each other's stds. A scale with weight on a direction of (numerically) zero curvature gets an
    infinite std.
    """
    n = len(x)
    steps = np.eye(n) * h
    centre = episode_residuals(x)
    n_values = sum(r.size for r in centre)
    jacobian_columns, gradients = [], []
    for i in range(n):
        plus, minus = episode_residuals(x + steps[i]), episode_residuals(x - steps[i])
        jacobian_columns.append(np.concatenate([(p - m).ravel() for p, m in zip(plus, minus)]) / (2 * h))
        # Each episode's loss is its squared error scaled so that the episodes' mean is the mean squared error.
        gradients.append([(np.sum(p ** 2) - np.sum(m ** 2)) * len(centre) / n_values / (2 * h)
                          for p, m in zip(plus, minus)])
    jacobian = np.stack(jacobian_columns, axis=1)  # (n_values, n)
    hessian = 2.0 * jacobian.T @ jacobian / n_values
    gradients_by_episode = np.asarray(gradients).T  # (episodes, n)
    eigenvalues, eigenvectors = np.linalg.eigh(hessian)
    flat = eigenvalues <= 1e-9 * max(float(np.abs(eigenvalues).max()), 1e-300)
    inverse = (eigenvectors[:, ~flat] / eigenvalues[~flat]) @ eigenvectors[:, ~flat].T
    covariance = inverse @ np.cov(gradients_by_episode, rowvar=False).reshape(n, n) @ inverse / len(centre)
    # A scale with weight on a flat direction of the error is not pinned down by these episodes.
    unpinned = (np.abs(eigenvectors[:, flat]) > 0.1).any(axis=1) if flat.any() else np.zeros(n, dtype=bool)
    return {name: math.inf if unpinned[j] else math.sqrt(max(float(covariance[j, j]), 0.0))
            for j, name in enumerate(names)}


def _profile_zs(episode_losses: Callable[[np.ndarray], np.ndarray], x: np.ndarray, step: float,
                names: Sequence[str]) -> dict[str, float]:
    """Per scale, how clearly the episodes prefer the estimate over the scale moved by ``step`` (log scale) down
    and up, alone: the smaller of the two paired z-values ``mean(d) / (std(d) / sqrt(n))`` of the episodes' error
    increases ``d`` (inf when every episode's error rises by the same amount)."""
    centre = episode_losses(x)
    out = {}
    for j, name in enumerate(names):
        zs = []
        for sign in (-1.0, 1.0):
            moved = x.copy()
            moved[j] += sign * step
            rise = episode_losses(moved) - centre
            spread = float(np.std(rise, ddof=1)) / math.sqrt(len(rise)) if len(rise) > 1 else 0.0
            mean = float(np.mean(rise))
            zs.append(mean / spread if spread > 0 else (math.inf if mean > 0 else -math.inf))
        out[name] = min(zs)
    return out


def _generations(x0: np.ndarray, sigma: float, bounds: tuple[float, float], cfg: IdentificationConfig,
                 seed: int) -> Generator[list[np.ndarray] | None, list[float], None]:
    """Candidates to evaluate: the first generation from ``next()``, each next from ``send(its losses)``; None when
    done.

    CMA-ES for two or more scales. pycma needs at least two dimensions, so one scale gets a shrinking grid:
    ``popsize`` points across +-2 sigma around the best so far, then half the width around the new best.
    """
    import cma

    budget = cfg.max_evaluations // cfg.rounds
    if len(x0) >= 2:
        es = cma.CMAEvolutionStrategy(x0, sigma, {
            "bounds": list(bounds), "popsize": cfg.popsize, "seed": seed, "verbose": -9, "maxfevals": budget,
            "tolx": cfg.tol_log_scale, "tolfun": 0, "tolflatfitness": 10})
        while not es.stop():
            xs = es.ask()
            es.tell(xs, (yield xs))
    else:
        centre, spent = float(x0[0]), 0
        while sigma > cfg.tol_log_scale and spent + cfg.popsize <= budget:
            xs = [np.array([x]) for x in np.clip(np.linspace(centre - 2 * sigma, centre + 2 * sigma, cfg.popsize),
                                                 *bounds)]
            fs = yield xs
            spent += len(xs)
            centre, sigma = float(xs[int(np.argmin(fs))][0]), sigma / 2
    yield None


def _with(x: np.ndarray, dims: Sequence[int], values: Sequence[float]) -> np.ndarray:
    """``x`` with entries ``dims`` replaced by ``values`` (a copy)."""
    out = np.array(x, dtype=float)
    out[list(dims)] = values
    return out


def _search(losses: Callable[[Sequence[np.ndarray]], list[float]], best_x: np.ndarray, best_loss: float,
            dims: Sequence[int], sigma: float, bounds: tuple[float, float], cfg: IdentificationConfig, seed: int,
            on_generation: Callable[[float], None] | None = None) -> tuple[np.ndarray, float]:
    """Search entries ``dims`` of ``best_x`` (the others held) by :func:`_generations`; returns the best point and
    its loss (``best_loss`` is the loss of ``best_x`` given). ``on_generation(best loss)`` runs after each."""
    search = _generations(best_x[list(dims)], sigma, bounds, cfg, seed)
    xs = next(search)
    while xs is not None:
        candidates = [_with(best_x, dims, x) for x in xs]
        fs = losses(candidates)
        i = int(np.argmin(fs))
        if fs[i] < best_loss:
            best_x, best_loss = candidates[i], float(fs[i])
        if on_generation is not None:
            on_generation(best_loss)
        xs = search.send(fs)
    return best_x, best_loss


def _prefix(ep: Episode, k: int) -> Episode:
    """The episode's first ``k`` steps (and their ``k + 1`` observations)."""
    return Episode({key: v[: k + 1] for key, v in ep.observations.items()}, ep.actions[:k], ep.rewards[:k],
                   ep.terminated[:k], ep.truncated[:k])


def free_motion_prefixes(episodes: Sequence[Episode]) -> list[Episode]:
    """Each episode up to its first closing grip command (all of it when it never closes; none when it closes at
    once): the steps where the gripper moves through free space, so that only the actuator scales (and the
    latency) shape the replay."""
    out = []
    for ep in episodes:
        closing = np.flatnonzero(closes_grip(ep.actions))
        k = int(closing[0]) if closing.size else len(ep.actions)
        if k > 0:
            out.append(_prefix(ep, k))
    return out


def carry_prefixes(episodes: Sequence[Episode]) -> list[Episode]:
    """Each episode up to the first downward command after it lifted with the grip closed (none when it never
    lifts anything): free motion, the grasp, and the object carried aloft, where nothing but the fingers touches
    it, so that its weight and inertia (the mass scale) shape the replay, and no contact with the table does.
    ``DragProbe`` holds the object aloft for ``weigh_steps`` before it lowers it to drag."""
    out = []
    for ep in episodes:
        dz = np.asarray(ep.actions)[:, Z_INDEX]
        lifting = np.flatnonzero(closes_grip(ep.actions) & (dz > MOVE_TOLERANCE))
        if lifting.size == 0:
            continue
        lowering = np.flatnonzero(dz[lifting[0]:] < -MOVE_TOLERANCE)
        out.append(_prefix(ep, int(lifting[0] + lowering[0]) if lowering.size else len(ep.actions)))
    return out


def identify(task: str, episodes: Sequence[Episode], cfg: IdentificationConfig | None = None, *,
             env_kwargs: Mapping[str, Any] | None = None,
             progress: Callable[[int, float], None] | None = None) -> Identification:
    """Identify ``task``'s simulation parameters from logged real ``episodes`` (see the module docstring).

    Args:
        progress: Called as ``progress(evaluations, best_loss)`` after each CMA-ES generation.
    """
    cfg = cfg or IdentificationConfig()
    check_log(episodes, cfg)
    episodes = [Episode({STATE_KEY: ep.observations[STATE_KEY]}, ep.actions, ep.rewards, ep.terminated,
                        ep.truncated) for ep in episodes]  # images are not compared: do not ship them to workers
    names = list(cfg.parameters)
    # The stages of step 2 (see there), and the episode sets they replay: the actuator scales get the free-motion
    # prefixes and the mass the carry prefixes when there is enough of them, the rest whole episodes.
    actuator = [j for j, n in enumerate(names) if n in ACTUATOR_SCALES]
    contact = [j for j in range(len(names)) if j not in actuator]
    prefixes, carried = free_motion_prefixes(episodes), carry_prefixes(episodes)
    staged = bool(actuator and contact and sum(len(ep) for ep in prefixes) >= cfg.min_steps)
    mass = ([names.index(MASS_SCALE)] if staged and MASS_SCALE in names
            and sum(len(ep) for ep in carried) >= cfg.min_steps else [])
    episode_sets = {"whole": episodes, **({"free": prefixes} if staged else {}), **({"carry": carried} if mass else {})}
    replayers = {key: EpisodeReplayer(task, eps, env_kwargs) for key, eps in episode_sets.items()}
    replayer = replayers["whole"]
    pool = (ProcessPoolExecutor(cfg.n_workers, initializer=_init_worker, initargs=(task, episode_sets,
                                                                                   env_kwargs or {}))
            if cfg.n_workers > 1 else None)
    evaluations = 0

    def losses(candidates: Sequence[Mapping[str, Any]], on: str = "whole") -> list[float]:
        nonlocal evaluations
        evaluations += len(candidates)
        if pool is None:
            return [replayers[on].loss(c) for c in candidates]
        return list(pool.map(_worker_loss, [(on, replayers[on].starts, c) for c in candidates]))

    def params_of(log_scales: Sequence[float], latency: int) -> dict[str, Any]:
        return {**{n: float(math.exp(x)) for n, x in zip(names, log_scales)}, "action_latency_steps": latency}

    try:
        # 1. Latency under nominal physics.
        latency_losses = losses([params_of(np.zeros(len(names)), lat) for lat in range(cfg.max_latency_steps + 1)])
        latency = int(np.argmin(latency_losses))
        nominal_loss = latency_losses[0]

        # 2. Physical scales by CMA-ES in log space. First the actuator scales alone, from the replays' free-motion
        # prefixes (before the first grasp the gripper touches nothing, so only they move it); then the mass alone
        # from the carry prefixes (the object held aloft: its weight sags the servos); then the rest (friction) over
        # whole episodes with those held. Searched jointly over whole episodes, the contacts of a dragged peg trapped
        # CMA-ES in a valley where a wrong mass was paid for by gains 3-9% off (at a higher error than the
        # truth's). And over whole episodes the mass moves the drag's contacts chaotically: the episodes' errors
        # rose and fell with it at random (secret seed 1, at the truth: paired z -0.7 and 1.3 for the mass 20% down
        # and up), where on the weighing probe's carry prefixes the profile check gives 2.7 (and 9.8 on seed 0).
        low, high = math.log(cfg.bounds[0]), math.log(cfg.bounds[1])
        history: list[float] = []
        best_x = np.zeros(len(names))

        def losses_on(key: str) -> Callable[[Sequence[np.ndarray]], list[float]]:
            return lambda candidates: losses([params_of(x, latency) for x in candidates], on=key)

        # Each prefix stage in rounds, as the whole episodes below: with the starts refined under nominal gains only,
        # the gains came out 3-7% off.
        for key, searched in (("free", actuator), ("carry", mass)):
            if key not in replayers:
                continue
            stage_losses = losses_on(key)
            for round_ in range(cfg.rounds):
                replayers[key].refine_gripper_starts(params_of(best_x, latency))
                best_x, _ = _search(stage_losses, best_x, stage_losses([best_x])[0], searched,
                                    cfg.sigma0 / 2**round_, (low, high), cfg, cfg.seed + 1 + round_)
        # Then in rounds over whole episodes: each round refines the gripper's start poses under the current
        # estimate (their early-replay offset depends a little on the gains) and searches again, closer.
        dims = [j for j in contact if j not in mass] if staged else list(range(len(names)))

        whole_losses = losses_on("whole")

        def on_generation(best: float) -> None:
            history.append(best)
            if progress is not None:
                progress(evaluations, best)

        for round_ in range(cfg.rounds):
            replayer.refine_gripper_starts(params_of(best_x, latency))
            best_loss = whole_losses([best_x])[0]
            if dims:  # nothing is left to search when the stages before took every scale
                best_x, best_loss = _search(whole_losses, best_x, best_loss, dims, cfg.sigma0 / 2**round_,
                                            (low, high), cfg, cfg.seed + 1 + round_, on_generation)
            # The neighbouring latencies again, under the estimated physics.
            neighbours = [lat for lat in (latency - 1, latency + 1) if 0 <= lat <= cfg.max_latency_steps]
            for lat, loss in zip(neighbours, losses([params_of(best_x, lat) for lat in neighbours])):
                if loss < best_loss:
                    latency, best_loss = lat, loss

        # 3. Uncertainty: the sandwich covariance over episodes, and the profile check. A scale searched on the
        # carry prefixes is judged on them (with the others held), the others jointly on whole episodes.
        profile_step = math.log1p(2 * cfg.max_relative_std)
        stds, profile = {}, {}
        for key, judged in (("whole", [j for j in range(len(names)) if j not in mass]), ("carry", mass)):
            if not judged:
                continue
            on = replayers[key]

            def at(sub: np.ndarray, judged: list[int] = judged) -> dict[str, Any]:
                return params_of(_with(best_x, judged, sub), latency)

            judged_names = [names[j] for j in judged]
            stds.update(_sandwich_stds(lambda sub, on=on, at=at: on.episode_residuals(at(sub)), best_x[judged],
                                       cfg.fd_step, judged_names))
            profile.update(_profile_zs(lambda sub, on=on, at=at: on.episode_losses(at(sub)), best_x[judged],
                                       profile_step, judged_names))
            evaluations += 2 * (1 + 2 * len(judged))
        residual = replayer.residuals(params_of(best_x, latency))

        # 4. Sensor noise from the residuals' step-to-step differences.
        per_episode = np.split(residual, np.cumsum([len(x) for x in replayer.logged])[:-1])
        diffs = np.concatenate([np.diff(r, axis=0) for r in per_episode if len(r) > 1])
        noise = float(np.median(np.std(diffs, axis=0)) / math.sqrt(2))
    finally:
        if pool is not None:
            pool.shutdown()

    estimates = {n: float(math.exp(x)) for n, x in zip(names, best_x)}
    return Identification(
        task=task_info(task).name, estimates=estimates, relative_stds=stds,
        identifiable={n: bool(stds[n] <= cfg.max_relative_std and profile[n] >= cfg.profile_z) for n in names},
        action_latency_steps=latency, latency_losses=[float(v) for v in latency_losses], obs_noise_std=noise,
        loss=best_loss, nominal_loss=float(nominal_loss), n_episodes=len(episodes),
        n_steps=sum(len(ep) for ep in episodes), evaluations=evaluations, history=history, profile_zs=profile)


class SettlingActor:
    """Runs an actor slowly for identification: it acts every ``settle_steps`` steps and holds still in between.

    A closed-loop controller tuned for the nominal simulation (a scripted expert moves the full error each step)
    oscillates under a latency it does not know. Acting only on settled observations keeps it stable for latencies
    up to ``settle_steps - 1``, so identification episodes still grasp and carry the objects, which is what makes
    mass observable. In the held steps the position and yaw deltas are zero and the grip command is unchanged.
    """

    def __init__(self, actor: Any, settle_steps: int = 3) -> None:
        if settle_steps < 1:
            raise ConfigError(f"settle_steps must be >= 1, got {settle_steps}")
        self.actor = actor
        self.settle_steps = int(settle_steps)
        self._t = 0
        self._last: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> None:
        self.actor.reset(seed)
        self._t = 0
        self._last = None

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self._last is None or self._t % self.settle_steps == 0:
            self._last = np.asarray(self.actor.act(obs), dtype=np.float32)
            action = self._last
        else:
            action = hold_action(self._last)
        self._t += 1
        return action


@dataclass
class ProbeConfig:
    """How identification episodes are acted on the robot (:func:`probe_actor`).

    Attributes:
        settle_steps: The scripted expert acts every this many control steps and holds still in between
            (:class:`SettlingActor`).
        drag_distance: After its first grasp, the object is pressed onto the table and dragged this far and back
            (metres; 0: no drag, the expert alone). See :class:`DragProbe`.
        drag_step: How far each control step of the drag moves, metres (slow enough that the drag is quasi-static).
        press_depth: How far below the held object's resting height the gripper is commanded while dragging,
            metres: with the position servos' stiffness this sets the normal force on the table. (8 mm made a low
            friction, 0.66 of nominal, three times as visible, but the contact-rich drag then misled the mass.)
        close_steps: Control steps the grip must have been commanded closed before the drag starts.
        weigh_height: Before the drag, the grasped object is lifted this far (metres), held still there for
            ``weigh_steps`` control steps, and lowered again (0 or ``weigh_steps=0``: no weighing).
        weigh_steps: How long the object is held aloft.
    """

    settle_steps: int = 3
    drag_distance: float = 0.03
    drag_step: float = 0.005
    press_depth: float = 0.004
    close_steps: int = 6
    weigh_height: float = 0.02
    weigh_steps: int = 36

    def __post_init__(self) -> None:
        if self.settle_steps < 1 or self.close_steps < 1:
            raise ConfigError(f"probe settle_steps and close_steps must be >= 1, got {self.settle_steps}, "
                              f"{self.close_steps}")
        if self.drag_distance < 0 or self.drag_step <= 0 or self.press_depth < 0 or self.weigh_height < 0 \
                or self.weigh_steps < 0:
            raise ConfigError(f"probe drag_distance, press_depth, weigh_height and weigh_steps must be >= 0 and "
                              f"drag_step > 0, got {self.drag_distance}, {self.press_depth}, {self.weigh_height}, "
                              f"{self.weigh_steps} and {self.drag_step}")


class DragProbe:
    """Runs an actor, but after its first grasp weighs the held object, then presses it onto the table and drags it
    there and back.

    Sliding friction hardly shows in pick-and-place episodes: a held object slides on nothing, so identification
    from them cannot pin it down (on PegInsert the estimate came out 40-65% off while sysid rightly reported it
    unidentifiable). Dragging a grasped object over the table with a set normal force makes the object's bottom
    lag behind the hand by an amount that grows smoothly with friction (in simulation the peg's lag at the end of
    a 3 cm drag moves 0.5-1.5 mm per 10% of friction, against sensor noise of a few tenths of a millimetre). The
    motion is scripted open loop from the observation at the grasp, so an action latency only delays it: nothing
    closes a loop around it that a latency could destabilize. Afterwards the inner actor continues from where the
    object was put back (a closed-loop expert does not mind the detour). An actor that never grasps (pushing tasks,
    where friction already shows) runs unchanged.

    The drag goes along x, toward the workspace centre, then back; it lowers the command by ``press_depth`` first
    and raises it again after.

    Before the drag it **weighs** the object: lifts it by ``weigh_height``, holds it still there for
    ``weigh_steps`` and lowers it again. Held aloft, the object's weight sags the gripper's z servo (0.33 mm for
    PegInsert's 50 g peg at nominal gain), and nothing else touches it, so the mass shows without the contacts that
    make it chaotic in the drag (:func:`carry_prefixes` ends at the lowering).

    Args:
        actor: Has ``reset(seed)`` and ``act(obs)`` (e.g. a :class:`SettlingActor` of a scripted expert).
        max_delta_pos: The env's position increment of a full action (metres), to turn distances into actions.
        cfg: The drag's distances and timing.
    """

    def __init__(self, actor: Any, max_delta_pos: float, cfg: ProbeConfig | None = None) -> None:
        self.actor = actor
        self.cfg = cfg or ProbeConfig()
        if max_delta_pos <= 0 or self.cfg.drag_step > max_delta_pos:
            raise ConfigError(f"probe drag_step {self.cfg.drag_step} must be in (0, max_delta_pos={max_delta_pos}]")
        self.max_delta_pos = float(max_delta_pos)
        self._script: list[np.ndarray] = []
        self._closed_for = 0
        self._probed = False
        self._scripts = bool(self._moves(1.0))  # False when both the weighing and the drag are off

    def reset(self, seed: int | None = None) -> None:
        self.actor.reset(seed)
        self._script, self._closed_for, self._probed = [], 0, False

    def _moves(self, direction: float) -> list[np.ndarray]:
        """The weighing and the drag as (dx, dy, dz) increments per control step, metres."""
        cfg = self.cfg
        still, moves = np.zeros(3), []
        if cfg.weigh_height > 0 and cfg.weigh_steps > 0:
            k = max(int(math.ceil(cfg.weigh_height / cfg.drag_step)), 1)
            up, down = np.array([0.0, 0.0, cfg.weigh_height / k]), np.array([0.0, 0.0, -cfg.weigh_height / k])
            moves += [*[up] * k, *[still] * cfg.weigh_steps, *[down] * k]
        if cfg.drag_distance > 0:
            n = max(int(round(cfg.drag_distance / cfg.drag_step)), 1)
            step = direction * cfg.drag_distance / n
            out_, back = np.array([step, 0.0, 0.0]), np.array([-step, 0.0, 0.0])
            press, lift = np.array([0.0, 0.0, -cfg.press_depth]), np.array([0.0, 0.0, cfg.press_depth])
            # Pauses let the servos settle, so each stroke starts and ends at rest.
            moves += [still, still, press, still, still, still, *[out_] * n, still, still, still, *[back] * n,
                      still, still, still, lift, still, still]
        return moves

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self._script:
            return self._script.pop(0)
        action = np.asarray(self.actor.act(obs), dtype=np.float32)
        if self._probed or not self._scripts:
            return action
        self._closed_for = self._closed_for + 1 if closes_grip(action) else 0
        if self._closed_for >= self.cfg.close_steps:
            self._probed = True
            x = float(np.asarray(obs[STATE_KEY])[0])  # the gripper's x: drag toward the workspace centre
            direction = -1.0 if x > 0 else 1.0
            for move in self._moves(direction):
                scripted = np.zeros_like(action)
                scripted[:3] = move / self.max_delta_pos
                scripted[GRIP_INDEX] = action[GRIP_INDEX]  # keep holding
                self._script.append(scripted)
        return action


def probe_actor(task: str, env: Any, cfg: ProbeConfig | None = None, *, seed: int | None = None) -> DragProbe:
    """The actor of identification episodes: ``task``'s scripted expert, settling (:class:`SettlingActor`) and
    dragging what it grasps (:class:`DragProbe`). ``env`` is a nominal env of the task (read for geometry only)."""
    cfg = cfg or ProbeConfig()
    return DragProbe(SettlingActor(make_expert(task, env, seed=seed), cfg.settle_steps),
                     float(env.unwrapped.max_delta_pos), cfg)
