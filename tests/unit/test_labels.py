"""One rule of which label belongs to a row or a prediction: the first known at `as_of`.

The table below is the rule; the second half proves that every reader (label batches on disk,
rows, served predictions, the label gate's history) gives the same answer for the same labels.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftloop import datastore, labels
from driftloop.config import Params, Settings, parse_params
from driftloop.serving.feedback import FeedbackLog

EVENTS: dict[str, Any] = {
    "data": {
        "source": "events.csv",
        "timestamp_column": "ts",
        "id_column": "event_id",
        "columns": {
            "event_id": {"dtype": "str"},
            "amount": {"dtype": "float"},
            "returned": {"dtype": "int", "allowed": [0, 1], "required": False},
        },
    },
    "target": {"column": "returned"},
    "labels": {"time_column": "known_at"},
    "features": {"numerical": ["amount"]},
}

Label = tuple[str, int, str, labels.Origin]  # key, value, label time, origin

# (labels known for the keys, as_of, the label each key gets: None = pending)
CASES: list[tuple[str, list[Label], str | None, dict[str, int | None]]] = [
    (
        "two labels for one key: the first known wins",
        [("k", 1, "2024-01-03", "batch"), ("k", 0, "2024-01-05", "batch")],
        None,
        {"k": 1},
    ),
    (
        "written in the other order: still the earliest label time",
        [("k", 0, "2024-01-05", "batch"), ("k", 1, "2024-01-03", "batch")],
        None,
        {"k": 1},
    ),
    (
        "a label after as_of is not known yet",
        [("k", 1, "2024-01-05 10:00", "batch")],
        "2024-01-05 09:59",
        {"k": None},
    ),
    (
        "a label at as_of is known",
        [("k", 1, "2024-01-05 10:00", "batch")],
        "2024-01-05 10:00",
        {"k": 1},
    ),
    (
        "the earlier label is after as_of: the later one is not known either",
        [("k", 1, "2024-01-03", "batch"), ("k", 0, "2024-01-06", "batch")],
        "2024-01-04",
        {"k": 1},
    ),
    (
        "feedback received before the batch's label: feedback wins",
        [("k", 0, "2024-01-04", "feedback"), ("k", 1, "2024-01-05", "batch")],
        None,
        {"k": 0},
    ),
    (
        "a batch label before feedback: the batch wins",
        [("k", 1, "2024-01-04", "batch"), ("k", 0, "2024-01-05", "feedback")],
        None,
        {"k": 1},
    ),
    (
        "the same time: the batch (gated) before feedback",
        [("k", 0, "2024-01-05", "feedback"), ("k", 1, "2024-01-05", "batch")],
        None,
        {"k": 1},
    ),
    (
        "feedback only, as of before it arrived: pending",
        [("k", 1, "2024-01-05", "feedback")],
        "2024-01-04",
        {"k": None},
    ),
    (
        "a missing label: pending, the other key labelled",
        [("j", 0, "2024-01-05", "batch")],
        None,
        {"k": None, "j": 0},
    ),
    (
        "nothing arrived at all",
        [],
        None,
        {"k": None},
    ),
]


def table(rows: list[Label]) -> pd.DataFrame:
    """Label candidates from the table's rows (one frame, several origins)."""
    parts = [
        labels.candidates(
            pd.Series([key]), pd.Series([value]), pd.Series([pd.Timestamp(when)]), origin
        )
        for key, value, when, origin in rows
    ]
    if not parts:
        return labels.candidates(pd.Series([]), pd.Series([]), pd.Series([]), "batch")
    return pd.concat(parts, ignore_index=True)


def bound(as_of: str | None) -> pd.Timestamp | None:
    return None if as_of is None else pd.Timestamp(as_of)


@pytest.fixture(scope="module")
def events() -> Params:
    return parse_params(EVENTS)


