"""A user's own data, by params alone, from each kind of source, read incrementally:

- a CSV file that grows (appended to, or rewritten as a whole by a daily export),
- a folder of drops (each new file a batch; a file taken before is skipped),
- a SQL table read by a time watermark (PostgreSQL on 127.0.0.1:5432, and SQLite),
- label batches from each of the three, keyed on the id and timed by `labels.time_column`.

Every ingest is run again to show it is safe: exact repeats are skipped ("nothing new", exit 0),
an accepted key with other values is refused and quarantined, late rows pass within the declared
lateness. Column names and category values carry unicode, spaces and punctuation throughout.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from driftloop import datastore
from tests import owndata
from tests.helpers import CliResult, Project, cli

pytestmark = pytest.mark.slow

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def ingest(params: Path, *args: str) -> CliResult:
    return cli("--params", str(params), "ingest", "--json", *args)


def accepted(project: Project, params: Path) -> pd.DataFrame:
    from driftloop.config import load_params

    loaded = load_params(params)
    return datastore.load_accepted(project.root / loaded.data.raw_dir, loaded)


def quarantined(project: Project) -> list[str]:
    folder = project.root / "data" / "returns" / "quarantine"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def raw_files(project: Project) -> list[str]:
    folder = project.root / "data" / "returns" / "raw"
    return sorted(p.name for p in folder.glob("*.parquet"))


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return owndata.events(days=28, per_day=30)


# -- a file that grows ---------------------------------------------------------------------------


def test_a_file_that_grows_is_read_from_where_it_stopped(
    project: Project, table: pd.DataFrame
) -> None:
    rows = owndata.rows_only(table)
    export = owndata.write_csv(rows.iloc[:300], project.root / "exports" / "events.csv")
    params = owndata.write_params(project.root, owndata.params("exports/events.csv"))

    first = ingest(params).json()
    assert first["rows"] == 300
    again = ingest(params).json()  # the same file: nothing new, nothing read twice
    assert again["rows"] == 0 and again["paths"] == [] and quarantined(project) == []

    with export.open("a") as handle:  # the export appends today's rows
        handle.write(rows.iloc[300:450].to_csv(index=False, header=False))
    grown = ingest(params).json()
    assert grown["rows"] == 150 and grown["repeats"] == 0  # only the appended bytes were parsed
    assert accepted(project, params)[owndata.ID].tolist() == rows[owndata.ID].iloc[:450].tolist()

    rows.iloc[:600].to_csv(export, index=False)  # rewritten, the same rows first: a tail read
    assert ingest(params).json()["rows"] == 150
    shuffled = rows.iloc[:750].sample(frac=1.0, random_state=3)  # rewritten in another order
    shuffled.to_csv(export, index=False)
    rewritten = ingest(params).json()  # read again as a whole: repeats skipped
    assert (rewritten["rows"], rewritten["repeats"]) == (150, 600)
    assert ingest(params).json()["rows"] == 0
    assert len(accepted(project, params)) == 750


def test_until_is_honoured_for_a_file_and_the_rest_is_taken_later(
    project: Project, table: pd.DataFrame
) -> None:
    rows = owndata.rows_only(table)
    owndata.write_csv(rows, project.root / "exports" / "events.csv")
    params = owndata.write_params(project.root, owndata.params("exports/events.csv"))

    first = ingest(params, "--until", "2024-01-10").json()
    assert first["last"] == "2024-01-10"
    assert first["held_back"] == (rows[owndata.TIME] >= "2024-01-11").sum()
    second = ingest(params, "--until", "2024-01-20").json()
    assert (second["first"], second["last"]) == ("2024-01-11", "2024-01-20")
    assert ingest(params, "--until", "2024-01-20").json()["rows"] == 0
    everything = ingest(params).json()
    assert everything["last"] == "2024-01-28" and everything["held_back"] == 0
    assert len(accepted(project, params)) == len(rows)


def test_late_rows_pass_within_the_lateness_and_conflicting_repeats_are_refused(
    project: Project, table: pd.DataFrame
) -> None:
    rows = owndata.rows_only(table)
    export = project.root / "exports" / "events.csv"
    raw = owndata.params("exports/events.csv")
    raw["data"]["lateness"] = "5D"
    params = owndata.write_params(project.root, raw)
    owndata.write_csv(rows[rows[owndata.TIME] < "2024-01-20"], export)
    assert ingest(params).json()["rows"] > 0
    before = raw_files(project)

    late = rows[rows[owndata.TIME] >= "2024-01-20"].iloc[:5].copy()
    late[owndata.ID] = [f"late-{i}" for i in range(5)]
    late[owndata.TIME] = pd.Timestamp("2024-01-16 12:00")  # 3.5 days before the newest: in
    owndata.write_csv(pd.concat([rows[rows[owndata.TIME] < "2024-01-20"], late]), export)
    taken = ingest(params).json()
    assert (taken["rows"], taken["first"]) == (5, "2024-01-16")

    too_late = late.assign(**{owndata.ID: "very-late", owndata.TIME: pd.Timestamp("2024-01-02")})
    current = pd.read_csv(export)
    owndata.write_csv(pd.concat([current, too_late.iloc[:1]]), export)
    refused = ingest(params)
    assert refused.exit_code == 4
    assert "older_than_lateness_5D:event time" in refused.stderr
    assert "2024-01-02" in refused.stderr  # the row is named
    current.to_csv(export, index=False)  # the user removes it: the same command works again
    assert ingest(params).exit_code == 0

    changed = current.copy()
    changed.loc[3, owndata.AMOUNT] = changed.loc[3, owndata.AMOUNT] + 10
    changed.to_csv(export, index=False)
    conflict = ingest(params)
    assert conflict.exit_code == 4, conflict.stderr
    lines = conflict.stderr.strip().splitlines()
    assert len(lines) == 1 and "accepted_with_other_values:event id" in lines[0]
    assert str(changed.loc[3, owndata.ID]) in lines[0]
    folders = quarantined(project)
    assert len(folders) == 2 and all(f.startswith("events-") for f in folders)
    assert len(raw_files(project)) == len(before) + 1  # only the late rows were added
    current.to_csv(export, index=False)
    assert ingest(params).json()["rows"] == 0


# -- a folder of drops ---------------------------------------------------------------------------


def test_each_new_drop_is_a_batch_and_a_file_taken_before_is_skipped(
    project: Project, table: pd.DataFrame
) -> None:
    rows = owndata.rows_only(table)
    drops = project.root / "drops"
    drops.mkdir()
    days = rows[owndata.TIME].dt.strftime("%Y-%m-%d")
    for day in sorted(days.unique())[:3]:
        rows[days == day].to_parquet(drops / f"{day}.parquet", index=False)
    params = owndata.write_params(project.root, owndata.params("drops/*.parquet"))

    first = ingest(params).json()
    assert len(first["paths"]) == 3 and first["rows"] == (days <= "2024-01-03").sum()
    assert ingest(params).json()["rows"] == 0
    (drops / "2024-01-02.parquet").rename(drops / "copy-of-jan-2.parquet")  # same content
    assert ingest(params).json()["rows"] == 0

    bad = rows[days == "2024-01-05"].assign(**{owndata.CHANNEL: "fax"})  # not an allowed value
    bad.to_parquet(drops / "2024-01-05.parquet", index=False)
    rows[days == "2024-01-04"].to_parquet(drops / "2024-01-04.parquet", index=False)
    mixed = ingest(params)
    assert mixed.exit_code == 4
    assert "expect_column_values_to_be_in_set(channel/type)" in mixed.stderr
    assert "1 other batches accepted" in mixed.stderr
    assert accepted(project, params)[owndata.TIME].max() < pd.Timestamp("2024-01-05")

    note = ingest(params).json()  # the bad drop is not quarantined twice
    assert note["rows"] == 0 and "still quarantined" in note["notes"][0]
    assert len(quarantined(project)) == 1
    rows[days == "2024-01-05"].to_parquet(drops / "2024-01-05.parquet", index=False)  # fixed
    assert ingest(params).json()["rows"] == (days == "2024-01-05").sum()


# -- SQL tables ------------------------------------------------------------------------------------


def _pg_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=3).close()
    except Exception:
        return False
    return True


@pytest.fixture
def pg_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A fresh table in the `test` database (CI requires PostgreSQL; elsewhere it may skip)."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required in CI")
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL)
    name = f"events_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("RETURNS_DB", PG_URL)
    try:
        yield engine, name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}_labels"'))
        engine.dispose()
        from driftloop.sources import ENGINES

        ENGINES.clear()


@pytest.fixture
def sqlite_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'shop.db'}"
    engine = sa.create_engine(url)
    monkeypatch.setenv("RETURNS_DB", url)
    yield engine, "events"
    engine.dispose()
    from driftloop.sources import ENGINES

    ENGINES.clear()


def sql_source(name: str, **extra: str) -> dict[str, Any]:
    return {"kind": "sql", "url_env": "RETURNS_DB", "table": name, **extra}


@pytest.mark.postgres
def test_a_postgres_table_that_gains_rows_is_read_by_its_watermark(
    project: Project, table: pd.DataFrame, pg_table: tuple[Any, str]
) -> None:
    engine, name = pg_table
    rows = owndata.rows_only(table)
    labels = owndata.labels_of(table)
    rows.iloc[:300].to_sql(name, engine, index=False)
    labels.iloc[:0].to_sql(f"{name}_labels", engine, index=False)
    raw = owndata.params(sql_source(name), sql_source(f"{name}_labels"))
    raw["data"]["lateness"] = "2D"
    params = owndata.write_params(project.root, raw)

    assert ingest(params).json()["rows"] == 300
    assert ingest(params).json()["rows"] == 0  # run again: nothing new
    newest = rows[owndata.TIME].iloc[299]
    late = rows.iloc[300:310].assign(**{owndata.TIME: newest - pd.Timedelta("1D")})
    late[owndata.ID] = [f"late-{i}" for i in range(10)]  # arrived late, within 2 days
    pd.concat([rows.iloc[300:500], late]).to_sql(name, engine, index=False, if_exists="append")
    grown = ingest(params).json()
    assert grown["rows"] == 210
    assert ingest(params).json()["rows"] == 0
    assert len(accepted(project, params)) == 510

    ids = set(accepted(project, params)[owndata.ID])
    known = labels[labels[owndata.ID].isin(ids)]
    known.iloc[:150].to_sql(f"{name}_labels", engine, index=False, if_exists="append")
    first = ingest(params, "--labels", "source").json()
    assert first["rows"] == 150
    assert ingest(params, "--labels", "source").json()["rows"] == 0
    known.iloc[150:250].to_sql(f"{name}_labels", engine, index=False, if_exists="append")
    assert ingest(params, "--labels", "source").json()["rows"] == 100


def test_a_sqlite_query_with_an_insertion_time_watermark_sees_late_events(
    project: Project, table: pd.DataFrame, sqlite_table: tuple[Any, str]
) -> None:
    engine, name = sqlite_table
    rows = owndata.rows_only(table).assign(inserted=lambda f: f[owndata.TIME])
    rows.iloc[:200].to_sql(name, engine, index=False)
    query = f"SELECT * FROM {name} WHERE \"channel/type\" <> 'phone'"
    source = {
        "kind": "sql",
        "url_env": "RETURNS_DB",
        "query": query,
        "watermark_column": "inserted",
    }
    params = owndata.write_params(project.root, owndata.params(source))

    first = ingest(params).json()
    assert first["rows"] == (rows.iloc[:200][owndata.CHANNEL] != "phone").sum()
    old = rows.iloc[200:230].assign(
        **{owndata.TIME: pd.Timestamp("2024-01-01 09:00"), "inserted": pd.Timestamp("2024-02-01")}
    )  # events of Jan 1 inserted weeks later: the watermark is the insertion time
    old[owndata.ID] = [f"backfill-{i}" for i in range(len(old))]
    old.to_sql(name, engine, index=False, if_exists="append")
    backfill = ingest(params).json()
    assert backfill["rows"] == (old[owndata.CHANNEL] != "phone").sum()
    assert backfill["first"] == "2024-01-01"
    assert ingest(params).json()["rows"] == 0


def test_a_missing_url_variable_or_table_is_one_clear_line(
    project: Project, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    params = owndata.write_params(project.root, owndata.params(sql_source("nowhere")))
    monkeypatch.delenv("RETURNS_DB", raising=False)
    unset = ingest(params)
    assert unset.exit_code == 2
    assert unset.stderr.startswith("error: data.source: environment variable RETURNS_DB")
    monkeypatch.setenv("RETURNS_DB", f"sqlite:///{tmp_path / 'empty.db'}")
    missing = ingest(params)
    assert missing.exit_code == 3
    assert len(missing.stderr.strip().splitlines()) == 1 and "nowhere" in missing.stderr


def test_a_database_url_in_params_is_refused(project: Project) -> None:
    raw = owndata.params("postgresql://user:secret@db/prod")
    params = owndata.write_params(project.root, raw)
    result = ingest(params)
    assert result.exit_code == 2
    assert "key 'data.source'" in result.stderr and "password" in result.stderr


# -- label batches from a file and a folder ------------------------------------------------------


def test_labels_from_a_growing_file_and_from_a_folder_of_drops(
    project: Project, table: pd.DataFrame
) -> None:
    rows = owndata.rows_only(table)
    labels = owndata.labels_of(table)
    owndata.write_csv(rows, project.root / "exports" / "events.csv")
    owndata.write_csv(labels, project.root / "exports" / "labels.csv")
    params = owndata.write_params(
        project.root, owndata.params("exports/events.csv", "exports/labels.csv")
    )
    assert ingest(params).json()["rows"] == len(rows)

    by_jan_20 = ingest(params, "--labels", "source", "--until", "2024-01-20").json()
    assert by_jan_20["rows"] == (labels[owndata.KNOWN_AT] < "2024-01-21").sum()
    assert by_jan_20["held_back"] == (labels[owndata.KNOWN_AT] >= "2024-01-21").sum()
    assert ingest(params, "--labels", "source", "--until", "2024-01-20").json()["rows"] == 0
    rest = ingest(params, "--labels", "source").json()
    assert by_jan_20["rows"] + rest["rows"] == len(labels)

    wrong = labels.iloc[:3].assign(**{owndata.LABEL: 1 - labels[owndata.LABEL].iloc[:3]})
    folder = project.root / "label-drops"
    owndata.write_csv(wrong, folder / "corrections.csv")
    raw = owndata.params("exports/events.csv", "label-drops")
    params = owndata.write_params(project.root, raw)
    refused = ingest(params, "--labels", "source")
    assert refused.exit_code == 4 and "conflicting_label:event id" in refused.stderr
    owndata.write_csv(labels.iloc[:3], folder / "corrections.csv")  # the same labels: repeats
    assert ingest(params, "--labels", "source").json()["rows"] == 0


def test_the_ledger_is_a_cache_losing_it_only_reads_more(
    project: Project, table: pd.DataFrame
) -> None:
    rows = owndata.rows_only(table)
    owndata.write_csv(rows.iloc[:200], project.root / "exports" / "events.csv")
    params = owndata.write_params(project.root, owndata.params("exports/events.csv"))
    assert ingest(params).json()["rows"] == 200
    ledger = project.settings.state_dir / "sources" / "returns.json"
    entries = json.loads(ledger.read_text())["data"]
    (entry,) = entries.values()
    assert (
        entry["complete"]
        and entry["offset"] == (project.root / "exports/events.csv").stat().st_size
    )
    ledger.unlink()
    again = ingest(params).json()
    assert (again["rows"], again["repeats"]) == (0, 200)
