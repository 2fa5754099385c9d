"""`driftloop status` answers from a snapshot while the embedded store is unchanged, and reads
the registry again as soon as anyone writes to it (here: an alias moved outside driftloop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import Project, cli, cli_subprocess

pytestmark = pytest.mark.slow


def without_mlflow(tmp_path: Path) -> str:
    """A PYTHONPATH entry whose `mlflow` cannot be imported: a read that needs MLflow fails."""
    fake = tmp_path / "no-mlflow" / "mlflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('mlflow is hidden in this test')\n")
    return str(fake.parent)


def test_status_is_served_from_the_snapshot_until_the_store_changes(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("ingest", "--until", "2013-06-30").exit_code == 0
    assert cli("train", "--json").json()["version"] == "1"
    assert cli("train", "--no-promote", "--json").json()["version"] == "2"
    first = cli("status", "--json").json()
    assert first["champion"]["version"] == "1" and first["challenger"]["version"] == "2"

    monkeypatch.setenv("PYTHONPATH", without_mlflow(tmp_path))
    cached = cli_subprocess("status", "--json", cwd=project.root)
    assert cached.exit_code == 0, cached.stderr  # no MLflow needed: the snapshot answered
    assert json.loads(cached.stdout) == first

    client = project.mlflow_client()
    client.set_registered_model_alias(project.model_name, "champion", "2")  # a write elsewhere
    stale = cli_subprocess("status", "--json", cwd=project.root)
    assert stale.exit_code != 0  # the snapshot is void: it had to read the registry (hidden)

    monkeypatch.delenv("PYTHONPATH")
    fresh = cli_subprocess("status", "--json", cwd=project.root)
    assert json.loads(fresh.stdout)["champion"]["version"] == "2"