@pytest.mark.parametrize(("case", "rows", "as_of", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_rule(
    case: str, rows: list[Label], as_of: str | None, expected: dict[str, int | None]
) -> None:
    known = labels.first_known(table(rows), bound(as_of))
    got = labels.label_of(pd.Series(list(expected)), known)
    assert [None if pd.isna(v) else int(v) for v in got] == list(expected.values()), case


# -- every reader, the same answer ------------------------------------------------------------


def project(tmp_path: Path, events: Params, rows: list[Label]) -> Settings:
    """A project whose label batches and feedback log hold the table's labels."""
    settings = Settings(project=tmp_path, home=tmp_path / ".driftloop")
    for key, value, when, origin in rows:  # one batch file per label, as separate arrivals
        if origin == "batch":
            frame = pd.DataFrame(
                {"event_id": [key], "returned": [value], datastore.LABEL_TIME: [pd.Timestamp(when)]}
            )
            datastore.write_batch(
                frame, settings.path(events.data.labels_dir), datastore.LABEL_TIME
            )
    log = FeedbackLog(settings.path(events.serve.feedback_dir))
    for key, value, when, origin in rows:
        if origin == "feedback":
            log.record(key, value, None, pd.Timestamp(when).to_pydatetime())
    return settings


@pytest.mark.parametrize(("case", "rows", "as_of", "expected"), CASES, ids=[c[0] for c in CASES])
def test_every_reader_follows_the_rule(
    tmp_path: Path,
    events: Params,
    case: str,
    rows: list[Label],
    as_of: str | None,
    expected: dict[str, int | None],
) -> None:
    settings = project(tmp_path, events, rows)
    datastore.CACHE.clear()
    keys = list(expected)
    want = [None if v is None else float(v) for v in expected.values()]

    # Rows: the training data, monitoring's scored window, the replay's judgement.
    frame = pd.DataFrame(
        {"ts": pd.Timestamp("2024-01-01"), "event_id": keys, "amount": 1.0},
    )
    known = labels.known_labels(events, settings, bound(as_of))
    attached = labels.attach(frame, known, events, bound(as_of))
    assert _values(attached["returned"]) == want, case

    # Served predictions: the experiment's labels (a prediction is labelled by its row's id).
    served = pd.DataFrame({"prediction_id": [f"p-{k}" for k in keys], "event_id": keys})
    by_prediction = labels.for_predictions(served, known, events)
    got = dict(zip(by_prediction["prediction_id"], by_prediction["label"], strict=True))
    assert [got.get(f"p-{k}") for k in keys] == [None if w is None else int(w) for w in want]

    # Accepted label batches alone (the label gate's history, training's labels).
    gated = [r for r in rows if r[3] == "batch"]
    accepted = labels.accepted(settings.path(events.data.labels_dir), events, as_of=bound(as_of))
    alone = labels.first_known(table(gated), bound(as_of))
    assert accepted["event_id"].tolist() == alone[labels.KEY].tolist()
    assert accepted["returned"].tolist() == alone[labels.VALUE].tolist()


def _values(series: pd.Series) -> list[float | None]:
    return [None if pd.isna(v) else float(v) for v in series]


def test_a_row_carrying_its_own_label_keeps_it(events: Params) -> None:
    frame = pd.DataFrame(
        {
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "event_id": ["a", "b", "c"],
            "amount": 1.0,
            "returned": [0.0, np.nan, np.nan],
        }
    )
    known = table([("a", 1, "2024-01-05", "batch"), ("b", 1, "2024-01-05", "batch")])
    assert _values(labels.attach(frame, known, events)["returned"]) == [0.0, 1.0, None]


def test_duplicate_ids_all_get_their_keys_label(events: Params) -> None:
    frame = pd.DataFrame(
        {
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "event_id": ["a", "a", "b"],
            "amount": 1.0,
        }
    )
    known = table(
        [
            ("a", 1, "2024-01-05", "batch"),
            ("a", 0, "2024-01-06", "feedback"),
            ("b", 0, "2024-01-09", "batch"),
        ]
    )
    attached = labels.attach(frame, known, events, pd.Timestamp("2024-01-08"))
    assert _values(attached["returned"]) == [1.0, 1.0, None]


def test_keys_join_as_text_whatever_their_dtype() -> None:
    known = table([("7", 1, "2024-01-05", "feedback")])
    assert labels.label_of(pd.Series([7, 8]), known).tolist()[0] == 1


def test_a_date_as_of_means_the_end_of_that_day() -> None:
    known = table([("k", 1, "2024-01-05 23:00", "batch")])
    assert len(labels.first_known(known, dt.date(2024, 1, 5))) == 1
    assert len(labels.first_known(known, dt.date(2024, 1, 4))) == 0


def test_a_prediction_id_labels_its_row_and_predictions_map_to_their_data_id() -> None:
    log = pd.DataFrame({"prediction_id": ["p1", "p2", "p3"], "event_id": ["a", None, "b"]})
    assert labels.prediction_keys(log, "event_id") == {"p1": "a", "p2": None, "p3": "b"}
    assert labels.prediction_keys(log, None) == {"p1": None, "p2": None, "p3": None}


def test_a_forecast_target_has_no_labels_to_join(tmp_path: Path) -> None:
    from driftloop.config import load_params
    from tests.helpers import REPO_ROOT

    seattle = load_params(REPO_ROOT / "params.yaml")
    assert seattle.target.column is None
    settings = Settings(project=tmp_path, home=tmp_path / ".driftloop")
    assert labels.known_labels(seattle, settings).empty
    frame = pd.DataFrame({"date": pd.to_datetime(["2012-01-01"]), "precipitation": [1.0]})
    assert labels.attach(frame, labels.known_labels(seattle, settings), seattle) is frame
