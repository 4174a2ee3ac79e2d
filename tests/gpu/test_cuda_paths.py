"""The CUDA paths: every training command on a GPU with tiny networks, checkpoints that move between devices, and
off-policy updates on the GPU that follow the CPU's. Marked ``gpu`` (deselected by default; ``pytest -m gpu`` on a
machine with CUDA runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from roboloop.cli.main import main
from roboloop.core.checkpoint import load_policy
from roboloop.offline_rl import ReplayBuffer
from roboloop.offline_rl.calql import CalQL, CalQLConfig
from roboloop.offline_rl.iql import IQL, IQLConfig
from roboloop.offline_rl.sac import SAC, SACConfig
from roboloop.offline_rl.trainer import OffPolicyConfig, OffPolicyTrainer
from roboloop.policies.gaussian_mlp import GaussianMLP
from roboloop.policies.tanh_gaussian import TanhGaussianMLP
from tests.point_mass import random_point_mass_data

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY_BC = {
    "diffusion": ["policy.down_dims=[16,32]", "policy.step_embed_dim=16", "policy.n_groups=4",
                  "policy.num_inference_steps=3"],
    "act": ["policy.dim_model=16", "policy.n_heads=2", "policy.dim_feedforward=32", "policy.n_encoder_layers=1",
            "policy.n_vae_encoder_layers=1", "policy.latent_dim=4"],
}
TINY_OFFLINE = ["train.batch_size=16", "train.log_every=5", "train.checkpoint_every=10", "train.eval_every=0",
                "train.progress=false", "eval.n_episodes=2", "eval.n_envs=2", "actor_hidden_dims=[16]",
                "device=cuda"]
NETS = {"iql": ["iql.hidden_dims=[16]"], "calql": ["calql.hidden_dims=[16]", "calql.n_actions=2"],
        "rlpd": ["sac.hidden_dims=[16]", "sac.n_critics=3"]}


def _on_cuda(module: torch.nn.Module) -> bool:
    return all(p.is_cuda for p in module.parameters())


@pytest.mark.parametrize("name", sorted(TINY_BC))
def test_train_bc_on_cuda_then_evaluate_on_either_device(name: str, lift_demos: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    assert main(["train-bc", f"policy={name}", f"dataset={lift_demos}", f"out_dir={out}", *TINY_BC[name],
                 "train.steps=6", "train.batch_size=4", "train.log_every=2", "train.progress=false",
                 "train.device=cuda", "evaluate=false"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log)
    checkpoint = out / "checkpoints" / "last"
    assert _on_cuda(load_policy(checkpoint, device="cuda")) and not _on_cuda(load_policy(checkpoint, device="cpu"))
    for device in ("cuda", "cpu"):
        assert main(["eval", str(checkpoint), "n_episodes=2", "progress=false", f"device={device}",
                     f"out_dir={tmp_path / f'eval_{device}'}"]) == 0
        assert len(json.loads((tmp_path / f"eval_{device}" / "eval.json").read_text())["episodes"]) == 2


@pytest.fixture(scope="module")
def mixed_tier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiers")
    assert main(["make-tiers", "task=Lift", "n_episodes=4", "tiers=[mixed]", f"out_dir={out}", "progress=false"]) == 0
    return out / "mixed.hdf5"


@pytest.mark.parametrize("algo", sorted(NETS))
def test_train_offline_then_finetune_online_on_cuda(algo: str, mixed_tier: Path, tmp_path: Path) -> None:
    offline, online = tmp_path / "offline", tmp_path / "online"
    assert main(["train-offline", f"algo={algo}", f"dataset={mixed_tier}", "train.offline_steps=10",
                 f"out_dir={offline}", *TINY_OFFLINE, *NETS[algo]]) == 0
    assert main(["finetune-online", f"algo={algo}", f"init={offline}", f"dataset={mixed_tier}",
                 "train.online_env_steps=20", "n_envs=2", f"out_dir={online}", *TINY_OFFLINE, *NETS[algo]]) == 0
    records = [json.loads(r) for r in (online / "train_log.jsonl").read_text().splitlines()]
    assert records[-1]["phase"] == "online" and records[-1]["online_env_steps"] == 20
    assert all(np.isfinite(v) for r in records for v in r.values() if isinstance(v, float))
    assert not _on_cuda(load_policy(online / "policy", device="cpu"))


def test_steer_a_cuda_policy_with_an_offline_critic(mixed_tier: Path, lift_demos: Path, tmp_path: Path) -> None:
    critic = tmp_path / "offline"
    assert main(["train-offline", f"dataset={mixed_tier}", "train.offline_steps=10", f"out_dir={critic}",
                 *TINY_OFFLINE, *NETS["iql"]]) == 0
    bc = tmp_path / "bc"
    assert main(["train-bc", f"dataset={lift_demos}", f"out_dir={bc}", "policy.obs_keys=[observation.state]",
                 *TINY_BC["diffusion"], "train.steps=2", "train.batch_size=4", "train.progress=false",
                 "train.device=cuda", "evaluate=false"]) == 0
    assert main(["eval", str(bc / "checkpoints" / "last"), f"steer={critic / 'critic'}", "n_samples=3",
                 "n_episodes=2", "progress=false", "device=cuda", f"out_dir={tmp_path / 'steered'}"]) == 0
    assert len(json.loads((tmp_path / "steered" / "eval.json").read_text())["episodes"]) == 2


def test_train_residual_on_cuda(lift_demos: Path, tmp_path: Path) -> None:
    base = tmp_path / "bc"
    assert main(["train-bc", f"dataset={lift_demos}", f"out_dir={base}", "policy.obs_keys=[observation.state]",
                 *TINY_BC["diffusion"], "policy.horizon=8", "policy.n_action_steps=4", "train.steps=4",
                 "train.batch_size=4", "train.progress=false", "train.device=cuda", "evaluate=false"]) == 0
    out = tmp_path / "residual"
    assert main(["train-residual", f"base={base / 'checkpoints' / 'last'}", f"out_dir={out}",
                 "ppo.total_env_steps=60", "n_envs=2", "ppo.n_steps=10", "ppo.n_minibatches=2", "ppo.n_epochs=2",
                 "ppo.critic_warmup_iterations=1", "ppo.checkpoint_every=1", "ppo.eval_every=2",
                 "ppo.progress=false", "residual.hidden_dims=[16]", "eval.n_episodes=2", "eval.n_envs=2",
                 "eval.progress=false", "device=cuda"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3]


def _batches(obs_dim: int, action_dim: int, n: int) -> list:
    rng = np.random.default_rng(0)
    data = ReplayBuffer(obs_dim, action_dim, 512)
    data.add(rng.standard_normal((512, obs_dim)), rng.uniform(-0.9, 0.9, (512, action_dim)),
             rng.standard_normal(512), rng.standard_normal((512, obs_dim)), rng.random(512) < 0.1,
             np.zeros(512, bool))
    generator = torch.Generator().manual_seed(0)
    return [data.sample(64, generator) for _ in range(n)]


def _close(cpu: dict[str, torch.Tensor], gpu: dict[str, torch.Tensor], rtol: float) -> None:
    assert cpu.keys() == gpu.keys()
    for key in cpu:
        expected, got = cpu[key], gpu[key].cpu()
        assert torch.allclose(got, expected, rtol=rtol, atol=rtol), (key, (got - expected).abs().max().item())


@pytest.mark.parametrize("extraction", ["awr", "ddpg_bc"])
def test_iql_updates_on_cuda_follow_the_cpu(extraction: str) -> None:
    """IQL's update has no sampling: from one initialization and the same batches, the GPU's networks (fused Adam's
    CUDA kernel included) stay within float32 rounding of the CPU's."""
    obs_dim, action_dim = 5, 2
    cfg = IQLConfig(hidden_dims=[32, 32], extraction=extraction)
    bounds = {"action_low": -torch.ones(action_dim), "action_high": torch.ones(action_dim)}
    torch.manual_seed(0)
    actor = GaussianMLP(obs_dim, action_dim, hidden_dims=(32, 32), learn_std=True)
    cpu = IQL(actor, obs_dim, action_dim, cfg, "cpu", **bounds)
    torch.manual_seed(0)
    actor_gpu = GaussianMLP(obs_dim, action_dim, hidden_dims=(32, 32), learn_std=True)
    gpu = IQL(actor_gpu, obs_dim, action_dim, cfg, "cuda",
              **{k: v.cuda() for k, v in bounds.items()})
    gpu.load_state_dict(cpu.state_dict())
    for batch in _batches(obs_dim, action_dim, 20):
        cpu_metrics, gpu_metrics = cpu.update(batch), gpu.update(batch)
    assert cpu_metrics.keys() == gpu_metrics.keys()
    for name in ("actor", "critic", "value"):
        _close(getattr(cpu, name).state_dict(), getattr(gpu, name).state_dict(), rtol=1e-4)


