"""Bad batch files through `driftloop ingest FILE` once a champion exists: fail closed.

Each bad batch must exit 4 with one `error:` line naming what failed, be kept in quarantine with
its original bytes, a validation report and Data Docs, and leave data/raw and the champion alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from driftloop.sources import load_seattle
from tests.helpers import CliResult, Project, cli, cli_subprocess

pytestmark = pytest.mark.slow

ACCEPTED_UNTIL = "2013-06-30"
GARBLED = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff\xfe" * 8


@dataclass(frozen=True)
class Baseline:
    raw: dict[str, bytes]
    md5: str
    champion: str
    versions: list[str]


@pytest.fixture(scope="module")
def baseline(module_project: Project) -> Baseline:
    """Accepted data and a first model: the state that bad batches must not touch."""
    assert cli("ingest", "--until", ACCEPTED_UNTIL).exit_code == 0
    assert cli("train", "--json").json()["promoted"] is True
    return Baseline(
        module_project.raw_snapshot(),
        module_project.raw_dvc_md5(),
        str(module_project.champion()),
        module_project.versions(),
    )


def next_days(first: str = "2013-07-01", last: str = "2013-07-14") -> pd.DataFrame:
    """Real rows just after the accepted data, as a user's CSV would carry them."""
    frame = load_seattle()
    rows = frame[(frame["date"] >= first) & (frame["date"] <= last)].reset_index(drop=True)
    return rows.assign(date=rows["date"].dt.strftime("%Y-%m-%d"))


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def missing_column() -> bytes:
    return csv_bytes(next_days().drop(columns="wind"))


def string_in_numeric_column() -> bytes:
    frame = next_days()
    frame["wind"] = frame["wind"].astype(object)
    frame.loc[3, "wind"] = "calm"
    return csv_bytes(frame)


def overlapping_dates_other_values() -> bytes:
    frame = next_days("2013-06-25", "2013-07-05")
    frame.loc[frame["date"] <= ACCEPTED_UNTIL, "wind"] += 1.0  # accepted days, measured again
    return csv_bytes(frame)


def duplicate_date() -> bytes:
    frame = next_days()
    return csv_bytes(pd.concat([frame, frame.iloc[[4]]]).sort_values("date"))


def garbled() -> bytes:
    return GARBLED


BAD_BATCHES = [
    pytest.param(missing_column, "expect_column_to_exist(wind)", id="missing-column"),
    pytest.param(
        string_in_numeric_column,
        "expect_column_values_to_be_in_type_list(wind)",
        id="string-in-numeric-column",
    ),
    # late data is accepted and exact repeats are skipped; an accepted key (here the date)
    # with other values is a conflict
    pytest.param(
        overlapping_dates_other_values,
        "expect_column_values_to_be_null(accepted_with_other_values:date)",
        id="overlap-with-other-values",
    ),
    pytest.param(duplicate_date, "expect_column_values_to_be_unique(date)", id="duplicate-date"),
    pytest.param(garbled, "unreadable csv (UnicodeDecodeError", id="garbled"),
]


def write_batch(folder: Path, name: str, content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path


def quarantined(project: Project) -> set[str]:
    folder = project.quarantine_dir
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def assert_rejected(
    project: Project,
    baseline: Baseline,
    batch: Path,
    result: CliResult,
    names: str,
    before: set[str],
) -> None:
    """Exit 4, one error line naming the failure, quarantined with evidence, nothing else moved."""
    assert result.exit_code == 4, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {batch}: ")
    assert names in lines[0]

    new = quarantined(project) - before
    assert len(new) == 1, new
    folder = project.quarantine_dir / new.pop()
    assert folder.name.startswith(batch.stem)
    assert str(folder) in lines[0]
    assert (folder / batch.name).read_bytes() == batch.read_bytes()
    report = json.loads((folder / "validation.json").read_text())
    assert report["success"] is False
    assert report["origin"] == str(batch)
    failed = [f"{o['expectation']}({o['column']})" for o in report["outcomes"] if not o["success"]]
    assert any(names in text for text in [*failed, report["read_error"] or ""]), report
    assert (folder / "docs" / "index.html").is_file()
    assert project.quarantine_dir.with_name(project.quarantine_dir.name + ".dvc").is_file()

    assert project.raw_snapshot() == baseline.raw
    assert project.raw_dvc_md5() == baseline.md5
    assert project.champion() == baseline.champion
    assert project.versions() == baseline.versions


@pytest.mark.parametrize(("make", "names"), BAD_BATCHES)
def test_bad_batch_is_quarantined_and_changes_nothing(
    module_project: Project,
    baseline: Baseline,
    tmp_path: Path,
    make: Callable[[], bytes],
    names: str,
) -> None:
    batch = write_batch(tmp_path / "incoming", f"bad_{make.__name__}.csv", make())
    before = quarantined(module_project)

    result = cli("ingest", str(batch))

    assert_rejected(module_project, baseline, batch, result, names, before)


def test_bad_batch_as_a_separate_process_prints_one_error_line(
    module_project: Project, baseline: Baseline, tmp_path: Path
) -> None:
    """The real entry point: no library warning or progress bar leaks onto stderr."""
    batch = write_batch(tmp_path / "incoming", "bad_types.csv", string_in_numeric_column())
    before = quarantined(module_project)

    result = cli_subprocess("ingest", str(batch), cwd=module_project.root)

    assert_rejected(
        module_project,
        baseline,
        batch,
        result,
        "expect_column_values_to_be_in_type_list(wind)",
        before,
    )
    assert result.stdout == ""


def test_the_same_batch_without_defects_is_accepted(
    module_project: Project, baseline: Baseline, tmp_path: Path
) -> None:
    """Control: the batches above fail because of their defects, not because of the route."""
    batch = write_batch(tmp_path / "incoming", "good.csv", csv_bytes(next_days()))

    result = cli("ingest", str(batch))

    assert result.exit_code == 0, result.stderr
    assert "accepted 14 rows 2013-07-01..2013-07-14" in result.stdout
    assert len(module_project.raw_snapshot()) == len(baseline.raw) + 1
    assert module_project.raw_dvc_md5() != baseline.md5
