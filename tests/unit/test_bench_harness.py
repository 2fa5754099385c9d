"""The benchmark harness measures what it says: wall time, exit code, peak RSS of the tree."""

from __future__ import annotations

import sys

import pytest

from bench.harness import Spread, measure, summarize

# A parent and a child each hold ~80 MB for 0.4 s at the same time: the tree peaks at ~160 MB,
# while either process alone stays near 80 MB.
HOLD = "import time; b = b'x' * 80_000_000; time.sleep(0.4)"
TREE = (
    "import subprocess, sys, time; "
    f"child = subprocess.Popen([sys.executable, '-c', {HOLD!r}]); "
    "b = b'x' * 80_000_000; time.sleep(0.4); child.wait()"
)


def test_spread_is_median_and_range() -> None:
    spread = Spread.of([3.0, 1.0, 2.5])
    assert (spread.median, spread.low, spread.high, spread.n) == (2.5, 1.0, 3.0, 3)
    assert spread.text() == "2.5 (1.0-3.0)"
    with pytest.raises(ValueError):
        Spread.of([])


def test_measure_wall_rss_and_exit_code() -> None:
    runs = measure([sys.executable, "-S", "-c", TREE], repeat=3)
    assert len(runs) == 3
    assert all(r.returncode == 0 for r in runs)
    stats = summarize(runs)
    wall = stats["wall_s"]
    assert 0.4 <= wall.low <= wall.median <= wall.high < 4.0
    # the sum over the live tree, not the largest single process
    assert 150 <= stats["peak_rss_mb"].median < 400

    small = measure([sys.executable, "-S", "-c", "pass"], repeat=3)
    assert summarize(small)["peak_rss_mb"].median < 60  # a bare interpreter: no leftovers counted


def test_measure_reports_a_failing_command() -> None:
    (run,) = measure([sys.executable, "-S", "-c", "import sys; sys.exit(3)"], repeat=1)
    assert run.returncode == 3