def test_calql_updates_on_cuda_train_and_round_trip() -> None:
    """Cal-QL samples on the device, so its GPU run cannot follow the CPU's draw for draw: it must train (finite
    losses, weights that move) and its state must load back on the CPU."""
    obs_dim, action_dim = 5, 2
    torch.manual_seed(0)
    agent = CalQL(TanhGaussianMLP(obs_dim, action_dim, hidden_dims=[32]), obs_dim, action_dim,
                  CalQLConfig(hidden_dims=[32], n_actions=4), "cuda")
    before = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    for batch in _batches(obs_dim, action_dim, 10):
        metrics = agent.update(batch)
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(before[k], v) for k, v in agent.critic.state_dict().items())
    cpu = CalQL(TanhGaussianMLP(obs_dim, action_dim, hidden_dims=[32]), obs_dim, action_dim,
                CalQLConfig(hidden_dims=[32], n_actions=4), "cpu")
    cpu.load_state_dict(agent.state_dict())
    _close(cpu.critic.state_dict(), agent.critic.state_dict(), rtol=0.0)


def test_an_off_policy_run_on_cuda_resumes_exactly(tmp_path: Path) -> None:
    """RLPD-style SAC on the GPU (its noise from the CUDA generator), killed halfway and resumed: the same weights as
    the run that was not interrupted. (Online episodes in progress are not checkpointed, so the offline phase is
    where a resume repeats the run exactly.)"""

    def run(out: Path, offline_steps: int, resume: bool = False) -> SAC:
        torch.manual_seed(0)
        agent = SAC(TanhGaussianMLP(2, 1, hidden_dims=(16,)), 2, 1,
                    SACConfig(n_critics=3, target_subset=2, hidden_dims=[16]), "cuda")
        cfg = OffPolicyConfig(offline_steps=offline_steps, batch_size=32, log_every=5, eval_every=0,
                              checkpoint_every=5, progress=False, resume=resume)
        OffPolicyTrainer(agent, random_point_mass_data(), cfg, out).learn()
        return agent

    uninterrupted = run(tmp_path / "full", offline_steps=20)
    run(tmp_path / "split", offline_steps=10)
    resumed = run(tmp_path / "split", offline_steps=20, resume=True)
    assert all(p.is_cuda for p in resumed.critic.parameters())
    for a, b in zip(resumed.critic.parameters(), uninterrupted.critic.parameters(), strict=True):
        assert torch.equal(a, b)
