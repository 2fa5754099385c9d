"""`--params FILE` reaches every command that reads params, without touching the environment."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
import yaml

from tests.helpers import Project, cli, cli_command, poll, subprocess_env


def health(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            return dict(json.loads(answer.read()))
    except urllib.error.HTTPError as refused:  # 503 until a champion is loaded: still a body
        return dict(json.loads(refused.read()))
    except OSError:
        return None


def test_serve_runs_the_model_of_the_params_file_given_on_the_command_line(
    project: Project,
) -> None:
    raw = yaml.safe_load((project.root / "params.yaml").read_text())
    raw["train"]["model_name"] = "other_model"
    (project.root / "other.yaml").write_text(yaml.safe_dump(raw))
    # Seattle's lags need history: the service reads the accepted data (no model needed yet)
    assert cli("--params", "other.yaml", "ingest", "--until", "2012-03-31").exit_code == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = subprocess.Popen(
        cli_command("--params", "other.yaml", "serve", "--port", str(port)),
        cwd=project.root,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        answer = poll(lambda: health(port), lambda h: h is not None, timeout=120)
        assert answer is not None and answer["model"] == "other_model"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def test_the_option_does_not_leak_into_the_environment(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DRIFTLOOP_PARAMS", raising=False)
    cli("--params", "missing.yaml", "status")
    assert "DRIFTLOOP_PARAMS" not in os.environ
