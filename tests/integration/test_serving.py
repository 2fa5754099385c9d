"""The prediction service on a real project: MLflow on SQLite, DVC, the label gate; no mocks.

One module project: loan applications with late labels (the event-table example), a champion and
a second version to swap to. The service runs in-process (FastAPI's TestClient) or as
`driftloop serve` in a subprocess (kill -9, restart).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient

from driftloop import labels
from driftloop.config import Params, Settings, load_context
from driftloop.errors import ConfigError
from driftloop.serving.app import _validate, create_app, predict_batch
from driftloop.serving.feedback import flush_feedback, read_feedback
from driftloop.serving.predlog import read_prediction_log, wal_dir
from driftloop.serving.security import check_bind
from tests.helpers import BIN_DIR, Project, cli, poll, subprocess_env
from tests.integration.test_event_tables import free_port, trained_loans

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass
class Served:
    """The loan model's project: params file, table, champion and second version."""

    project: Project
    params_file: Path
    table: pd.DataFrame
    first: str
    second: str

    def context(self, **serve: Any) -> tuple[Params, Settings]:
        raw = yaml.safe_load(self.params_file.read_text())
        raw.setdefault("serve", {}).update(serve)
        return load_context(params_file=self._write(raw))

    def _write(self, raw: dict[str, Any]) -> Path:
        path = self.params_file.with_name("loans-serve.yaml")
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def rows(self, start: int, n: int) -> list[dict[str, Any]]:
        part = self.table.iloc[start : start + n]
        return [
            {
                "loan_id": r.loan_id,
                "applied_at": r.applied_at.isoformat(),
                "region": r.region,
                "amount": float(r.amount),
            }
            for r in part.itertuples()
        ]

    def set_champion(self, version: str) -> None:
        client = self.project.mlflow_client()
        client.set_registered_model_alias("loan_default", "champion", version)


@pytest.fixture(scope="module")
def served(module_project: Project) -> Served:
    params_file, table, first = trained_loans(module_project, seed=3, labelled=700)
    second = cli("--params", str(params_file), "train", "--no-promote", "--json").json()
    return Served(module_project, params_file, table, first["version"], second["version"])


@pytest.fixture
def client(served: Served) -> Iterator[TestClient]:
    served.set_champion(served.first)
    params, settings = served.context(reload_seconds=0.2, flush_seconds=0.2)
    with TestClient(create_app(params, settings)) as test_client:
        yield test_client


def predict(client: TestClient, body: Any) -> Any:
    return client.post("/predict", json=body)


# -- predictions ---------------------------------------------------------------------------------


def test_predict_answers_each_row_with_id_probability_label_version_and_variant(
    served: Served, client: TestClient
) -> None:
    one = predict(client, served.rows(0, 1)[0])
    many = predict(client, {"records": served.rows(1, 5)})

    assert one.status_code == 200 and many.status_code == 200, many.text
    answers = one.json()["predictions"] + many.json()["predictions"]
    assert len(answers) == 6 and len({a["prediction_id"] for a in answers}) == 6
    for a in answers:
        assert 0.0 <= a["probability"] <= 1.0
        assert a["label"] == int(a["probability"] >= 0.5)
        assert (a["model_version"], a["variant"]) == (served.first, "champion")
    health = client.get("/health").json()
    assert health["champion_version"] == served.first and health["registry"]["reachable"]
    metrics = client.get("/metrics").text
    assert (
        f'driftloop_predict_requests_total{{model_version="{served.first}",variant="champion"}}'
        in metrics
    )
    assert "driftloop_predict_latency_seconds_bucket" in metrics
    spec = client.get("/openapi.json").json()
    assert spec["paths"].keys() >= {"/predict", "/feedback", "/health", "/metrics"}
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert "amount" in json.dumps(body["schema"])


