"""The scale-out configuration: MLflow and a Prefect server on PostgreSQL (127.0.0.1:5432).

Skipped when no PostgreSQL answers there; the embedded default (SQLite) is tested elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.serve import local_server
from tests.helpers import Project

PG = "postgres@127.0.0.1:5432"


def _pg_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(f"postgresql://{PG}/postgres", connect_timeout=3).close()
    except Exception:
        return False
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not _pg_available(), reason="no PostgreSQL on 127.0.0.1:5432"),
]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway database, dropped afterwards."""
    import psycopg2

    name = f"driftloop_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(f"postgresql://{PG}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftloop.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_training_flow_on_postgres_prefect_and_mlflow(
    project: Project, pg_database: str, tmp_path: Path
) -> None:
    """Ingest + train + promote through a Prefect server and MLflow both backed by PostgreSQL."""
    import psycopg2

    prefect_db, mlflow_db = pg_database, f"{pg_database}_mlflow"
    admin = psycopg2.connect(f"postgresql://{PG}/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{mlflow_db}"')
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{PG}/{prefect_db}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    try:
        with local_server(port, env=env, timeout=180) as api_url:
            client_env = {
                **{k: v for k, v in env.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"},
                "PREFECT_API_URL": api_url,
                "MLFLOW_TRACKING_URI": f"postgresql://{PG}/{mlflow_db}",
            }
            out = _run(["run", "--until", "2013-12-31", "--json"], project.root, client_env)
            assert out.returncode == 0, out.stderr[-2000:]
            summary = json.loads(out.stdout)
            assert summary["promoted"] is True

            shown = _run(["status", "--json"], project.root, client_env)
            assert shown.returncode == 0, shown.stderr[-2000:]
            status = json.loads(shown.stdout)
            assert status["tracking_uri"].startswith("postgresql://")
            assert status["champion"]["version"] == summary["version"]

            conn = psycopg2.connect(f"postgresql://{PG}/{prefect_db}")
            cur = conn.cursor()
            cur.execute("SELECT state_name FROM flow_run")
            assert ("COMPLETED",) in {(s.upper(),) for (s,) in cur.fetchall()}
            conn.close()
            conn = psycopg2.connect(f"postgresql://{PG}/{mlflow_db}")
            cur = conn.cursor()
            cur.execute("SELECT alias, version FROM registered_model_aliases")
            assert ("champion", int(summary["version"])) in cur.fetchall()
            conn.close()
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{mlflow_db}" WITH (FORCE)')
        admin.close()
