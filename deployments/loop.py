"""`driftloop stack loop`: one model's loop run through its deployments on a Prefect server.

A first model from the `training` deployment when the model has no champion yet (on the months up
to `replay.initial_until`), then, for each next step of the model's calendar (every
`replay.step_days`): the step's rows and the labels known by then are ingested here, as
`driftloop ingest --until` does, and a `monitor-daily` run judges the window and waits for the
retrain it starts (the `retrain` deployment). The stack's workers take one run at a time, so that
retrain runs on the other worker. Which worker took each run is read back from Prefect's own
record of it (the worker's `prefect.worker.submitted-flow-run` event).

Every run gets the model's project and params file as parameters (`FlowTarget`), so the
deployments serve any model of the project without editing a file.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from driftloop import champion, datastore, ingest, registry, replay
from driftloop.config import FlowTarget, Params, Settings, flow_target
from driftloop.errors import DriftloopError, ValidationFailed
from driftloop.ledger import Promotion

TRAINING, MONITOR = "training/training", "monitor/monitor-daily"
FIRST_MODEL_TRIGGER = "loop: first model"
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
SUBMITTED = "prefect.worker.submitted-flow-run"


class LoopError(DriftloopError):
    """A run of the loop did not complete, or the server could not be reached."""

    exit_code = 10


@dataclass
class LoopRun:
    """One flow run of the loop and the worker that took it."""

    step: str  # the step's date (for the first model: the end of its data)
    deployment: str
    name: str
    id: str
    state: str
    worker: str | None
    champion: str | None  # the ledger's, once the run ended
    note: str = ""  # the monitoring decision, the gate's decisions, or a failed run's message

    def line(self) -> str:
        return (
            f"{self.step}  {self.deployment:22s} {self.name:24s} {self.worker or '?':24s} "
            f"{self.state:9s} champion v{self.champion}  {self.note}"
        ).rstrip()


@dataclass
class LoopReport:
    runs: list[LoopRun] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # step -> what the gate refused
    champion: str | None = None  # the ledger's
    alias: str | None = None  # MLflow's `champion` alias

    @property
    def per_worker(self) -> dict[str, int]:
        return dict(Counter(r.worker or "?" for r in self.runs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [asdict(r) for r in self.runs],
            "per_worker": self.per_worker,
            "quarantined": self.quarantined,
            "champion": self.champion,
            "alias": self.alias,
        }

    def summary(self) -> str:
        workers = ", ".join(f"{w} {n}" for w, n in sorted(self.per_worker.items()))
        return f"runs per worker: {workers}; champion v{self.champion} (alias v{self.alias})"


def next_steps(params: Params, settings: Settings, steps: int) -> list[dt.date]:
    """The next `steps` dates of the model's calendar after its newest accepted data."""
    newest = datastore.last_accepted_date(settings.path(params.data.raw_dir))
    return [d for d in replay.step_dates(params) if newest is None or d > newest][:steps]


def run_loop(
    params: Params,
    settings: Settings,
    steps: int,
    timeout: float = 3600,
    echo: Callable[[str], None] = print,
) -> LoopReport:
    """The first model if there is none, then `steps` steps: ingest, monitor, retrain."""
    from prefect.client.orchestration import get_client

    name = params.train.model_name
    report = LoopReport()
    with get_client(sync_client=True) as client:
        loop = _Loop(client, params, settings, timeout, echo)
        if loop.champion() is None:
            until = params.replay.initial_until
            first = {"until": until, "trigger": FIRST_MODEL_TRIGGER, **loop.target}
            report.runs.append(loop.run(TRAINING, first, until))
            if loop.champion() is None:
                raise LoopError(f"{name}: the first model was not promoted; see the training run")
        for as_of in next_steps(params, settings, steps):
            day = as_of.isoformat()
            if refused := _ingest(params, settings, day):
                report.quarantined[day] = refused
                echo(f"{day}  quarantined: {refused}")
            report.runs += loop.monitor_step(day)
    report.champion = loop.champion()
    report.alias = champion.alias_version(registry.connect(settings), name)
    return report


def _ingest(params: Params, settings: Settings, until: str) -> str:
    """The rows and labels that had arrived by `until`; what the gates refused ('' if nothing).

    As in the running loop, a refused batch is quarantined and the loop goes on with the data
    accepted so far."""
    refused = []
    try:
        ingest.ingest_source(params, settings, None, until)
    except ValidationFailed as exc:
        refused.append(str(exc))
    if label_source := ingest.label_spec(params):
        try:
            ingest.ingest_label_source(params, settings, label_source, until)
        except ValidationFailed as exc:
            refused.append(f"labels: {exc}")
    return "; ".join(refused)


