"""The FastAPI app: /predict, /feedback, /health, /metrics (and the OpenAPI docs).

/predict parses and validates a request on the event loop, then hands it to the scoring thread,
which scores the requests queued together in one call per variant (`coalesce.py`,
`predict_batch`); a shadow experiment's challenger scores in a worker process (`shadow.py`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gc
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from driftloop import datastore
from driftloop.config import Params, Settings
from driftloop.serving import predlog
from driftloop.serving.coalesce import Coalescer
from driftloop.serving.feedback import FeedbackLog, label_problem
from driftloop.serving.metrics import ServiceMetrics
from driftloop.serving.models import (
    Current,
    History,
    Loaded,
    ModelHolder,
    _experiments,
    features_for,
    predict,
)
from driftloop.serving.schema import needs_history, row_model
from driftloop.serving.security import API_KEY_HEADER, api_key, key_matches
from driftloop.serving.shadow import LogSpec, ShadowResult, ShadowScorer, ShadowWork

log = logging.getLogger("driftloop.serving")

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"


class ApiError(Exception):
    """A client error answered as {"detail": ..., "errors": [...]} with its status."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors or []


@dataclass
class Service:
    """Everything one app owns (no module-level state)."""

    params: Params
    settings: Settings
    holder: ModelHolder
    log: predlog.PredictionLog
    feedback: FeedbackLog
    metrics: ServiceMetrics
    history: History | None
    served: dict[str, str | None]  # prediction_id -> its data id (for feedback)
    key: str | None
    # What time a prediction or label is stamped with (naive UTC): the wall clock, or a replay's.
    clock: Callable[[], dt.datetime] = predlog.utc_now
    # Set by build_service (they call back into the service):
    scorer: Coalescer[Rows, Answers] = field(init=False)  # concurrent requests, scored together
    shadow: ShadowScorer = field(init=False)  # the challenger's shadow work, in its own process

    @property
    def model_name(self) -> str:
        return self.params.train.model_name


# -- request bodies ------------------------------------------------------------------------------


async def _body(request: Request, limit: int) -> Any:
    """The JSON body, with the size limit (413) and a clear 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body of {declared} bytes exceeds serve.max_body_bytes {limit}")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, f"body exceeds serve.max_body_bytes {limit}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # NaN literals (refused by name later), huge integers ...: Python's parser decides
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from None


def _records(body: Any, limit: int) -> list[Any]:
    """`{"records": [...]}`, a list of rows, or one row."""
    if isinstance(body, dict) and "records" in body:
        rows = body["records"]
        if not isinstance(rows, list):
            raise ApiError(422, "records: must be a list of objects")
    elif isinstance(body, list):
        rows = body
    elif isinstance(body, dict):
        rows = [body]
    else:
        raise ApiError(422, "body: must be an object or {'records': [...]}")
    if not rows:
        raise ApiError(422, "records: empty; send at least one row")
    if len(rows) > limit:
        raise ApiError(413, f"records: {len(rows)} rows exceed serve.max_rows {limit}")
    return rows


def _validate(rows: list[Any], adapter: TypeAdapter[list[BaseModel]]) -> list[dict[str, Any]]:
    """Rows checked against the model's input schema; 422 naming each bad field."""
    try:
        parsed = adapter.validate_python(rows)
    except ValidationError as exc:
        errors = [
            {"loc": ["records", *e["loc"]], "field": _field(e["loc"]), "msg": e["msg"]}
            for e in exc.errors()[:20]
        ]
        first = errors[0]
        raise ApiError(422, f"{first['field']}: {first['msg']}", errors) from None
    return [p.model_dump(by_alias=True) for p in parsed]


def _field(loc: tuple[Any, ...]) -> str:
    names = [str(x) for x in loc[1:] if isinstance(x, str)]
    row = loc[0] if loc and isinstance(loc[0], int) else None
    return f"records[{row}].{'.'.join(names) or '<row>'}"


