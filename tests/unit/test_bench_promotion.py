"""The promotion benchmark's figures: throughput, percentiles, and a race's own checks."""

from __future__ import annotations

from typing import Any

import pytest

from bench.bench_promotion import ratios, summarize
from bench.harness import percentile


def _attempt(round_: int, basis: str, version: str, outcome: str, began: float, took: float):
    return {
        "round": round_,
        "basis": basis,
        "version": version,
        "outcome": outcome,
        "began": began,
        "ended": began + took,
    }


def _two_rounds() -> list[dict[str, Any]]:
    """Two promoters, two rounds: v2 wins from v1, then v5 wins from v2."""
    return [
        _attempt(0, "1", "2", "won", 10.0, 0.2),
        _attempt(0, "1", "4", "lost", 10.0, 0.1),
        _attempt(1, "2", "3", "lost", 10.5, 0.1),
        _attempt(1, "2", "5", "won", 10.5, 0.5),
    ]


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_counts_commits_over_the_race_wall() -> None:
    figures = summarize(2, 2, _two_rounds())
    assert (figures["committed"], figures["lost"], figures["failed"]) == (2, 2, 0)
    assert figures["wall_s"] == 1.0  # 10.0 to 11.0
    assert figures["committed_per_s"] == 2.0 and figures["attempts_per_s"] == 4.0
    assert figures["latency_ms"] == {"p50": 150.0, "p95": 455.0, "max": 500.0}
    assert figures["round_ms"]["max"] == 500.0
    assert figures["rounds_with_one_winner"] == 2 and figures["wrong_rounds"] == []


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({1: {"outcome": "won"}}, "round 0: 2 won of 2"),  # two winners
        ({0: {"outcome": "lost"}}, "round 0: 0 won of 2"),  # nobody won
        ({1: {"basis": "9"}}, "round 0: 1 won of 2, bases"),  # read different champions
        ({2: {"basis": "4"}, 3: {"basis": "4"}}, "round 1 read v4, not the winner"),
    ],
)
def test_a_wrong_round_is_named(change: dict[int, dict[str, str]], why: str) -> None:
    attempts = _two_rounds()
    for index, fields in change.items():
        attempts[index] |= fields
    figures = summarize(2, 2, attempts)
    assert figures["rounds_with_one_winner"] < 2
    assert figures["wrong_rounds"][0].startswith(why), figures["wrong_rounds"]


def test_a_failed_attempt_is_counted_apart_from_lost_ones() -> None:
    attempts = _two_rounds()
    attempts[1]["outcome"] = "error 9: state store: connection lost"
    figures = summarize(2, 2, attempts)
    assert (figures["committed"], figures["lost"], figures["failed"]) == (2, 1, 1)
    assert figures["errors"] == ["error 9: state store: connection lost"]


def test_a_missing_round_is_wrong() -> None:
    figures = summarize(2, 3, _two_rounds())
    assert figures["rounds_with_one_winner"] == 2
    assert figures["wrong_rounds"] == ["round 2: 0 won of 0, bases set()"]


def test_ratio_is_against_the_mean_of_the_single_promoter_races() -> None:
    races = [
        {"promoters": 1, "committed_per_s": 4.0},
        {"promoters": 4, "committed_per_s": 3.0},
    ]
    assert ratios(races) == {"1": 1.0, "4": 0.75}
    assert ratios([*races, {"promoters": 1, "committed_per_s": 2.0}]) == {"1": 0.667, "4": 1.0}
    assert ratios(races[1:]) == {"4": None}
