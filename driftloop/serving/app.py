"""The FastAPI app: /predict, /feedback, /health, /metrics (and the OpenAPI docs)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from driftloop import datastore
from driftloop.config import Params, Settings
from driftloop.serving import predlog
from driftloop.serving.feedback import FeedbackLog, label_problem
from driftloop.serving.metrics import ServiceMetrics
from driftloop.serving.models import History, Loaded, ModelHolder, _experiments, score
from driftloop.serving.schema import needs_history, row_model
from driftloop.serving.security import API_KEY_HEADER, api_key, key_matches

log = logging.getLogger("driftloop.serving")

CHAMPION, CHALLENGER, SHADOW = "champion", "challenger", "shadow"


class ApiError(Exception):
    """A client error answered as {"detail": ..., "errors": [...]} with its status."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors or []


class InFlight:
    """How many predictions are being answered now (shadow work waits until it is none)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def __enter__(self) -> InFlight:
        with self._lock:
            self._count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._count -= 1

    @property
    def idle(self) -> bool:
        return self._count == 0


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
    shadow: queue.Queue[ShadowWork]
    served: dict[str, str | None]  # prediction_id -> its data id (for feedback)
    key: str | None
    busy: InFlight = field(default_factory=lambda: InFlight())
    # What time a prediction or label is stamped with (naive UTC): the wall clock, or a replay's.
    clock: Callable[[], dt.datetime] = predlog.utc_now

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
    return [p.model_dump() for p in parsed]


def _field(loc: tuple[Any, ...]) -> str:
    names = [str(x) for x in loc[1:] if isinstance(x, str)]
    row = loc[0] if loc and isinstance(loc[0], int) else None
    return f"records[{row}].{'.'.join(names) or '<row>'}"


# -- scoring -------------------------------------------------------------------------------------


def _keys(service: Service, rows: list[dict[str, Any]], ids: list[str]) -> list[str]:
    """Each row's sticky key: experiment.sticky_key, else the id column, else the prediction id."""
    sticky = service.params.serve.experiment.sticky_key or service.params.data.id_column
    return [
        str(r[sticky]) if sticky and r.get(sticky) is not None else pid
        for r, pid in zip(rows, ids, strict=True)
    ]


def _variants(service: Service, keys: list[str]) -> list[Any]:
    """Each row's assignment (variant, shadow), or None without an experiment."""
    current = service.holder.current
    module = _experiments()
    if current.experiment is None or module is None or current.challenger is None:
        return [None] * len(keys)
    now = service.clock()
    return [module.assign(current.experiment, key, now) for key in keys]