# -- scoring -------------------------------------------------------------------------------------

Rows = list[dict[str, Any]]  # one request's validated rows
Answers = list[dict[str, Any]]  # one request's answers, in the order of its rows


def _keys(service: Service, rows: list[dict[str, Any]], ids: list[str]) -> list[str]:
    """Each row's sticky key: experiment.sticky_key, else the id column, else the prediction id."""
    sticky = service.params.serve.experiment.sticky_key or service.params.data.id_column
    return [
        str(r[sticky]) if sticky and r.get(sticky) is not None else pid
        for r, pid in zip(rows, ids, strict=True)
    ]


def _variants(service: Service, current: Current, keys: list[str]) -> list[Any]:
    """Each row's assignment (variant, shadow), or None without an experiment."""
    module = _experiments()
    if current.experiment is None or module is None or current.challenger is None:
        return [None] * len(keys)
    now = service.clock()
    return [module.assign(current.experiment, key, now) for key in keys]


@dataclass
class Batch:
    """The requests of one coalesced batch: their rows flattened, and what each gets back."""

    rows: list[dict[str, Any]]
    owner: list[int]  # the request of each row
    place: list[int]  # its position in that request
    ids: list[str]
    keys: list[str]
    assigned: list[Any]
    answers: list[list[dict[str, Any]]]
    failed: dict[int, Exception] = field(default_factory=dict)

    @classmethod
    def of(cls, service: Service, current: Current, requests: list[Rows]) -> Batch:
        rows = [row for rows in requests for row in rows]
        owner = [r for r, rows in enumerate(requests) for _ in rows]
        place = [j for rows in requests for j in range(len(rows))]
        ids = _new_ids(len(rows))
        keys = _keys(service, rows, ids)
        answers: list[list[dict[str, Any]]] = [[{} for _ in rows] for rows in requests]
        return cls(rows, owner, place, ids, keys, _variants(service, current, keys), answers)

    def parts(self, idx: list[int]) -> list[list[int]]:
        """Row indices grouped per request, requests in arrival order."""
        out: dict[int, list[int]] = {}
        for i in idx:
            out.setdefault(self.owner[i], []).append(i)
        return list(out.values())

    def result(self) -> list[Answers | Exception]:
        return [self.failed.get(r, answers) for r, answers in enumerate(self.answers)]


def _new_ids(n: int) -> list[str]:
    """n random prediction ids (128 bits, 32 hex digits; one system call, not n uuid4s)."""
    raw = os.urandom(16 * n).hex()
    return [raw[i : i + 32] for i in range(0, 32 * n, 32)]


def predict_batch(service: Service, requests: list[Rows]) -> list[Answers | Exception]:
    """Answer the requests of one batch: one model snapshot, one scoring call per variant.

    Every row keeps its own prediction id, assignment, log record and answer; metrics and the
    guardrail count each request; a request whose rows fail gets its own error.
    """
    current = service.holder.current  # one snapshot: a hot swap gives the old pair or the new
    if current.champion is None:
        error = ApiError(
            503, "no champion model is loaded yet (no `champion` alias in the registry)"
        )
        return [error] * len(requests)
    batch = Batch.of(service, current, requests)
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(batch.assigned):
        variant = a.variant if a is not None and not a.shadow else CHAMPION
        groups.setdefault(variant, []).append(i)
    for variant, idx in groups.items():
        _score_group(service, current, batch, variant, batch.parts(idx))
    shadow = [i for i, a in enumerate(batch.assigned) if a is not None and a.shadow]
    if shadow and current.challenger is not None:
        for part in batch.parts(shadow):
            if batch.owner[part[0]] not in batch.failed:
                work = ShadowWork(
                    current.challenger,
                    [batch.rows[i] for i in part],
                    [batch.ids[i] for i in part],
                    [batch.keys[i] for i in part],
                    service.clock(),
                )
                service.shadow.submit(work)
    return batch.result()


