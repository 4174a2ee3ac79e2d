from __future__ import annotations

import pytest

from roboloop.core.metrics import format_rate, wilson_interval


def test_wilson_interval_known_values() -> None:
    # Reference values from the closed form (e.g. statsmodels proportion_confint(method="wilson")).
    low, high = wilson_interval(190, 200)
    assert low == pytest.approx(0.9104, abs=1e-3)
    assert high == pytest.approx(0.9725, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-3)


def test_wilson_interval_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(1, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_format_rate() -> None:
    assert format_rate(195, 200).startswith("97.5% [")
    assert format_rate(195, 200).endswith("(195/200)")
