"""``roboloop train-bc policy=diffusion|act|mlp task=...`` and ``roboloop eval checkpoint=...``."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING

from roboloop.core.checkpoint import file_fingerprint, load_policy, read_meta
from roboloop.core.errors import ConfigError
from roboloop.core.policy import Policy, PolicyConfig
from roboloop.core.spec import IMAGE_PREFIX, PolicySpec
from roboloop.datasets.collection import CollectConfig, collect
from roboloop.datasets.store import EpisodeStore
from roboloop.envs import task_info
from roboloop.envs.evaluation import EvalConfig, EvalResult, evaluate, write_eval_outputs
from roboloop.training import BCTrainer, TrainConfig, TrainResult, distributed
from roboloop.utils.io import write_json

logger = logging.getLogger(__name__)


def register_policy_configs() -> None:
    """Each policy's config schema becomes an option of the Hydra group ``policy``."""
    from hydra.core.config_store import ConfigStore

    from roboloop.policies import POLICIES

    for name, cls in POLICIES.items():
        ConfigStore.instance().store(group="policy", name=name, node=cls.config_cls)


def policy_class_for(config: PolicyConfig) -> type[Policy]:
    from roboloop.policies import POLICIES

    for cls in POLICIES.values():
        if type(config) is cls.config_cls:
            return cls
    raise ConfigError(f"no registered policy takes a {type(config).__name__}")


@dataclass
class TrainBCConfig:
    """``roboloop train-bc policy=diffusion|act|mlp task=Lift``: behavior cloning from scripted-expert demos.

    ``task`` and ``policy`` pick a CPU preset (``roboloop/configs/preset/<task>_<policy>.yaml``) when there
    is one. Without ``dataset``, ``n_demos`` expert demonstrations are collected once into ``data/`` (with
    the cameras the policy's ``obs_keys`` name). The run writes checkpoints (``last``, ``best``),
    TensorBoard logs, ``train_log.jsonl`` and ``summary.json`` under ``out_dir``; a killed run continues
    with ``train.resume=true``. Under ``torchrun --nproc_per_node N`` it trains data-parallel.

    Attributes:
        task: Task name (Lift, PegInsert, PushAround, FetchPush-v4, FetchPickAndPlace-v4).
        policy: The policy config (choose with ``policy=<name>``; fields as ``policy.<field>=...``).
        dataset: Episode file to train on (default: collected expert demonstrations).
        n_demos: Demonstrations to collect when ``dataset`` is not given.
        demo_seed: Seed of the first collected demonstration (episode k uses demo_seed + k).
        image_size: Camera resolution of collected demonstrations (when the policy reads images).
        filter_key: Train only on the episodes of ``mask/<filter_key>`` (e.g. ``success``).
        pad_after: Most padded actions a training window may have past an episode's end (default
            ``horizon - n_obs_steps``: every step is a sample; see ``SequenceDataset``).
        env_kwargs: Env constructor arguments for collection and evaluation (e.g. ``clearance``).
        out_dir: Output directory (``{task}`` and ``{policy}`` are filled in).
        train: Optimization, EMA, checkpointing (see ``TrainConfig``).
        evaluate: Evaluate every ``train.eval_every`` steps and at the end (keeps the ``best`` checkpoint).
        eval: How to evaluate (episodes, parallel envs, seeds).
    """

    task: str = "Lift"
    policy: Any = MISSING
    dataset: str | None = None
    n_demos: int = 100
    demo_seed: int = 0
    image_size: int = 84
    filter_key: str | None = None
    pad_after: int | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "outputs/train_bc/{task}_{policy}"
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: bool = True
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        task_info(self.task)
        if not isinstance(self.policy, PolicyConfig):
            raise ConfigError("choose a policy: policy=diffusion, policy=act or policy=mlp")
        if self.n_demos < 1:
            raise ConfigError(f"n_demos must be >= 1, got {self.n_demos}")

    @property
    def policy_name(self) -> str:
        return policy_class_for(self.policy).name

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir.replace("{task}", task_info(self.task).name).replace("{policy}", self.policy_name))

    @property
    def cameras(self) -> list[str]:
        return [k[len(IMAGE_PREFIX):] for k in self.policy.obs_keys if k.startswith(IMAGE_PREFIX)]


