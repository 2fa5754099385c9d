"""The plain parts of the loop: the retrain claim (cooldown, threads, processes), the replay
calendar and the per-strategy metrics on a tiny frame."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop import monitoring, replay
from driftloop.config import Params, ReplayParams, Settings, load_params, parse_params
from driftloop.errors import ConfigError
from driftloop.ledger import RetrainClaim, open_store
from tests.helpers import REPO_ROOT

DAY = dt.date(2015, 1, 31)
COOLDOWN = 28


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(project=tmp_path, home=tmp_path / ".driftloop")


def claim(settings: Settings, as_of: dt.date, cooldown: int = COOLDOWN) -> bool:
    return monitoring.claim_retrain(settings, as_of, "drift: test", cooldown)


def claims_in_audit(settings: Settings) -> list[str]:
    """The day of every retrain claim the decision ledger records."""
    events = open_store(settings.state_dir).events(kinds=("retrain_claim",))
    return [r.event.day for r in events if isinstance(r.event, RetrainClaim)]


# --- claim_retrain: the cooldown -----------------------------------------------------------------


def test_claim_cooldown_first_then_refused_then_allowed_again(settings: Settings) -> None:
    assert claim(settings, DAY) is True
    assert claim(settings, DAY) is False
    assert claim(settings, DAY + dt.timedelta(days=COOLDOWN - 1)) is False
    assert claim(settings, DAY + dt.timedelta(days=COOLDOWN)) is True
    assert monitoring.last_retrain(settings) == DAY + dt.timedelta(days=COOLDOWN)
    assert claims_in_audit(settings) == ["2015-01-31", "2015-02-28"]


def test_claim_with_zero_cooldown_still_claims_a_day_once(settings: Settings) -> None:
    assert claim(settings, DAY, cooldown=0) is True
    assert claim(settings, DAY, cooldown=0) is False
    assert claim(settings, DAY + dt.timedelta(days=1), cooldown=0) is True


def test_each_model_has_its_own_cooldown(settings: Settings) -> None:
    """Two models in one project (two params files): a claim for one never blocks the other."""
    rain, flights = "rain_tomorrow", "flight_delay"
    assert monitoring.claim_retrain(settings, DAY, "drift: rain", COOLDOWN, rain) is True
    assert monitoring.claim_retrain(settings, DAY, "drift: flights", COOLDOWN, flights) is True
    assert monitoring.claim_retrain(settings, DAY, "drift: rain", COOLDOWN, rain) is False
    later = DAY + dt.timedelta(days=3)
    assert monitoring.claim_retrain(settings, later, "drift: flights", COOLDOWN, flights) is False
    assert monitoring.last_retrain(settings, rain) == DAY
    assert monitoring.last_retrain(settings, flights) == DAY
    assert monitoring.last_retrain(settings, "another_model") is None
    entries = [r.to_dict() for r in open_store(settings.state_dir).events()]
    assert [(e["model"], e["reason"]) for e in entries] == [
        (rain, "drift: rain"),
        (flights, "drift: flights"),
    ]


# --- claim_retrain: many claimants at once -------------------------------------------------------
# Each claimant claims in many fresh state dirs, in step with the others (a barrier per round):
# without the lock, a round gives two winners or a half-written state file now and then.

THREAD_ROUNDS, PROCESS_ROUNDS = 25, 10


def round_settings(root: Path, i: int) -> Settings:
    return Settings(project=root / f"round-{i}", home=root / f"round-{i}" / ".driftloop")


def claim_rounds(root: Path, barrier: Any, rounds: int) -> list[bool]:
    """One claimant: a claim in every round, each started together with the other claimants."""
    won = []
    for i in range(rounds):
        barrier.wait(timeout=120)
        try:
            won.append(claim(round_settings(root, i), DAY))
        except Exception:
            barrier.abort()  # the others fail now instead of waiting for this claimant
            raise
    return won


def assert_one_winner_per_round(root: Path, claimants: list[list[bool]], n: int) -> None:
    assert len(claimants) == n
    assert all(isinstance(c, list) for c in claimants), claimants  # e.g. a torn state file
    for i, results in enumerate(zip(*claimants, strict=True)):
        assert results.count(True) == 1, f"round {i}: {results}"
        assert claims_in_audit(round_settings(root, i)) == ["2015-01-31"]


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    """Switch threads far more often than the default 5 ms, to interleave the claimants."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_eight_threads_claiming_at_once_get_exactly_one_claim(
    tmp_path: Path, fast_thread_switching: None
) -> None:
    barrier = threading.Barrier(8)
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(claim_rounds, tmp_path, barrier, THREAD_ROUNDS) for _ in range(8)]
        errors = [f.exception(timeout=120) for f in futures]
    causes = [e for e in errors if e and not isinstance(e, threading.BrokenBarrierError)]
    assert not causes, causes  # e.g. a claimant reading a half-written state file
    claimants = [f.result() for f in futures]
    assert_one_winner_per_round(tmp_path, claimants, 8)


