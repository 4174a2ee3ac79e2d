"""``BCTrainer``: one training loop for every BC policy (diffusion, ACT, MLP).

It owns what training needs and the policy does not: the optimizer (AdamW), the warm-up + cosine
learning-rate schedule, the EMA copy, gradient clipping, checkpoints (``last`` for resume, ``best`` by
evaluation success), periodic evaluation, TensorBoard logging and data-parallel training under torchrun.
The policy only provides ``compute_loss(batch)``.

Exact resume: the batch order is a function of (seed, step) and the global RNGs are reseeded from
(seed, rank, step) before every step, so a run killed and resumed from ``last`` draws the same batches
and the same noise as an uninterrupted one; the optimizer, scheduler, EMA and RNG states come back from
``train_state.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from roboloop.core.checkpoint import (
    checkpoint_exists,
    load_state_dict_strict,
    read_policy_config,
    read_train_state,
    save_checkpoint,
)
from roboloop.core.config import config_changes, config_to_dict
from roboloop.core.errors import CheckpointError, ConfigError, TrainingError
from roboloop.core.policy import LossOutput, Policy
from roboloop.core.spec import PolicySpec
from roboloop.datasets.sampler import SequenceDataset
from roboloop.training import distributed
from roboloop.training.ema import EMA, EMAConfig

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[Policy, int], dict[str, float]]  # (policy, step) -> metrics with "success_rate"


@dataclass
class OptimizerConfig:
    """AdamW with linear warm-up then cosine decay.

    Attributes:
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: Linear warm-up from 0 to ``lr``.
        min_lr_ratio: The cosine decays to ``lr * min_lr_ratio`` at the last step.
        grad_clip_norm: Clip the global gradient norm to this (0: no clipping).
    """

    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0
    grad_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip_norm < 0:
            raise ConfigError("optimizer: lr must be > 0; weight_decay, warmup_steps, grad_clip_norm >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optimizer.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class TrainConfig:
    """Attributes:
        steps: Gradient steps.
        batch_size: Global batch size (split across data-parallel processes).
        num_workers: DataLoader worker processes (0 loads in the main process: fastest for state data).
        seed: Seeds the batch order, the initialization and every step's noise.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
        log_every: Steps between logged losses (TensorBoard and ``train_log.jsonl``).
        checkpoint_every: Steps between ``last`` checkpoints (and at the end).
        eval_every: Steps between evaluations (0: only at the end; evaluation needs an ``evaluate_fn``).
        resume: Continue from ``<out_dir>/checkpoints/last`` if it exists.
        progress: Show a progress bar.
        optimizer: AdamW and schedule.
        ema: EMA of the weights.
    """

    steps: int = 10000
    batch_size: int = 256
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_every: int = 0
    resume: bool = False
    progress: bool = True
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.eval_every < 0:
            raise ConfigError("train.num_workers and train.eval_every must be >= 0")


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    best_success: float | None
    last_checkpoint: Path
    best_checkpoint: Path | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class StepBatches(Sampler[list[int]]):
    """Batches of dataset indices as a function of the step: epoch e is a permutation seeded by
    (seed, e); process ``rank`` of ``world_size`` takes its slice of each global batch. Starting at any
    step gives exactly the batches an uninterrupted run draws from then on."""

    def __init__(self, n: int, batch_size: int, *, seed: int, start_step: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size > n:
            raise ConfigError(f"batch_size {batch_size} is larger than the dataset ({n} samples)")
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} must divide evenly across {world_size} processes")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.per_epoch = n // batch_size

    def __iter__(self) -> Iterator[list[int]]:
        step, epoch, perm = self.start_step, -1, None
        local = self.batch_size // self.world_size
        while True:
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            k = step % self.per_epoch
            batch = perm[k * self.batch_size:(k + 1) * self.batch_size]
            yield batch[self.rank * local:(self.rank + 1) * local].tolist()
            step += 1


class _WholeBatches(Dataset):
    """Hands the DataLoader whole batches: ``SequenceDataset.get_batch`` gathers a batch with one indexed
    read per key, and going through per-sample dicts (``__getitems__``) only to stack them again would do
    that work twice every step."""

    def __init__(self, dataset: SequenceDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, items: list[int]) -> list[dict[str, np.ndarray]]:
        return [self.dataset.get_batch(np.asarray(items, dtype=np.int64))]


def _as_tensors(batches: list[dict[str, np.ndarray]]) -> dict[str, Tensor]:
    return {k: torch.from_numpy(v) for k, v in batches[0].items()}


class _LossModule(nn.Module):
    """Makes ``compute_loss`` the ``forward`` DistributedDataParallel hooks into (the policy's own
    ``forward`` is free for its networks)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Tensor]) -> LossOutput:
        return self.policy.compute_loss(batch)