def test_the_prediction_log_holds_every_prediction_with_its_inputs(
    served: Served, client: TestClient
) -> None:
    params, settings = served.context()
    answers = predict(client, {"records": served.rows(10, 20)}).json()["predictions"]
    ids = {a["prediction_id"] for a in answers}

    logged = poll(
        lambda: read_prediction_log(params, settings), lambda f: ids <= set(f["prediction_id"]), 10
    )

    mine = logged[logged["prediction_id"].isin(ids)]
    assert set(mine["loan_id"]) == {r["loan_id"] for r in served.rows(10, 20)}
    assert (mine["variant"] == "champion").all() and mine["probability"].between(0, 1).all()
    assert mine["key"].tolist() == mine["loan_id"].tolist()  # the id column is the sticky key


# -- coalescing: concurrent requests scored together, each answered as if alone -----------------


def _alone(client: TestClient, requests: list[list[dict[str, Any]]]) -> list[list[Any]]:
    return [predict(client, {"records": rows}).json()["predictions"] for rows in requests]


def _same_answers(got: list[Any], alone: list[Any]) -> None:
    assert len(got) == len(alone)
    for a, b in zip(got, alone, strict=True):
        assert (a["probability"], a["label"]) == (b["probability"], b["label"])
        assert (a["model_version"], a["variant"]) == (b["model_version"], b["variant"])


def test_a_coalesced_batch_answers_each_request_as_it_is_answered_alone(
    served: Served, client: TestClient
) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    requests = [served.rows(200, 1), served.rows(201, 4), served.rows(205, 1), served.rows(206, 7)]
    alone = _alone(client, requests)
    valid = [_validate(rows, service.holder.current.champion.rows) for rows in requests]

    together = predict_batch(service, valid)  # the scorer thread's call for one batch

    for got, want in zip(together, alone, strict=True):
        assert isinstance(got, list)
        _same_answers(got, want)
    ids = [a["prediction_id"] for got in together for a in got]  # type: ignore[union-attr]
    assert len(set(ids)) == len(ids) == 13
    assert not set(ids) & {a["prediction_id"] for want in alone for a in want}
    params, settings = served.context()
    logged = poll(
        lambda: read_prediction_log(params, settings),
        lambda f: set(ids) <= set(f["prediction_id"]),
        10,
    )
    by_id = logged.set_index("prediction_id")
    rows = [r for request in requests for r in request]
    assert [by_id.loc[i, "loan_id"] for i in ids] == [r["loan_id"] for r in rows]  # order kept


def test_a_request_that_fails_in_a_batch_fails_alone(served: Served, client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    good, other = served.rows(220, 3), served.rows(223, 2)
    alone = _alone(client, [good, other])
    valid = [_validate(rows, service.holder.current.champion.rows) for rows in (good, other)]
    broken = [
        {**valid[0][0], "applied_at": "not a time"}
    ]  # past validation: the feature step fails

    answers = predict_batch(service, [valid[0], broken, valid[1]])

    assert isinstance(answers[1], Exception)
    _same_answers(answers[0], alone[0])  # type: ignore[arg-type]
    _same_answers(answers[2], alone[1])  # type: ignore[arg-type]


def test_concurrent_requests_each_get_their_own_rows_answers_and_their_own_422(
    served: Served, client: TestClient
) -> None:
    requests = [served.rows(240 + 3 * i, 1 + i % 3) for i in range(24)]
    alone = _alone(client, requests)
    bad = {"records": [{"applied_at": "2014-02-01", "region": "west", "amount": -5.0}]}
    bodies: list[Any] = [{"records": rows} for rows in requests]
    bodies[5::6] = [bad] * len(bodies[5::6])

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: predict(client, body), bodies))

    for n, answer in enumerate(answers):
        if bodies[n] is bad:
            assert answer.status_code == 422 and "amount" in answer.json()["detail"]
        else:
            assert answer.status_code == 200, answer.text
            _same_answers(answer.json()["predictions"], alone[n])


BAD_PAYLOADS: list[tuple[str, Any, int, str]] = [
    ("missing column", {"applied_at": "2014-02-01T10:00:00", "region": "west"}, 422, "amount"),
    ("wrong type", {"applied_at": "2014-02-01", "region": "west", "amount": "lots"}, 422, "amount"),
    ("category as number", {"applied_at": "2014-02-01", "region": 7, "amount": 1.0}, 422, "region"),
    (
        "bad timestamp",
        {"applied_at": "someday", "region": "west", "amount": 1.0},
        422,
        "applied_at",
    ),
    ("below min", {"applied_at": "2014-02-01", "region": "west", "amount": -5.0}, 422, "amount"),
    ("empty records", {"records": []}, 422, "empty"),
    ("records not a list", {"records": {"a": 1}}, 422, "records"),
    ("not an object", [1, 2], 422, "records[0]"),
]