def _score_group(
    service: Service, current: Current, batch: Batch, variant: str, parts: list[list[int]]
) -> None:
    """Score one variant's rows in one call; on failure the challenger's rows go to the
    champion, and the champion's are retried request by request (only the culprit fails)."""
    model = current.challenger if variant == CHALLENGER else current.champion
    assert model is not None
    try:
        proba = _score_timed(service, model, variant, batch, parts)
    except Exception as exc:
        if variant == CHALLENGER:
            log.exception("challenger failed; the champion answers")  # the guardrail counted it
            _score_group(service, current, batch, CHAMPION, parts)
        elif len(parts) > 1:
            for part in parts:
                _score_group(service, current, batch, variant, [part])
        else:
            log.exception("scoring failed")
            batch.failed[batch.owner[parts[0][0]]] = exc
        return
    _answer(service, batch, model, variant, [i for part in parts for i in part], proba)


def _score_timed(
    service: Service, model: Loaded, variant: str, batch: Batch, parts: list[list[int]]
) -> np.ndarray:
    """Probabilities for the rows of `parts`; each request is counted in metrics (guardrail)."""
    start = time.perf_counter()
    ok = False
    try:
        proba = predict(model, _features(service, model, batch, parts))
        ok = True
        return proba
    finally:
        elapsed = time.perf_counter() - start
        for _ in parts:  # per request: what its own call would have counted
            service.metrics.observe(variant, model.version, elapsed, ok)
            if variant == CHALLENGER:
                _guardrail(service, ok, elapsed * 1000)


def _features(service: Service, model: Loaded, batch: Batch, parts: list[list[int]]) -> Any:
    """The model's input rows; with history features, request after request in arrival order
    (each sees the rows served before it, as when they come one by one)."""
    history = service.history
    if history is not None and needs_history(model.params):
        frames = [features_for(model, _frame(batch, part), history) for part in parts]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return features_for(model, _frame(batch, [i for part in parts for i in part]), None)


def _frame(batch: Batch, idx: list[int]) -> pd.DataFrame:
    return pd.DataFrame([batch.rows[i] for i in idx])


def _guardrail(service: Service, ok: bool, latency_ms: float, variant: str = CHALLENGER) -> None:
    """Count a challenger call; a tripped guardrail sends all traffic back to the champion."""
    module = _experiments()
    if module is None:
        return
    name = service.model_name
    reason = module.record_guardrail(
        service.settings, name, variant, ok, latency_ms, service.clock()
    )
    if reason:
        log.warning("experiment ended by a guardrail: %s", reason)
        service.holder.end_experiment()
        _alert_guardrail(name, variant, reason)


def _alert_guardrail(model: str, variant: str, reason: str) -> None:
    """Tell Prefect (and so the alert webhook) when one is configured; never on the hot path's
    import: prefect is loaded only then."""
    import os

    if os.environ.get("PREFECT_API_URL"):
        from tasks import alerts

        alerts.publish(
            "driftloop.experiment.guardrail", model, {"variant": variant, "reason": reason}
        )


def _answer(
    service: Service, batch: Batch, model: Loaded, variant: str, idx: list[int], proba: np.ndarray
) -> None:
    labels = (proba >= model.threshold(service.params.evaluation.threshold)).astype(int)
    version = model.version
    ids = [batch.ids[i] for i in idx]
    rows = [batch.rows[i] for i in idx]
    keys = [batch.keys[i] for i in idx]
    logged = predlog.records(ids, service.clock(), version, variant, proba, labels, rows, keys)
    service.log.append(logged)
    join = service.params.join_column
    for i, pid, row, p, label in zip(idx, ids, rows, proba.tolist(), labels.tolist(), strict=True):
        service.served[pid] = _key(row.get(join)) if join else None
        batch.answers[batch.owner[i]][batch.place[i]] = {
            "prediction_id": pid,
            "probability": p,
            "label": label,
            "model_version": version,
            "variant": variant,
        }


