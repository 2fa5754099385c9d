"""The replay's baselines on tiny frames with known answers: base rate, persistence, the rows a
refit learns from, cadences, random triggers, the schedule of refits and the verdict."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop import baselines
from driftloop.baselines import History, Plan
from driftloop.config import Params, TrainParams, parse_params
from driftloop.training import predict_proba, threshold_of
from driftloop.windows import Window
from tests.helpers import REPO_ROOT

DAY = np.timedelta64(1, "D")
FIRST = dt.date(2013, 1, 31)


def seattle_params(**changes: Any) -> Params:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in changes.items():
        raw[section] = {**raw[section], **values}
    return parse_params(raw)


def weather(n: int, precipitation: np.ndarray, start: str = "2013-01-01") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "date": pd.date_range(start, periods=n, freq="D"),
            "precipitation": precipitation,
            "temp_max": np.linspace(5, 15, n),
            "temp_min": np.linspace(0, 8, n),
            "wind": np.full(n, 3.0),
        }
    )


def days(n: int, start: str = "2013-01-01") -> np.ndarray:
    return np.arange(np.datetime64(start), np.datetime64(start) + n * DAY).astype("datetime64[ns]")


def hand_history(y: list[float], known: list[Any], series: list[int] | None = None) -> History:
    """Rows on consecutive days with the given labels and the times their labels arrived."""
    times = days(len(y))
    arrived = np.array(
        [np.datetime64("NaT") if k is None else times[0] + np.timedelta64(k, "h") for k in known]
    ).astype("datetime64[ns]")
    return History(
        pd.DataFrame({"x": np.arange(len(y), dtype=float)}),
        np.array(y, dtype=float),
        times,
        arrived,
        np.array(series if series is not None else [0] * len(y)),
    )


# -- persistence -----------------------------------------------------------------------------------


def test_persistence_of_a_one_day_forecast_is_todays_outcome() -> None:
    rain = np.random.default_rng(3).choice([0.0, 0.0, 2.5], 60)
    hist = baselines.history(weather(60, rain), seattle_params())
    last = baselines.last_known_labels(hist)
    # row t is labelled by day t+1; at day t the last known label is row t-1's: rain today
    assert np.isnan(last[0])
    assert (last[1:] == (rain[1:] > 0)).all()
    assert hist.known[5] == hist.times[6]  # a forecast label arrives with the later row
    assert np.isnat(hist.known[-1]) and np.isnan(hist.y[-1])


def test_persistence_is_exactly_right_when_each_series_keeps_its_weather() -> None:
    wet = weather(30, np.full(30, 4.0)).assign(city="wet")
    dry = weather(30, np.zeros(30)).assign(city="dry")
    frame = pd.concat([wet, dry], ignore_index=True)
    params = seattle_params(
        data={
            "entity_columns": ["city"],
            "columns": {
                **seattle_params().model_dump()["data"]["columns"],
                "city": {"dtype": "str"},
            },
        }
    )
    hist = baselines.history(frame, params)
    last = baselines.last_known_labels(hist)
    labelled = ~np.isnan(hist.y) & ~np.isnan(last)
    assert labelled.sum() == 2 * 28  # the first row of each city has no past, the last no label
    assert (last[labelled] == hist.y[labelled]).all()
    plan = Plan(FIRST, [dt.date(2013, 1, 31)], [], Window(), 0)
    judged = baselines.judged_rows(hist, dt.date(2013, 1, 10), plan.calendar)
    scores = baselines.persistence_scores(last, hist.y, judged.rows)
    answer = baselines.persistence_decisions(last, scores, 0.5)
    got = baselines.metrics(judged, scores[judged.rows], 0.5, answer[judged.rows])
    assert got["roc_auc"] == 1.0 and got["accuracy"] == 1.0


def test_last_known_label_waits_for_labels_that_arrive_late() -> None:
    # labels of rows 0..3 arrive at hours 60, 36, never, 84 (rows are at hours 0, 24, 48, 72)
    hist = hand_history([1, 0, np.nan, 1], [60, 36, None, 84])
    last = baselines.last_known_labels(hist)
    assert np.isnan(last[0]) and np.isnan(last[1])  # nothing known by hour 24
    assert last[2] == 0.0  # at hour 48 only row 1's label (hour 36) is known
    assert last[3] == 0.0  # at hour 72 rows 0 and 1 are known: row 1 is the most recent row


def test_persistence_scores_are_smoothed_frequencies_with_the_base_rate_for_no_past() -> None:
    last = np.array([1, 1, 0, 0, 0, np.nan])
    y = np.array([1, 0, 0, 0, 1, 1], dtype=float)
    scores = baselines.persistence_scores(last, y, np.arange(5))
    assert scores.tolist() == pytest.approx([0.5, 0.5, 0.4, 0.4, 0.4, 0.4])
    assert baselines.persistence_decisions(last, scores, 0.5).tolist() == [1, 1, 0, 0, 0, 0]


# -- base rate -------------------------------------------------------------------------------------


def test_base_rate_is_the_share_of_positive_labels_and_scores_half_an_auc() -> None:
    assert baselines.base_rate(np.array([1, 0, 0, 1, np.nan, 0, 0, 0, 0])) == 0.25
    assert np.isnan(baselines.base_rate(np.array([np.nan])))
    hist = hand_history([1, 0, 0, 1, 0, 0, 0, 0], [24 * (i + 1) for i in range(8)])
    judged = baselines.judged_rows(hist, dt.date(2012, 12, 31), [dt.date(2013, 1, 8)])
    got = baselines.metrics(judged, np.full(8, 0.25))
    assert got["roc_auc"] == 0.5
    assert got["accuracy"] == 0.75  # a constant below 0.5 answers "no" on every row
    assert got["log_loss"] == pytest.approx(-(2 * np.log(0.25) + 6 * np.log(0.75)) / 8)


# -- what a refit learns from ----------------------------------------------------------------------


def test_training_rows_are_the_window_with_labels_known_less_the_holdout() -> None:
    hist = hand_history([i % 2 for i in range(60)], [24 * (i + 1) for i in range(60)])
    day = dt.date(2013, 2, 19)  # row 49's day: row 49's label arrives the next day
    assert baselines.training_rows(hist, day, None).tolist() == list(range(49))
    rolling = baselines.training_rows(hist, day, Window("rolling", 20))
    assert rolling.tolist() == list(range(30, 49))  # after Jan 30 (day 49 - 20)
    held = baselines.training_rows(hist, day, Window("rolling", 20), holdout_days=5)
    assert held.tolist() == list(range(30, 44))


def test_training_rows_of_a_seasonal_window_take_last_years_season() -> None:
    n = 400
    hist = History(
        pd.DataFrame({"x": np.zeros(n)}),
        np.zeros(n),
        days(n, "2012-01-01"),
        days(n, "2012-01-02"),
        np.zeros(n, dtype=int),
    )
    day = dt.date(2013, 1, 20)  # row 385
    rows = baselines.training_rows(hist, day, Window("seasonal", season_days=3, recent_days=5))
    picked = pd.to_datetime(hist.times[rows]).strftime("%m-%d %Y").tolist()
    assert picked == [f"01-{d} 2012" for d in range(17, 24)] + [
        f"01-{d} 2013" for d in range(16, 20)
    ]  # the last 5 days end on Jan 20, whose label is not known on Jan 20


# -- retrain days ----------------------------------------------------------------------------------

CALENDAR = [FIRST + dt.timedelta(days=7 * (i + 1)) for i in range(10)]


@pytest.mark.parametrize(
    ("every", "count"), [(7, 9), (14, 4), (10, 4), (28, 2), (63, 1), (70, 0), (91, 0)]
)
def test_cadence_retrains_on_the_first_step_due_never_on_the_last(every: int, count: int) -> None:
    picked = baselines.cadence_days(CALENDAR, FIRST, every)
    assert len(picked) == count
    assert CALENDAR[-1] not in picked
    gaps = np.diff([FIRST, *picked])
    assert all(g.days >= every for g in gaps)


def test_cadence_of_ten_days_on_weekly_steps() -> None:
    assert baselines.cadence_days(CALENDAR, FIRST, 10) == [CALENDAR[i] for i in (1, 3, 5, 7)]


def test_random_trigger_fires_exactly_n_times_per_seed_and_seeds_differ() -> None:
    draws = [baselines.random_days(CALENDAR, 4, seed) for seed in range(10)]
    for picked in draws:
        assert len(picked) == len(set(picked)) == 4
        assert picked == sorted(picked)
        assert set(picked) <= set(CALENDAR[:-1])
    assert len({tuple(p) for p in draws}) > 1
    assert baselines.random_days(CALENDAR, 4, 3) == draws[3]
    assert len(baselines.random_days(CALENDAR, 50, 0)) == len(CALENDAR) - 1


# -- refits and the whole comparison ---------------------------------------------------------------


def synthetic(n: int = 200, seed: int = 0) -> History:
    """A signal x that predicts the label, flipping sign after day 100 (a drift)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    sign = np.where(np.arange(n) < 100, 1.0, -1.0)
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * sign * x))).astype(float)
    times = days(n)
    return History(pd.DataFrame({"x": x}), y, times, times + DAY, np.zeros(n, dtype=int))