def lr_lambda(cfg: OptimizerConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global torch (CPU, and CUDA once this process has used it), NumPy and Python RNG states, in a form
    ``torch.load(weights_only=True)`` reads. A run on a GPU draws its sampling noise from the CUDA generators, so
    without theirs a resumed run would not repeat the uninterrupted one."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "python": random.getstate()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    # A state saved on another machine may hold more (or no) CUDA generators: restore those both have.
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(state["python"])


class BCTrainer:
    """Train ``policy`` on ``dataset`` (a ``SequenceDataset`` whose windows match the policy's horizons).

    The policy's normalizer must already be fitted (``policy.normalizer.fit(compute_stats(...))``).
    Outputs under ``out_dir``: ``checkpoints/last`` and ``checkpoints/best``, ``tb/`` (TensorBoard),
    ``train_log.jsonl``.
    """

    def __init__(self, policy: Policy, dataset: SequenceDataset, cfg: TrainConfig, out_dir: str | Path, *,
                 evaluate_fn: EvaluateFn | None = None, meta: dict[str, Any] | None = None) -> None:
        spec = policy.spec
        if (dataset.n_obs_steps, dataset.horizon) != (spec.n_obs_steps, spec.horizon):
            raise ConfigError(f"dataset windows (To={dataset.n_obs_steps}, Tp={dataset.horizon}) differ from the "
                              f"policy's (To={spec.n_obs_steps}, Tp={spec.horizon})")
        data_spec = PolicySpec(obs_shapes={k: dataset.shapes[k] for k in dataset.obs_keys},
                               action_dim=dataset.shapes["action"][0], action_low=spec.action_low,
                               action_high=spec.action_high, n_obs_steps=spec.n_obs_steps, horizon=spec.horizon,
                               n_action_steps=spec.n_action_steps)
        spec.check_compatible(data_spec, what=f"dataset {str(dataset.path)!r}")
        self.policy, self.dataset, self.cfg = policy, dataset, cfg
        self.out_dir = Path(out_dir)
        self.evaluate_fn = evaluate_fn
        self.meta = dict(meta or {})
        self.last_dir = self.out_dir / "checkpoints" / "last"
        self.best_dir = self.out_dir / "checkpoints" / "best"

    # ------------------------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        cfg = self.cfg
        device = distributed.resolve_device(cfg.device)
        dist_info = distributed.init_distributed(device)
        t0 = time.perf_counter()

        # --- model, optimizer, schedule, EMA
        seed_everything(cfg.seed)
        policy = self.policy.to(device).train()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas),
                                      weight_decay=cfg.optimizer.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optimizer, cfg.steps))
        ema = EMA(policy, cfg.ema) if cfg.ema.enabled else None
        step, best_success, history = 0, None, []

        # --- resume
        if checkpoint_exists(self.last_dir):
            if not cfg.resume:
                raise ConfigError(f"{str(self.last_dir)!r} exists: pass resume=true to continue that run, or "
                                  f"choose another output directory")
            step, best_success, history = self._restore(policy, optimizer, scheduler, ema)
            logger.info("resumed from %s at step %d", self.last_dir, step)
        model: nn.Module = _LossModule(policy)
        if dist_info.enabled:
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        # --- data
        batches = StepBatches(len(self.dataset), cfg.batch_size, seed=cfg.seed, start_step=step,
                              rank=dist_info.rank, world_size=dist_info.world_size)
        loader = DataLoader(_WholeBatches(self.dataset), batch_sampler=batches, collate_fn=_as_tensors,
                            num_workers=cfg.num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)
        writer = self._tensorboard() if dist_info.is_main else None
        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {policy.name}", unit="step",
                   disable=not (cfg.progress and dist_info.is_main))
        log_file = self.out_dir / "train_log.jsonl"
        max_norm = cfg.optimizer.grad_clip_norm or float("inf")
        window: list[LossOutput] = []
        try:
            data = iter(loader)
            while step < cfg.steps:
                # --- one gradient step (its noise is a function of the step: exact resume)
                seed_everything(cfg.seed * 1_000_003 + dist_info.rank * 7919 + step)
                batch = {k: v.to(device, non_blocking=True) for k, v in next(data).items()}
                out = model(batch)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                # The clipped norm is all-reduced under DDP, so every process agrees on stopping.
                grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm))
                if not (math.isfinite(grad_norm) and math.isfinite(out.loss.item())):
                    raise TrainingError(
                        f"the loss became {out.loss.item()} (gradient norm {grad_norm}) at step {step + 1}: "
                        f"training stopped; the last good checkpoint is {str(self.last_dir)!r}"
                        + ("" if checkpoint_exists(self.last_dir) else " (none written yet)")
                        + ". Lower optimizer.lr, check the data for outliers, or keep grad_clip_norm > 0")
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(policy)
                step += 1
                window.append(LossOutput(out.loss.detach(), {**out.metrics, "grad_norm": grad_norm}))
                bar.update(1)

                # --- log
                if step % cfg.log_every == 0 or step == cfg.steps:
                    record = self._summarize(window, step, scheduler.get_last_lr()[0])
                    window = []
                    history.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    if dist_info.is_main:
                        with open(log_file, "a") as f:
                            f.write(json.dumps(record) + "\n")
                        for k, v in record.items():
                            if k != "step":
                                writer.add_scalar(f"train/{k}", v, step)

                # --- evaluate (main process, EMA weights), best checkpoint
                if self.evaluate_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0)
                                                     or step == cfg.steps):
                    improved = False
                    if dist_info.is_main:
                        metrics = self._evaluate(ema.averaged if ema else policy, step)
                        for k, v in metrics.items():
                            writer.add_scalar(f"eval/{k}", v, step)
                        history.append({"step": step, **{f"eval_{k}": v for k, v in metrics.items()}})
                        success = metrics["success_rate"]
                        improved = best_success is None or success > best_success
                        best_success = max(success, best_success or 0.0)
                    if distributed.broadcast_flag(improved, dist_info, device) and dist_info.is_main:
                        self._save(self.best_dir, policy, ema, step, extra={"success_rate": best_success})
                    distributed.barrier(dist_info)

                # --- checkpoint
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    if dist_info.is_main:
                        self._save(self.last_dir, policy, ema, step, optimizer=optimizer, scheduler=scheduler,
                                   best_success=best_success, history=history)
                    distributed.barrier(dist_info)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            distributed.cleanup(dist_info)
        final_loss = next((h["loss"] for h in reversed(history) if "loss" in h), float("nan"))
        return TrainResult(steps=step, final_loss=final_loss, best_success=best_success,
                           last_checkpoint=self.last_dir,
                           best_checkpoint=self.best_dir if checkpoint_exists(self.best_dir) else None,
                           seconds=time.perf_counter() - t0, history=history)

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _summarize(window: list[LossOutput], step: int, lr: float) -> dict[str, float]:
        record: dict[str, float] = {"step": step, "loss": float(torch.stack([w.loss for w in window]).mean()),
                                    "lr": lr}
        for key in window[0].metrics:
            record[key] = float(np.mean([w.metrics[key] for w in window]))
        return record

    def _evaluate(self, policy: Policy, step: int) -> dict[str, float]:
        was_training = policy.training
        policy.eval()
        try:
            metrics = self.evaluate_fn(policy, step)
        finally:
            policy.train(was_training)
        if "success_rate" not in metrics:
            raise ConfigError(f"evaluate_fn must return a 'success_rate', got {sorted(metrics)}")
        logger.info("step %d: %s", step, ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
        return metrics

    def _tensorboard(self) -> Any:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out_dir / "tb"))

    def _save(self, path: Path, policy: Policy, ema: EMA | None, step: int, *, optimizer: Any = None,
              scheduler: Any = None, best_success: float | None = None, history: list | None = None,
              extra: dict[str, Any] | None = None) -> None:
        train_state = None
        if optimizer is not None:
            train_state = {"step": step, "model": policy.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                           "rng": rng_state(), "best_success": best_success, "history": json.dumps(history)}
        weights = ema.averaged.state_dict() if ema is not None else policy.state_dict()
        save_checkpoint(path, policy, state_dict=weights, train_state=train_state,
                        meta={**self.meta, "step": step, "ema": ema is not None, **(extra or {})})

    def _restore(self, policy: Policy, optimizer: Any, scheduler: Any, ema: EMA | None) -> tuple[int, Any, list]:
        saved_type, saved_config = read_policy_config(self.last_dir)
        if saved_type != policy.name:
            raise CheckpointError(f"cannot resume: {str(self.last_dir)!r} holds a {saved_type!r} policy, this run "
                                  f"trains a {policy.name!r} one")
        # Same type but another config (e.g. prediction_type) would load without a shape error and silently
        # mix two experiments; only the sampler may differ, as ``set_sampler`` changes it on a trained policy.
        current = json.loads(json.dumps(config_to_dict(policy.config)))
        if diffs := config_changes(saved_config, current, ignore=("sampler", "num_inference_steps")):
            raise CheckpointError(f"cannot resume: {str(self.last_dir)!r} was trained with another policy config "
                                  f"({diffs}); use a new out_dir")
        state = read_train_state(self.last_dir)
        load_state_dict_strict(policy, state["model"], source=str(self.last_dir))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if state["ema"] is None:
                raise CheckpointError(f"cannot resume with EMA: {str(self.last_dir)!r} was trained without it")
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        # Drop log lines written after the checkpoint (the resumed run writes them again).
        log_file = self.out_dir / "train_log.jsonl"
        if log_file.exists():
            lines = [ln for ln in log_file.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            log_file.write_text("".join(ln + "\n" for ln in lines))
        return step, state["best_success"], json.loads(state["history"]) or []
