"""Online replay: history served again through the running prediction service.

Each step's rows are posted to `/predict` of a real service (uvicorn on a free loopback port, in
this process), their labels sent back through `/feedback` as they land, and the loop (experiment
evaluation, monitoring on the prediction log, retrain, the gate) runs on what was served. The
service stamps predictions and labels with a `ReplayClock`: the event time being replayed, so
the prediction log, feedback, label batches and experiments all live in the replayed years.

Two arms replay the same period from the same first model, each in its own workspace:
`gate` promotes on the holdout gate alone; `experiment` makes the gate's winner the challenger
and promotes it only when `serve.experiment` (shadow by default) finds it better on served rows.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from driftloop import datastore, labels, registry, stages
from driftloop.config import Params, Settings, SourceSpec
from driftloop.errors import ConfigError, DriftloopError
from driftloop.replay import INITIAL_TRIGGER, Step

ARMS = ("gate", "experiment")
CHUNK_ROWS = 100  # rows per /predict request (a client batching what it has)
LABEL_ROWS = 1000  # labels per /feedback request
SYNC_SECONDS = 30.0  # the service follows the registry within serve.reload_seconds; this is slack


class OnlineReplayError(DriftloopError):
    """The service did not answer as expected during an online replay."""

    exit_code = 5


def check_online(params: Params) -> None:
    """An online replay sends labels back: the target must be a label column joined by id."""
    if params.target.column is None or params.join_column is None:
        raise ConfigError(
            f"{params.train.model_name}: an online replay sends labels back through /feedback, "
            "which needs target.column and data.id_column (or labels.join_column); this model's "
            "labels come from later rows (target.forecast). Try "
            "--params examples/flights/params.yaml"
        )


def arm_changes(arm: str, kind: str) -> dict[str, dict[str, Any]]:
    """The params each arm changes: how a candidate that passed the gate is promoted."""
    if arm not in ARMS:
        raise ConfigError(f"online replay arm {arm!r}: must be one of {ARMS}")
    if arm == "gate":
        return {"promote": {"via": "gate"}}
    return {"promote": {"via": "experiment"}, "serve": {"experiment": {"kind": kind}}}


# -- the clock and the service ------------------------------------------------------------------


class ReplayClock:
    """The service's clock during a replay: the event time of what is being sent (naive)."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def set(self, when: dt.datetime | pd.Timestamp) -> None:
        stamp = pd.Timestamp(when)
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        with self._lock:
            self._now = stamp.floor("us").to_pydatetime()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self._now


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Served:
    """What the service answered for one step's rows."""

    rows: int
    requests: int
    versions: dict[str, int]
    refused: int = 0  # rows the service refused (422: e.g. a null in a required column)