LR = TrainParams(model="logistic_regression")


def weekly_plan(**changes: Any) -> Plan:
    first = dt.date(2013, 2, 28)  # row 58
    calendar = [first + dt.timedelta(days=7 * (i + 1)) for i in range(19)]
    settings: dict[str, Any] = {
        "first": first,
        "calendar": calendar,
        "loop_retrains": [calendar[5], calendar[9]],
        "window": Window("rolling", 60),
        "holdout_days": 0,
        "cadences": [7, 28],
        "random_seeds": 3,
        "windows": [Window("rolling", 60), Window("growing")],
    }
    return Plan(**{**settings, **changes})


def test_a_refit_serves_the_steps_after_its_day_and_a_failed_fit_keeps_the_last_model() -> None:
    hist = synthetic()
    plan = weekly_plan()
    refits = baselines.Refits(hist, LR, [], plan)
    live, made = refits.schedule([plan.calendar[2]], Window("rolling", 60))
    first_key = (plan.first, None, "candidate")
    assert live[:3] == [first_key] * 3
    assert live[3:] == [(plan.calendar[2], Window("rolling", 60), "candidate")] * 16
    assert made == 1
    one_class = History(hist.X, np.zeros(len(hist)), hist.times, hist.known, hist.series)
    one_class.y[:40] = [0, 1] * 20  # only the first model's rows hold both classes
    refits = baselines.Refits(one_class, LR, [], plan)
    live, made = refits.schedule([plan.calendar[2]], Window("rolling", 20))
    assert made == 0 and set(live) == {first_key}
    assert refits.skipped == {(plan.calendar[2], Window("rolling", 20), "candidate")}