def _key(value: Any) -> str | None:
    return None if value is None else str(value)


def _shadow_done(service: Service, result: ShadowResult) -> None:
    """A challenger's shadow answers (the worker logged them): metrics and the guardrail."""
    ok = result.proba is not None
    if not ok:
        log.error("shadow scoring failed: %s", result.error)
    service.metrics.observe(SHADOW, result.work.model.version, result.cost, ok)
    _guardrail(service, ok, result.cost * 1000, SHADOW)


def _shadow_model(service: Service) -> Loaded | None:
    """The challenger a running shadow experiment scores (the worker is warmed with it)."""
    current = service.holder.current
    return current.challenger if getattr(current.experiment, "kind", None) == "shadow" else None


# -- feedback ------------------------------------------------------------------------------------


def _feedback(service: Service, items: list[Any]) -> list[dict[str, Any]]:
    params = service.params
    if params.target.column is None or params.join_column is None:
        raise ApiError(
            409,
            "this model's labels come from later rows (target.forecast): "
            "there is no feedback to send",
        )
    checked: list[tuple[str, Any, str | None]] = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(422, f"records[{n}]: must be an object")
        has_pid, has_id = "prediction_id" in item, "id" in item
        if has_pid == has_id:
            raise ApiError(422, f"records[{n}]: give exactly one of prediction_id or id")
        if "label" not in item:
            raise ApiError(422, f"records[{n}].label: field required")
        problem = label_problem(params, item["label"])
        if problem:
            raise ApiError(422, f"records[{n}].label: {problem}")
        if has_pid:
            pid = str(item["prediction_id"])
            if pid not in service.served:
                raise ApiError(404, f"records[{n}].prediction_id: unknown prediction {pid!r}")
            key = service.served[pid]
            if key is None:
                raise ApiError(
                    422,
                    f"records[{n}].prediction_id: that prediction carried no "
                    f"{params.join_column!r}; send feedback by id",
                )
            checked.append((key, item["label"], pid))
        else:
            checked.append((str(item["id"]), item["label"], None))
    return [
        {"key": o.key, "recorded": o.recorded, **({"reason": o.reason} if o.reason else {})}
        for o in service.feedback.record_many(checked, service.clock())
    ]


# -- the app -------------------------------------------------------------------------------------


def _history(params: Params, settings: Settings) -> History | None:
    if not needs_history(params):
        return None
    seed = datastore.load_accepted(settings.path(params.data.raw_dir), params)
    return History(params, seed)


def _served_ids(params: Params, settings: Settings) -> dict[str, str | None]:
    from driftloop.labels import prediction_keys

    return prediction_keys(predlog.read_prediction_log(params, settings), params.join_column)


def build_service(
    params: Params, settings: Settings, clock: Callable[[], dt.datetime] | None = None
) -> Service:
    """The service's parts (nothing started); `clock` stamps predictions and labels."""
    history = _history(params, settings)
    service = Service(
        params,
        settings,
        ModelHolder(params, settings, history),
        predlog.PredictionLog.for_model(params, settings),
        FeedbackLog(settings.path(params.serve.feedback_dir)),
        ServiceMetrics(),
        history,
        _served_ids(params, settings),
        api_key(),
        clock=clock or predlog.utc_now,
    )
    service.scorer = Coalescer(
        functools.partial(predict_batch, service), len, params.serve.max_rows, "scorer"
    )
    service.shadow = ShadowScorer(
        params.serve.shadow_queue,
        functools.partial(_shadow_done, service),
        service.metrics.shadow_dropped.inc,
        functools.partial(_shadow_model, service),
        LogSpec.of(service.log, params.evaluation.threshold),
    )
    return service