@pytest.mark.parametrize(
    ("kind", "body", "status", "names"), BAD_PAYLOADS, ids=[b[0] for b in BAD_PAYLOADS]
)
def test_bad_payloads_get_a_clear_4xx_naming_the_field(
    client: TestClient, kind: str, body: Any, status: int, names: str
) -> None:
    response = predict(client, body)
    assert response.status_code == status, response.text
    assert names in response.json()["detail"]


def test_nan_not_json_too_many_rows_and_too_large_bodies_are_refused(
    served: Served, client: TestClient
) -> None:
    nan = b'{"applied_at": "2014-02-01", "region": "west", "amount": NaN}'
    assert client.post("/predict", content=nan).json()["detail"].startswith("records[0].amount")
    assert client.post("/predict", content=nan).status_code == 422
    garbage = client.post("/predict", content=b"{not json")
    assert garbage.status_code == 400 and "not JSON" in garbage.json()["detail"]
    params, _ = served.context()
    too_many = predict(client, {"records": served.rows(0, 1) * (params.serve.max_rows + 1)})
    assert too_many.status_code == 413 and "max_rows" in too_many.json()["detail"]
    big = b" " * (params.serve.max_body_bytes + 1)
    assert client.post("/predict", content=big).status_code == 413
    assert (
        'driftloop_client_errors_total{path="/predict",status="413"}' in client.get("/metrics").text
    )


# -- feedback ------------------------------------------------------------------------------------


def test_feedback_for_the_same_prediction_sent_concurrently_is_recorded_once(
    served: Served, client: TestClient
) -> None:
    params, settings = served.context()
    answer = predict(client, served.rows(800, 1)[0]).json()["predictions"][0]
    body = {"prediction_id": answer["prediction_id"], "label": 1}
    barrier = threading.Barrier(8)

    def send(_: int) -> Any:
        barrier.wait()
        return client.post("/feedback", json=body).json()["feedback"][0]

    with cf.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(send, range(8)))

    assert sum(o["recorded"] for o in outcomes) == 1
    fed = read_feedback(params, settings)
    assert (fed["key"] == served.rows(800, 1)[0]["loan_id"]).sum() == 1


BAD_FEEDBACK: list[tuple[str, Any, int, str]] = [
    ("unknown prediction", {"prediction_id": "nope", "label": 1}, 404, "unknown prediction"),
    ("label not allowed", {"id": "x", "label": 3}, 422, "label"),
    ("label wrong type", {"id": "x", "label": "yes"}, 422, "label"),
    ("no label", {"id": "x"}, 422, "label"),
    ("no key", {"label": 1}, 422, "prediction_id or id"),
]


@pytest.mark.parametrize(
    ("kind", "body", "status", "names"), BAD_FEEDBACK, ids=[b[0] for b in BAD_FEEDBACK]
)
def test_bad_feedback_gets_a_clear_4xx(
    client: TestClient, kind: str, body: Any, status: int, names: str
) -> None:
    response = client.post("/feedback", json=body)
    assert response.status_code == status, response.text
    assert names in response.json()["detail"]


