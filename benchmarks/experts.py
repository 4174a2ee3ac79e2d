"""Scripted experts: success over seeded episodes, and how success falls as the noise knob goes up.

What is measured, for every task (our three and the two Fetch adapters):

* Expert success over 200 seeded episodes (episode ``k``: ``env.reset(seed=k)``,
  ``expert.reset(seed=k)``; success = ``info["is_success"]`` of the final step), with its Wilson
  95% interval. Target: >= 95% (the point estimate).
* The noise curve: success at noise 0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7 (probability per step of a
  uniformly random action), 100 episodes per level on seeds 0..99 (the same seeds at every level,
  so the levels differ only in the noise). Noise 0 reuses the first 100 episodes of the 200-episode
  run: with noise 0 the expert never draws from its generator, so those episodes are identical.
  "Success falls smoothly" is three targets per task:

  - non-increasing up to sampling error: for every pair of levels ``a < b``,
    ``success(b) - success(a)`` is at most the sum of the two Wilson half-widths;
  - success at the highest level (0.7) is below 50% (the knob spans the range);
  - no drop between adjacent levels exceeds 60 points (no cliff).

  ``--quick`` runs 20 episodes per level and, since such small samples swing by +-20 points,
  reduces each adjacent drop by the two Wilson half-widths before comparing it with 60 points.

* Mean episode lengths (all episodes and successful ones), informational.

Why: datasets of chosen quality are made by turning this knob, so it must be monotone and gradual,
and the clean expert must be good enough to learn from.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from common import Target, finish, markdown_table, parse_args, pct, target

import roboloop  # noqa: F401  (registers the env ids)
from roboloop.core.metrics import format_rate, wilson_interval
from roboloop.envs import TASKS, make
from roboloop.envs.experts import make_expert

NAME = "experts"
NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
MIN_SUCCESS = 0.95
MAX_SUCCESS_AT_TOP_NOISE = 0.5
MAX_ADJACENT_DROP = 0.60


@dataclass
class Outcome:
    """Successes and lengths of a batch of episodes at one noise level."""

    successes: list[bool]
    lengths: list[int]

    @property
    def n(self) -> int:
        return len(self.successes)

    @property
    def k(self) -> int:
        return int(sum(self.successes))

    @property
    def rate(self) -> float:
        return self.k / self.n

    @property
    def half_width(self) -> float:
        low, high = wilson_interval(self.k, self.n)
        return (high - low) / 2

    def head(self, n: int) -> Outcome:
        return Outcome(self.successes[:n], self.lengths[:n])

    def summary(self) -> dict[str, Any]:
        low, high = wilson_interval(self.k, self.n)
        good = [n for n, s in zip(self.lengths, self.successes, strict=True) if s]
        return {"episodes": self.n, "successes": self.k, "rate": self.rate, "wilson95": [low, high],
                "mean_length": float(np.mean(self.lengths)),
                "mean_length_successful": float(np.mean(good)) if good else None,
                "max_length": int(max(self.lengths))}


def run_expert(task: str, noise: float, n_episodes: int) -> Outcome:
    """Episodes ``0..n_episodes-1`` of ``task``'s expert at ``noise``."""
    env = make(task)
    expert = make_expert(task, env, noise=noise)
    successes, lengths = [], []
    try:
        for k in range(n_episodes):
            obs, info = env.reset(seed=k)
            expert.reset(seed=k)
            steps = 0
            while True:
                obs, _, terminated, truncated, info = env.step(expert.act(obs))
                steps += 1
                if terminated or truncated:
                    break
            successes.append(bool(info["is_success"]))
            lengths.append(steps)
    finally:
        env.close()
    return Outcome(successes, lengths)