def test_compare_judges_every_strategy_on_the_same_rows() -> None:
    hist = synthetic()
    plan = weekly_plan()
    refits = baselines.Refits(hist, LR, [], plan)
    first_model = refits.fit((plan.first, None, "candidate"))
    loop_live = ["v1"] * len(plan.calendar)
    got = baselines.compare(
        hist, plan, LR, [], loop_live, {"v1": first_model}.__getitem__, {"retrains": 2}
    )
    assert list(got) == [
        "drift_triggered",
        "static",
        "base_rate",
        "persistence",
        "reference",
        "every_7d",
        "every_28d",
        "random",
        "window_rolling",
        "window_growing",
    ]
    assert {r["n_predictions"] for r in got.values()} == {19 * 7}  # the days of the 19 steps
    assert got["every_7d"]["retrains"] == 18 and got["every_28d"]["retrains"] == 4
    assert got["reference"]["retrains"] == 2
    assert got["random"]["retrains"] == 2 and len(got["random"]["seeds"]) == 3
    assert got["random"]["roc_auc_p10"] <= got["random"]["roc_auc"] <= got["random"]["roc_auc_p90"]
    # the loop never retrained: it is its first model, and the first direct fit is that model
    assert got["static"]["roc_auc"] == got["drift_triggered"]["roc_auc"]
    # after the drift, refitting every week recovers; the static model stays upside down
    assert got["every_7d"]["roc_auc"] > got["static"]["roc_auc"] + 0.1
    assert got["window_rolling"]["roc_auc"] == got["every_28d"]["roc_auc"]
    assert got["base_rate"]["roc_auc"] == 0.5
    verdict = baselines.verdict(got)
    assert len(verdict["sentences"]) == 7 + 2  # 7 baselines, best cadence, windows
    assert verdict["beaten"]["every_7d"] is False


def test_fits_made_two_at_a_time_are_the_same_models() -> None:
    hist = synthetic()
    plan = weekly_plan()
    serial, pooled = (baselines.Refits(hist, LR, [], plan) for _ in range(2))
    keys = [
        k
        for s in baselines.refit_schedules(plan, plan.loop_retrains).values()
        for _, k in serial.keys(*s)
    ]
    serial.prefit(keys, workers=1)
    pooled.prefit(keys, workers=2)
    assert set(serial.models) == set(pooled.models) == set(keys)
    X = hist.X.iloc[:50]
    for key in keys:  # the loop's candidates (selection, calibration, threshold) or the reference
        one, two = serial.models[key], pooled.models[key]
        assert (predict_proba(one, X) == predict_proba(two, X)).all()
        assert threshold_of(one, 0.5) == threshold_of(two, 0.5)


