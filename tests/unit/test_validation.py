"""The Great Expectations gate on tiny real batches (real GE, no mocks)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.config import Params, load_params, parse_params
from driftloop.sources import load_seattle, read_batch_file
from driftloop.validation import (
    ValidationReport,
    build_history,
    quarantine,
    validate_batch,
    without_history,
)

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
GARBLED = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff\xfe" * 8
NOW = dt.datetime(2016, 1, 1)  # the gate's clock: every Seattle date is in the past


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(PARAMS_FILE)


@pytest.fixture(scope="module")
def seattle_head() -> pd.DataFrame:
    return load_seattle().head(10)


@pytest.fixture
def valid(seattle_head: pd.DataFrame) -> pd.DataFrame:
    return seattle_head.copy()


def failed_labels(report: ValidationReport) -> list[str]:
    return [o.label for o in report.failures]


def test_importing_the_module_does_not_import_great_expectations() -> None:
    code = "import sys, driftloop.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_valid_batch_passes(valid: pd.DataFrame, params: Params) -> None:
    report = validate_batch(valid, params)
    assert report.success, report.summary()
    assert report.failed == 0 and report.failures == ()
    assert report.evaluated == len(report.outcomes) > 20
    assert report.summary() == f"all {report.evaluated} expectations passed"


def _drop_wind(f: pd.DataFrame) -> pd.DataFrame:
    return f.drop(columns="wind")


def _rename_temp_max(f: pd.DataFrame) -> pd.DataFrame:
    return f.rename(columns={"temp_max": "tmax"})


def _string_in_wind(f: pd.DataFrame) -> pd.DataFrame:
    f["wind"] = f["wind"].astype(object)
    f.loc[2, "wind"] = "n/a"
    return f


def _all_nan_temp_min(f: pd.DataFrame) -> pd.DataFrame:
    f["temp_min"] = np.nan
    return f


def _temp_max_out_of_range(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[3, "temp_max"] = 99.0
    return f


def _negative_precipitation(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[0, "precipitation"] = -1.0
    return f


def _duplicate_date(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[4, "date"] = f.loc[3, "date"]
    return f


def _unparseable_date(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[5, "date"] = pd.NaT
    return f


def _no_date_column(f: pd.DataFrame) -> pd.DataFrame:
    return f.drop(columns="date")


def _string_dates(f: pd.DataFrame) -> pd.DataFrame:
    f["date"] = f["date"].dt.strftime("%Y-%m-%d")
    return f


def _numeric_weather(f: pd.DataFrame) -> pd.DataFrame:
    f["weather"] = 1.5
    return f


EXISTS = "expect_column_to_exist"
TYPE = "expect_column_values_to_be_in_type_list"
BETWEEN = "expect_column_values_to_be_between"
NOT_NULL = "expect_column_values_to_not_be_null"
BROKEN = [
    pytest.param(_drop_wind, EXISTS, "wind", id="missing column"),
    pytest.param(_rename_temp_max, EXISTS, "temp_max", id="renamed column"),
    pytest.param(_string_in_wind, TYPE, "wind", id="string in float column"),
    pytest.param(_all_nan_temp_min, NOT_NULL, "temp_min", id="all-NaN column"),
    pytest.param(_temp_max_out_of_range, BETWEEN, "temp_max", id="above max"),
    pytest.param(_negative_precipitation, BETWEEN, "precipitation", id="below min"),
    pytest.param(
        _duplicate_date, "expect_column_values_to_be_unique", "date", id="duplicate dates"
    ),
    pytest.param(_unparseable_date, NOT_NULL, "date", id="unparseable date"),
    pytest.param(_no_date_column, EXISTS, "date", id="no date column"),
    pytest.param(_string_dates, TYPE, "date", id="unparsed date strings"),
    pytest.param(_numeric_weather, TYPE, "weather", id="optional column of wrong type"),
]


@pytest.mark.parametrize(("mutate", "expectation", "column"), BROKEN)
def test_broken_batch_fails_naming_expectation_and_column(
    valid: pd.DataFrame,
    params: Params,
    mutate: Callable[[pd.DataFrame], pd.DataFrame],
    expectation: str,
    column: str,
) -> None:
    report = validate_batch(mutate(valid), params)
    label = f"{expectation}({column})"
    assert not report.success
    assert label in failed_labels(report)
    assert label in report.summary()
    assert {o.column for o in report.failures} == {column}  # nothing else is blamed
    assert "\n" not in report.summary()


def test_missing_column_summary_names_the_cause_once(valid: pd.DataFrame, params: Params) -> None:
    summary = validate_batch(valid.drop(columns="wind"), params).summary()
    assert summary.startswith("4 of ")
    assert "expect_column_to_exist(wind) (+3 more on missing columns)" in summary


def test_optional_column_is_checked_only_when_present(valid: pd.DataFrame, params: Params) -> None:
    report = validate_batch(valid.drop(columns="weather"), params)
    assert report.success, report.summary()
    assert "weather" not in {o.column for o in report.outcomes}


def test_whole_numbers_in_float_columns_pass(
    valid: pd.DataFrame, params: Params, tmp_path: Path
) -> None:
    valid["wind"] = valid["wind"].round().astype(int)
    path = tmp_path / "batch.csv"
    valid.to_csv(path, index=False)
    raw = read_batch_file(path, params.data)
    assert raw.frame["wind"].dtype == "int64"
    report = validate_batch(raw.frame, params)
    assert report.success, report.summary()


def _params_with(**validation: float) -> Params:
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["validation"].update(validation)
    return parse_params(raw)


def _params_with_data(**data: str) -> Params:
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    raw["data"].update(data)
    return parse_params(raw)


@pytest.mark.parametrize(
    ("validation", "success"),
    [({"min_rows": 11}, False), ({"max_rows": 9}, False), ({"min_rows": 10, "max_rows": 10}, True)],
)
def test_row_count_bounds_come_from_params(
    valid: pd.DataFrame, validation: dict[str, float], success: bool
) -> None:
    report = validate_batch(valid, _params_with(**validation))
    assert report.success is success
    if not success:
        assert failed_labels(report) == ["expect_table_row_count_to_be_between"]
        assert "expect_table_row_count_to_be_between" in report.summary()


def test_max_null_share_allows_some_nulls(valid: pd.DataFrame) -> None:
    valid.loc[0, "wind"] = np.nan  # 10% nulls
    assert validate_batch(valid, _params_with(max_null_share=0.1)).success
    report = validate_batch(valid, _params_with(max_null_share=0.05))
    assert failed_labels(report) == ["expect_column_values_to_not_be_null(wind)"]


def seattle_days(first: str, last: str) -> pd.DataFrame:
    frame = load_seattle()
    return frame[(frame["date"] >= first) & (frame["date"] <= last)].reset_index(drop=True)


CONFLICT = "expect_column_values_to_be_null(accepted_with_other_values:date)"


def changed(frame: pd.DataFrame) -> pd.DataFrame:
    """The same days with other values (the wind measured again)."""
    return frame.assign(wind=frame["wind"] + 1.0)


@pytest.mark.parametrize(
    ("accepted", "success"),
    [
        (("2012-01-11", "2012-01-20"), True),  # late data: older than accepted, new dates
        (("2012-01-10", "2012-01-12"), False),  # the last day was accepted with other values
        (("2012-01-06", "2012-01-15"), False),  # half the batch overlaps
        (("2012-01-01", "2012-01-10"), False),  # the same days, every one changed
    ],
)
def test_only_keys_accepted_with_other_values_are_refused(
    valid: pd.DataFrame, params: Params, accepted: tuple[str, str], success: bool
) -> None:
    history = build_history(changed(seattle_days(*accepted)), params)
    report = validate_batch(valid, params, history=history, now=NOW)
    assert report.success is success, report.summary()
    if not success:
        assert failed_labels(report) == [CONFLICT]
        assert CONFLICT in report.summary()


def test_exact_repeats_of_accepted_rows_are_not_conflicts(
    valid: pd.DataFrame, params: Params
) -> None:
    """An identical row is a repeat (the ingest skips it), whether read as int or float."""
    history = build_history(seattle_days("2012-01-01", "2012-01-10"), params)
    assert validate_batch(valid, params, history=history, now=NOW).success
    repeat, conflict = history.classify(valid.astype({"wind": object}), params)
    assert repeat.all() and not conflict.any()


def test_the_refused_keys_are_named(valid: pd.DataFrame, params: Params) -> None:
    history = build_history(changed(seattle_days("2012-01-09", "2012-01-31")), params)
    (failure,) = validate_batch(valid, params, history=history, now=NOW).failures
    assert failure.observed == ["2012-01-09", "2012-01-10"]
    assert failure.unexpected_percent == 20.0


def test_new_rows_older_than_the_declared_lateness_are_refused(valid: pd.DataFrame) -> None:
    late = _params_with_data(lateness="5D")
    history = build_history(seattle_days("2012-01-11", "2012-01-20"), late)  # newest: Jan 20
    report = validate_batch(valid, late, history=history, now=NOW)  # Jan 1-10: before Jan 15
    (failure,) = report.failures
    assert failure.column == "older_than_lateness_5D:date"
    assert failure.observed[0] == "2012-01-01"
    assert failure.unexpected_percent == 100.0
    recent = _params_with_data(lateness="20D")
    assert validate_batch(valid, recent, history=history, now=NOW).success


def test_an_unsorted_batch_is_accepted(valid: pd.DataFrame, params: Params) -> None:
    shuffled = valid.iloc[[3, 0, 2, 1, *range(4, len(valid))]].reset_index(drop=True)
    report = validate_batch(shuffled, params, history=build_history(None, params), now=NOW)
    assert report.success, report.summary()


@pytest.mark.parametrize("mutate", [lambda f: f, _temp_max_out_of_range, _negative_precipitation])
def test_the_gate_answers_for_the_suite_without_history(
    valid: pd.DataFrame, params: Params, mutate: Callable[[pd.DataFrame], pd.DataFrame]
) -> None:
    """What the whole-dataset suite says of a batch is read off the gate's report, failures too."""
    batch = mutate(valid)
    history = build_history(changed(seattle_days("2012-01-05", "2012-03-31")), params)
    gated = validate_batch(batch, params, history=history, now=NOW)
    assert len(gated.outcomes) > len(validate_batch(batch, params, now=NOW).outcomes)
    derived = without_history(gated, params)
    assert derived is not None
    assert derived.to_dict() == validate_batch(batch, params, now=NOW).to_dict()


