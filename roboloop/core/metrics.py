"""Small statistics used by every evaluation and benchmark."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0% and 100%,
    which is where policy success rates often sit.
    """
    if trials <= 0:
        raise ValueError(f"trials must be > 0, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, trials={trials}], got {successes}")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # At 0% and 100% the bounds are exactly 0 and 1; pin them against rounding.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def format_rate(successes: int, trials: int) -> str:
    """``"97.5% [94.3, 98.9] (195/200)"``: the rate with its Wilson 95% interval."""
    low, high = wilson_interval(successes, trials)
    return f"{100 * successes / trials:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({successes}/{trials})"
