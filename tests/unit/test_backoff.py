from __future__ import annotations

import statistics

import pytest

from shipper.backoff import Backoff


def test_ceiling_doubles_from_initial_then_caps() -> None:
    b = Backoff(0.5, 4.0)
    assert (b.attempt, b.ceiling) == (0, 0.5)  # before any failure: the first attempt's
    ceilings = []
    for _ in range(7):
        b.next_delay()
        ceilings.append(b.ceiling)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert b.attempt == 7


def test_every_delay_is_within_zero_and_its_ceiling() -> None:
    b = Backoff(0.01, 1.0)
    for _ in range(2000):
        d = b.next_delay()
        assert 0.0 <= d <= b.ceiling


def test_full_jitter_spreads_over_the_whole_range() -> None:
    """Not a band near the ceiling: the mean is half the ceiling and draws reach both ends."""
    b = Backoff(4.0, 4.0)
    draws = [b.next_delay() for _ in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(2.0, abs=0.1)
    assert min(draws) < 0.2 and max(draws) > 3.8
    assert sum(d < 1.0 for d in draws) / len(draws) == pytest.approx(0.25, abs=0.03)


def test_reset_starts_again_from_initial() -> None:
    b = Backoff(0.5, 30.0)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.attempt == 0
    assert b.next_delay() <= 0.5
    assert (b.attempt, b.ceiling) == (1, 0.5)


def test_floor_is_a_minimum_delay() -> None:
    b = Backoff(0.1, 10.0, floor=0.05)
    delays = [b.next_delay() for _ in range(500)]
    assert all(0.05 <= d <= 10.0 for d in delays)
    high = Backoff(0.1, 0.2, floor=1.0)  # a floor above the cap wins: callers that must not spin
    assert [high.next_delay() for _ in range(3)] == [1.0, 1.0, 1.0]


def test_many_attempts_do_not_overflow() -> None:
    b = Backoff(0.5, 30.0)
    for _ in range(10_000):
        assert b.next_delay() <= 30.0
    assert b.ceiling == 30.0


@pytest.mark.parametrize(("initial", "cap", "floor"), [(0.0, 1.0, 0.0), (-1.0, 1.0, 0.0), (1.0, -1.0, 0.0),
                                                       (1.0, 1.0, -0.1)])
def test_nonsense_parameters_are_refused(initial: float, cap: float, floor: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, cap, floor=floor)