# -- the verdict -----------------------------------------------------------------------------------


def result(kind: str, auc: float, loss: float, retrains: int, **extra: Any) -> dict[str, Any]:
    label = extra.pop("label", kind)
    core = {"label": label, "kind": kind, "roc_auc": auc, "log_loss": loss, "retrains": retrains}
    return {**core, **extra}


def test_the_verdict_says_for_each_baseline_whether_the_loop_beat_it() -> None:
    comparison = {
        "drift_triggered": result("loop", 0.72, 0.55, 6),
        "base_rate": result("no_model", 0.5, 0.68, 0, label="base rate"),
        "persistence": result("no_model", 0.74, 0.60, 0, label="persistence"),
        "every_7d": result("cadence", 0.725, 0.54, 40, label="every 7 days"),
        "every_28d": result("cadence", 0.70, 0.57, 10, label="every 28 days"),
        "random": result(
            "random", 0.70, 0.57, 6, label="random", roc_auc_sd=0.01, roc_auc_p90=0.715
        ),
        "window_growing": result("window", 0.71, 0.56, 10, window="growing"),
    }
    got = baselines.verdict(comparison)
    assert got["beaten"] == {
        "base_rate": True,
        "persistence": False,
        "every_7d": False,
        "every_28d": True,
        "random": True,
    }
    text = got["sentences"]
    assert text[0] == (
        "base rate: the loop beat it: ROC AUC 0.720 vs 0.500 (+0.220); "
        "log loss 0.550 vs 0.680 (-0.130)."
    )
    assert text[1].startswith("persistence: the loop beat it on log loss, not on ROC AUC")
    assert text[2].startswith("every 7 days (40 retrains): the loop did not beat it")
    assert "above that percentile (+0.005): beaten" in text[4]
    assert "Best fixed cadence: every 7 days" in text[5] and "target met" in text[5]
    assert "growing 0.710 / 0.560" in text[6]
    assert "beat 3 of 5 baselines" in got["headline"]


def test_the_verdict_of_a_loop_below_the_best_cadence_says_by_how_much() -> None:
    comparison = {
        "drift_triggered": result("loop", 0.70, 0.55, 30),
        "every_7d": result("cadence", 0.72, 0.54, 40, label="every 7 days"),
    }
    text = baselines.verdict(comparison)["sentences"][-1]
    assert "below its ROC AUC - 0.005 (-0.015)" in text
    assert "more than half of its 40" in text and "target missed" in text


def test_metrics_with_undefined_auc_are_not_compared() -> None:
    comparison = {
        "drift_triggered": result("loop", float("nan"), 0.5, 1),
        "base_rate": result("no_model", 0.5, 0.6, 0, label="base rate"),
    }
    got = baselines.verdict(comparison)
    assert got["beaten"]["base_rate"] is False
    assert "ROC AUC not defined" in got["sentences"][0]
    assert "not defined" in got["headline"]


def test_cadences_made_identical_by_coarse_steps_are_kept_once_and_say_what_they_were() -> None:
    first = dt.date(2020, 1, 1)
    calendar = [first + dt.timedelta(days=21 * k) for k in range(1, 20)]  # 21-day steps
    assert baselines.distinct_cadences(calendar, first, [7, 14, 28, 56, 91]) == [7, 28, 56, 91]
    assert baselines.cadence_label(calendar, first, 7) == (
        "every 7 days (at the replay's steps: every 21)"
    )
    assert baselines.cadence_label(calendar, first, 28) == (
        "every 28 days (at the replay's steps: every 42)"
    )
    weekly = [first + dt.timedelta(days=7 * k) for k in range(1, 60)]
    assert baselines.distinct_cadences(weekly, first, [7, 14, 28]) == [7, 14, 28]
    assert baselines.cadence_label(weekly, first, 14) == "every 14 days"
    short = weekly[:3]  # too short for 28 and 56 days to retrain: both kept, neither a duplicate
    assert baselines.distinct_cadences(short, first, [7, 28, 56]) == [7, 28, 56]
