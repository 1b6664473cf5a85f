"""RetryPolicy: full-jitter exponential backoff, Retry-After, give-up age."""

from __future__ import annotations

import random

import pytest

from hubwatchd.config import RetryConfig
from hubwatchd.retry import RetryPolicy


class FixedRng(random.Random):
    """uniform(a, b) returns the point `fraction` of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


POLICY = RetryPolicy(initial_delay=5.0, max_delay=900.0, give_up_after=86400.0)


def test_ceiling_doubles_from_initial_delay_and_stops_at_max_delay():
    ceilings = [POLICY.ceiling(n) for n in range(1, 10)]
    assert ceilings == [5, 10, 20, 40, 80, 160, 320, 640, 900]


def test_delay_is_full_jitter_between_zero_and_the_ceiling():
    for attempt in (1, 4, 12):
        rng = FixedRng(1.0)
        assert POLICY.delay(attempt, rng=rng) == POLICY.ceiling(attempt)
        assert rng.calls == [(0.0, POLICY.ceiling(attempt))]
        assert POLICY.delay(attempt, rng=FixedRng(0.0)) == 0.0
        assert POLICY.delay(attempt, rng=FixedRng(0.5)) == POLICY.ceiling(attempt) / 2


def test_seeded_delays_stay_within_bounds_over_many_attempts():
    rng = random.Random(1234)
    for attempt in range(1, 200):
        delay = POLICY.delay(attempt, rng=rng)
        assert 0.0 <= delay <= POLICY.ceiling(attempt) <= POLICY.max_delay


def test_huge_attempt_numbers_do_not_overflow():
    assert POLICY.delay(10**6, rng=FixedRng(1.0)) == 900.0


def test_retry_after_wins_when_larger_than_the_jittered_delay():
    assert POLICY.delay(1, retry_after=120.0, rng=FixedRng(1.0)) == 120.0


def test_jittered_delay_wins_when_larger_than_retry_after():
    assert POLICY.delay(8, retry_after=1.0, rng=FixedRng(1.0)) == 640.0


def test_retry_after_may_exceed_max_delay_but_not_give_up_after():
    assert POLICY.delay(1, retry_after=3600.0, rng=FixedRng(1.0)) == 3600.0
    assert POLICY.delay(1, retry_after=10 * 86400.0, rng=FixedRng(1.0)) == 86400.0


def test_zero_retry_after_means_the_backoff_decides():
    assert POLICY.delay(3, retry_after=0.0, rng=FixedRng(0.5)) == 10.0


def test_gave_up_at_exactly_the_give_up_age():
    assert not POLICY.gave_up(first_failure_at=1000.0, now=1000.0 + 86399.9)
    assert POLICY.gave_up(first_failure_at=1000.0, now=1000.0 + 86400.0)


def test_from_config_copies_the_three_settings():
    policy = RetryPolicy.from_config(RetryConfig(1.0, 60.0, 3600.0))
    assert policy == RetryPolicy(1.0, 60.0, 3600.0)


@pytest.mark.parametrize(
    ("initial", "maximum", "give_up"),
    [(0.0, 10.0, 100.0), (20.0, 10.0, 100.0), (1.0, 10.0, 0.0)],
)
def test_inconsistent_settings_are_refused(initial, maximum, give_up):
    with pytest.raises(ValueError):
        RetryPolicy(initial, maximum, give_up)
