"""Shared test setup: quiet offline env, a fresh temp project per test, the Prefect harness.

Real components throughout: git, DVC, MLflow on a per-project SQLite file, Great Expectations and
an ephemeral Prefect server (only for the tests that ask for `prefect_harness`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop.config import QUIET_OFFLINE_ENV
from tests.helpers import Project, build_project, run

# -- environment, before anything heavy is imported --------------------------------------------

for _key, _value in QUIET_OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# HistGradientBoosting on ~1k rows: OpenMP threads only add overhead on a shared 2-core box.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Never touch the user's ~/.prefect: one throwaway Prefect home for the whole session.
_PREFECT_HOME = tempfile.mkdtemp(prefix="driftloop-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fresh_mlflow: the project starts without an MLflow database (first use)"
    )


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """An ephemeral Prefect server with a temp database (about 12 s to start: opt in)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True, scope="module")
def _fresh_caches() -> Iterator[None]:
    """Each test module starts with empty per-process caches (loaded models, scored references).

    Their keys name the project and tracking URI, so nothing stale is ever served; clearing
    keeps a long session's memory to one module's models.
    """
    yield
    for module, cache in (("driftloop.registry", "MODELS"), ("driftloop.monitoring", "REFERENCES")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            getattr(loaded, cache).clear()


@pytest.fixture(scope="session")
def project_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`git init` + `dvc init` + analytics off, once per session (each dvc call costs seconds)."""
    template = tmp_path_factory.mktemp("template") / "project"
    template.mkdir()
    run(["git", "init", "-q"], template)
    run(["dvc", "init", "-q"], template)
    run(["dvc", "config", "core.analytics", "false"], template)
    return template


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, migrated once (`mlflow db upgrade`), copied per project."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    run([sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{db}"], db.parent)
    return db


@pytest.fixture
def project(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    project_template: Path,
) -> Project:
    """A fresh temp project (env and cwd point at it); mark `fresh_mlflow` to skip the DB seed."""
    fresh = request.node.get_closest_marker("fresh_mlflow") is not None
    seed = None if fresh else request.getfixturevalue("mlflow_template")
    return build_project(tmp_path, project_template, monkeypatch, seed)


@pytest.fixture(scope="module")
def module_project(
    tmp_path_factory: pytest.TempPathFactory, project_template: Path, mlflow_template: Path
) -> Iterator[Project]:
    """One temp project shared by a module's tests (for costly shared state such as a champion)."""
    with pytest.MonkeyPatch.context() as mp:
        yield build_project(tmp_path_factory.mktemp("proj"), project_template, mp, mlflow_template)