class LiveService:
    """`driftloop serve` for real on 127.0.0.1 (uvicorn in a thread), with an HTTP client."""

    def __init__(self, params: Params, settings: Settings, clock: ReplayClock) -> None:
        import httpx
        import uvicorn

        from driftloop.serving.app import create_app

        self.params, self.settings, self.clock = params, settings, clock
        self.app = create_app(params, settings, clock)
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="online-replay", daemon=True)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60.0)

    def __enter__(self) -> LiveService:
        self.thread.start()
        deadline = time.monotonic() + SYNC_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OnlineReplayError(f"the service did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=SYNC_SECONDS)

    def _post(self, path: str, body: Any) -> Any:
        return self._ok(self.http.post(path, json=body), path)

    @staticmethod
    def _ok(response: Any, path: str) -> Any:
        if response.status_code != 200:
            raise OnlineReplayError(f"POST {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def health(self) -> dict[str, Any]:
        found: dict[str, Any] = self.http.get("/health").json()
        return found

    def predict(self, frame: pd.DataFrame) -> Served:
        """Post the rows in time order, `CHUNK_ROWS` a request, the clock at each chunk's time."""
        ts = self.params.data.timestamp_column
        columns = request_columns(self.params, frame)
        ordered = frame.sort_values(ts, kind="stable").reset_index(drop=True)
        versions: dict[str, int] = {}
        requests = refused = 0
        for chunk in chunks(ordered, CHUNK_ROWS):
            self.clock.set(chunk[ts].max())
            rows = records(chunk[columns])
            while rows:  # a 422 names its rows: a client drops them and sends the rest again
                requests += 1
                response = self.http.post("/predict", json={"records": rows})
                bad = refused_rows(response) if response.status_code == 422 else set()
                if bad:
                    refused += len(bad)
                    rows = [r for i, r in enumerate(rows) if i not in bad]
                    continue
                for answer in self._ok(response, "/predict")["predictions"]:
                    key = f"{answer['variant']} v{answer['model_version']}"
                    versions[key] = versions.get(key, 0) + 1
                break
        return Served(len(ordered) - refused, requests, versions, refused)

    def feedback(self, labels: pd.DataFrame) -> int:
        """Send labels by data id as they landed (the clock at each chunk's label time)."""
        join, column = datastore.label_columns(self.params)
        when = self.params.labels.time_column
        known = labels[labels[column].notna()]
        if when and when in known:
            known = known.sort_values(when, kind="stable")
        sent = 0
        for chunk in chunks(known.reset_index(drop=True), LABEL_ROWS):
            if when and when in chunk:
                self.clock.set(chunk[when].max())
            body = [
                {"id": _plain(k), "label": _plain(v)}
                for k, v in zip(chunk[join], chunk[column], strict=True)
            ]
            done = self._post("/feedback", {"records": body})["feedback"]
            sent += sum(1 for d in done if d["recorded"])
        return sent

    def settle(self) -> None:
        """Wait until the challenger's shadow work is scored and logged (its worker runs at idle
        priority and writes its own log, fsynced every `serve.flush_seconds`), then make the
        service's log durable: the step's look at the experiment sees the step's rows."""
        service = self.app.state.service
        deadline = time.monotonic() + 4 * SYNC_SECONDS
        shadowed = service.shadow.pending > 0
        while service.shadow.pending:
            if time.monotonic() > deadline:
                raise OnlineReplayError(
                    f"shadow work did not drain in {4 * SYNC_SECONDS:g} s "
                    f"({service.shadow.pending} requests pending)"
                )
            time.sleep(0.05)
        if shadowed:
            time.sleep(self.params.serve.flush_seconds + 0.25)
        service.log.flush()

    def follow_registry(self) -> dict[str, Any]:
        """Wait until the service serves what the registry and experiment file say now."""
        from driftloop.experiments import load_state

        client = registry.connect(self.settings)
        name = self.params.train.model_name
        champion = registry.get_alias(client, name, registry.CHAMPION)
        state = load_state(self.settings, name)
        want = {
            "champion_version": champion.version if champion else None,
            "experiment": state is not None,
        }
        if state is not None:
            want["challenger_version"] = state.challenger_version
        deadline = time.monotonic() + SYNC_SECONDS
        while True:
            health = self.health()
            if all(health.get(k) == v for k, v in want.items()):
                return health
            if time.monotonic() > deadline:
                raise OnlineReplayError(
                    f"the service did not follow the registry within {SYNC_SECONDS:g} s: "
                    f"wants {want}, serves { ({k: health.get(k) for k in want}) }"
                )
            time.sleep(0.1)


def refused_rows(response: Any) -> set[int]:
    """Indexes of the rows a 422 names (`errors[].loc` = ["records", i, ...])."""
    errors = response.json().get("errors") or []
    return {e["loc"][1] for e in errors if len(e["loc"]) > 1 and isinstance(e["loc"][1], int)}


def request_columns(params: Params, frame: pd.DataFrame) -> list[str]:
    """The columns a client sends: the model's inputs and the optional ones (id, timestamp)."""
    from driftloop.serving.schema import input_columns, optional_columns

    wanted = [*input_columns(params), *optional_columns(params)]
    missing = [c for c in input_columns(params) if c not in frame]
    if missing:
        raise ConfigError(f"online replay: the batch lacks input columns {missing}")
    return [c for c in dict.fromkeys(wanted) if c in frame]


def chunks(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON rows as a client sends them: ISO times, null for missing."""
    rows: list[dict[str, Any]] = json.loads(
        frame.to_json(orient="records", date_format="iso", date_unit="s")
    )
    return rows


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- one step -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTraffic:
    """One step's traffic: rows served (by variant and version) and labels sent back."""

    served: Served
    labels_sent: int
    labels_flushed: int
    labels_pending: int


def serve_step(
    params: Params, settings: Settings, live: LiveService, as_of: dt.date
) -> StepTraffic:
    """The step's batch (ingested through the gates, then served) and the labels landed by
    `as_of` (sent back, then turned into a label batch through the label gate)."""
    from driftloop import ingest
    from driftloop.serving.feedback import flush_feedback

    batch = ingest.ingest_source(params, settings, None, as_of, version=False)
    served = live.predict(batch.frame)
    sent = 0
    if (label_source := ingest.label_spec(params)) is not None:
        sent = live.feedback(landed_labels(params, settings, label_source, as_of))
    live.settle()
    flushed = flush_feedback(params, settings, push=False)
    return StepTraffic(served, sent, flushed.sent, flushed.pending)


def landed_labels(
    params: Params, settings: Settings, source: SourceSpec, as_of: dt.date
) -> pd.DataFrame:
    """Labels known by `as_of` at the label source and not accepted yet (sent as feedback).

    The source is read without moving its ledger: these labels are ingested later, by
    `flush_feedback`, through the label gate.
    """
    from driftloop.sources import Role, SourceLedger, read_source

    known = labels.accepted(settings.path(params.data.labels_dir), params)
    after = known[datastore.LABEL_TIME].max() if len(known) else None
    ledger = SourceLedger(settings.state_dir / "sources" / "online-replay.json", "labels")
    read = read_source(source, Role.labels(params), settings, ledger, after=after, until=as_of)
    if not read.batches:
        return pd.DataFrame()
    frame = pd.concat([b.frame for b in read.batches], ignore_index=True)
    join, _ = datastore.label_columns(params)
    return frame[~frame[join].isin(known[join])].reset_index(drop=True)


def end_of_day(day: dt.date) -> dt.datetime:
    end = stages.end_of(day)
    assert end is not None
    return end.floor("us").to_pydatetime()


# -- judging the arms ---------------------------------------------------------------------------


ANSWERED = ("champion", "challenger")  # variants whose answer users got (never shadow)


def served_answers(params: Params, settings: Settings) -> pd.DataFrame:
    """Every answer users got (the champion's, or the challenger's in A/B and canary), with
    the row's time, id and the label that arrived for it (NaN: never arrived)."""
    from driftloop.serving.predlog import read_prediction_log

    log = read_prediction_log(params, settings)
    join, _ = datastore.label_columns(params)
    ts = params.data.timestamp_column
    answered = log[log["variant"].isin(ANSWERED)].drop_duplicates(join, keep="last")
    known = labels.known_labels(params, settings, feedback=False)
    out = pd.DataFrame(
        {
            "time": pd.to_datetime(answered[ts]).to_numpy(),
            "id": answered[join].astype(str).to_numpy(),
            "probability": answered["probability"].astype(float).to_numpy(),
            "model_version": answered["model_version"].astype(str).to_numpy(),
        }
    )
    out["label"] = labels.binary(labels.label_of(out["id"], known), params).astype(float)
    return out.sort_values(["time", "id"], kind="stable").reset_index(drop=True)


def arm_events(settings: Settings, model_name: str) -> list[dict[str, Any]]:
    """The arm's promotion decisions and experiments, from the decision ledger, in order."""
    from driftloop.champion import store_of

    keep = ("version", "decision", "reason", "trigger", "champion_before", "experiment")
    names = {"promotion": "promotion", "experiment_start": "experiment-start"}
    names["experiment_end"] = "experiment-end"
    out: list[dict[str, Any]] = []
    for recorded in store_of(settings).events(model_name, tuple(names)):
        raw = recorded.event.payload()
        if recorded.kind == "experiment_end":
            raw["decision"] = raw["outcome"]
        if recorded.kind != "promotion":
            raw["version"] = raw.get("challenger")
            raw["champion_before"] = raw.get("champion")
        out.append({"event": names[recorded.kind], **{k: raw[k] for k in keep if k in raw}})
    return out


def arm_summary(
    params: Params, settings: Settings, steps: list[OnlineStep], events: list[dict[str, Any]]
) -> dict[str, Any]:
    """One arm judged on what its users got: the served answers with their labels."""
    from driftloop.replay import strategy_metrics

    served = served_answers(params, settings)
    metrics = strategy_metrics(
        served[["time", "label"]], served["probability"].to_numpy(), params.evaluation.threshold
    )
    by_step = per_step(served, steps, params.evaluation.threshold)
    decisions = [
        e for e in events if e["event"] == "promotion" and e.get("trigger") != INITIAL_TRIGGER
    ]
    trained = [e for e in decisions if not str(e.get("trigger", "")).startswith("experiment")]
    ended = [e for e in events if e["event"] == "experiment-end"]
    return {
        **metrics,
        "retrains": sum(s.retrained for s in steps),
        "passed_gate": sum(e["decision"] in ("promoted", "challenger") for e in trained),
        "promotions": sum(e["decision"] == "promoted" for e in decisions),
        "experiments": len(ended),
        "refused_online": sum(e.get("decision") != "promoted" for e in ended),
        "versions_served": sorted(set(served["model_version"]), key=int),
        "by_step": by_step,
    }


def per_step(
    served: pd.DataFrame, steps: list[OnlineStep], threshold: float
) -> dict[str, dict[str, float | int]]:
    """ROC AUC, accuracy and log loss of each step's labelled answers (rows of its batch)."""
    from driftloop.training import score

    out: dict[str, dict[str, float | int]] = {}
    labelled = served[served["label"].notna()]
    for step in steps:
        start = pd.Timestamp(step.batch_start)
        end = stages.end_of(step.as_of)
        rows = labelled[(labelled["time"] >= start) & (labelled["time"] <= end)]
        y = rows["label"].to_numpy(dtype=int)
        metrics = score(y, rows["probability"].to_numpy(), threshold)
        out[step.as_of] = {
            "n": len(rows),
            **{k: metrics[k] for k in ("roc_auc", "accuracy", "log_loss")},
        }
    return out


@dataclass(frozen=True)
class OnlineStep(Step):
    """A replay step served online: the traffic and the experiment's verdict as well."""

    arm: str = ""
    served: int = 0
    refused: int = 0  # rows the service answered 422 (named by field), not sent again
    answered: dict[str, int] = field(default_factory=dict)  # rows per "variant vVERSION"
    labels_sent: int = 0
    source: str = ""
    staged: bool = False
    experiment: str = ""


# -- the report ---------------------------------------------------------------------------------

ARM_TITLES = {
    "gate": "holdout gate only",
    "experiment": "gate, then tested online",
}


def write_online_report(
    out_dir: Path,
    arms: dict[str, dict[str, Any]],
    timelines: dict[str, list[OnlineStep]],
    events: dict[str, list[dict[str, Any]]],
    meta: dict[str, Any],
) -> tuple[Path, Path]:
    """report.json and report.html of an online replay (both arms on the same served rows)."""
    from driftloop import jsonio

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "comparison": arms,
        "events": events,
        "timeline": {arm: [asdict(s) for s in steps] for arm, steps in timelines.items()},
    }
    json_path = out_dir / "report.json"
    jsonio.write_json(json_path, payload)
    html_path = out_dir / "report.html"
    html_path.write_text(online_html(arms, timelines, events, meta))
    return json_path, html_path


def verdict_sentence(arms: dict[str, dict[str, Any]], kind: str) -> str:
    """One sentence: which promotion policy served better, on how many labelled answers."""
    from driftloop.replay import _num

    gate, tested = arms["gate"], arms["experiment"]
    diff = (tested["roc_auc"] or 0.0) - (gate["roc_auc"] or 0.0)
    better = (
        f"{kind}-tested promotion served better"
        if diff > 0
        else "the holdout gate alone served better"
        if diff < 0
        else "both served equally well"
    )
    return (
        f"On the same {gate['n_predictions']} labelled answers, {better}: ROC AUC "
        f"{_num(tested['roc_auc'])} ({tested['promotions']} promotions; "
        f"{tested['refused_online']} of {tested['experiments']} challengers refused online) "
        f"vs {_num(gate['roc_auc'])} ({gate['promotions']} promotions on the gate alone)."
    )


def online_html(
    arms: dict[str, dict[str, Any]],
    timelines: dict[str, list[OnlineStep]],
    events: dict[str, list[dict[str, Any]]],
    meta: dict[str, Any],
) -> str:
    import html

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from driftloop.replay import _CSS, _num

    fig = make_subplots(
        rows=2,
        cols=1,
        subplot_titles=(
            "ROC AUC of each week's answers (what users got), per promotion policy",
            "Champion version serving at each step (stars: promotions)",
        ),
        vertical_spacing=0.14,
    )
    for arm, result in arms.items():
        weeks = list(result["by_step"])
        fig.add_trace(
            go.Scatter(
                x=weeks,
                y=[result["by_step"][w]["roc_auc"] for w in weeks],
                mode="lines+markers",
                name=f"{ARM_TITLES[arm]}: ROC AUC",
            ),
            row=1,
            col=1,
        )
    for arm, steps in timelines.items():
        fig.add_trace(
            go.Scatter(
                x=[s.as_of for s in steps],
                y=[int(s.champion) if s.champion else None for s in steps],
                mode="lines",
                line={"shape": "hv"},
                name=f"{ARM_TITLES[arm]}: champion",
            ),
            row=2,
            col=1,
        )
        moved = [
            (a, b) for a, b in itertools.pairwise(steps) if a.champion != b.champion and b.champion
        ]
        fig.add_trace(
            go.Scatter(
                x=[b.as_of for _, b in moved],
                y=[int(str(b.champion)) for _, b in moved],
                mode="markers",
                marker={"symbol": "star", "size": 13},
                name=f"{ARM_TITLES[arm]}: promotion",
            ),
            row=2,
            col=1,
        )
    fig.update_layout(height=760)
    fig.update_yaxes(title_text="ROC AUC", row=1, col=1)
    fig.update_yaxes(title_text="version", row=2, col=1)
    rows = "".join(
        f"<tr><td>{html.escape(ARM_TITLES[arm])}</td><td>{r['n_predictions']}</td>"
        f"<td>{_num(r['accuracy'])}</td><td>{_num(r['roc_auc'])}</td><td>{r['retrains']}</td>"
        f"<td>{r['passed_gate']}</td><td>{r['promotions']}</td><td>{r['experiments']}</td>"
        f"<td>{r['refused_online']}</td></tr>"
        for arm, r in arms.items()
    )
    table = (
        "<table><tr><th>promotion policy</th><th>labelled answers</th><th>accuracy</th>"
        "<th>ROC AUC</th><th>retrains</th><th>passed the gate</th><th>promotions</th>"
        f"<th>online tests</th><th>refused online</th></tr>{rows}</table>"
    )
    decided = [
        e
        for arm_events in events.values()
        for e in arm_events
        if e["event"] == "experiment-end"
        or (e["event"] == "promotion" and e.get("trigger") != INITIAL_TRIGGER)
    ]
    log_rows = "".join(
        f"<tr class='text'><td>{html.escape(ARM_TITLES[arm])}</td>"
        f"<td>{html.escape(e['event'])}</td><td>v{html.escape(str(e.get('version')))}</td>"
        f"<td>{html.escape(str(e.get('decision', '')))}</td>"
        f"<td>{html.escape(str(e.get('reason', '')))}</td></tr>"
        for arm, arm_events in events.items()
        for e in arm_events
        if e in decided
    )
    decisions = (
        "<table><tr class='text'><th>policy</th><th>event</th><th>version</th><th>decision</th>"
        f"<th>reason</th></tr>{log_rows}</table>"
    )
    notes = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>" for k, v in meta.items()
    )
    title = str(meta.get("title", "driftloop online replay"))
    kind = str(meta.get("experiment", "shadow"))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}tr.text td,tr.text th{{text-align:left}}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class='verdict'>{html.escape(verdict_sentence(arms, kind))}</p>"
        f"{table}"
        + fig.to_html(full_html=False, include_plotlyjs=True)
        + f"<h2>Promotion decisions</h2>{decisions}<h2>Run</h2><ul>{notes}</ul></body></html>"
    )
