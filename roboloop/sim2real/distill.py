"""Teacher-student distillation (ResiP's route to real): a state-based teacher is distilled into an image student.

The teacher reads ``observation.state`` (object poses the real robot would need a tracker for); the student reads
camera images (84x84 by default) and ``observation.proprio``, the gripper's own state. Both run in the teacher's
simulation with **visual randomization** on top (camera pose, lighting, colours), so that the student does not
learn one camera mounting and one light.

Round 0 executes the teacher alone. Round r >= 1 is a DAgger iteration: at each step the teacher's action is
executed with probability ``beta ** r`` and the student's otherwise, so the student visits the states its own
mistakes lead to. Every visited state is labelled with the **teacher's** action (the teacher's chunk executor is
stepped on every observation, whoever acts). The labelled episodes are appended to one episode file. After each
round the student is trained on all of it: from scratch in round 0 (its normalizer fitted there), then continued
with the same normalizer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from roboloop.core.checkpoint import load_policy, read_meta
from roboloop.core.errors import ConfigError
from roboloop.core.policy import Policy
from roboloop.core.spec import IMAGE_PREFIX, PolicySpec
from roboloop.datasets.collection import Actor, EpisodeRecording, env_args_for
from roboloop.datasets.store import EpisodeWriter, grow_dataset
from roboloop.envs import task_info
from roboloop.envs.base import PROPRIO_KEY
from roboloop.envs.evaluation import EvalConfig, evaluate
from roboloop.policies.diffusion import DiffusionConfig, DiffusionPolicy
from roboloop.sim2real.deploy import PolicyActor
from roboloop.training import BCTrainer, TrainConfig
from roboloop.utils.io import prepare_run_dir, write_json

DISTILL_SOURCE = "teacher_labels"


def _visual_randomization() -> dict[str, Any]:
    # Wider than the real proxy's shifts (camera 2 cm / 0.06 rad, light x0.5-0.8, colours +-0.15 / +-0.1).
    return {"camera_pos_jitter": 0.025, "camera_angle_jitter": 0.07, "light_intensity_scale": [0.4, 1.2],
            "object_rgb_jitter": 0.2, "table_rgb_jitter": 0.15}


def _student_config() -> DiffusionConfig:
    return DiffusionConfig(obs_keys=[f"{IMAGE_PREFIX}front", f"{IMAGE_PREFIX}wrist", PROPRIO_KEY])


@dataclass
class DistillConfig:
    """``roboloop distill TEACHER``: distill a state-based teacher into an image student with DAgger.

    Attributes:
        teacher: A checkpoint that reads ``observation.state`` (BC or residual).
        image_size: The student's camera resolution (square).
        visual_randomization: Randomization fields added to the teacher's simulation for every rollout and
            evaluation (camera pose, light, colours).
        rounds: DAgger rounds after round 0 (teacher rollouts).
        episodes_per_round: Labelled episodes per round.
        beta: Round r executes the teacher's action with probability ``beta ** r`` per step.
        student: The student's diffusion config; its ``obs_keys`` name the cameras (and ``observation.proprio``).
        train: Student training per round (``steps`` each round).
        eval_episodes: Student evaluation in the randomized simulation after each round (0: none).
        secret_seed: The real proxy the teacher and the final student are deployed on.
        real_episodes: Real-proxy episodes for each of them at the end, same starts (0: not deployed).
        seed: Round r's episodes use seeds ``seed + 100_000 r + k``.
        resume: Continue a killed run in ``out_dir``.
        out_dir: Output directory (``{task}`` is filled in).
    """

    teacher: str | None = None
    image_size: int = 84
    visual_randomization: dict[str, Any] = field(default_factory=_visual_randomization)
    rounds: int = 2
    episodes_per_round: int = 50
    beta: float = 0.5
    student: DiffusionConfig = field(default_factory=_student_config)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=4000, batch_size=64, progress=False))
    eval_episodes: int = 50
    secret_seed: int = 0
    real_episodes: int = 50
    seed: int = 700_000
    resume: bool = False
    out_dir: str = "outputs/distill/{task}"

    def __post_init__(self) -> None:
        if self.teacher is None:
            raise ConfigError("distill needs the teacher's checkpoint")
        if self.rounds < 0 or self.episodes_per_round < 1 or self.eval_episodes < 0 or self.real_episodes < 0:
            raise ConfigError("distill rounds, eval_episodes and real_episodes must be >= 0, episodes_per_round >= 1")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"beta is a probability, got {self.beta}")
        if "observation.state" in self.student.obs_keys:
            raise ConfigError("the student must not read observation.state (the teacher's privileged object poses); "
                              "give it cameras and observation.proprio")

    @property
    def cameras(self) -> list[str]:
        return [k[len(IMAGE_PREFIX):] for k in self.student.obs_keys if k.startswith(IMAGE_PREFIX)]


@dataclass
class DistillRound:
    round: int
    beta: float
    episodes: int
    teacher_steps: int  # steps that executed the teacher's action
    student_steps: int
    checkpoint: str
    sim_success: float | None


def student_env_kwargs(teacher_env_kwargs: Mapping[str, Any], cfg: DistillConfig) -> dict[str, Any]:
    """The teacher's simulation with the student's cameras, ``observation.proprio`` and visual randomization."""
    kwargs = {k: v for k, v in teacher_env_kwargs.items() if k not in ("cameras", "image_size")}
    kwargs["randomization"] = {**dict(kwargs.get("randomization") or {}), **cfg.visual_randomization}
    return {**kwargs, "cameras": cfg.cameras, "image_size": cfg.image_size, "proprio": True}


def student_eval_kwargs(teacher_env_kwargs: Mapping[str, Any], cfg: DistillConfig) -> dict[str, Any]:
    """The student's simulation without its cameras, for evaluations and the student's meta: an evaluation opens
    the cameras the evaluated policy reads (none for the state teacher)."""
    return {k: v for k, v in student_env_kwargs(teacher_env_kwargs, cfg).items() if k not in ("cameras", "image_size")}


def labelled_rollouts(env: gym.Env, teacher_actor: Actor, student_actor: Actor | None, *, beta: float,
                      n_episodes: int, seed: int, writer: EpisodeWriter, policy_id: str) -> tuple[int, int]:
    """Run ``n_episodes`` episodes mixing teacher and student (``beta``: the teacher's share; no student: the
    teacher alone), recording every observation with the teacher's action as its label. Returns (teacher steps,
    student steps)."""
    rng = np.random.default_rng(seed)
    teacher_steps = student_steps = 0
    for k in range(n_episodes):
        obs, info = env.reset(seed=seed + k)
        teacher_actor.reset()
        if student_actor is not None:
            student_actor.reset()
        recording = EpisodeRecording(obs, seed=seed + k)
        success, done = bool(info.get("is_success", False)), False
        while not done:
            label = teacher_actor.act(obs)
            # The student acts on every step too, so that its history and chunk queue follow the episode.
            own = student_actor.act(obs) if student_actor is not None else label
            use_teacher = student_actor is None or rng.random() < beta
            teacher_steps += use_teacher
            student_steps += not use_teacher
            obs, reward, terminated, truncated, info = env.step(label if use_teacher else own)
            recording.add(label, float(reward), bool(terminated), bool(truncated), obs)
            success |= bool(info.get("is_success", False))
            done = terminated or truncated
        writer.append(recording.finish(success, policy_id, DISTILL_SOURCE))
    return teacher_steps, student_steps


def distill(cfg: DistillConfig, progress: Callable[[DistillRound], None] | None = None) -> list[DistillRound]:
    """Round 0 and ``cfg.rounds`` DAgger rounds (see the module docstring); one result per round.

    Args:
        progress: Called with each round's result as it finishes.
    """
    from roboloop.datasets.sampler import SequenceDataset
    from roboloop.datasets.stats import compute_stats

    assert cfg.teacher is not None  # checked by the config
    meta = read_meta(cfg.teacher)
    task = task_info(meta.get("task") or "Lift").name
    teacher = load_policy(cfg.teacher)
    if any(k.startswith(IMAGE_PREFIX) for k in teacher.spec.obs_shapes):
        raise ConfigError(f"the teacher {cfg.teacher} reads images; distillation starts from a state-based teacher")
    env_kwargs = student_env_kwargs(meta.get("env_kwargs", {}), cfg)
    out = Path(cfg.out_dir.replace("{task}", task))
    prepare_run_dir(out, resume=cfg.resume)
    rounds_path = out / "rounds.json"
    done: list[dict[str, Any]] = json.loads(rounds_path.read_text()) if rounds_path.exists() else []
    env = gym.make(task_info(task).env_id, **env_kwargs)
    eval_kwargs = student_eval_kwargs(meta.get("env_kwargs", {}), cfg)
    student: Policy | None = None
    results: list[DistillRound] = [DistillRound(**d) for d in done]
    dataset: Path | None = None
    try:
        for r in range(cfg.rounds + 1):
            run_dir = out / f"round{r}"
            if r < len(done):
                student = load_policy(done[r]["checkpoint"])
                dataset = run_dir / ("labels.hdf5" if r > 0 else "new_labels.hdf5")
                continue
            beta = cfg.beta**r if r > 0 else 1.0
            # This round's labelled episodes go to their own file (renamed into place when complete), then into a
            # grown copy of the previous rounds' labels: a killed round leaves nothing half-written behind.
            new = run_dir / "new_labels.hdf5"
            counts_path = run_dir / "steps.json"
            if not new.exists():
                partial = run_dir / ".new_labels.partial.hdf5"
                with EpisodeWriter(partial, env_args=env_args_for(task, env_kwargs)) as writer:
                    t_steps, s_steps = labelled_rollouts(env, PolicyActor(teacher),
                                                         PolicyActor(student) if student is not None else None,
                                                         beta=beta,
                                                         n_episodes=cfg.episodes_per_round,
                                                         seed=cfg.seed + 100_000 * r, writer=writer,
                                                         policy_id=f"round{r}")
                    writer.update_success_mask()
                write_json(counts_path, {"teacher_steps": t_steps, "student_steps": s_steps})
                partial.replace(new)
            counts = json.loads(counts_path.read_text())
            t_steps, s_steps = counts["teacher_steps"], counts["student_steps"]
            if dataset is None:
                dataset = new
            else:
                grow_dataset(dataset, new, "all", run_dir / "labels.hdf5")
                dataset = run_dir / "labels.hdf5"
            p = cfg.student
            data = SequenceDataset(dataset, obs_keys=p.obs_keys, n_obs_steps=p.n_obs_steps, horizon=p.horizon,
                                   n_action_steps=p.n_action_steps)
            if student is None:
                spec = PolicySpec.from_dataset(dataset, obs_keys=p.obs_keys, n_obs_steps=p.n_obs_steps,
                                               horizon=p.horizon, n_action_steps=p.n_action_steps)
                student = DiffusionPolicy(p, spec)
                student.normalizer.fit(compute_stats(dataset, obs_keys=p.obs_keys))
            # Evaluation opens the cameras the student reads; the rest (proprio, randomization) is its env.
            trainer = BCTrainer(student, data, replace(cfg.train, resume=True), run_dir,
                                meta={"task": task, "env_kwargs": eval_kwargs, "dataset": str(dataset),
                                      "teacher": cfg.teacher, "distill_round": r})
            checkpoint = trainer.fit().last_checkpoint
            student = load_policy(checkpoint)
            sim_success = None
            if cfg.eval_episodes:
                sim_success = evaluate(student, task, EvalConfig(n_episodes=cfg.eval_episodes, env_kwargs=eval_kwargs,
                                                                 progress=False)).success_rate
            results.append(DistillRound(r, beta, cfg.episodes_per_round, t_steps, s_steps, str(checkpoint),
                                        sim_success))
            write_json(rounds_path, [vars(x) for x in results])
            if progress is not None:
                progress(results[-1])
    finally:
        env.close()
    return results