def create_app(
    params: Params,
    settings: Settings,
    clock: Callable[[], dt.datetime] | None = None,
    *,
    freeze_heap: bool = False,
) -> FastAPI:
    """The prediction service for the model of `params` (see the module docs).

    `clock` (naive UTC) stamps predictions, labels and experiment assignment: the wall clock,
    or a replay's event time when history is served again. `freeze_heap` (the server process:
    `driftloop serve`) moves what start-up allocated out of the garbage collector's sight.
    """
    service = build_service(params, settings, clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.log.start()
        service.holder.start()
        service.scorer.start()
        service.shadow.start()
        if freeze_heap:
            # What start-up made (modules, the loaded models) is never garbage: keep the cyclic
            # collector from walking it again on every full collection (~15 % of a request's CPU).
            gc.collect()
            gc.freeze()
        yield
        service.scorer.stop()  # answers what is queued
        service.shadow.stop()
        service.holder.stop()
        service.log.close()

    app = FastAPI(
        title=f"driftloop: {service.model_name}",
        description="The champion (and challenger) of the model registry, served.",
        lifespan=lifespan,
    )
    app.state.service = service
    if service.key is not None:
        app.add_middleware(ApiKeyMiddleware, key=service.key)
    _routes(app, service)
    return app


class ApiKeyMiddleware:
    """Every request carries the API key (X-API-Key) or gets a 401 (plain ASGI: cheap)."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(API_KEY_HEADER.lower().encode())
            if not key_matches(given.decode("latin-1") if given else None, self.key):
                detail = f"missing or wrong {API_KEY_HEADER} header"
                await JSONResponse({"detail": detail}, 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _routes(app: FastAPI, service: Service) -> None:
    serve = service.params.serve

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error(service, request, exc)

    row_schema = row_model(service.params).model_json_schema()
    many = {"type": "object", "properties": {"records": {"type": "array", "items": row_schema}}}
    body_doc = {"oneOf": [row_schema, many]}

    @app.post(
        "/predict",
        summary="Score raw input rows with the champion (or the assigned variant)",
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": body_doc}}}
        },
    )
    async def predict(request: Request) -> Response:
        body = await _body(request, serve.max_body_bytes)
        rows = _records(body, serve.max_rows)
        current = service.holder.current
        if current.champion is None:
            raise ApiError(503, "no champion model is loaded yet")
        valid = _validate(rows, current.champion.rows)
        answers = await service.scorer.submit(valid)
        return Response(orjson.dumps({"predictions": answers}), media_type="application/json")

    @app.post("/feedback", summary="Labels for served predictions (by prediction_id or data id)")
    async def feedback(request: Request) -> Response:
        body = await _body(request, serve.max_body_bytes)
        items = _records(body, serve.max_rows)
        done = await run_in_threadpool(_feedback, service, items)  # fsync off the event loop
        return JSONResponse({"feedback": done})

    @app.get("/health", summary="Loaded versions, the registry store, the prediction log")
    def health() -> Response:
        current = service.holder.current
        store = service.holder.store
        body = {
            "status": "ok" if current.champion is not None and service.log.healthy else "degraded",
            "model": service.model_name,
            "champion_version": current.champion.version if current.champion else None,
            "challenger_version": current.challenger.version if current.challenger else None,
            "experiment": current.experiment is not None,
            "registry": {"reachable": store.ok, "error": store.error},
            "prediction_log": {
                "ok": service.log.healthy,
                "error": service.log.error,
                "written": service.log.written,
            },
            "swaps": service.holder.swaps,
        }
        return JSONResponse(body, 200 if current.champion is not None else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        data, content_type = service.metrics.render()
        return Response(data, media_type=content_type)


def _error(service: Service, request: Request, exc: ApiError) -> Response:
    service.metrics.client_error(request.url.path, exc.status)
    body: dict[str, Any] = {"detail": exc.detail}
    if exc.errors:
        body["errors"] = exc.errors
    return JSONResponse(body, exc.status)