def smoothness_targets(task: str, curve: Sequence[Outcome], *, quick: bool = False) -> list[Target]:
    """The three "success falls smoothly" targets of one task's noise curve.

    With ``quick`` (20 episodes per level, where one estimate moves by +-20 points), the drop between
    adjacent levels is first reduced by the two Wilson half-widths, as the non-increasing test does;
    the full run applies the 60-point limit to the point estimates.
    """
    excess, worst_pair = -1.0, ""
    for a in range(len(curve)):
        for b in range(a + 1, len(curve)):
            margin = curve[b].rate - curve[a].rate - (curve[a].half_width + curve[b].half_width)
            if margin > excess:
                excess, worst_pair = margin, f"noise {NOISE_LEVELS[a]} -> {NOISE_LEVELS[b]}"
    drops = [curve[i].rate - curve[i + 1].rate for i in range(len(curve) - 1)]
    if quick:
        drops = [d - (curve[i].half_width + curve[i + 1].half_width) for i, d in enumerate(drops)]
    worst_drop = int(np.argmax(drops))
    return [
        target(f"non_increasing[{task}]", round(excess, 4), "<=", 0.0,
               f"max over levels a < b of success(b) - success(a) - (half-width a + half-width b), at {worst_pair}"),
        target(f"success_at_noise_{NOISE_LEVELS[-1]}[{task}]", curve[-1].rate, "<", MAX_SUCCESS_AT_TOP_NOISE),
        target(f"max_adjacent_drop[{task}]", round(drops[worst_drop], 4), "<=", MAX_ADJACENT_DROP,
               f"between noise {NOISE_LEVELS[worst_drop]} and {NOISE_LEVELS[worst_drop + 1]}"
               + (" (quick: minus the two Wilson half-widths)" if quick else "")),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n_main, n_curve = (20, 20) if args.quick else (200, 100)
    figures: dict[str, Any] = {"episodes_main": n_main, "episodes_per_noise_level": n_curve,
                               "noise_levels": list(NOISE_LEVELS), "tasks": {}}
    targets: list[Target] = []
    main_rows, curve_rows, length_rows = [], [], []
    for task in TASKS:
        t0 = time.perf_counter()
        clean = run_expert(task, 0.0, n_main)
        clean_curve = clean.head(n_curve) if n_curve <= n_main else run_expert(task, 0.0, n_curve)
        curve = [clean_curve] + [run_expert(task, noise, n_curve) for noise in NOISE_LEVELS[1:]]
        print(f"{task}: {format_rate(clean.k, clean.n)}, curve "
              f"{[round(c.rate, 2) for c in curve]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        figures["tasks"][task] = {"clean": clean.summary(),
                                  "curve": {str(noise): c.summary() for noise, c in zip(NOISE_LEVELS, curve,
                                                                                        strict=True)}}
        summary = clean.summary()
        main_rows.append((task, format_rate(clean.k, clean.n), f"{summary['mean_length']:.1f}",
                          f"{summary['mean_length_successful'] or float('nan'):.1f}", summary["max_length"],
                          TASKS[task].max_episode_steps))
        curve_rows.append((task, *(f"{pct(c.rate)} ±{100 * c.half_width:.0f}" for c in curve)))
        length_rows.append((task, *(f"{np.mean(c.lengths):.0f}" for c in curve)))
        targets.append(target(f"expert_success[{task}]", clean.rate, ">=", MIN_SUCCESS,
                              format_rate(clean.k, clean.n)))
        targets += smoothness_targets(task, curve, quick=args.quick)

    noise_headers = [f"noise {n}" for n in NOISE_LEVELS]
    table = "\n\n".join([
        f"Clean expert, {n_main} seeded episodes (success with Wilson 95% interval):",
        markdown_table(["task", "success", "mean length", "mean length (successes)", "max length", "time limit"],
                       main_rows),
        f"Success vs noise ({n_curve} episodes per level, ± Wilson 95% half-width):",
        markdown_table(["task", *noise_headers], curve_rows),
        "Mean episode length vs noise:",
        markdown_table(["task", *noise_headers], length_rows),
    ])
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
