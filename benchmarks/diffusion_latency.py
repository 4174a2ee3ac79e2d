"""Diffusion Policy latency: one batch-1 action chunk (``policy.act``) on the CPU, per sampler and denoiser.

The policy is the default ``DiffusionConfig`` (state-only 1D UNet) on Lift's observation and action sizes
(``PolicySpec.from_env(make("Lift"), n_obs_steps=2, horizon=16, n_action_steps=8)``), its normalizer fitted on
unit ranges (timing does not depend on the statistics), untrained weights (nor on the weights). Cases:

- UNet, DDIM with 4 and 10 steps, DDPM with 100 steps (``set_sampler``; the same weights);
- the default transformer denoiser (``denoiser=transformer``) with 10 DDIM steps.

Each case is timed with torch using 2 threads and then 1 thread. A call is ``policy.act(obs)`` in eval mode on a
fixed observation, timed with ``perf_counter``; after a warm-up, the cases are timed alternately in short rounds
(so a burst of load from elsewhere on this 2-core VM spoils few of them), and the figure is the median over all
calls (the 10th and 90th percentiles are reported too). Target: 10-step DDIM with the default UNet <= 10 ms
with 2 threads. Informational: DDPM-100 / DDIM-10 latency, which is what few-step DDIM sampling buys.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from common import Target, finish, markdown_table, parse_args, target

import roboloop  # noqa: F401  (registers the env ids)
from roboloop.core.spec import PolicySpec
from roboloop.envs import make
from roboloop.policies.diffusion import DiffusionConfig, DiffusionPolicy

NAME = "diffusion_latency"
MAX_DDIM10_MS = 10.0
THREADS = (2, 1)
#: (case name, denoiser, sampler, steps, calls per round relative to the DDIM-10 cases)
CASES = (
    ("unet ddim-4", "unet", "ddim", 4, 1.0),
    ("unet ddim-10", "unet", "ddim", 10, 1.0),
    ("unet ddpm-100", "unet", "ddpm", 100, 0.1),
    ("transformer ddim-10", "transformer", "ddim", 10, 0.5),
)


def lift_spec() -> PolicySpec:
    env = make("Lift")
    spec = PolicySpec.from_env(env, n_obs_steps=2, horizon=16, n_action_steps=8)
    env.close()
    return spec


def build(spec: PolicySpec, denoiser: str, sampler: str, steps: int) -> DiffusionPolicy:
    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionConfig(denoiser=denoiser), spec)
    state_dim, action_dim = spec.obs_shapes["observation.state"][0], spec.action_dim
    policy.normalizer.fit({"observation.state": {"min": -np.ones(state_dim), "max": np.ones(state_dim)},
                           "action": {"min": -np.ones(action_dim), "max": np.ones(action_dim)}})
    policy.set_sampler(sampler, steps)
    return policy.eval()


def time_calls(policy: DiffusionPolicy, obs: dict[str, torch.Tensor], n: int) -> list[float]:
    """Seconds of each of ``n`` consecutive ``act`` calls."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        policy.act(obs)
        out.append(time.perf_counter() - start)
    return out


def measure(spec: PolicySpec, threads: int, rounds: int, calls: int) -> dict[str, dict[str, Any]]:
    """Per case: median, p10, p90 (ms) over ``rounds`` alternating rounds of ``calls * share`` calls."""
    torch.set_num_threads(threads)
    policies = {name: build(spec, denoiser, sampler, steps) for name, denoiser, sampler, steps, _ in CASES}
    obs = {"observation.state": torch.zeros(1, spec.n_obs_steps, *spec.obs_shapes["observation.state"])}
    per_round = {name: max(1, round(calls * share)) for name, *_, share in CASES}
    for name, policy in policies.items():  # warm-up: allocator, thread pool, first-call checks
        time_calls(policy, obs, max(3, per_round[name]))
    seconds: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(rounds):
        for name, policy in policies.items():
            seconds[name] += time_calls(policy, obs, per_round[name])
    result = {}
    for name, denoiser, sampler, steps, _ in CASES:
        ms = np.array(seconds[name]) * 1e3
        result[name] = {"denoiser": denoiser, "sampler": sampler, "num_inference_steps": steps, "calls": len(ms),
                        "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
                        "p90_ms": float(np.percentile(ms, 90)), "per_step_ms": float(np.median(ms)) / steps,
                        "params": sum(p.numel() for p in policies[name].parameters())}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    rounds, calls = (3, 10) if args.quick else (10, 40)
    spec = lift_spec()
    default = DiffusionConfig()
    figures: dict[str, Any] = {
        "spec": spec.to_dict(),
        "unet": {"down_dims": default.down_dims, "blocks_per_level": default.blocks_per_level,
                 "kernel_size": default.kernel_size, "step_embed_dim": default.step_embed_dim},
        "transformer": {"n_layer": default.n_layer, "n_head": default.n_head, "n_emb": default.n_emb},
        "rounds": rounds, "threads": {},
    }
    targets: list[Target] = []
    rows = []
    for threads in THREADS:
        res = measure(spec, threads, rounds, calls)
        ratio = res["unet ddpm-100"]["median_ms"] / res["unet ddim-10"]["median_ms"]
        figures["threads"][str(threads)] = {"cases": res, "ddpm100_over_ddim10": ratio}
        for name, r in res.items():
            rows.append((threads, name, f"{r['params'] / 1e6:.3f}M", r["calls"], f"{r['median_ms']:.2f}",
                         f"{r['p10_ms']:.2f} - {r['p90_ms']:.2f}", f"{r['per_step_ms']:.3f}"))
        rows.append((threads, "DDPM-100 / DDIM-10 (UNet)", "", "", f"{ratio:.1f}x", "", ""))
        if threads == 2:
            targets.append(target("ddim10_unet_ms[2 threads]", round(res["unet ddim-10"]["median_ms"], 3), "<=",
                                  MAX_DDIM10_MS, "median batch-1 act, default UNet, 10 DDIM steps"))
        print(f"{threads} thread(s): UNet DDIM-10 {res['unet ddim-10']['median_ms']:.2f} ms", file=sys.stderr,
              flush=True)

    table = "\n\n".join([
        f"Batch-1 `act` latency on Lift's sizes (state {spec.obs_shapes['observation.state']}, action "
        f"{spec.action_dim}, To=2, Tp=16, Ta=8); default UNet down_dims={default.down_dims}, blocks_per_level="
        f"{default.blocks_per_level}; default transformer n_layer={default.n_layer}, n_head={default.n_head}, "
        f"n_emb={default.n_emb}. Median over {rounds} alternating rounds:",
        markdown_table(["threads", "case", "params", "calls", "median ms", "p10 - p90 ms", "ms per denoising step"],
                       rows),
    ])
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