def test_an_unreadable_batch_has_no_verdict_to_reuse(params: Params) -> None:
    report = validate_batch(pd.DataFrame(), params, read_error="unreadable csv (ParserError)")
    assert without_history(report, params) is None


def _write_semicolon_csv(path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(path, sep=";", index=False)


def _write_empty(path: Path, frame: pd.DataFrame) -> None:
    path.write_bytes(b"")


def _write_garbled(path: Path, frame: pd.DataFrame) -> None:
    path.write_bytes(GARBLED)


FILES: list[tuple[str, Callable[[Path, pd.DataFrame], None], str | None]] = [
    ("empty file", _write_empty, "EmptyDataError"),
    ("wrong delimiter", _write_semicolon_csv, None),
    ("garbled binary", _write_garbled, "UnicodeDecodeError"),
]


@pytest.mark.parametrize(("write", "error"), [c[1:] for c in FILES], ids=[c[0] for c in FILES])
def test_unusable_file_fails_with_missing_columns(
    valid: pd.DataFrame,
    params: Params,
    tmp_path: Path,
    write: Callable[[Path, pd.DataFrame], None],
    error: str | None,
) -> None:
    path = tmp_path / "batch.csv"
    write(path, valid)
    raw = read_batch_file(path, params.data)
    report = validate_batch(raw.frame, params, read_error=raw.read_error)
    assert not report.success
    assert report.read_error == raw.read_error
    summary = report.summary()
    for column in ["date", *params.data.required_columns]:
        assert f"expect_column_to_exist({column})" in summary
    if error is None:
        assert raw.read_error is None
    else:
        assert raw.read_error is not None and error in raw.read_error
        assert summary.startswith(" ".join(raw.read_error.split()))
        assert "expect_table_row_count_to_be_between" in summary  # the frame is empty


def test_read_error_fails_even_if_every_expectation_passes(
    valid: pd.DataFrame, params: Params
) -> None:
    report = validate_batch(valid, params, read_error="unreadable csv (ParserError: bad line)")
    assert report.failed == 0
    assert not report.success
    assert report.summary() == "unreadable csv (ParserError: bad line)"


def test_to_dict_is_stable_plain_json(valid: pd.DataFrame, params: Params) -> None:
    broken = _all_nan_temp_min(_duplicate_date(valid))
    history = build_history(seattle_days("2012-01-02", "2012-01-02"), params)
    first = validate_batch(broken, params, history=history, now=NOW).to_dict()
    second = validate_batch(broken.copy(), params, history=history, now=NOW).to_dict()
    assert first == second
    text = json.dumps(first, allow_nan=False, sort_keys=True)  # no numpy, Timestamp or NaN
    assert json.loads(text) == first
    dates = next(
        o for o in first["outcomes"] if o["expectation"].endswith("unique") and not o["success"]
    )
    assert dates["observed"] == ["2012-01-04 00:00:00", "2012-01-04 00:00:00"]
    assert dates["unexpected_percent"] == 20.0
    assert [o["column"] for o in first["outcomes"] if not o["success"]] == [
        "date",
        "temp_min",
        "accepted_with_other_values:date",
    ]


def test_quarantine_keeps_original_bytes_report_and_docs_and_never_overwrites(
    valid: pd.DataFrame, params: Params, tmp_path: Path
) -> None:
    source = tmp_path / "incoming" / "garbled.csv"
    source.parent.mkdir()
    source.write_bytes(GARBLED)
    raw = read_batch_file(source, params.data)
    report = validate_batch(raw.frame, params, read_error=raw.read_error)
    root = tmp_path / "quarantine"

    first = quarantine(report, root, "b1", source_path=source)

    assert first == root / "b1"
    assert (first / "garbled.csv").read_bytes() == GARBLED
    saved = json.loads((first / "validation.json").read_text())
    assert saved == {**report.to_dict(), "batch_id": "b1", "origin": str(source)}
    assert "<html" in (first / "docs" / "index.html").read_text().lower()
    assert list((first / "docs" / "validations").rglob("*.html"))  # this run's result page
    assert source.read_bytes() == GARBLED  # the incoming file is left in place
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}

    bad = _temp_max_out_of_range(valid)
    second = quarantine(validate_batch(bad, params), root, "b1", frame=bad)

    assert second == root / "b1-1"
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    assert pd.read_csv(second / "batch.csv")["temp_max"].tolist() == bad["temp_max"].tolist()
    assert json.loads((second / "validation.json").read_text())["origin"] == "dataframe"
    assert (second / "docs" / "index.html").is_file()


@pytest.mark.parametrize("batch_id", ["", "..", "a/b", "../escape"])
def test_quarantine_rejects_unsafe_batch_ids(
    valid: pd.DataFrame, params: Params, tmp_path: Path, batch_id: str
) -> None:
    report = validate_batch(_temp_max_out_of_range(valid), params)
    with pytest.raises(ValueError, match="batch_id"):
        quarantine(report, tmp_path, batch_id, frame=pd.DataFrame())
    assert list(tmp_path.iterdir()) == []


def test_quarantine_needs_a_batch_and_a_gate_report(tmp_path: Path) -> None:
    report = ValidationReport(success=False, evaluated=0, failed=0, outcomes=())
    with pytest.raises(ValueError, match="source file or the frame"):
        quarantine(report, tmp_path / "q", "b1")
    with pytest.raises(ValueError, match="made by validate_batch"):
        quarantine(report, tmp_path / "q", "b1", frame=pd.DataFrame())
    assert not (tmp_path / "q").exists()