def test_feedback_becomes_a_label_batch_through_the_label_gate(
    served: Served, client: TestClient
) -> None:
    params, settings = served.context()
    rows = served.rows(900, 6)  # accepted data, not labelled yet
    answers = predict(client, {"records": rows}).json()["predictions"]
    truth = served.table.set_index("loan_id")["defaulted"]
    sent = [
        {"prediction_id": a["prediction_id"], "label": int(truth[r["loan_id"]])}
        for a, r in zip(answers[:3], rows[:3], strict=True)
    ] + [{"id": r["loan_id"], "label": int(truth[r["loan_id"]])} for r in rows[3:]]
    assert all(
        f["recorded"] for f in client.post("/feedback", json={"records": sent}).json()["feedback"]
    )
    unknown = {"id": served.table.iloc[1100]["loan_id"], "label": 0}  # never ingested: waits
    client.post("/feedback", json=unknown)

    logged = poll(
        lambda: read_prediction_log(params, settings),
        lambda f: {a["prediction_id"] for a in answers} <= set(f["prediction_id"]),
        10,
    )
    known = labels.known_labels(params, settings)
    by_prediction = labels.for_predictions(logged, known, params)
    labels_of = by_prediction.set_index("prediction_id")["label"]
    for a, r in zip(answers, rows, strict=True):  # by prediction id or by data id alike
        assert labels_of[a["prediction_id"]] == truth[r["loan_id"]]

    result = flush_feedback(params, settings)

    assert result.sent >= 6 and result.pending >= 1 and result.path is not None
    stored = (
        pd.read_parquet(result.path)
        if result.path.endswith(".parquet")
        else pd.read_csv(result.path)
    )
    assert {r["loan_id"] for r in rows} <= set(stored["loan_id"].astype(str))
    again = cli("--params", str(settings.params), "feedback", "flush", "--json")
    assert again.exit_code == 0 and again.json()["sent"] == 0  # nothing new: a no-op


# -- hot swap ------------------------------------------------------------------------------------


def test_a_champion_move_under_load_swaps_within_seconds_and_no_request_fails(
    served: Served, client: TestClient
) -> None:
    stop = threading.Event()
    seen: list[tuple[float, str]] = []
    failures: list[str] = []
    body = {"records": served.rows(0, 3)}

    def hammer() -> None:
        while not stop.is_set():
            response = client.post("/predict", json=body)
            if response.status_code != 200:
                failures.append(response.text)
                continue
            seen.extend(
                (time.monotonic(), p["model_version"]) for p in response.json()["predictions"]
            )

    with cf.ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(hammer)
        time.sleep(1.0)
        moved = time.monotonic()
        served.set_champion(served.second)
        poll(lambda: list(seen), lambda s: any(v == served.second for _, v in s), 10)
        swapped = min(t for t, v in seen if v == served.second) - moved
        time.sleep(1.0)
        served.set_champion(served.first)  # a rollback swaps back the same way
        back = time.monotonic()
        poll(lambda: list(seen), lambda s: any(t > back and v == served.first for t, v in s), 10)
        time.sleep(0.5)
        stop.set()

    assert failures == []
    assert swapped < 5.0, swapped
    last_second = [v for t, v in seen if t > back + 3.0]
    assert set(last_second) <= {served.first}
    print(f"\nswap after the alias move: {swapped:.2f} s; {len(seen)} rows served")


