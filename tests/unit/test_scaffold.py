"""`driftloop init`'s inference on tiny inline frames: dtypes, ranges, allowed values, each
reason a column is refused, the target rules, the time grain, the replay plan and the gate's
tolerances replayed on the data, and a rendered file that loads back as proposed."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop import scaffold
from driftloop.config import SourceSpec, load_params
from driftloop.errors import ConfigError, IngestError
from driftloop.replay import step_calendar

DAYS = pd.date_range("2024-01-01", periods=120, freq="D")


def csv(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text))


# -- dtypes, ranges, allowed values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "dtype"),
    [
        ("x\n1\n2\n3\n", "int"),
        ("x\n1\n\n3\n", "float"),  # an int column with a null reads as float
        ("x\n1.5\n2\n3\n", "float"),
        ("x\ntrue\nfalse\ntrue\n", "bool"),
        ("x\nTrue\n\nFalse\n", "bool"),  # with a null: an object column of bools
        ("x\na\nb\n7\n", "str"),
        ("x\n\n\n\n", None),  # all null: no dtype to declare
    ],
)
def test_the_dtype_is_what_the_reader_makes_of_a_column(text: str, dtype: str | None) -> None:
    frame = csv(text.replace("x\n", "x,y\n").replace("\n", ",0\n").replace("x,y,0", "x,y"))
    assert scaffold.column_facts(frame["x"]).dtype == dtype


def test_categories_and_times_have_their_own_dtypes() -> None:
    assert scaffold.column_facts(pd.Series(["a", "b"], dtype="category")).dtype == "category"
    assert scaffold.column_facts(pd.Series(DAYS[:3])).dtype is None


@pytest.mark.parametrize(
    ("low", "high", "integer", "expected"),
    [
        (2.3, 125.1, False, (0.0, 190.0)),  # non-negative: floored at 0; rounded outwards
        (-40.0, -10.0, False, (-55.0, 0.0)),  # non-positive: capped at 0
        (-5.0, 15.0, False, (-15.0, 25.0)),  # half the width on each side
        (0.012, 0.018, False, (0.009, 0.021)),
        (1, 5, True, (0, 7)),
        (1000, 1010, True, (995, 1015)),
    ],
)
def test_a_range_is_widened_by_half_its_width(
    low: float, high: float, integer: bool, expected: tuple[float, float]
) -> None:
    got = scaffold.padded_range(low, high, integer)
    assert got == expected
    assert all(isinstance(v, int if integer else float) for v in got)


def test_allowed_values_for_a_small_set_already_complete_in_the_first_half() -> None:
    closed = pd.Series(["web", "app", "phone", None] * 5 + ["app", "web"])
    assert scaffold.closed_values(closed) == ["app", "phone", "web"]
    grew = pd.Series(["web", "app"] * 5 + ["new shop"] * 3)
    assert scaffold.closed_values(grew) is None  # a value first seen in the second half
    many = pd.Series([f"v{i % 21}" for i in range(84)])
    assert scaffold.closed_values(many) is None  # more than ALLOWED_MAX values


# -- refusals -------------------------------------------------------------------------------------


def why(values: list[object] | pd.Series, y: list[float] | None = None) -> str | None:
    series = pd.Series(values)
    times = pd.Series(pd.date_range("2024-01-01 08:00", periods=len(series), freq="37min"))
    labels = pd.Series(y, dtype=float) if y is not None else None
    return scaffold.refusal("x", series, scaffold.column_facts(series), times, labels)


def test_usable_columns_are_not_refused() -> None:
    rng = np.random.default_rng(0)
    assert why(rng.normal(size=200).tolist()) is None
    assert why(rng.choice(["a", "b", "c"], 200).tolist()) is None
    assert why(rng.integers(0, 5, 200).tolist()) is None
    assert why([True, False] * 100) is None


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([None] * 50, "all null"),
        (["EUR"] * 50, "constant (always 'EUR')"),
        ([7] * 50, "constant (always 7)"),
        ([f"order-{i}" for i in range(50)], "id-like: 50 distinct values in 50 rows"),
        ([f"note {i % 30}" for i in range(50)], "too many values for a category (30 distinct"),
        (
            [f"2024-02-{1 + i % 9:02d} 10:00" for i in range(50)],
            "holds times as text",
        ),
        (list(pd.date_range("2024-01-01", periods=50)), "a second time column"),
        (
            list(pd.date_range("2024-01-01 08:00", periods=50, freq="37min").hour),
            "the timestamp's hour (in 100% of rows)",
        ),
        (  # the day of the month in a time zone 5 hours behind the timestamp's
            list(
                (
                    pd.date_range("2024-01-01 08:00", periods=50, freq="37min") - pd.Timedelta("5h")
                ).day
            ),
            "the timestamp's day (in 8",
        ),
        (list(np.arange(50) * 3.5 + 10), "follows the time (rank correlation +1.000)"),
        (list(range(5000, 5050))[::-1], "follows the time (rank correlation -1.000)"),
        (list(np.random.default_rng(1).permutation(50)), "id-like: 50 distinct integers"),
    ],
)
def test_each_reason_to_refuse_a_column(values: list[object], reason: str) -> None:
    got = why(values)
    assert got is not None and got.startswith(reason), got


def test_a_part_of_the_time_that_never_changes_is_no_calendar_match() -> None:
    """Daily timestamps all sit at hour 0: a mostly-zero cost column is not the hour."""
    days = pd.Series(pd.date_range("2024-01-01", periods=200, freq="D"))
    cost = pd.Series(np.where(np.arange(200) % 25 == 0, 1200, 0))
    assert scaffold.refusal("cost", cost, scaffold.column_facts(cost), days, None) is None


def test_a_column_that_separates_the_label_well_is_kept_with_a_warning() -> None:
    rng = np.random.default_rng(5)
    y = pd.Series((rng.random(400) < 0.3).astype(float))
    repair = pd.Series(np.where((y == 1) & (rng.random(400) < 0.9), rng.uniform(100, 900, 400), 0))
    facts = scaffold.column_facts(repair)
    assert scaffold.suspected_leak(repair, facts, y) is not None
    noise = pd.Series(rng.normal(0, 1, 400))
    assert scaffold.suspected_leak(noise, scaffold.column_facts(noise), y) is None


def test_a_near_copy_of_the_target_is_refused() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random(200) < 0.3).astype(float)
    refund = np.where(y == 1, rng.uniform(5, 50, 200), 0.0)  # a refund amount, known only after
    assert (why(refund.tolist(), y.tolist()) or "").startswith("a near-copy of the target")
    flag = np.where(y == 1, "refunded", "kept")
    assert (why(flag.tolist(), y.tolist()) or "").startswith("a near-copy of the target")
    unlabelled = [*y[:100].tolist(), *[np.nan] * 100]
    noisy = np.where(rng.random(200) < 0.8, y, 1 - y) + rng.normal(0, 0.1, 200)
    assert why(noisy.tolist(), unlabelled) is None  # informative, not a copy


# -- the target -----------------------------------------------------------------------------------


def test_a_binary_target_is_taken_as_it_is() -> None:
    ints = scaffold.binary_target(pd.Series([0, 1, 1, 0]), "returned", None, None)
    assert ints.spec == {"dtype": "int", "allowed": [0, 1], "required": False}
    assert ints.params == {"name": "returned", "column": "returned"}
    floats = scaffold.binary_target(pd.Series([0.0, None, 1.0]), "Late?", None, None)
    assert floats.spec == {"dtype": "float", "min": 0.0, "max": 1.0, "required": False}
    assert floats.params["name"] == "late"
    flags = scaffold.binary_target(pd.Series([True, None, False], dtype=object), "f", None, None)
    assert flags.spec["dtype"] == "bool" and flags.y.tolist()[::2] == [1.0, 0.0]


def test_a_numeric_target_needs_a_threshold() -> None:
    delay = pd.Series([-5.0, 3.0, 20.0, 45.0, None])
    with pytest.raises(ConfigError, match=r"numeric \(4 values from -5 to 45\).*--above X"):
        scaffold.binary_target(delay, "arr_delay", None, None)
    late = scaffold.binary_target(delay, "arr_delay", None, 15)
    assert late.params == {"name": "arr_delay", "column": "arr_delay", "at_least": 15}
    assert late.y.tolist()[:4] == [0.0, 0.0, 1.0, 1.0] and np.isnan(late.y.iloc[4])
    assert late.spec == {"dtype": "float", "min": -30.0, "max": 70.0, "required": False}
    with pytest.raises(ConfigError, match="every row gets the same label"):
        scaffold.binary_target(delay, "arr_delay", 100, None)


def test_a_text_target_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"two values \('no', 'yes'\).*write the positive"):
        scaffold.binary_target(pd.Series(["yes", "no", "yes"]), "churn", None, None)
    with pytest.raises(ConfigError, match="text with 3 values"):
        scaffold.binary_target(pd.Series(["a", "b", "c"]), "kind", None, None)


# -- time -----------------------------------------------------------------------------------------


def test_the_grain_of_the_timestamps() -> None:
    assert scaffold.grain(pd.Series(DAYS)) == "D"
    hours = pd.Series(pd.date_range("2024-01-01", periods=100, freq="h")).repeat(3)
    assert scaffold.grain(hours) == "h"  # several rows per hour (three entities)
    quarter = pd.Series(pd.date_range("2024-01-01", periods=100, freq="15min"))
    assert scaffold.grain(quarter) == "15min"
    events = pd.Series(pd.date_range("2024-01-01", periods=100, freq="37s"))
    assert scaffold.grain(events) is None


def test_calendar_features_that_fit_the_span_and_grain() -> None:
    events = pd.Series(pd.date_range("2024-01-01 08:00", periods=500, freq="97min"))
    assert scaffold.calendar_features(events, None, 33) == ["hour", "weekday"]
    assert scaffold.calendar_features(pd.Series(DAYS), "D", 120) == ["weekday"]
    years = pd.Series(pd.date_range("2020-01-01", periods=800, freq="D"))
    assert scaffold.calendar_features(years, "D", 800) == ["weekday", "day_of_year"]
    months = pd.Series(pd.date_range("2020-01-01", periods=30, freq="MS"))
    assert scaffold.calendar_features(months, "D", 880) == ["day_of_year"]


# -- the replay plan and the gate's tolerances ----------------------------------------------------


def labelled(days: int = 120, per_day: int = 10, delay_days: float = 0.0) -> scaffold.Labelled:
    times = pd.Series(
        pd.date_range("2024-01-01", periods=days * per_day, freq=f"{1440 // per_day}min")
    )
    y = pd.Series((np.arange(len(times)) % 3 == 0).astype(float))
    return scaffold.Labelled(times, y, times + pd.Timedelta(days=delay_days))


def test_the_replay_starts_after_a_quarter_of_the_span_and_ends_on_the_last_day() -> None:
    plan = scaffold.plan_replay(labelled(), 10)
    assert plan.trainable and plan.share == 0.25
    assert plan.initial_until == dt.date(2024, 1, 30)  # 119 days x 0.25 after Jan 1
    assert plan.end == dt.date(2024, 4, 29)
    assert plan.step_days == 7 and plan.steps[0] == dt.date(2024, 2, 6)
    assert plan.steps[-1] == plan.end and len(plan.steps) == 13
    assert plan.holdout_days == 6  # a fifth of the first model's 30 days


def test_late_labels_push_the_first_model_later() -> None:
    late = labelled(days=90, per_day=10, delay_days=20)
    plan = scaffold.plan_replay(late, 10)
    assert plan.trainable and plan.share == 0.5  # before that, too few labels had arrived
    times, _ = late.as_of(plan.initial_until)
    assert len(times) >= scaffold.MIN_FIT_ROWS + scaffold.MIN_HOLDOUT_ROWS
    assert not scaffold.plan_replay(labelled(days=30, per_day=4, delay_days=20), 4).trainable


def test_sparse_data_takes_longer_steps() -> None:
    assert scaffold.plan_replay(labelled(days=600, per_day=1), 1).step_days == 28
    assert scaffold.plan_replay(labelled(days=300, per_day=2), 2).step_days == 14
    short = scaffold.plan_replay(labelled(days=120, per_day=2), 2)
    assert short.step_days == 12 and len(short.steps) == 4  # at least four steps


def test_gate_tolerances_are_the_worst_the_replayed_batches_meet() -> None:
    n = 100
    frame = pd.DataFrame(
        {
            "shop": ["a", "b"] * 40 + ["a", "b", "c", "c", "c"] * 4,
            "amount": np.r_[np.linspace(10, 20, 80), np.full(20, 22.0)],
            "note": [None if i % 10 == 0 else "x" for i in range(n)],
        }
    )
    batches = [(0, 60, "first"), (60, 80, "step 1"), (80, 100, "step 2")]
    found = scaffold.gate_tolerances(frame, batches, ["note"], ["shop"], ["amount"], 60)
    assert found.nulls["note"] == (0.1, "the whole data (run)")
    assert found.unknown["shop"] == (0.6, "step 2")  # c: 12 of 20 rows, unseen before
    need, where = found.margin["amount"]
    assert where == "step 2" and need == pytest.approx((22.0 - 19.87) / 9.77, abs=0.02)


# -- the whole proposal ---------------------------------------------------------------------------


def table(n: int = 600, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-01-01 08:00", periods=n, freq="3h") + pd.to_timedelta(
        rng.integers(0, 3600, n), "s"
    )
    amount = rng.lognormal(3, 0.5, n).round(2)
    shop = rng.choice(["Café Zürich", "#1 Store", "50% Off"], n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(amount - 25) / 10))).astype(int)
    return pd.DataFrame(
        {
            "order id": [f"o-{i}" for i in range(n)],
            "placed at": times,
            "amount (€)": amount,
            "shop: name": shop,
            "tip": np.where(rng.random(n) < 0.3, np.nan, rng.uniform(0, 5, n)),
            "currency": "EUR",
            "returned?": y,
        }
    )


def request(**changes: object) -> scaffold.InitRequest:
    base: dict[str, object] = {
        "source": SourceSpec(kind="file", path="exports/orders.csv"),
        "time": "placed at",
        "id": "order id",
        "target": "returned?",
    }
    return scaffold.InitRequest(**{**base, **changes})  # type: ignore[arg-type]


NOW = pd.Timestamp("2025-01-01")


def test_a_proposal_for_an_inline_table(tmp_path: object) -> None:
    proposal = scaffold.propose(table(), request(), now=NOW)
    params = proposal.params
    assert params["train"]["model_name"] == "orders"
    # a family chosen by time-series CV; a small table retrains on all its history
    assert set(params["train"]["candidates"]) == {"logistic", "boosting"}
    assert params["retrain"]["window"] == "growing" and params["retrain"]["window_days"] is None
    assert params["data"]["raw_dir"] == "data/orders/raw"
    assert params["features"] == {
        "numerical": ["amount (€)", "tip"],
        "categorical": ["shop: name"],
        "lags": {"periods": []},
        "rolling": {"windows": []},
        "calendar": ["hour", "weekday"],
    }
    columns = params["data"]["columns"]
    assert columns["tip"]["required"] is False  # ~30 % null
    assert columns["shop: name"] == {
        "dtype": "str",
        "allowed": ["#1 Store", "50% Off", "Café Zürich"],
    }
    assert columns["returned?"] == {"dtype": "int", "allowed": [0, 1], "required": False}
    assert "currency" not in columns and "placed at" not in columns
    summary = proposal.summary()
    assert summary["refused"] == {
        "placed at": "the timestamp: event time (features.calendar derives from it)",
        "order id": "the id: a row key",
        "currency": "constant (always 'EUR')",
        "returned?": "the target",
    }
    assert params["evaluation"]["segments"] == ["shop: name"]
    times = table()["placed at"]
    quarter = times.min() + 0.25 * (times.max() - times.min())
    assert params["replay"]["initial_until"] == quarter.date().isoformat() == "2024-01-20"
    assert params["replay"]["end"] == "2024-03-16"
    assert params["data"]["frequency"] is None


def test_the_rendered_file_loads_back_with_its_odd_names(tmp_path: pytest.TempPathFactory) -> None:
    proposal = scaffold.propose(table(), request(), now=NOW)
    text = scaffold.render(proposal)
    path = tmp_path / "orders.yaml"  # type: ignore[operator]
    path.write_text(text)
    assert yaml.safe_load(text) == proposal.params
    loaded = load_params(path)
    assert loaded.data.columns["amount (€)"].max is not None
    assert '"shop: name": {dtype: str, allowed: ["#1 Store", "50% Off", "Café Zürich"]}' in text
    assert '# "currency": {dtype: str, allowed: ["EUR"]}  -- constant' in text
    assert all(len(line) <= 100 for line in text.splitlines() if line.lstrip().startswith("#"))


def test_labels_of_their_own_are_joined_on_the_id() -> None:
    rows = table()
    labels = pd.DataFrame(
        {
            "order id": rows["order id"],
            "returned?": rows["returned?"],
            "known": rows["placed at"] + pd.Timedelta("3D"),
        }
    ).iloc[:500]
    spec = SourceSpec(kind="folder", path="label-drops/*.csv")
    proposal = scaffold.propose(
        rows.drop(columns="returned?"),
        request(labels=spec, label_time="known"),
        labels,
        now=NOW,
    )
    assert proposal.params["labels"] == {
        "join_column": "order id",
        "time_column": "known",
        "source": "label-drops/*.csv",
    }
    assert proposal.facts["labelled_rows"] == 500
    early = labels.assign(known=labels["known"] - pd.Timedelta("5D"))
    with pytest.raises(IngestError, match="500 labels are known before their row's time"):
        scaffold.propose(rows, request(labels=spec, label_time="known"), early, now=NOW)
    stranger = pd.concat([labels, labels.iloc[:1].assign(**{"order id": "nobody"})])
    with pytest.raises(IngestError, match=r"1 labels for ids not in the data .* 'nobody'"):
        scaffold.propose(rows, request(labels=spec, label_time="known"), stranger, now=NOW)


def test_keys_that_cannot_identify_a_row_are_refused() -> None:
    rows = table()
    doubled = pd.concat([rows, rows.iloc[:2]])
    with pytest.raises(IngestError, match="'order id' is not unique: 2 repeated values"):
        scaffold.propose(doubled, request(), now=NOW)
    same_time = rows.assign(**{"placed at": rows["placed at"].dt.floor("D")})
    with pytest.raises(ConfigError, match=r"rows share a timestamp.*give --id"):
        scaffold.propose(same_time, request(id=None), now=NOW)
    with pytest.raises(ConfigError, match=r"--time 'when' is not a column \(columns: 'order id'"):
        scaffold.propose(rows, request(time="when"), now=NOW)


def test_the_model_name_comes_from_the_source() -> None:
    assert scaffold.model_name(request()) == "orders"
    drops = SourceSpec(kind="folder", path="data/Daily Drops/*.parquet")
    assert scaffold.model_name(request(source=drops)) == "daily_drops"
    sql = SourceSpec(kind="sql", url_env="DB", table="sales.2024_Événements")
    assert scaffold.model_name(request(source=sql)) == "m_2024_evenements"
    assert scaffold.model_name(request(name="Late Flights!")) == "late_flights"


def test_a_feature_too_sparse_to_monitor_is_refused_and_bounds_min_rows() -> None:
    rows = table()
    rng = np.random.default_rng(4)
    rows["gust"] = np.where(rng.random(len(rows)) < 0.8, np.nan, rng.uniform(15, 60, len(rows)))
    rows["hail"] = np.where(rng.random(len(rows)) < 0.95, np.nan, rng.uniform(0, 3, len(rows)))
    proposal = scaffold.propose(rows, request(), now=NOW)
    monitor = proposal.params["monitor"]
    assert monitor["window_days"] == 28  # 8 rows a day: the shortest window holding 200
    reason = proposal.summary()["refused"]["hail"]
    assert reason.startswith("mostly null (95%): a 28-day monitoring window holds a median of")
    assert "gust" in proposal.params["features"]["numerical"]
    present = rows.sort_values("placed at")["gust"].notna().to_numpy()
    times = rows["placed at"].sort_values().reset_index(drop=True)
    plan = proposal.params["replay"]
    first, end = (dt.date.fromisoformat(plan[k]) for k in ("initial_until", "end"))
    steps = step_calendar(first, end, plan["step_days"])
    counts = scaffold.window_counts(times, present, steps, 28)
    assert monitor["min_rows"] == int(np.quantile(counts, 0.1)) < 0.25 * 224
    assert "'gust' has at least" in proposal.notes["monitor.min_rows"]


def test_window_counts() -> None:
    times = pd.Series(pd.date_range("2024-01-01", periods=30, freq="D"))
    present = np.arange(30) % 2 == 0
    days = [dt.date(2024, 1, 7), dt.date(2024, 1, 30)]
    assert scaffold.window_counts(times, present, days, 7).tolist() == [4, 3]
    assert scaffold.window_counts(times, present, [], 7).tolist() == []
