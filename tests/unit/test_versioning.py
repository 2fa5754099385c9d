"""Setting a project up for DVC: a plain folder, a folder inside git, an existing repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from driftloop import versioning
from driftloop.errors import IngestError


def remote_url(root: Path) -> str:
    for line in (root / ".dvc" / "config").read_text().splitlines():
        if line.strip().startswith("url"):
            return line.split("=", 1)[1].strip()
    raise AssertionError("no remote url")


def test_a_plain_folder_becomes_a_repository_with_a_relative_local_remote(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    with pytest.raises(IngestError, match="driftloop init"):
        versioning.require_repo(root)
    done = versioning.set_up(root, root / ".driftloop" / "dvc-remote")
    assert done is not None and "without git" in done
    versioning.require_repo(root)
    assert remote_url(root) == "../.driftloop/dvc-remote"  # the project can move whole
    # it versions and pushes a data folder at once
    data = root / "data" / "raw"
    data.mkdir(parents=True)
    pd.DataFrame({"a": [1, 2]}).to_parquet(data / "one.parquet")
    md5 = versioning.track(root, data)
    assert md5.endswith(".dir")
    assert any((root / ".driftloop" / "dvc-remote").rglob("*.dir"))
    assert versioning.set_up(root, root / ".driftloop" / "dvc-remote") is None  # already one


def test_a_folder_inside_git_gets_a_dvc_subdirectory_and_its_state_ignored(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    root = tmp_path / "models" / "returns"
    root.mkdir(parents=True)
    done = versioning.set_up(root, root / ".driftloop" / "dvc-remote")
    assert done is not None and "git" in done and "without" not in done
    assert (root / ".dvc").is_dir() and not (tmp_path / ".dvc").exists()
    assert (root / ".gitignore").read_text() == "/.driftloop/\n"
    (root / ".driftloop" / "x").mkdir(parents=True)
    (root / ".driftloop" / "x" / "state.db").write_text("x")
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ".driftloop" not in status


def test_a_folder_within_a_repository_needs_nothing(tmp_path: Path) -> None:
    versioning.set_up(tmp_path, tmp_path / ".driftloop" / "dvc-remote")
    inner = tmp_path / "sub"
    inner.mkdir()
    assert versioning.dvc_root(inner) == tmp_path.resolve()
    assert versioning.set_up(inner, inner / ".driftloop" / "dvc-remote") is None


def test_an_ingest_outside_a_repository_says_so_and_writes_nothing(tmp_path: Path) -> None:
    from driftloop.config import Settings
    from driftloop.ingest import ingest_source
    from tests.unit.test_profiles import params, week

    week(0).to_csv(tmp_path / "events.csv", index=False)
    settings = Settings(project=tmp_path, home=tmp_path / ".driftloop")
    with pytest.raises(IngestError, match=r"not in a DVC repository.*driftloop init"):
        ingest_source(params(), settings)
    assert not (tmp_path / "data").exists()


def test_own_makes_a_repository_of_its_own_inside_another(tmp_path: Path) -> None:
    versioning.set_up(tmp_path, tmp_path / ".driftloop" / "dvc-remote")
    inner = tmp_path / "replay"
    inner.mkdir()
    subprocess.run(["git", "init", "-q", str(inner)], check=True)
    assert versioning.set_up(inner, inner / ".driftloop" / "dvc-remote", own=True) is not None
    assert versioning.dvc_root(inner) == inner.resolve()
    assert remote_url(inner) == "../.driftloop/dvc-remote"
