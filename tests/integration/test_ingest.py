"""The ingest stage on a real temp project (git + DVC with a local remote, real GE).

Late batches are accepted when their keys are new, concurrent ingests are serialized by the
project lock, a path that is not a readable file changes nothing (exit 3), and label batches
that arrive later are gated, stored immutably and versioned like data.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from driftloop import datastore, labels, versioning
from driftloop.config import Params, load_params, parse_params
from driftloop.errors import ValidationFailed
from driftloop.ingest import IngestResult, ingest
from driftloop.sources import load_seattle, read_batch_file
from tests.helpers import Project, cli, cli_command, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.fresh_mlflow]  # no MLflow needed to ingest


def seattle_csv(folder: Path, first: str, last: str) -> Path:
    """Real Seattle rows first..last as a user's CSV."""
    frame = load_seattle()
    rows = frame[(frame["date"] >= first) & (frame["date"] <= last)]
    path = folder / f"seattle_{first}_{last}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    rows.assign(date=rows["date"].dt.strftime("%Y-%m-%d")).to_csv(path, index=False)
    return path


def ingest_file(project: Project, path: Path) -> IngestResult:
    raw = read_batch_file(path, project.params.data)
    return ingest(project.params, project.settings, raw)


def quarantined(project: Project) -> list[str]:
    folder = project.quarantine_dir
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_late_batch_with_new_dates_is_accepted_and_loads_in_time_order(
    project: Project, tmp_path: Path
) -> None:
    newer = ingest_file(project, seattle_csv(tmp_path, "2012-01-03", "2012-01-04"))
    older = ingest_file(project, seattle_csv(tmp_path, "2012-01-01", "2012-01-02"))

    assert (newer.first, newer.last, older.first, older.last) == (
        "2012-01-03",
        "2012-01-04",
        "2012-01-01",
        "2012-01-02",
    )
    assert older.data_md5 == project.raw_dvc_md5() != newer.data_md5
    accepted = datastore.load_accepted(project.raw_dir, project.params)
    assert accepted["date"].dt.day.tolist() == [1, 2, 3, 4]
    assert versioning.is_in_sync(project.root, project.raw_dir)
    assert any(project.remote.rglob("*")), "pushed to the DVC remote"


def test_a_batch_sent_twice_is_nothing_new_and_changed_values_are_refused(
    project: Project, tmp_path: Path
) -> None:
    batch = seattle_csv(tmp_path, "2012-01-01", "2012-01-07")
    ingest_file(project, batch)
    before = project.raw_snapshot()

    again = ingest_file(project, batch)  # an interrupted run, simply run again
    assert again.nothing_new and again.repeats == 7
    assert quarantined(project) == []
    assert project.raw_snapshot() == before

    changed = pd.read_csv(batch)
    changed.loc[2, "wind"] += 1.0  # Jan 3 measured again: a conflicting repeat
    changed.to_csv(batch, index=False)
    with pytest.raises(ValidationFailed) as failure:
        ingest_file(project, batch)

    message = str(failure.value)
    assert "expect_column_values_to_be_null(accepted_with_other_values:date)" in message
    (folder,) = quarantined(project)
    assert folder.startswith(batch.stem)
    report = json.loads((project.quarantine_dir / folder / "validation.json").read_text())
    (outcome,) = [o for o in report["outcomes"] if not o["success"]]
    assert outcome["column"] == "accepted_with_other_values:date"
    assert outcome["observed"] == ["2012-01-03"]  # the conflicting key, named
    assert (project.quarantine_dir / folder / batch.name).read_bytes() == batch.read_bytes()
    assert (project.quarantine_dir / folder / "docs" / "index.html").is_file()
    assert project.raw_snapshot() == before


def test_an_ingested_batch_brings_its_dataset_verdict_along(
    project: Project, tmp_path: Path
) -> None:
    """The whole-dataset check reuses what the gate found on each batch it accepted: the
    recorded verdict is the one a fresh validation of the stored file gives."""
    from driftloop.ingest import ValidatedBatches, suite_fingerprint, validate_dataset
    from driftloop.validation import validate_batch

    params, settings = project.params, project.settings
    ingest_file(project, seattle_csv(tmp_path, "2012-01-01", "2012-01-20"))
    ingest_file(project, seattle_csv(tmp_path, "2012-01-21", "2012-02-10"))
    raw_dir = settings.path(params.data.raw_dir)
    recorded = ValidatedBatches(settings.state_dir, raw_dir, suite_fingerprint(params))
    for batch in datastore.batch_files(raw_dir):
        fresh = validate_batch(datastore.read_batch(batch.path), params).to_dict()
        assert recorded.known(batch.path) == fresh
    assert validate_dataset(params, settings)["success"]