def _dataset_path(cfg: TrainBCConfig, dist_info: distributed.DistInfo) -> Path:
    if cfg.dataset is not None:
        path = Path(cfg.dataset)
        if not path.exists():
            raise ConfigError(f"dataset {str(path)!r} does not exist")
        return path
    cams = "_" + "_".join(cfg.cameras) + f"{cfg.image_size}" if cfg.cameras else ""
    extra = "_" + "_".join(f"{k}{v}" for k, v in sorted(cfg.env_kwargs.items())) if cfg.env_kwargs else ""
    path = Path("data") / f"{task_info(cfg.task).name}_{cfg.n_demos}demos_seed{cfg.demo_seed}{cams}{extra}.hdf5"
    if dist_info.is_main and not path.exists():
        logger.info("collecting %d %s demonstrations into %s", cfg.n_demos, cfg.task, path)
        collect(CollectConfig(task=cfg.task, n_episodes=cfg.n_demos, seed=cfg.demo_seed, cameras=cfg.cameras,
                              image_size=cfg.image_size, env_kwargs=dict(cfg.env_kwargs),
                              n_envs=4 if cfg.cameras else 1, vectorization="async" if cfg.cameras else "sync",
                              output=str(path), progress=cfg.train.progress))
    distributed.barrier(dist_info)
    return path


def evaluation_fn(task: str, cfg: EvalConfig, env_kwargs: dict[str, Any]) -> Any:
    eval_cfg = replace(cfg, env_kwargs={**env_kwargs, **cfg.env_kwargs}, video=False, progress=False)

    def run(policy: Policy, step: int) -> dict[str, float]:
        result = evaluate(policy, task, eval_cfg)
        return {"success_rate": result.success_rate, "mean_return": result.mean_return,
                "mean_length": result.mean_length}
    return run


def train_bc(cfg: TrainBCConfig) -> TrainResult:
    """Build the policy from the dataset's spec, fit its normalizer, train it."""
    from roboloop.datasets.sampler import SequenceDataset
    from roboloop.datasets.stats import compute_stats

    device = distributed.resolve_device(cfg.train.device)
    dist_info = distributed.init_distributed(device)
    path = _dataset_path(cfg, dist_info)
    p = cfg.policy
    spec = PolicySpec.from_dataset(path, obs_keys=p.obs_keys, n_obs_steps=p.n_obs_steps, horizon=p.horizon,
                                   n_action_steps=p.n_action_steps)
    torch.manual_seed(cfg.train.seed)  # the same initial weights in every data-parallel process
    policy = policy_class_for(p)(p, spec)
    policy.normalizer.fit(compute_stats(path, obs_keys=p.obs_keys))
    dataset = SequenceDataset(path, obs_keys=p.obs_keys, n_obs_steps=p.n_obs_steps, horizon=p.horizon,
                              n_action_steps=p.n_action_steps, pad_after=cfg.pad_after, filter_key=cfg.filter_key)
    with EpisodeStore(path) as store:
        env_kwargs = {**store.env_args.get("env_kwargs", {}), **cfg.env_kwargs}
    for reserved in ("cameras", "image_size"):
        env_kwargs.pop(reserved, None)  # evaluation opens exactly the cameras the policy reads
    meta = {"task": task_info(cfg.task).name, "env_kwargs": env_kwargs, "dataset": str(path),
            "dataset_sha256": file_fingerprint(path), "dataset_episodes": len(dataset.demos)}
    evaluate_fn = evaluation_fn(cfg.task, cfg.eval, env_kwargs) if cfg.evaluate else None
    trainer = BCTrainer(policy, dataset, cfg.train, cfg.output_dir, evaluate_fn=evaluate_fn, meta=meta)
    return trainer.fit()


