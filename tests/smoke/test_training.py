"""BCTrainer end to end with a tiny MLP: a killed run resumes exactly, NaN losses stop cleanly, and
two-process data-parallel training (torchrun, gloo) matches one process on the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roboloop.core.checkpoint import read_meta
from roboloop.core.errors import CheckpointError, TrainingError
from roboloop.core.policy import Policy
from roboloop.core.spec import PolicySpec
from roboloop.datasets.sampler import SequenceDataset
from roboloop.datasets.stats import compute_stats
from roboloop.policies import MLPConfig, MLPPolicy
from roboloop.training import BCTrainer, TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _train_args(dataset: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train-bc", "policy=mlp", f"dataset={dataset}", f"out_dir={out}", "policy.hidden_dims=[32,32]",
            "policy.obs_keys=[observation.state]", f"train.steps={steps}", "train.batch_size=16",
            "train.log_every=20", "train.checkpoint_every=40", "train.progress=false", "train.device=cpu",
            "evaluate=false", *extra]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "roboloop.cli.main", *args]


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]


def test_killed_run_resumes_with_the_same_losses(lift_demos: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cli(_train_args(lift_demos, straight, 400)), check=True, env=env, cwd=ROOT,
                   capture_output=True)

    proc = subprocess.Popen(_cli(_train_args(lift_demos, killed, 400)), env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "last" / "model.safetensors").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = read_meta(killed / "checkpoints" / "last")["step"]
    assert killed_at < 400, "the run finished before it could be killed"

    # Without resume=true an existing run is never overwritten.
    rerun = subprocess.run(_cli(_train_args(lift_demos, killed, 400)), env=env, cwd=ROOT, capture_output=True,
                           text=True)
    assert rerun.returncode == 2 and "resume=true" in rerun.stderr
    subprocess.run(_cli(_train_args(lift_demos, killed, 400, "train.resume=true")), check=True, env=env, cwd=ROOT,
                   capture_output=True)
    assert _losses(killed) == _losses(straight)
    assert len(_losses(straight)) == 20
    a = load_file(str(straight / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _tiny_mlp(dataset: Path) -> tuple[MLPPolicy, SequenceDataset]:
    cfg = MLPConfig(hidden_dims=[16], n_obs_steps=2, horizon=8, n_action_steps=4)
    spec = PolicySpec.from_dataset(dataset, obs_keys=cfg.obs_keys, n_obs_steps=2, horizon=8, n_action_steps=4)
    policy = MLPPolicy(cfg, spec)
    policy.normalizer.fit(compute_stats(dataset, obs_keys=cfg.obs_keys))
    data = SequenceDataset(dataset, obs_keys=cfg.obs_keys, n_obs_steps=2, horizon=8, n_action_steps=4)
    return policy, data


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(lift_demos: Path,
                                                                               tmp_path: Path) -> None:
    policy, data = _tiny_mlp(lift_demos)
    calls = {"n": 0}
    real = policy.compute_loss

    def flaky(batch):  # the 15th step's loss is NaN
        calls["n"] += 1
        out = real(batch)
        return out._replace(loss=out.loss * float("nan")) if calls["n"] == 15 else out

    policy.compute_loss = flaky  # type: ignore[method-assign]
    cfg = TrainConfig(steps=40, batch_size=8, checkpoint_every=10, log_every=5, progress=False, device="cpu")
    with pytest.raises(TrainingError, match=r"step 15.*last good checkpoint"):
        BCTrainer(policy, data, cfg, tmp_path).fit()
    last = tmp_path / "checkpoints" / "last"
    assert read_meta(last)["step"] == 10
    restored = Policy.load(last)
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_a_checkpoint_of_another_policy_type_is_refused(lift_demos: Path, tmp_path: Path) -> None:
    policy, data = _tiny_mlp(lift_demos)
    BCTrainer(policy, data, TrainConfig(steps=2, batch_size=8, progress=False, device="cpu"), tmp_path).fit()
    from roboloop.policies import POLICIES

    other = next(cls for name, cls in POLICIES.items() if name != "mlp")
    with pytest.raises(CheckpointError, match="holds a 'mlp' policy"):
        other.load(tmp_path / "checkpoints" / "last")


def test_resuming_with_another_policy_config_is_refused(lift_demos: Path, tmp_path: Path) -> None:
    policy, data = _tiny_mlp(lift_demos)
    BCTrainer(policy, data, TrainConfig(steps=2, batch_size=8, progress=False, device="cpu"), tmp_path).fit()
    spec = policy.spec
    other = MLPPolicy(MLPConfig(hidden_dims=[16], loss="gaussian", n_obs_steps=2, horizon=8, n_action_steps=4), spec)
    other.normalizer.load_state_dict(policy.normalizer.state_dict())
    resume = TrainConfig(steps=4, batch_size=8, progress=False, device="cpu", resume=True)
    with pytest.raises(CheckpointError, match="another policy config \\(loss: 'mse' -> 'gaussian'\\)"):
        BCTrainer(other, data, resume, tmp_path).fit()


def test_two_process_data_parallel_matches_one_process(lift_demos: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["policy.hidden_dims=[16]", "train.ema.enabled=false", "train.optimizer.warmup_steps=0"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(_cli(_train_args(lift_demos, single, 20, *args)), check=True, env=env, cwd=ROOT,
                   capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "roboloop.cli.main"]
    proc = subprocess.run([*torchrun, *_train_args(lift_demos, ddp, 20, *args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each process takes half of every global batch; the all-reduced gradient is the full batch's.
    a = load_file(str(single / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(ddp / "checkpoints" / "last" / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
