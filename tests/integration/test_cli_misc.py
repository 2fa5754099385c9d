"""The CLI's plumbing as a user meets it: `--json` output, `status`, an unreachable store, `ui`.

Real processes throughout: the installed entry point (`main()`), MLflow on a temp SQLite file,
a real `prefect server start`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from driftloop.config import load_context
from driftloop.lineage import COMPLETE_TAG, Lineage, Verdict
from tests.helpers import REPO_ROOT, cli, cli_command, cli_subprocess, subprocess_env


def strict_loads(text: str) -> Any:
    """One JSON document, parsed as jq would (NaN or a second document is an error)."""

    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the repo's params.yaml and no MLflow store yet."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copyfile(REPO_ROOT / "params.yaml", root / "params.yaml")
    monkeypatch.setenv("DRIFTLOOP_PROJECT", str(root))
    monkeypatch.setenv("DRIFTLOOP_HOME", str(root / ".driftloop"))
    for var in ("MLFLOW_TRACKING_URI", "DRIFTLOOP_TRACKING_URI", "DRIFTLOOP_PARAMS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(root)
    return root


# -- --json: one document on stdout ---------------------------------------------------------------

CHATTY_COMMAND = """
import os, subprocess, sys
import typer
from driftloop import cli

@cli.app.command("chatty")
def chatty(as_json: bool = typer.Option(False, "--json")) -> None:
    print("python chatter")  # as DVC's "Initialized DVC repository."
    os.write(1, b"descriptor chatter\\n")  # as C extensions and rich write
    subprocess.run(["echo", "child chatter"], check=True)  # a tool the command starts
    cli._emit({"score": float("nan"), "ok": True}, as_json, "the result")
    print("late chatter")

sys.argv = ["driftloop", *sys.argv[1:]]
cli.main()
"""


def run_chatty(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-c", CHATTY_COMMAND, "chatty", *args],  # -P: the installed package
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )


def test_json_output_is_one_document_and_chatter_goes_to_stderr() -> None:
    done = run_chatty("--json")

    assert done.returncode == 0, done.stderr
    assert strict_loads(done.stdout) == {"ok": True, "score": None}
    for line in ("python chatter", "descriptor chatter", "child chatter", "late chatter"):
        assert line in done.stderr


def test_without_json_output_is_unchanged() -> None:
    done = run_chatty()

    assert done.returncode == 0, done.stderr
    lines = {"python chatter", "descriptor chatter", "child chatter", "the result", "late chatter"}
    assert set(done.stdout.splitlines()) == lines


# -- status ---------------------------------------------------------------------------------------


def make_champion(uri: str, name: str) -> str:
    """Register one version with alias champion, as training would: metrics (one NaN), tags."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("driftloop-train")
    run = client.create_run(experiment)
    run_id = run.info.run_id
    for key, value in {"holdout_roc_auc": 0.75, "holdout_log_loss": math.nan}.items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, COMPLETE_TAG, "true")
    client.set_terminated(run_id)
    client.create_registered_model(name)
    tags = {
        **Lineage(data_md5="abc123", run_id=run_id).to_tags(),
        **Verdict(decision="promoted", reason="first model").to_tags(),
    }
    mv = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, "champion", mv.version)
    return run_id


def test_status_json_of_a_champion_is_strict(workspace: Path, mlflow_template: Path) -> None:
    params, settings = load_context()
    settings.state_dir.mkdir(parents=True)
    shutil.copyfile(mlflow_template, settings.state_dir / "mlflow.db")
    run_id = make_champion(settings.mlflow_uri, params.train.model_name)

    result = cli_subprocess("status", "--json", cwd=workspace, timeout=180)

    assert result.exit_code == 0, result.stderr
    payload = strict_loads(result.stdout)
    champion = payload["champion"]
    assert (champion["version"], champion["run_id"]) == ("1", run_id)
    assert champion["data_md5"] == "abc123"
    assert champion["metrics"] == {"holdout_log_loss": None, "holdout_roc_auc": 0.75}
    assert (champion["decision"], payload["challenger"]) == ("promoted", None)


def test_status_of_a_new_project_creates_no_store(workspace: Path) -> None:
    """A read answers without MLflow when there is no store, and does not create one."""
    result = cli("status", "--json")

    payload = result.json()
    assert (payload["champion"], payload["challenger"], payload["last_decision"]) == (None,) * 3
    assert not (workspace / ".driftloop" / "mlflow.db").exists()


def test_an_online_replay_of_a_forecast_model_is_refused_in_one_line(workspace: Path) -> None:
    """Seattle's labels are later rows, never sent back: refused before any flow or workspace."""
    result = cli("replay", "--online", "--steps", "1")
    assert result.exit_code == 2 and "target.forecast" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (workspace / ".driftloop" / "replay").exists()
    flights = str(REPO_ROOT / "examples" / "flights" / "params.yaml")
    wrong = cli("--params", flights, "replay", "--online", "--experiment", "x")
    assert wrong.exit_code == 2 and "must be shadow, ab or canary" in wrong.stderr


def test_unreachable_tracking_store_fails_fast_with_one_line(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)  # the bounds come from driftloop's settings

    start = time.monotonic()
    result = cli_subprocess("status", cwd=workspace, timeout=300)
    elapsed = time.monotonic() - start

    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 6, result.stderr
    assert len(lines) == 1 and uri in lines[0], result.stderr
    assert lines[0].startswith("error: ")
    assert result.stdout == ""
    assert elapsed < 20, f"took {elapsed:.1f} s"


# -- ui -------------------------------------------------------------------------------------------


def ui_settings(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=2) as resp:
            loaded: dict[str, Any] = json.load(resp)
            return loaded
    except OSError:
        return None


@pytest.mark.slow
def test_prefect_ui_on_another_port_calls_its_own_api(workspace: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **subprocess_env(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        # What STACK_NOTES tell users to export: the server must not hand this to its UI.
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
    }
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(
        cli_command("ui", "prefect", "--port", str(port)),
        cwd=workspace,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the server and its children stop together
    )
    try:
        deadline = time.monotonic() + 90
        found = ui_settings(port)
        while found is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            found = ui_settings(port)
        assert found is not None, (tmp_path / "ui.log").read_text()[-3000:]
        assert found["api_url"] == f"http://127.0.0.1:{port}/api"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