def _predict(service: Service, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with service.busy:
        return _predict_rows(service, rows)


def _predict_rows(service: Service, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    current = service.holder.current
    if current.champion is None:
        raise ApiError(503, "no champion model is loaded yet (no `champion` alias in the registry)")
    ids = [uuid.uuid4().hex for _ in rows]
    keys = _keys(service, rows, ids)
    assigned = _variants(service, keys)
    frame = pd.DataFrame(rows)
    groups: dict[str, list[int]] = {}
    for i, a in enumerate(assigned):
        variant = a.variant if a is not None and not a.shadow else CHAMPION
        groups.setdefault(variant, []).append(i)
    out: list[dict[str, Any]] = [{} for _ in rows]
    for variant, idx in groups.items():
        part = frame.iloc[idx].reset_index(drop=True)
        model = current.challenger if variant == CHALLENGER else current.champion
        assert model is not None
        try:
            proba = _score_timed(service, model, variant, part)
        except Exception:
            if variant != CHALLENGER:
                raise
            log.exception("challenger failed; the champion answers")  # the guardrail counted it
            variant, model = CHAMPION, current.champion
            proba = _score_timed(service, model, variant, part)
        answered = Answered(model, variant, [ids[i] for i in idx], [keys[i] for i in idx], idx)
        _answer(service, answered, proba, [rows[i] for i in idx], out)
    shadow = [i for i, a in enumerate(assigned) if a is not None and a.shadow]
    if shadow and current.challenger is not None:
        _enqueue_shadow(service, current.challenger, frame, rows, ids, keys, shadow)
    return out


@dataclass(frozen=True)
class Answered:
    """Which model answered which rows of a request."""

    model: Loaded
    variant: str
    ids: list[str]
    keys: list[str]
    idx: list[int]


def _score_timed(service: Service, model: Loaded, variant: str, frame: pd.DataFrame) -> np.ndarray:
    start = time.perf_counter()
    ok = False
    try:
        proba = score(model, frame, service.history)
        ok = True
        return proba
    finally:
        elapsed = time.perf_counter() - start
        service.metrics.observe(variant, model.version, elapsed, ok)
        if variant == CHALLENGER:
            _guardrail(service, ok, elapsed * 1000)


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


def _answer(
    service: Service,
    answered: Answered,
    proba: np.ndarray,
    rows: list[dict[str, Any]],
    out: list[dict[str, Any]],
) -> None:
    labels = (proba >= service.params.evaluation.threshold).astype(int)
    version, variant, ids = answered.model.version, answered.variant, answered.ids
    now = service.clock()
    logged = predlog.records(ids, now, version, variant, proba, labels, rows, answered.keys)
    service.log.append(logged)
    join = service.params.join_column
    for j, i in enumerate(answered.idx):
        service.served[ids[j]] = _key(rows[j].get(join)) if join else None
        out[i] = {
            "prediction_id": ids[j],
            "probability": float(proba[j]),
            "label": int(labels[j]),
            "model_version": version,
            "variant": variant,
        }


def _key(value: Any) -> str | None:
    return None if value is None else str(value)


ShadowWork = tuple[Loaded, pd.DataFrame, list[dict[str, Any]], list[str], list[str]]


def _enqueue_shadow(
    service: Service,
    challenger: Loaded,
    frame: pd.DataFrame,
    rows: list[dict[str, Any]],
    ids: list[str],
    keys: list[str],
    idx: list[int],
) -> None:
    """Hand rows to the shadow worker; drop them (counted) when its queue is full."""
    part = frame.iloc[idx].reset_index(drop=True)
    item = (challenger, part, [rows[i] for i in idx], [ids[i] for i in idx], [keys[i] for i in idx])
    try:
        service.shadow.put_nowait(item)
    except queue.Full:
        service.metrics.shadow_dropped.inc(len(idx))


def _shadow_worker(service: Service, stop: threading.Event) -> None:
    """Score shadow work off the response path; logged with variant "shadow" (same ids)."""
    threshold = service.params.evaluation.threshold
    while not stop.is_set():
        try:
            model, frame, rows, ids, keys = service.shadow.get(timeout=0.2)
        except queue.Empty:
            continue
        # Score between requests, never during one: the champion's answers do not wait for the
        # challenger (under sustained load the queue fills and shadow work is dropped, counted).
        while not service.busy.idle and not stop.is_set():
            time.sleep(0.0005)
        start = time.perf_counter()
        try:
            proba = score(model, frame, None)  # lag-free features (see the README: serving)
            ok = True
        except Exception as exc:
            log.error("shadow scoring failed: %s", exc)
            ok, proba = False, np.zeros(0)
        elapsed = time.perf_counter() - start
        service.metrics.observe(SHADOW, model.version, elapsed, ok)
        _guardrail(service, ok, elapsed * 1000, SHADOW)
        if ok:
            labels = (proba >= threshold).astype(int)
            now = service.clock()
            logged = predlog.records(ids, now, model.version, SHADOW, proba, labels, rows, keys)
            service.log.append(logged)


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
    frame = predlog.read_prediction_log(params, settings)
    join = params.join_column
    if frame.empty:
        return {}
    keys = frame[join] if join and join in frame else pd.Series([None] * len(frame))
    return {
        str(p): _key(k) if pd.notna(k) else None
        for p, k in zip(frame["prediction_id"], keys, strict=True)
    }


def build_service(
    params: Params, settings: Settings, clock: Callable[[], dt.datetime] | None = None
) -> Service:
    """The service's parts (nothing started); `clock` stamps predictions and labels."""
    history = _history(params, settings)
    return Service(
        params,
        settings,
        ModelHolder(params, settings, history),
        predlog.PredictionLog.for_model(params, settings),
        FeedbackLog(settings.path(params.serve.feedback_dir)),
        ServiceMetrics(),
        history,
        queue.Queue(maxsize=params.serve.shadow_queue),
        _served_ids(params, settings),
        api_key(),
        clock=clock or predlog.utc_now,
    )


def create_app(
    params: Params, settings: Settings, clock: Callable[[], dt.datetime] | None = None
) -> FastAPI:
    """The prediction service for the model of `params` (see the module docs).

    `clock` (naive UTC) stamps predictions, labels and experiment assignment: the wall clock,
    or a replay's event time when history is served again.
    """
    service = build_service(params, settings, clock)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.log.start()
        service.holder.start()
        worker = threading.Thread(target=_shadow_worker, args=(service, stop), daemon=True)
        worker.start()
        yield
        stop.set()
        service.holder.stop()
        worker.join(timeout=5)
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
        return JSONResponse({"predictions": _predict(service, valid)})

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
