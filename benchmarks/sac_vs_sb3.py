"""SAC update speed: gradient steps per second of our SAC/RLPD update against stable-baselines3's SAC, in one run.

Both learn from the same replay data (``--transitions`` random-action transitions of ``Hopper-v5``, put into each
library's own buffer) with the same networks: SB3's default ``MlpPolicy`` for SAC (actor and two critics, each
[256, 256] ReLU MLPs), batch 256, automatic entropy tuning with target entropy -|A|, one target update per
gradient step. A gradient step is what SB3's ``SAC.train(gradient_steps=1)`` does: sample a batch, one critic
step, one actor step, one temperature step, a Polyak update. Ours is ``SAC.update`` on a batch sampled from our
``ReplayBuffer``, with ``n_critics=2, target_subset=2, layer_norm=False`` (plain SAC). The two alternate in
``--repeats`` rounds of ``--steps`` gradient steps each (after one untimed warm-up round each); the ratio is
total steps over total seconds, ours / SB3. Target: >= 1.5.

Informational, same run: our RLPD update (10 LayerNorm critics, min over a random pair), which SB3 has no
counterpart of.

``--device cuda`` runs both on the GPU (each library's replay buffer stays where it keeps it: ours in CPU tensors,
SB3's in numpy arrays; each batch moves to the GPU) and writes ``sac_vs_sb3_cuda.json``: a separate result, since
the ratio on a GPU measures launch and synchronization overheads more than arithmetic.

    .venv/bin/python benchmarks/sac_vs_sb3.py [--steps 2000] [--repeats 3] [--threads N] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from common import finish, fmt, markdown_table, parse_args, target

from roboloop.offline_rl.replay import ReplayBuffer
from roboloop.offline_rl.sac import SAC, SACConfig
from roboloop.policies.tanh_gaussian import TanhGaussianMLP
from roboloop.utils.sb3 import silence_logger

NAME = "sac_vs_sb3"
ENV_ID = "Hopper-v5"
BATCH_SIZE = 256
HIDDEN = [256, 256]
MIN_SPEED_RATIO = 1.5


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="gradient steps per timed round (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed rounds per implementation")
    parser.add_argument("--transitions", type=int, default=20_000, help="replay transitions (random actions)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both updates run")


def random_transitions(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` transitions of ``Hopper-v5`` under uniformly random actions (terminated/truncated kept apart)."""
    env = gym.make(ENV_ID)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    data: dict[str, list[Any]] = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")}
    for _ in range(n):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(data, (obs, action, reward, next_obs, terminated, truncated), strict=True):
            data[key].append(value)
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    return {k: np.asarray(v, dtype=np.float32 if k not in ("terminated", "truncated") else bool)
            for k, v in data.items()}


def ours_stepper(data: dict[str, np.ndarray], cfg: SACConfig, seed: int, device: str) -> Callable[[int], None]:
    torch.manual_seed(seed)
    obs_dim, action_dim = data["obs"].shape[1], data["actions"].shape[1]
    buffer = ReplayBuffer(obs_dim, action_dim, len(data["obs"]))
    buffer.add(data["obs"], data["actions"], data["rewards"], data["next_obs"], data["terminated"],
               data["truncated"])
    agent = SAC(TanhGaussianMLP(obs_dim, action_dim, hidden_dims=HIDDEN), obs_dim, action_dim, cfg, device)
    generator = torch.Generator().manual_seed(seed)

    def run(steps: int) -> None:
        for _ in range(steps):
            agent.update(buffer.sample(BATCH_SIZE, generator), generator=generator)

    return run


def sb3_stepper(data: dict[str, np.ndarray], seed: int, device: str) -> Callable[[int], None]:
    from stable_baselines3 import SAC as SB3SAC

    env = gym.make(ENV_ID)
    model = SB3SAC("MlpPolicy", env, batch_size=BATCH_SIZE, buffer_size=len(data["obs"]), learning_starts=0,
                   policy_kwargs={"net_arch": HIDDEN}, seed=seed, device=device)
    silence_logger(model)
    for i in range(len(data["obs"])):
        model.replay_buffer.add(data["obs"][i : i + 1], data["next_obs"][i : i + 1], data["actions"][i : i + 1],
                                data["rewards"][i : i + 1], data["terminated"][i : i + 1],
                                [{"TimeLimit.truncated": bool(data["truncated"][i])}])

    def run(steps: int) -> None:
        model.train(gradient_steps=steps, batch_size=BATCH_SIZE)

    return run


def timed(run: Callable[[int], None], steps: int, device: str) -> float:
    """Seconds for ``steps`` gradient steps, the GPU's queued work included."""
    start = time.perf_counter()
    run(steps)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, extra_args)
    steps = args.steps or (50 if args.quick else 2000)
    transitions = 2000 if args.quick else args.transitions
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("sac_vs_sb3: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    data = random_transitions(transitions, seed=0)
    action_dim = data["actions"].shape[1]
    sac_cfg = SACConfig(n_critics=2, target_subset=2, layer_norm=False, utd_ratio=1, hidden_dims=HIDDEN,
                        target_entropy=-float(action_dim))  # SB3's target entropy
    rlpd_cfg = SACConfig(hidden_dims=HIDDEN)
    runners = {"ours (SAC)": ours_stepper(data, sac_cfg, 0, args.device),
               "sb3 (SAC)": sb3_stepper(data, 0, args.device),
               "ours (RLPD, 10 LayerNorm critics)": ours_stepper(data, rlpd_cfg, 0, args.device)}
    warmup = max(steps // 10, 10)
    for run in runners.values():
        run(warmup)
    seconds = {name: 0.0 for name in runners}
    for repeat in range(args.repeats):
        for name, run in runners.items():
            seconds[name] += timed(run, steps, args.device)
        print(f"round {repeat}: " + ", ".join(f"{n} {steps * (repeat + 1) / s:.0f}/s" for n, s in seconds.items()),
              file=sys.stderr, flush=True)
    rates = {name: steps * args.repeats / s for name, s in seconds.items()}
    ratio = rates["ours (SAC)"] / rates["sb3 (SAC)"]
    figures: dict[str, Any] = {
        "env": ENV_ID, "transitions": transitions, "batch_size": BATCH_SIZE, "hidden_dims": HIDDEN,
        "steps_per_round": steps, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "gradient_steps_per_second": rates, "speed_ratio": ratio,
        "rlpd_over_sb3": rates["ours (RLPD, 10 LayerNorm critics)"] / rates["sb3 (SAC)"],
    }
    rows = [(name, steps * args.repeats, f"{seconds[name]:.2f}", f"{rates[name]:.0f}",
             f"{rates[name] / rates['sb3 (SAC)']:.2f}x") for name in runners]
    table = "\n\n".join([
        f"{ENV_ID}, {transitions} random-action transitions, batch {BATCH_SIZE}, actor and critics {HIDDEN}, "
        f"{args.repeats} alternating rounds of {steps} gradient steps, torch threads {torch.get_num_threads()}, "
        f"device {figures['device']}:",
        markdown_table(["update", "gradient steps", "seconds", "steps/s", "vs SB3"], rows),
    ])
    targets = [target("finite_timings", all(np.isfinite(list(rates.values()))), "==", True)]
    if not args.quick:
        targets.append(target("speed_ratio_ours_over_sb3[sac]", round(ratio, 3), ">=", MIN_SPEED_RATIO,
                              f"ours {fmt(rates['ours (SAC)'], 4)} vs SB3 {fmt(rates['sb3 (SAC)'], 4)} steps/s"))
    return finish(NAME if args.device == "cpu" else f"{NAME}_{args.device}", figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
