"""Alerts through Prefect's own automation and notification block, to a real local HTTP
receiver: `driftloop alerts add webhook URL`, then the loop's events reach it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tests.helpers import Project, cli

pytestmark = pytest.mark.slow


class Receiver:
    """A webhook endpoint on a free loopback port that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 60) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.bodies:
                if text in json.dumps(body):
                    return body
            time.sleep(0.5)
        return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    yield got
    got.server.shutdown()


def test_alerts_add_webhook_sends_each_loop_event(
    project: Project, prefect_harness: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import get_current_settings

    from tasks.alerts import EVENTS, emit

    monkeypatch.setenv("PREFECT_API_URL", str(get_current_settings().api.url))
    added = cli("alerts", "add", "webhook", receiver.url, "--json").json()
    assert added["automation"]
    time.sleep(2)  # the automation is loaded by the server's trigger service
    for event in EVENTS:
        emit(event, "rain_tomorrow", {"reason": f"test {event}", "version": "3"})
    for event in EVENTS:
        body = receiver.wait_for(event)
        assert body is not None, f"{event} never reached the webhook: {receiver.bodies}"
        assert "rain_tomorrow" in body["subject"]
        assert f"test {event}" in body["body"]


def test_the_loop_itself_raises_its_alerts(
    project: Project, prefect_harness: None, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not emitted by hand: a real training flow's promotion and a real rollback reach the
    webhook through the automation."""
    from prefect.settings import get_current_settings

    monkeypatch.setenv("PREFECT_API_URL", str(get_current_settings().api.url))
    assert cli("alerts", "add", "webhook", receiver.url).exit_code == 0
    time.sleep(2)
    first = cli("run", "--until", "2013-06-30", "--json")
    assert first.exit_code == 0, first.stderr
    body = receiver.wait_for("driftloop.promotion")
    assert body is not None, receiver.bodies
    assert "rain_tomorrow" in body["subject"] and "promoted" in body["body"]
    refused = cli("rollback", "--reason", "nothing to go back to")
    assert refused.exit_code == 6  # no previous champion: nothing moved, nothing announced
    assert receiver.wait_for("driftloop.rollback", timeout=5) is None


def test_alerts_need_a_server_and_a_url(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    no_server = cli("alerts", "add", "webhook", "http://127.0.0.1:9/hook")
    assert no_server.exit_code == 2 and "PREFECT_API_URL" in no_server.stderr
    bad = cli("alerts", "add", "webhook", "ftp://example")
    assert bad.exit_code == 2 and "not an http(s) URL" in bad.stderr
