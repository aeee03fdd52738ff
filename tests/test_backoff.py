from __future__ import annotations

import random

import pytest

from resilientdb import Backoff, ConfigurationError


def test_defaults_double_from_50ms_capped_near_one_second() -> None:
    b = Backoff(jitter=0)
    assert [b.delay(n) for n in range(1, 7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert b.delay(1000) == 1.0  # no overflow far out
    assert b.delay(0) == 0.0


def test_jitter_stays_within_twenty_percent_and_spreads() -> None:
    b = Backoff()
    rng = random.Random(7)
    delays = [b.delay(3, rng) for _ in range(500)]
    assert min(delays) >= 0.2 * 0.8 and max(delays) <= 0.2 * 1.2
    assert max(delays) - min(delays) > 0.05  # really spread, not constant


def test_none_sleeps_zero() -> None:
    assert all(Backoff.none().delay(n) == 0 for n in range(1, 50))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": -1},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"maximum": 0.01, "initial": 0.1},
        {"initial": float("nan")},
    ],
)
def test_bad_values_are_configuration_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError) as info:
        Backoff(**kwargs)
    assert next(iter(kwargs)) in str(info.value)