def run_train_bc(cfg: TrainBCConfig) -> int:
    t0 = time.perf_counter()
    result = train_bc(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary, from the main process
        return 0
    summary = {"task": cfg.task, "policy": cfg.policy_name, "steps": result.steps, "final_loss": result.final_loss,
               "best_success": result.best_success, "train_seconds": result.seconds,
               "total_seconds": time.perf_counter() - t0, "last_checkpoint": str(result.last_checkpoint),
               "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None}
    write_json(cfg.output_dir / "summary.json", summary)
    print(f"trained {cfg.policy_name} on {cfg.task}: {result.steps} steps in {result.seconds:.0f} s, "
          f"final loss {result.final_loss:.4g}")
    if result.best_success is not None:
        print(f"best evaluation success during training: {result.best_success:.1%}")
    print(f"checkpoints: {result.last_checkpoint}" + (f", {result.best_checkpoint}" if result.best_checkpoint else ""))
    return 0


@dataclass
class EvalCommandConfig(EvalConfig):
    """``roboloop eval checkpoint=DIR n_episodes=200 video=true``: success with a Wilson 95% interval,
    return and length over seeded episodes; writes ``eval.json``, ``success.png`` and mp4 videos.

    Attributes:
        checkpoint: Checkpoint directory (any policy type).
        task: Task to evaluate on (default: the task the checkpoint was trained on).
        out_dir: Where the results go (default: ``<checkpoint>/eval``).
        sampler: Diffusion only: ``ddim`` or ``ddpm`` instead of the trained default.
        num_inference_steps: Diffusion only: denoising steps instead of the trained default.
        steer: A critic directory (``roboloop train-offline``): value-guided steering (V-GPS) of the checkpoint's
            policy, which samples ``n_samples`` chunks per query and executes the one the critic ranks highest.
        n_samples: Candidate chunks per query when steering.
        steer_temperature: 0 (V-GPS's argmax) or a softmax temperature over the candidates' Q-values (see
            ``SteeringConfig.temperature``).
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    checkpoint: str = MISSING
    task: str | None = None
    out_dir: str | None = None
    sampler: str | None = None
    num_inference_steps: int | None = None
    steer: str | None = None
    n_samples: int = 8
    steer_temperature: float = 0.0
    device: str = "auto"


def run_eval(cfg: EvalCommandConfig) -> int:
    path = Path(cfg.checkpoint)
    policy = load_policy(path, device=distributed.resolve_device(cfg.device))
    meta = read_meta(path)
    task = cfg.task or meta.get("task")
    if task is None:
        raise ConfigError(f"{str(path)!r} does not record its task: pass task=...")
    if cfg.sampler is not None or cfg.num_inference_steps is not None:
        if not hasattr(policy, "set_sampler"):
            raise ConfigError(f"sampler/num_inference_steps apply to diffusion policies, not {policy.name!r}")
        policy.set_sampler(cfg.sampler or policy.config.sampler,
                           cfg.num_inference_steps or policy.config.num_inference_steps)
    if cfg.steer is not None:
        from roboloop.offline_rl.policy import SteeredPolicy, load_critic

        critic, critic_config = load_critic(cfg.steer)
        policy = SteeredPolicy(policy, critic, critic_config["obs_keys"], cfg.n_samples, cfg.steer_temperature)
    eval_fields = {k: getattr(cfg, k) for k in EvalConfig.__dataclass_fields__}
    eval_cfg = EvalConfig(**{**eval_fields, "env_kwargs": {**meta.get("env_kwargs", {}), **cfg.env_kwargs}})
    out_dir = Path(cfg.out_dir) if cfg.out_dir else path / "eval"
    result: EvalResult = evaluate(policy, task, eval_cfg, video_dir=out_dir / "videos" if cfg.video else None)
    files = write_eval_outputs(result, out_dir)
    print(f"{policy.name} policy from {path} on {task}, {result.n_episodes} episodes:")
    print(result.summary())
    print("outputs: " + ", ".join(str(p) for p in [*files.values(), *result.videos]))
    return 0


__all__ = ["EvalCommandConfig", "TrainBCConfig", "run_eval", "run_train_bc", "train_bc"]