def test_two_ingests_at_once_are_serialized_and_both_accepted(
    project: Project, tmp_path: Path
) -> None:
    """Jan 3-4 and Jan 1-2 as two processes at the same moment: the project lock orders them."""
    files = [
        seattle_csv(tmp_path, "2012-01-03", "2012-01-04"),
        seattle_csv(tmp_path, "2012-01-01", "2012-01-02"),
    ]
    procs = [
        subprocess.Popen(
            cli_command("ingest", str(path), "--json"),
            cwd=project.root,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in files
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]

    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["first"] for r in results) == ["2012-01-01", "2012-01-03"]
    assert len(datastore.batch_files(project.raw_dir)) == 2
    accepted = datastore.load_accepted(project.raw_dir, project.params)
    assert accepted["date"].dt.day.tolist() == [1, 2, 3, 4]
    assert project.raw_dvc_md5() in {r["data_md5"] for r in results}  # the later one saw both
    assert versioning.is_in_sync(project.root, project.raw_dir)


def test_the_bundled_source_reads_only_what_is_new(project: Project) -> None:
    first = cli("ingest", "--until", "2012-03-31", "--json").json()
    second = cli("ingest", "--until", "2012-04-30", "--json").json()
    third = cli("ingest", "--until", "2012-04-30")

    assert (first["rows"], first["first"], first["last"]) == (91, "2012-01-01", "2012-03-31")
    assert (second["rows"], second["first"], second["last"]) == (30, "2012-04-01", "2012-04-30")
    assert third.exit_code == 0 and "nothing new" in third.stdout
    assert second["data_md5"] == project.raw_dvc_md5()
    manifest = json.loads((project.root / "reports" / "ingest.json").read_text())
    assert manifest["n_batches"] == 2


@pytest.mark.parametrize("kind", ["folder", "broken link", "no such file"])
def test_a_path_that_is_not_a_readable_file_exits_3_and_changes_nothing(
    project: Project, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "incoming" / "batch.csv"
    if kind == "folder":
        path.mkdir(parents=True)
    elif kind == "broken link":
        path.parent.mkdir()
        path.symlink_to(tmp_path / "gone.csv")

    result = cli("ingest", str(path))

    assert result.exit_code == 3, result.stderr
    assert result.stderr.startswith(f"error: {path}: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not project.quarantine_dir.exists()
    assert not project.raw_dir.exists()


def test_a_garbled_file_is_quarantined_with_exit_4(project: Project, tmp_path: Path) -> None:
    path = tmp_path / "garbled.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff\xfe" * 8)

    result = cli("ingest", str(path))

    assert result.exit_code == 4, result.stderr
    assert "unreadable csv (UnicodeDecodeError" in result.stderr
    (folder,) = quarantined(project)
    assert (project.quarantine_dir / folder / "garbled.csv").read_bytes() == path.read_bytes()
    assert not project.raw_dir.exists()


# -- labels that arrive later ---------------------------------------------------------------------

EVENTS = {
    "data": {
        "source": "events.csv",
        "until": "2024-12-31",  # dvc.yaml templates data.until and data.raw_dir
        "raw_dir": "data/raw",
        "timestamp_column": "ts",
        "id_column": "order_id",
        "frequency": "min",
        "columns": {
            "order_id": {"dtype": "str"},
            "basket": {"dtype": "float", "min": 0.0},
            "channel": {"dtype": "category", "allowed": ["web", "shop"]},
            "returned": {"dtype": "int", "allowed": [0, 1], "required": False},
        },
    },
    "target": {"name": "will_return", "column": "returned"},
    "features": {"numerical": ["basket"], "categorical": ["channel"]},
    "labels": {"time_column": "known_at"},
}


@pytest.fixture
def events(project: Project) -> Params:
    """The project's params.yaml is an order table whose labels arrive later."""
    path = project.root / "params.yaml"
    # Written in full (defaults included): dvc.yaml templates keys such as reports.validation.
    full = parse_params(EVENTS).model_dump(mode="json")
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    project.params = load_params(path)
    return project.params


def orders_csv(folder: Path) -> Path:
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01 09:00", periods=6, freq="37min").strftime(
                "%Y-%m-%d %H:%M"
            ),
            "order_id": ["007", "008", "009", "010", "011", "012"],  # text ids: leading zeros
            "basket": [12.5, 80.0, 5.0, 44.0, 19.9, 7.5],
            "channel": ["web", "shop", "web", "web", "shop", "web"],
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orders.csv"
    frame.to_csv(path, index=False)
    return path