@dataclass
class _Loop:
    """The runs of one model's loop on one Prefect server, and what the ledger says after each."""

    client: Any
    params: Params
    settings: Settings
    timeout: float
    echo: Callable[[str], None]
    seen: int = 0  # the newest ledger event already reported

    @property
    def target(self) -> FlowTarget:
        return flow_target(self.settings)

    def champion(self) -> str | None:
        return champion.store_of(self.settings).champion(self.params.train.model_name)

    def monitor_step(self, day: str) -> list[LoopRun]:
        """A monitoring run on the step's window, then the retrain it started (if any)."""
        parameters = {"as_of": day, "retrain": "deployment", "wait": True, **self.target}
        runs = [self.run(MONITOR, parameters, day)]
        for child in _children(self.client, runs[0].id):
            runs.append(self.record(_final(self.client, child.id, self.timeout), day))
        return runs

    def run(self, deployment: str, parameters: dict[str, Any], step: str) -> LoopRun:
        """Start a deployment's run, wait for its end, and record who took it."""
        from prefect.exceptions import ObjectNotFound

        try:
            found = self.client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise LoopError(
                f"no deployment {deployment} on the Prefect server: `driftloop stack up` "
                "registers them (deployments/prefect.yaml)"
            ) from None
        self.gate()  # what happened before this run is not its doing
        started = self.client.create_flow_run_from_deployment(found.id, parameters=parameters)
        return self.record(_final(self.client, started.id, self.timeout), step)

    def record(self, run: Any, step: str) -> LoopRun:
        """The ended run as a LoopRun (printed); LoopError unless it completed."""
        completed = run.state_type.value == "COMPLETED"
        deployment = _deployment_name(self.client, run.deployment_id)
        if not completed:
            note = (run.state.message if run.state else "") or "see its logs in the Prefect UI"
        elif deployment == MONITOR:
            note = _decision(self.params, self.settings, step)
        else:
            note = self.gate()
        done = LoopRun(
            step=step,
            deployment=deployment,
            name=run.name,
            id=str(run.id),
            state=run.state_name or run.state_type.value,
            worker=worker_of(self.client, run.id),
            champion=self.champion(),
            note=note,
        )
        self.echo(done.line())
        if not completed:
            raise LoopError(
                f"{done.deployment} run {done.name} on {done.worker or 'no worker'} ended "
                f"{done.state}: {note}"
            )
        return done

    def gate(self) -> str:
        """The promotion gate's decisions recorded since the last look ('v2 promoted, ...')."""
        name = self.params.train.model_name
        recorded = champion.store_of(self.settings).events(name, ("promotion",))
        new = [r for r in recorded if r.seq > self.seen]
        self.seen = max([self.seen, *(r.seq for r in new)])
        decisions = [r.event for r in new if isinstance(r.event, Promotion)]
        return ", ".join(f"v{e.version} {e.decision}" for e in decisions)


def _final(client: Any, run_id: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state_type is not None and run.state_type.value in FINAL:
            return run
        if time.monotonic() > deadline:
            raise LoopError(f"flow run {run.name} not done in {timeout:.0f} s ({run.state_name})")
        time.sleep(2)


def _deployment_name(client: Any, deployment_id: Any) -> str:
    deployment = client.read_deployment(deployment_id)
    return f"{client.read_flow(deployment.flow_id).name}/{deployment.name}"


def _children(client: Any, run_id: str) -> list[Any]:
    """The runs a run started (a monitoring run's retrain), oldest first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    found = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
        ),
        sort=FlowRunSort.START_TIME_ASC,
    )
    return list(found)


def worker_of(client: Any, run_id: Any, wait: float = 60) -> str | None:
    """The name of the worker that took a run, from its `submitted-flow-run` event (events reach
    the server's store within seconds; None if none came in `wait` seconds)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    deadline = time.monotonic() + wait
    while True:
        wanted = EventFilter(
            event=EventNameFilter(name=[SUBMITTED]),
            related=EventRelatedFilter(id=[f"prefect.flow-run.{run_id}"]),
        )
        events = client.read_events(filter=wanted, limit=1).events
        if events:
            return str(events[0].resource.get("prefect.resource.name"))
        if time.monotonic() > deadline:
            return None
        time.sleep(2)


def _decision(params: Params, settings: Settings, day: str) -> str:
    """The monitoring decision of a step, from the decision.json its run wrote."""
    path = settings.path(params.data.monitoring_dir) / day / "decision.json"
    if not path.exists():
        return ""
    decision = json.loads(path.read_text())
    return f"{decision['action']}: {decision['reason']}"[:160]