def test_the_service_keeps_answering_while_the_registry_store_is_down(
    served: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served.set_champion(served.first)
    db = tmp_path / "copy.db"
    with (
        sqlite3.connect(served.project.settings.state_dir / "mlflow.db") as src,
        sqlite3.connect(db) as dst,
    ):
        src.backup(dst)
    monkeypatch.setenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")  # no kept-open connection
    # MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI: restore it after this test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.project.settings.mlflow_uri)
    served.context(reload_seconds=0.2)
    path = served.params_file.with_name("loans-serve.yaml")
    params, settings = load_context(params_file=path, tracking_uri=f"sqlite:///{db}")
    with TestClient(create_app(params, settings)) as test_client:
        assert test_client.get("/health").json()["registry"]["reachable"] is True
        db.rename(tmp_path / "gone.db")
        db.mkdir()  # the store's path is now a folder: every new connection fails
        down = poll(
            lambda: test_client.get("/health").json(), lambda h: not h["registry"]["reachable"], 10
        )
        answer = predict(test_client, served.rows(0, 2))
        assert answer.status_code == 200
        assert answer.json()["predictions"][0]["model_version"] == served.first
    assert down["registry"]["error"] and down["champion_version"] == served.first


# -- security ------------------------------------------------------------------------------------


def test_binding_beyond_loopback_needs_an_api_key_which_every_request_then_carries(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DRIFTLOOP_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="DRIFTLOOP_API_KEY"):
        check_bind("0.0.0.0")
    check_bind("127.0.0.1")
    refused = cli("--params", str(served.params_file), "serve", "--host", "0.0.0.0")
    assert refused.exit_code == 2 and "DRIFTLOOP_API_KEY" in refused.stderr

    monkeypatch.setenv("DRIFTLOOP_API_KEY", "s3cret")
    check_bind("0.0.0.0")
    params, settings = served.context()
    with TestClient(create_app(params, settings)) as test_client:
        assert test_client.get("/health").status_code == 401
        assert predict(test_client, served.rows(0, 1)).status_code == 401
        wrong = test_client.get("/health", headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401
        ok = test_client.post("/predict", json=served.rows(0, 1), headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200


# -- batch scoring -------------------------------------------------------------------------------


def test_score_writes_the_scored_file_and_logs_batch_predictions(served: Served) -> None:
    served.set_champion(served.first)
    source = served.project.root / "to-score.csv"
    served.table.drop(columns="defaulted").iloc[1000:1050].to_csv(source, index=False)

    result = cli("--params", str(served.params_file), "score", str(source), "--json")

    assert result.exit_code == 0, result.stderr
    summary = result.json()
    scored = pd.read_csv(summary["output"])
    assert len(scored) == 50 and scored["probability"].between(0, 1).all()
    assert (scored["model_version"].astype(str) == served.first).all()
    params, settings = served.context()
    logged = read_prediction_log(params, settings)
    assert set(scored["prediction_id"]) <= set(
        logged.loc[logged["variant"] == "batch", "prediction_id"]
    )


# -- experiments: routing through their interface (a stand-in, in these tests only) ---------------


@dataclass(frozen=True)
class _Assignment:
    variant: str
    shadow: bool = False


def _standin(kind: str, trip_after: int | None = None, slow: float = 0.0) -> types.ModuleType:
    module = types.ModuleType("driftloop.experiments")
    calls: list[str] = []

    def load_state(settings: Settings, model_name: str) -> Any:
        return None if module.ended else {"kind": kind}

    def assign(state: Any, key: str, now: Any) -> _Assignment:
        if kind == "shadow":
            return _Assignment("champion", True)
        return _Assignment("challenger" if hash(key) % 2 else "champion")

    def record_guardrail(
        settings: Settings, name: str, variant: str, ok: bool, ms: float, now: Any = None
    ) -> str | None:
        calls.append(variant)
        time.sleep(slow)  # called by the shadow worker after each item: a slow challenger
        if trip_after is not None and len(calls) >= trip_after:
            module.ended = True
            return "challenger p99 latency above the limit"
        return None

    module.ended = False  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    module.load_state = load_state  # type: ignore[attr-defined]
    module.assign = assign  # type: ignore[attr-defined]
    module.record_guardrail = record_guardrail  # type: ignore[attr-defined]
    return module


def _experiment_client(
    served: Served, monkeypatch: pytest.MonkeyPatch, module: types.ModuleType, **serve: Any
) -> TestClient:
    monkeypatch.setitem(sys.modules, "driftloop.experiments", module)
    served.set_champion(served.first)
    served.project.mlflow_client().set_registered_model_alias(
        "loan_default", "challenger", served.second
    )
    params, settings = served.context(reload_seconds=0.2, flush_seconds=0.2, **serve)
    return TestClient(create_app(params, settings))


def test_shadow_the_champion_answers_and_the_challenger_scores_the_same_rows_off_the_path(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _experiment_client(served, monkeypatch, _standin("shadow")) as test_client:
        health = poll(
            lambda: test_client.get("/health").json(),
            lambda h: h["challenger_version"] == served.second,
            10,
        )
        assert health["challenger_version"] == served.second
        answers = predict(test_client, {"records": served.rows(20, 10)}).json()["predictions"]
        assert {(a["variant"], a["model_version"]) for a in answers} == {("champion", served.first)}
        ids = {a["prediction_id"] for a in answers}
        params, settings = served.context()
        logged = poll(
            lambda: read_prediction_log(params, settings),
            lambda f: ids <= set(f.loc[f["variant"] == "shadow", "prediction_id"]),
            10,
        )
    shadow = logged[(logged["variant"] == "shadow") & logged["prediction_id"].isin(ids)]
    assert (shadow["model_version"] == served.second).all() and len(shadow) == 10


def test_a_full_shadow_queue_drops_work_and_counts_it(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _experiment_client(
        served, monkeypatch, _standin("shadow", slow=0.3), shadow_queue=1
    ) as test_client:
        health = poll(
            lambda: test_client.get("/health").json(),
            lambda h: h["challenger_version"] == served.second,
            10,
        )
        assert health["challenger_version"] == served.second
        for start in range(0, 200, 10):
            assert predict(test_client, {"records": served.rows(start, 10)}).status_code == 200
        metrics = test_client.get("/metrics").text
    dropped = [ln for ln in metrics.splitlines() if ln.startswith("driftloop_shadow_dropped_total")]
    assert dropped and float(dropped[0].split()[-1]) > 0


def test_ab_splits_traffic_by_sticky_key_and_a_tripped_guardrail_sends_it_back(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _standin("ab", trip_after=5)
    with _experiment_client(served, monkeypatch, module) as test_client:
        health = poll(
            lambda: test_client.get("/health").json(),
            lambda h: h["challenger_version"] == served.second,
            10,
        )
        assert health["challenger_version"] == served.second
        rows = served.rows(30, 40)
        first = predict(test_client, {"records": rows}).json()["predictions"]
        again = predict(test_client, {"records": rows}).json()["predictions"]
        assert {a["variant"] for a in first} == {"champion", "challenger"}
        for a, b in zip(first, again, strict=False):
            if not module.ended:
                assert a["variant"] == b["variant"]  # sticky by loan_id
        for start in range(0, 100, 10):
            predict(test_client, {"records": served.rows(start, 10)})
        assert module.ended
        after = predict(test_client, {"records": served.rows(100, 20)}).json()["predictions"]
    assert {a["variant"] for a in after} == {"champion"}


# -- the service as a process: kill -9 loses at most the last flush ----------------------------


def _start(served: Served, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **subprocess_env(),
        "DRIFTLOOP_PARAMS": str(served.params_file.with_name("loans-serve.yaml")),
    }
    return subprocess.Popen(
        [str(BIN_DIR / "driftloop"), "serve", "--port", str(port)],
        cwd=served.project.root,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _post(port: int, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _health(port: int) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


def _print_latency(port: int, row: dict[str, Any], n: int = 300) -> None:
    """Single-row latency over HTTP with keep-alive (a figure for the record, not a gate)."""
    import httpx

    took = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        for _ in range(n):
            start = time.perf_counter()
            assert http.post("/predict", json=row).status_code == 200
            took.append((time.perf_counter() - start) * 1000)
    took.sort()
    p50, p99 = took[n // 2], took[int(n * 0.99)]
    print(f"\nsingle-row /predict over HTTP: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


def test_kill_9_loses_no_flushed_prediction_and_a_restart_rolls_what_was_left(
    served: Served, tmp_path: Path
) -> None:
    served.set_champion(served.first)
    params, settings = served.context(flush_seconds=0.5)
    port = free_port()
    server = _start(served, port, tmp_path / "serve.log")
    try:
        poll(lambda: _health(port), lambda h: h is not None and h["champion_version"], 90)
        ids = []
        for start in range(0, 50, 5):
            answers = _post(port, "/predict", {"records": served.rows(start, 5)})["predictions"]
            ids += [a["prediction_id"] for a in answers]
        _print_latency(port, served.rows(100, 1)[0])
        time.sleep(1.5)  # > flush_seconds
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        server = _start(served, port, tmp_path / "serve.log")
        poll(lambda: _health(port), lambda h: h is not None and h["champion_version"], 90)
        # the restarted service knows the predictions made before the kill
        fed = _post(port, "/feedback", {"prediction_id": ids[-1], "label": 0})["feedback"]
        assert fed[0]["key"] == served.rows(45, 5)[-1]["loan_id"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    # SIGTERM: a clean stop (uvicorn re-raises the signal after it) that rolls its own file
    assert server.returncode in (0, -signal.SIGTERM)
    assert not list(wal_dir(params, settings).glob("*.jsonl"))
    logged = read_prediction_log(params, settings)
    assert set(ids) <= set(logged["prediction_id"]), (tmp_path / "serve.log").read_text()[-2000:]
    rolled = list(settings.path(params.serve.log_dir).glob("*.parquet"))
    assert rolled and set(ids) <= set(
        pd.concat(pd.read_parquet(p) for p in rolled)["prediction_id"]
    )
    assert settings.path(params.serve.log_dir).with_suffix(".dvc").is_file()


def _shadow_setup(served: Served) -> tuple[Params, Settings]:
    """v1 champion, v2 challenger, a shadow experiment declared (not started)."""
    served.set_champion(served.first)
    client_ = served.project.mlflow_client()
    client_.set_registered_model_alias("loan_default", "challenger", served.second)
    return served.context(reload_seconds=0.2, flush_seconds=0.2, experiment={"kind": "shadow"})


def test_a_real_shadow_experiment_is_followed_by_the_service_from_start_to_stop(
    served: Served,
) -> None:
    from driftloop import experiments

    params, settings = _shadow_setup(served)
    with TestClient(create_app(params, settings)) as test_client:
        experiments.start_experiment(params, settings)
        try:
            health = poll(
                lambda: test_client.get("/health").json(),
                lambda h: h["experiment"] and h["challenger_version"] == served.second,
                10,
            )
            assert health["challenger_version"] == served.second
            answers = predict(test_client, {"records": served.rows(40, 8)}).json()["predictions"]
            assert {a["variant"] for a in answers} == {"champion"}
            ids = {a["prediction_id"] for a in answers}
            logged = poll(
                lambda: read_prediction_log(params, settings),
                lambda f: ids <= set(f.loc[f["variant"] == "shadow", "prediction_id"]),
                10,
            )
            shadow = logged[(logged["variant"] == "shadow") & logged["prediction_id"].isin(ids)]
            assert len(shadow) == 8 and (shadow["model_version"] == served.second).all()
        finally:
            experiments.end_experiment(settings, params.train.model_name, "stopped", "test over")
        after = poll(lambda: test_client.get("/health").json(), lambda h: not h["experiment"], 10)
        assert after["challenger_version"] is None
        shadow = test_client.app.state.service.shadow  # type: ignore[attr-defined]
        assert shadow.started == 1  # one worker process scored the shadow rows ...
        assert not poll(lambda: shadow.running, lambda running: not running, 10)  # ... and stopped


def test_a_sigterm_to_the_process_group_leaves_the_shadow_workers_log_rolled(
    served: Served, tmp_path: Path
) -> None:
    """The shadow worker leaves stopping to the service, which rolls both logs on its way out."""
    from driftloop import experiments

    params, settings = _shadow_setup(served)
    experiments.start_experiment(params, settings)
    port = free_port()
    server = _start(served, port, tmp_path / "serve.log")
    try:
        poll(
            lambda: _health(port),
            lambda h: h is not None and h["challenger_version"] == served.second,
            90,
        )
        answers = _post(port, "/predict", {"records": served.rows(300, 6)})["predictions"]
        ids = {a["prediction_id"] for a in answers}
        poll(
            lambda: read_prediction_log(params, settings),
            lambda f: ids <= set(f.loc[f["variant"] == "shadow", "prediction_id"]),
            30,
        )
        os.killpg(server.pid, signal.SIGTERM)  # the worker gets it too
        server.wait(30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        experiments.end_experiment(settings, params.train.model_name, "stopped", "test over")
    assert not list(wal_dir(params, settings).glob("*.jsonl")), (tmp_path / "serve.log").read_text()
    rolled = pd.concat(
        pd.read_parquet(p) for p in settings.path(params.serve.log_dir).glob("*.parquet")
    )
    assert ids <= set(rolled.loc[rolled["variant"] == "shadow", "prediction_id"])
