"""The verdict on a goal claims only what the whole min-max range of the runs supports."""

from __future__ import annotations

import pytest

from bench.spread import MET, NOT_MET, NOT_SHOWN, Spread, ratios, verdict


def test_the_json32_ratios_that_were_called_99_percent_do_not_show_the_80_percent_goal():
    spread = ratios([47_677, 54_022, 59_862], [65_350, 43_332, 54_314])  # 0.73, 1.25, 1.10
    assert spread.fmt(".0f", scale=100, unit="%") == "110% (73-125%)"
    assert verdict(spread, 0.8, higher_is_better=True) == NOT_SHOWN


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.81, 0.9, 1.2], MET),  # every run at or above the goal
        ([0.8, 0.8, 0.8], MET),  # the goal itself counts as met
        ([0.2, 0.5, 0.79], NOT_MET),  # no run reaches it
        ([0.79, 0.95, 0.99], NOT_SHOWN),  # median above, one run below
        ([0.5, 0.6, 0.85], NOT_SHOWN),  # median below, one run above
    ],
)
def test_higher_is_better(values, expected):
    assert verdict(Spread.of(values), 0.8, higher_is_better=True) == expected


@pytest.mark.parametrize(
    ("p99_ms", "expected"),
    [
        ([64.1, 70.0, 99.9], MET),
        ([101.0, 112.7, 300.0], NOT_MET),
        ([76.6, 90.0, 140.0], NOT_SHOWN),  # one 10 s run at 76.6 ms called this "met"
    ],
)
def test_lower_is_better(p99_ms, expected):
    assert verdict(Spread.of(p99_ms), 100.0, higher_is_better=False) == expected


def test_formatting_and_bad_input():
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0, 3)
    assert Spread.of([54_022.4]).fmt() == "54,022"  # one run: no range to show
    assert Spread.of([1000.0, 2500.0, 1800.0]).fmt() == "1,800 (1,000-2,500)"
    with pytest.raises(ValueError, match="at least one"):
        Spread.of([])
    with pytest.raises(ValueError, match="2 runs against 3"):
        ratios([1.0, 2.0], [1.0, 2.0, 3.0])


def test_fewer_than_three_runs_show_nothing():
    """The latency rows once called "met" came from a single 10 s run each."""
    assert verdict(Spread.of([76.6]), 100.0, higher_is_better=False) == NOT_SHOWN
    assert verdict(Spread.of([0.2, 0.3]), 0.8, higher_is_better=True) == NOT_SHOWN
    assert verdict(Spread.of([0.2, 0.3, 0.25]), 0.8, higher_is_better=True) == NOT_MET