def labels_csv(folder: Path, name: str, rows: list[tuple[str, int, str]]) -> Path:
    path = folder / name
    pd.DataFrame(rows, columns=["order_id", "returned", "known_at"]).to_csv(path, index=False)
    return path


def test_labels_are_gated_stored_immutably_and_versioned(
    project: Project, events: Params, tmp_path: Path
) -> None:
    assert ingest_file(project, orders_csv(tmp_path)).rows == 6
    first = labels_csv(
        tmp_path, "labels_1.csv", [("007", 0, "2024-01-08 10:00"), ("008", 1, "2024-01-09 12:30")]
    )

    accepted = cli("ingest", "--labels", str(first), "--json").json()

    labels_dir = project.root / events.data.labels_dir
    assert accepted["rows"] == 2
    assert Path(accepted["path"]).name.startswith("2024-01-08_2024-01-09_")
    assert versioning.recorded_md5(project.root, labels_dir) == accepted["data_md5"]
    stored = labels.accepted(labels_dir, events)
    assert stored["order_id"].tolist() == ["007", "008"]
    assert stored["returned"].tolist() == [0, 1]
    as_of = labels.accepted(labels_dir, events, as_of=pd.Timestamp("2024-01-09"))
    assert as_of["order_id"].tolist() == ["007"]

    again = cli("ingest", "--labels", str(first))
    assert again.exit_code == 0, again.stderr
    assert "nothing new" in again.stdout  # exact repeats are dropped: idempotent
    assert len(datastore.batch_files(labels_dir)) == 1


@pytest.mark.parametrize(
    ("rows", "names"),
    [
        ([("007", 1, "2024-01-10 08:00")], "conflicting_label:order_id"),
        ([("999", 0, "2024-01-10 08:00")], "unknown_id:order_id"),
        ([("009", 3, "2024-01-10 08:00")], "expect_column_values_to_be_in_set(returned)"),
    ],
    ids=["changed label", "unknown id", "not a 0/1 label"],
)
def test_a_bad_label_batch_is_quarantined_with_exit_4(
    project: Project,
    events: Params,
    tmp_path: Path,
    rows: list[tuple[str, int, str]],
    names: str,
) -> None:
    ingest_file(project, orders_csv(tmp_path))
    good = labels_csv(tmp_path, "good.csv", [("007", 0, "2024-01-08 10:00")])
    assert cli("ingest", "--labels", str(good)).exit_code == 0
    labels_dir = project.root / events.data.labels_dir
    before = {p.name for p in labels_dir.iterdir()}
    bad = labels_csv(tmp_path, "bad.csv", rows)

    result = cli("ingest", "--labels", str(bad))

    assert result.exit_code == 4, result.stderr
    assert result.stderr.startswith(f"error: {bad}: ")
    assert names in result.stderr
    (folder,) = quarantined(project)
    report = json.loads((project.quarantine_dir / folder / "validation.json").read_text())
    assert report["suite"] == "driftloop_labels"
    assert (project.quarantine_dir / folder / "bad.csv").read_bytes() == bad.read_bytes()
    assert {p.name for p in labels_dir.iterdir()} == before


def test_a_forecast_target_takes_no_label_batches(project: Project, tmp_path: Path) -> None:
    path = labels_csv(tmp_path, "labels.csv", [("1", 0, "2024-01-01")])
    result = cli("ingest", "--labels", str(path))
    assert result.exit_code == 2
    assert "forecast target" in result.stderr
    assert not project.quarantine_dir.exists()