def _claim_in_process(root: str, barrier: Any, out: Any) -> None:
    """Spawned claimant (module-level, so the child can import it); reports what it raised."""
    try:
        out.put(claim_rounds(Path(root), barrier, PROCESS_ROUNDS))
    except Exception as exc:
        out.put(repr(exc))


def test_four_processes_claiming_at_once_get_exactly_one_claim(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_process, args=(str(tmp_path), barrier, out)) for _ in range(4)
    ]
    for proc in procs:
        proc.start()
    try:
        claimants = [out.get(timeout=180) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
    assert_one_winner_per_round(tmp_path, claimants, 4)


# --- replay.step_dates ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO_ROOT / "params.yaml")


def with_replay(params: Params, initial_until: str, end: str, step_days: int) -> Params:
    replay_params = ReplayParams(initial_until=initial_until, end=end, step_days=step_days)
    return params.model_copy(update={"replay": replay_params})


@pytest.mark.parametrize(
    ("initial_until", "end", "step_days"),
    [
        ("2012-04-30", "2015-12-31", 7),  # the project's replay
        ("2012-04-30", "2012-05-28", 7),  # end on a step: no duplicate last date
        ("2012-04-30", "2012-05-30", 7),  # end between steps: a short last step
        ("2012-04-30", "2012-05-02", 30),  # end before the first step: one short step
        ("2012-01-01", "2015-12-31", 1),  # daily
        ("1990-01-01", "2020-01-01", 1),  # more than 10,000 steps
    ],
)
def test_step_dates_cover_the_replay_in_steps(
    params: Params, initial_until: str, end: str, step_days: int
) -> None:
    first, last = dt.date.fromisoformat(initial_until), dt.date.fromisoformat(end)
    dates = replay.step_dates(with_replay(params, initial_until, end, step_days))
    gaps = [(b - a).days for a, b in zip([first, *dates], dates, strict=False)]
    assert dates[-1] == last
    assert len(dates) == math.ceil((last - first).days / step_days)
    assert all(gap == step_days for gap in gaps[:-1])
    assert 0 < gaps[-1] <= step_days


@pytest.mark.parametrize("end", ["2012-04-30", "2012-01-31"])
def test_a_replay_that_ends_before_it_starts_is_a_config_error(params: Params, end: str) -> None:
    # Accepted today: step_dates gives [end], a step on or before the initial model's data, and
    # the replay later fails in scikit-learn on an empty comparison ("Found empty input array").
    raw = params.model_dump(mode="json")
    raw["replay"]["end"] = end
    with pytest.raises(ConfigError, match=r"replay\.end"):
        parse_params(raw)


# --- replay.strategy_metrics ---------------------------------------------------------------------


def test_strategy_metrics_count_only_labelled_scored_rows_overall_and_per_month() -> None:
    rows = [  # date, label (NaN: not arrived yet), predicted probability (NaN: no model live)
        ("2015-01-01", 1, 0.9),
        ("2015-01-02", 0, 0.2),
        ("2015-01-03", 1, 0.4),
        ("2015-01-04", 0, 0.1),
        ("2015-02-01", 1, 0.3),
        ("2015-02-02", 0, 0.8),
        ("2015-02-03", np.nan, 0.7),
        ("2015-02-04", 1, np.nan),
        ("2015-03-01", np.nan, 0.6),  # a month with nothing usable has no entry
    ]
    frame = pd.DataFrame(rows, columns=["date", "label", "proba"]).astype(
        {"date": "datetime64[ns]"}
    )

    got = replay.strategy_metrics(frame[["date", "label"]], frame["proba"].to_numpy())

    assert got["n_predictions"] == 6
    assert got["accuracy"] == pytest.approx(3 / 6)  # 0.9, 0.2, 0.1 right; 0.4, 0.3, 0.8 wrong
    assert got["roc_auc"] == pytest.approx(7 / 9)  # positives 0.9, 0.4, 0.3 vs 0.2, 0.1, 0.8
    assert got["monthly"] == {
        "2015-01": {"accuracy": pytest.approx(3 / 4), "roc_auc": pytest.approx(1.0)},
        "2015-02": {"accuracy": pytest.approx(0.0), "roc_auc": pytest.approx(0.0)},
    }


class ConstantModel:
    """Predicts one probability for every row; checks it sees only the model's input columns."""

    def __init__(self, proba: float) -> None:
        self.proba = proba

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        assert list(X.columns) == ["x"]
        return np.column_stack([np.full(len(X), 1 - self.proba), np.full(len(X), self.proba)])


def test_each_row_is_predicted_by_the_model_live_on_its_day() -> None:
    times = pd.to_datetime(
        [
            "2015-01-01 12:00",
            "2015-01-02 00:00",
            "2015-01-03 23:59",
            "2015-01-04 00:00",
            "2015-01-09 06:00",
        ]
    )
    feats = pd.DataFrame({"x": range(5), "__time": times, "__label": [1, 0, 1, 0, 1]})
    starts = [dt.date(2015, 1, 2), dt.date(2015, 1, 4)]

    proba = replay.predict_with([ConstantModel(0.1), ConstantModel(0.9)], starts, feats)

    # before the first start no model is live; a model is live from the start of its day on
    assert np.isnan(proba[0])
    assert proba[1:].tolist() == [0.1, 0.1, 0.9, 0.9]


# --- the seasonal reference ----------------------------------------------------------------------


def seasonal(params: Params, rows: pd.DataFrame, start: str, end: str, **monitor: Any):
    own = params.model_copy(update={"monitor": params.monitor.model_copy(update=monitor)})
    return monitoring.seasonal_reference(
        rows, own, dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    )


@pytest.fixture(scope="module")
def seattle() -> pd.DataFrame:
    from driftloop.sources import load_seattle

    return load_seattle()


def test_the_seasonal_reference_is_the_same_weeks_of_every_training_year(
    params: Params, seattle: pd.DataFrame
) -> None:
    until_2014 = seattle[seattle["date"] <= "2014-12-31"]
    rows, unseen = seasonal(params, until_2014, "2014-06-01", "2014-06-28", season_margin_days=15)
    assert unseen is None
    assert sorted(rows["date"].dt.year.unique()) == [2012, 2013, 2014]
    days = rows["date"].dt.strftime("%m-%d")
    assert days.min() == "05-17" and days.max() == "07-13"  # 28 days + 15 either side
    assert len(rows) == 3 * 58


def test_the_seasonal_reference_wraps_at_new_year(params: Params, seattle: pd.DataFrame) -> None:
    rows, unseen = seasonal(params, seattle, "2014-12-20", "2015-01-16", season_margin_days=10)
    assert unseen is None
    assert set(rows["date"].dt.month) == {12, 1}
    assert rows["date"].dt.strftime("%m-%d").between("01-01", "01-26").any()
    assert rows["date"].dt.strftime("%m-%d").between("12-10", "12-31").any()
    assert not rows["date"].dt.strftime("%m-%d").between("01-27", "12-09").any()


def test_a_season_the_champion_never_saw_is_named(params: Params, seattle: pd.DataFrame) -> None:
    """Trained on January to April only: August has no reference, which is itself the news."""
    spring = seattle[seattle["date"] <= "2012-04-30"]
    rows, unseen = seasonal(params, spring, "2012-08-01", "2012-08-28")
    assert len(rows) == 0
    assert unseen is not None
    assert "has 0 rows from Jul 17 to Sep 12" in unseen and "not seen this season" in unseen
    few, unseen = seasonal(params, spring, "2012-05-06", "2012-06-02")  # margin reaches Apr 21
    assert len(few) == 10 and unseen is not None and "fewer than min_rows=14" in unseen


def test_the_training_reference_or_a_wide_margin_keeps_every_row(
    params: Params, seattle: pd.DataFrame
) -> None:
    for monitor in ({"reference": "training"}, {"season_margin_days": 170}):
        rows, unseen = seasonal(params, seattle, "2014-06-01", "2014-06-28", **monitor)
        assert unseen is None and len(rows) == len(seattle)


# -- the steps' sequence ------------------------------------------------------------------------


def step_log(calls: list[str]) -> monitoring.Steps:
    """The plain steps, each noting its name when called (the sequence is what is tested)."""

    def noted(name: str) -> Any:
        plain = getattr(monitoring.PLAIN, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return plain(*args, **kwargs)

        return call

    return monitoring.Steps(*(noted(f.name) for f in dataclasses.fields(monitoring.Steps)))


def test_a_window_that_cannot_be_judged_goes_straight_to_its_record(
    params: Params, settings: Settings
) -> None:
    window = monitoring.Window(
        dt.date(2015, 1, 31), dt.date(2015, 1, 4), (pd.Timestamp(0), pd.Timestamp(1)), None
    )
    window = dataclasses.replace(window, problem="no champion model to monitor")
    calls: list[str] = []
    steps = dataclasses.replace(step_log(calls), current_window=lambda *_: window)
    result = monitoring.monitor(params, settings, window.end, log=False, steps=steps)
    assert calls == ["record"]
    assert result.decision.action == "cannot_evaluate"
    assert result.decision.reason == "no champion model to monitor"
    assert result.out_dir is None and result.drift is None and result.performance is None
    assert result.to_dict()["as_of"] == "2015-01-31"


def test_an_estimate_of_performance_is_recorded_beside_the_realised() -> None:
    from driftloop import triggers
    from driftloop.drift import PerformanceCheck
    from driftloop.estimation import Estimate
    from driftloop.policy import RetrainDecision

    window = monitoring.Window(
        dt.date(2015, 1, 31), dt.date(2015, 1, 4), (pd.Timestamp(0), pd.Timestamp(1)), None
    )
    realised = PerformanceCheck("roc_auc", {"roc_auc": 0.7}, {}, 0, 28)
    decision = RetrainDecision("no_action", "nothing to judge yet")
    plain = monitoring.Findings(window, decision, performance=monitoring.Performance(realised))
    assert monitoring.to_result(plain).to_dict()["triggers"] is None
    estimate = Estimate(28, 0.75, 0.68, 10.0, 3.0, 4.0, 11.0, calibrated=True)
    assessed = triggers.Assessment(signals=(), estimate=estimate)
    estimated = dataclasses.replace(plain, performance=monitoring.Performance(realised, assessed))
    recorded = monitoring.to_result(estimated).to_dict()["triggers"]["estimate"]
    assert recorded["roc_auc"] == 0.68 and recorded["accuracy"] == 0.75 and recorded["n_rows"] == 28
