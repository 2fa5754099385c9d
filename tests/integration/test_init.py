"""`driftloop init` on a user's own table, end to end: the proposed params file runs `run` and
`replay` unchanged on the data it was made from (events and late labels in two CSV files, column
names and values with unicode, spaces and punctuation), and a user's mistakes are one line with
nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from driftloop.config import load_params
from tests import owndata
from tests.helpers import Project, cli

pytestmark = pytest.mark.slow


@pytest.fixture
def exports(project: Project) -> tuple[Path, Path]:
    table = owndata.events(days=56, per_day=30)
    events = owndata.write_csv(owndata.rows_only(table), project.root / "exports" / "events.csv")
    labels = owndata.write_csv(owndata.labels_of(table), project.root / "exports" / "labels.csv")
    return events, labels


def init(*args: str) -> dict:
    result = cli("init", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_the_proposed_file_runs_run_and_replay_unchanged(
    prefect_harness: None, project: Project, exports: tuple[Path, Path]
) -> None:
    summary = init(
        "exports/events.csv",
        *("--time", owndata.TIME, "--id", owndata.ID, "--target", owndata.LABEL),
        *("--labels", "exports/labels.csv", "--label-time", owndata.KNOWN_AT),
        *("--name", "returns", "--out", "models/returns.yaml"),
    )
    path = project.root / "models" / "returns.yaml"
    assert summary["path"] == str(path)
    params = load_params(path)
    assert params.data.source.path == "exports/events.csv"  # relative to the project
    assert params.labels.source is not None and params.labels.source.path == "exports/labels.csv"
    assert params.labels.time_column == owndata.KNOWN_AT
    assert set(params.data.columns) == {
        owndata.ID,
        owndata.AMOUNT,
        owndata.NEW,
        owndata.STORE,
        owndata.CHANNEL,
        owndata.LABEL,
    }
    assert params.features.numerical == [owndata.AMOUNT]
    assert set(params.features.categorical) == {owndata.NEW, owndata.STORE, owndata.CHANNEL}
    assert params.data.columns[owndata.CHANNEL].allowed == sorted(owndata.CHANNELS)
    assert params.data.columns[owndata.STORE].allowed is None  # a store opens halfway: open set
    assert params.data.raw_dir == "data/returns/raw" and params.train.model_name == "returns"
    assert '"amount (€)": {dtype: float, min: 0.0' in path.read_text()  # quoted, unicode kept

    run = cli("--params", "models/returns.yaml", "run", "--json")
    assert run.exit_code == 0, run.stderr
    first = json.loads(run.stdout)
    assert first["promoted"], first

    replayed = cli("--params", "models/returns.yaml", "replay", "--steps", "3", "--json")
    assert replayed.exit_code == 0, replayed.stderr
    out = json.loads(replayed.stdout[replayed.stdout.index("{") :])  # after the progress bar
    assert out["meta"]["steps"] == 3
    report = project.root / params.replay.report_dir / "report.json"
    assert [str(report.with_suffix(".html")), str(report)] == sorted(out["report"])
    timeline = json.loads(report.read_text())["timeline"]
    assert len(timeline) == 3 and all(step["n_labelled"] > 0 for step in timeline)


def test_a_target_in_the_rows_and_a_refused_column(
    project: Project, exports: tuple[Path, Path]
) -> None:
    events, labels = exports
    rows = pd.read_csv(events).merge(pd.read_csv(labels)[[owndata.ID, owndata.LABEL]])
    rows["currency"] = "EUR"
    rows["note (free text)"] = [f"call #{i}" for i in range(len(rows))]
    rows["refund?"] = rows[owndata.LABEL].astype(bool)  # known only after the outcome
    rows.to_parquet(project.root / "exports" / "rows.parquet", index=False)
    summary = init(
        "exports/rows.parquet",
        *("--time", owndata.TIME, "--id", owndata.ID, "--target", owndata.LABEL),
        "--out",
        "models/rows.yaml",
    )
    assert summary["refused"] == {
        owndata.TIME: "the timestamp: event time (features.calendar derives from it)",
        owndata.ID: "the id: a row key",
        owndata.LABEL: "the target",
        "currency": "constant (always 'EUR')",
        "note (free text)": f"id-like: {len(rows):,} distinct values in {len(rows):,} rows",
        "refund?": "a near-copy of the target (its value gives the label in 100.0% of rows)",
    }
    params = load_params(project.root / "models" / "rows.yaml")
    assert params.labels.source is None and params.target.column == owndata.LABEL
    assert "currency" not in params.data.columns
    text = (project.root / "models" / "rows.yaml").read_text()
    assert '# "refund?": {dtype: bool}  -- a near-copy of the target' in text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--time", "when", "--target", owndata.LABEL], 2, "--time 'when' is not a column"),
        ([], 2, "init needs --time COLUMN and --target COLUMN"),
        (
            ["--time", owndata.TIME, "--id", owndata.ID, "--target", owndata.AMOUNT],
            2,
            "--target 'amount (€)' is numeric",
        ),
        (
            ["--time", owndata.TIME, "--target", owndata.STORE, "--id", owndata.ID],
            2,
            "is text with 6 values",
        ),
        (
            [
                "--time",
                owndata.TIME,
                "--target",
                owndata.LABEL,
                "--id",
                owndata.ID,
                "--labels",
                "exports/labels.csv",
            ],
            2,
            "--labels needs --id",
        ),
    ],
)
def test_a_mistake_is_one_line_and_nothing_is_written(
    project: Project, exports: tuple[Path, Path], args: list[str], code: int, message: str
) -> None:
    result = cli("init", "exports/events.csv", *args, "--out", "new.yaml")
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (project.root / "new.yaml").exists()


def test_an_unreadable_file_and_an_existing_params_file(
    project: Project, exports: tuple[Path, Path]
) -> None:
    args = ["--time", owndata.TIME, "--id", owndata.ID, "--target", owndata.LABEL]
    missing = cli("init", "exports/nothing.csv", *args, "--out", "new.yaml")
    assert missing.exit_code == 3 and "file not found" in missing.stderr
    (project.root / "exports" / "garbled.parquet").write_bytes(b"not parquet")
    garbled = cli("init", "exports/garbled.parquet", *args, "--out", "new.yaml")
    assert garbled.exit_code == 3 and len(garbled.stderr.strip().splitlines()) == 1
    assert not (project.root / "new.yaml").exists()

    before = (project.root / "params.yaml").read_bytes()
    refused = cli("init", "exports/events.csv", *args, "--target", owndata.CHANNEL)
    exists = cli("init", "exports/events.csv", *args)  # default --out params.yaml exists
    assert exists.exit_code == 2 and "pass --force" in exists.stderr
    assert refused.exit_code == 2
    assert (project.root / "params.yaml").read_bytes() == before


def test_a_sqlite_table_with_labels_in_another_table(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa

    table = owndata.events(days=42, per_day=30)
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    owndata.rows_only(table).to_sql("events", engine, index=False)
    owndata.labels_of(table).to_sql("event_labels", engine, index=False)
    engine.dispose()
    monkeypatch.setenv("SHOP_DB", url)
    summary = init(
        *("--url-env", "SHOP_DB", "--table", "events", "--labels", "event_labels"),
        *("--time", owndata.TIME, "--id", owndata.ID, "--target", owndata.LABEL),
        *("--label-time", owndata.KNOWN_AT, "--out", "models/shop.yaml"),
    )
    assert summary["name"] == "events" and summary["rows"] == len(table)
    params = load_params(project.root / "models" / "shop.yaml")
    assert params.data.source.model_dump(exclude_defaults=True) == {
        "kind": "sql",
        "url_env": "SHOP_DB",
        "table": "events",
    }
    assert params.labels.source is not None and params.labels.source.table == "event_labels"
    # SQLite has no boolean type: "is new?" comes back as 0/1 and is declared as such
    assert params.data.columns[owndata.NEW].dtype == "int"
    ingested = cli("--params", "models/shop.yaml", "ingest", "--until", "2024-01-20", "--json")
    assert ingested.json()["last"] == "2024-01-20"
    from driftloop.sources import ENGINES

    ENGINES.clear()


def test_a_folder_of_weekly_drops(project: Project) -> None:
    table = owndata.events(days=35, per_day=30)
    rows = owndata.rows_only(table).merge(table[[owndata.ID, owndata.LABEL]])
    drops = project.root / "drops"
    drops.mkdir()
    for week, part in rows.groupby(rows[owndata.TIME].dt.isocalendar().week):
        part.to_parquet(drops / f"week-{week:02d}.parquet", index=False)
    summary = init(
        "drops/*.parquet",
        *("--time", owndata.TIME, "--id", owndata.ID, "--target", owndata.LABEL),
        "--out",
        "models/drops.yaml",
    )
    assert summary["name"] == "drops" and summary["rows"] == len(rows)
    params = load_params(project.root / "models" / "drops.yaml")
    assert params.data.source.kind == "folder" and params.data.source.path == "drops/*.parquet"
    first = cli("--params", "models/drops.yaml", "ingest", "--json").json()
    assert first["rows"] == len(rows) and len(first["paths"]) == len(list(drops.iterdir()))
