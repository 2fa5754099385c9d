"""The driftloop command line. Heavy libraries are imported inside commands, so --help is fast.

Exit codes: 0 ok; 1 unexpected; 2 config; 3 ingest; 4 validation failed (batch quarantined);
5 training; 6 registry; 7 monitoring cannot evaluate; 8 experiment.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import typer

from driftloop.errors import ConfigError, DriftloopError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Keep a model healthy: ingest, validate, train, promote, monitor, retrain.\n\n"
    "Examples:\n\n  driftloop run                 # the training pipeline as a Prefect flow\n\n"
    "  driftloop ingest batch.csv    # gate and version a batch file\n\n"
    "  driftloop status --json       # champion, challenger, last decision",
)

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _global(
    params: str = typer.Option(
        None,
        "--params",
        envvar="DRIFTLOOP_PARAMS",
        help="The model's params file (default: params.yaml); one per model in a project",
    ),
) -> None:
    """Options for every command."""
    _OPTIONS.params = params or None  # per invocation; the environment is left as it is


class _Options:
    """The global options of the current invocation (passed down explicitly from here)."""

    params: str | None = None


_OPTIONS = _Options()


def _context() -> tuple[Any, Any]:
    from driftloop.config import load_context

    return load_context(params_file=_OPTIONS.params)


def _target() -> Any:
    """Flow parameters naming this invocation's project and model."""
    from driftloop.config import flow_target

    return flow_target(_context()[1])


class _HeldOutput:
    """The result of the command running inside `json_stdout`, written when the block ends."""

    def __init__(self) -> None:
        self.text: str | None = None


_HELD: _HeldOutput | None = None  # set while a `json_stdout` block is open


@contextlib.contextmanager
def json_stdout(as_json: bool = True) -> Iterator[None]:
    """Keep stdout for the one JSON document of a `--json` command; send everything else to stderr.

    Libraries print to stdout: DVC ("Initialized DVC repository."), Prefect and rich progress,
    MLflow ("Registered model ..."), and child processes inherit file descriptor 1. Inside this
    block descriptor 1 and `sys.stdout` point at stderr, so none of that reaches stdout. `_emit`
    holds the command's document, and it is written to the real stdout when the block ends
    (also when the command then exits non-zero, as `monitor` does with 7). A command that fails
    before `_emit` leaves stdout empty and its one-line reason on stderr.

    `main()` opens this block around any command given `--json`, so the installed CLI needs
    nothing more. In-process callers (Typer's CliRunner in tests) do not go through `main()`:
    a `--json` command opens the block itself, around its work and its `_emit`:

        with json_stdout(as_json):
            payload = work()
            _emit(payload, as_json, text)

    Nested blocks act as one; with `as_json` false the block does nothing.
    """
    global _HELD
    if not as_json or _HELD is not None:
        yield
        return
    held = _HELD = _HeldOutput()
    real = sys.stdout
    real.flush()
    saved_fd = _point_fd_at_stderr()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _HELD = None
        with contextlib.suppress(Exception):
            real.flush()  # writes through old references to sys.stdout still go to stderr
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        if held.text is not None:
            typer.echo(held.text)


def _point_fd_at_stderr() -> int | None:
    """Point descriptor 1 at stderr; return a copy of the old one (None if there is none)."""
    try:
        saved = os.dup(1)
    except OSError:
        return None
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        return None
    return saved


@contextlib.contextmanager
def _short_read() -> Iterator[None]:
    """No garbage collection during a short read command (`status`, `lineage`).

    Collecting only slows their MLflow and SQLAlchemy imports, by about a fifth of their CPU
    time; it is switched back on afterwards for in-process callers (tests).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _emit(payload: Any, as_json: bool, text: str | None = None) -> None:
    """Write a command's result: strict JSON with `--json` (NaN as null), else `text`.

    Inside `json_stdout` the output is held and written to the real stdout when the block ends;
    a second `_emit` in one block is a bug and raises.
    """
    from driftloop import jsonio

    out = (
        jsonio.dumps(payload, indent=2, sort_keys=True)
        if as_json
        else str(text if text is not None else payload)
    )
    if _HELD is None:
        typer.echo(out)
    elif _HELD.text is not None:
        raise RuntimeError("a command emitted two results; --json promises one document")
    else:
        _HELD.text = out


def _quiet_run_logs() -> None:
    """Flow and task run logs go to the Prefect API (the UI shows them), not to the terminal,
    where a failed run would print Prefect's traceback above our one-line reason.
    `DRIFTLOOP_DEBUG=1` keeps them on the terminal too."""
    import logging

    if os.environ.get("DRIFTLOOP_DEBUG"):
        return
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).propagate = False


def _fail(exc: DriftloopError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def ingest(
    file: str = typer.Argument(None, help="A CSV/Parquet batch file (default: params data.source)"),
    source: str = typer.Option(
        None, help="A bundled source, a file, or a folder/glob of drops (overrides params)"
    ),
    until: str = typer.Option(None, help="Ingest the source only up to this date (YYYY-MM-DD)"),
    labels: str = typer.Option(
        None,
        "--labels",
        help="A label batch file (join column, label, optional label time); "
        "'source' reads labels.source",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """Gate what is new at a source with Great Expectations and version it with DVC.

    Re-running is safe: rows already accepted are skipped, so a file that grows, a folder of
    drops or a table can be ingested again and again; an accepted key with other values is
    refused (quarantined). Examples: `driftloop ingest` (params data.source),
    `driftloop ingest batch.csv`, `driftloop ingest --until 2013-06-30`,
    `driftloop ingest --labels labels.csv`, `driftloop ingest --labels source`.
    Exit 3: the path is not a readable file; exit 4: a batch failed the gate (quarantined).
    """
    from driftloop import ingest as stage

    with json_stdout(as_json):
        try:
            params, settings = _context()
            stop = until if until is not None else params.data.until
            if labels is not None:
                given = None if labels == "source" else _given_file(labels)
                result = stage.ingest_label_source(params, settings, given, stop)
            elif file is not None:
                result = stage.ingest_source(params, settings, _given_file(file), stop)
            else:
                result = stage.ingest_source(params, settings, source, stop)
        except DriftloopError as exc:
            _fail(exc)
            return
        kind = "labels" if labels is not None else "rows"
        _emit(result.to_dict(), as_json, result.message(kind))


def _given_file(path: str) -> Any:
    """A file named on the command line (relative to the working directory) as a source."""
    from pathlib import Path

    from driftloop.config import SourceSpec

    return SourceSpec(kind="file", path=str(Path(path).absolute()))


@app.command()
def init(
    path: str = typer.Argument(
        None, help="Your rows: a CSV/Parquet file, a folder or a glob of drops"
    ),
    time: str = typer.Option(None, "--time", help="The timestamp column (event time)"),
    target: str = typer.Option(
        None, "--target", help="The label column: 0/1, true/false, or a number with --above"
    ),
    id_column: str = typer.Option(None, "--id", help="The unique row key (needed with --labels)"),
    labels: str = typer.Option(
        None,
        "--labels",
        help="Where labels arrive later: a file, folder or glob (with --url-env: a table or a "
        "SELECT)",
    ),
    label_time: str = typer.Option(
        None, "--label-time", help="The labels' column saying when each became known"
    ),
    above: float = typer.Option(None, "--above", help="Numeric target: label = value > X"),
    at_least: float = typer.Option(None, "--at-least", help="Numeric target: label = value >= X"),
    url_env: str = typer.Option(
        None, "--url-env", help="SQL: the environment variable holding the SQLAlchemy URL"
    ),
    table: str = typer.Option(None, "--table", help="SQL: the table of rows"),
    query: str = typer.Option(None, "--query", help="SQL: a SELECT giving the rows"),
    name: str = typer.Option(None, "--name", help="Model name (default: the file or table's)"),
    out: str = typer.Option("params.yaml", "--out", help="The params file to write"),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary"),
) -> None:
    """Propose a commented params file for your own table: dtypes, ranges, allowed values,
    features (unusable columns refused with a reason), training, monitoring and replay sized
    to the data. Examples:
    `driftloop init exports/events.csv --time "event time" --id "event id" --target returned`,
    `driftloop init events.csv --time ts --id id --target returned --labels labels.csv
    --label-time known_at --out models/returns.yaml`,
    `driftloop init --url-env DB_URL --table events --time ts --id id --target amount
    --above 100`. Exit 2: a wrong name or option (nothing written); exit 3: unreadable data.
    """
    from pathlib import Path

    from driftloop import scaffold
    from driftloop.config import Settings

    with json_stdout(as_json):
        try:
            if time is None or target is None:
                raise ConfigError("init needs --time COLUMN and --target COLUMN")
            project = Settings().project
            request = scaffold.InitRequest(
                source=scaffold.given_source(path, url_env, table, query, project),
                time=time,
                target=target,
                id=id_column,
                labels=scaffold.given_labels(labels, url_env, project),
                label_time=label_time,
                above=above,
                at_least=at_least,
                name=name,
            )
            written, proposal = scaffold.scaffold(request, project, Path(out).absolute(), force)
            from driftloop import versioning

            settings = Settings()
            set_up = versioning.set_up(settings.project, settings.state_dir / "dvc-remote")
        except DriftloopError as exc:
            _fail(exc)
            return
        summary = {"path": str(written), "dvc": set_up, **proposal.summary()}
        text = f"{written}\n" + (f"{set_up}\n" if set_up else "")
        text += "".join(f"warning: {w}\n" for w in proposal.warnings)
        _emit(summary, as_json, text.rstrip("\n"))


@app.command()
def validate() -> None:
    """Re-check all accepted data with the validation suite (the `validate` DVC stage)."""
    from driftloop import ingest as ingest_stage

    try:
        params, settings = _context()
        report = ingest_stage.validate_dataset(params, settings)
    except DriftloopError as exc:
        _fail(exc)
        return
    typer.echo(f"validation passed: {report['rows']} rows, {report.get('evaluated')} expectations")


@app.command()
def train(
    trigger: str = typer.Option("manual", help="Why this run happens (recorded in lineage)"),
    window_days: int = typer.Option(None, help="Train on the most recent N days only"),
    no_promote: bool = typer.Option(False, "--no-promote", help="Register as challenger only"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train on accepted data, log to MLflow, register as challenger, run the promotion gate."""
    from driftloop import ingest as ingest_stage
    from driftloop import stages, versioning

    try:
        params, settings = _context()
        raw_dir = settings.path(params.data.raw_dir)
        data_md5 = versioning.recorded_md5(settings.project, raw_dir)  # data is read once, below
        validation = ingest_stage.validation_for(params, settings, data_md5)
        request = stages.TrainRequest(trigger, window_days, None, not no_promote, validation)
        outcome = stages.train_and_promote(params, settings, request)
    except DriftloopError as exc:
        _fail(exc)
        return
    _emit(outcome.to_dict(), as_json, outcome.message)


@app.command()
def promote(
    version: str = typer.Option(
        None, help="Version to consider (default: the train stage's report, reports.train)"
    ),
    trigger: str = typer.Option("manual"),
) -> None:
    """Run the promotion gate for a registered version (the `promote` DVC stage)."""
    from driftloop import registry, stages

    try:
        params, settings = _context()
        if version is None:
            report = settings.path(params.reports.train)
            if not report.exists():
                raise DriftloopError(
                    f"{report}: not found; run `driftloop train` or pass --version"
                )
            version = str(json.loads(report.read_text())["version"])
        client = registry.connect(settings)
        candidate = registry.get_version(client, params.train.model_name, version)
        data = stages.load_training_data(params, settings)
        result = stages.promote(params, settings, candidate, data, trigger)
    except DriftloopError as exc:
        _fail(exc)
        return
    verdict = "promoted to champion" if result.applied else "not promoted"
    typer.echo(f"v{version} {verdict}: {result.decision.reason}")


@app.command()
def run(
    source: str = typer.Option(None, help="A bundled example or a batch file (default: params)"),
    until: str = typer.Option(None, help="Ingest the source up to this date"),
    labels: str = typer.Option(None, help="A label batch file (default: the source's labels)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The training pipeline as a Prefect flow: ingest, validate, train, register, promote."""
    try:
        target = _target()
        from flows.training import training_flow

        _quiet_run_logs()

        summary = training_flow(source=source, until=until, labels=labels, **target)
    except DriftloopError as exc:
        _fail(exc)
        return
    _emit(summary, as_json, summary.get("message", str(summary)))


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Champion and challenger: versions, metrics, data hashes, last decision."""
    from driftloop import report

    with _short_read(), json_stdout(as_json):
        try:
            params, settings = _context()
            payload = report.status(params, settings)
        except DriftloopError as exc:
            _fail(exc)
            return
        _emit(payload, as_json, report.status_text(payload))


@app.command()
def lineage(
    version: str = typer.Argument(None, help="Model version (default: champion)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Where a model version came from: data hash, git commit, MLflow run, validation, decision."""
    from driftloop import jsonio, report

    with _short_read(), json_stdout(as_json):
        try:
            params, settings = _context()
            payload = report.lineage(params, settings, version)
        except DriftloopError as exc:
            _fail(exc)
            return
        _emit(payload, as_json, jsonio.dumps(payload, indent=2))


@app.command()
def rollback(
    reason: str = typer.Option(
        ..., help="Why (recorded on the version and in the decision ledger)"
    ),
    to: str = typer.Option(
        None, "--to", help="Version to restore (default: the previous champion)"
    ),
) -> None:
    """Move `champion` back to a previous version."""
    from driftloop import stages

    try:
        params, settings = _context()
        before, after = stages.rollback(params, settings, reason, to)
    except DriftloopError as exc:
        _fail(exc)
        return
    if os.environ.get("PREFECT_API_URL"):  # a stack or server: the alert automations hear it
        from tasks import alerts

        payload = {"version": after, "champion_before": before, "reason": reason}
        alerts.publish("driftloop.rollback", params.train.model_name, payload)
    typer.echo(f"champion v{before} -> v{after}: {reason}")


@app.command()
def monitor(
    as_of: str = typer.Option(
        None, help="Monitor the window ending on this date (default: newest)"
    ),
    retrain: str = typer.Option(
        "subflow", help="On a retrain decision: 'subflow' (in process), 'deployment', or 'off'"
    ),
    no_flow: bool = typer.Option(
        False,
        "--no-flow",
        help="The same monitoring steps as plain calls, without Prefect; a retrain decision is "
        "reported, not acted on",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Drift and performance of the champion on the newest window (Prefect flow).

    Example: driftloop monitor --as-of 2015-01-31 --retrain off --json
    """
    try:
        if no_flow:
            from driftloop import monitoring

            params, settings = _context()
            summary = monitoring.monitor(params, settings, monitoring.day(as_of)).to_dict()
        else:
            summary = _monitor_flow(as_of, retrain)
    except DriftloopError as exc:
        _fail(exc)
        return
    _emit(summary, as_json, f"{summary['action']}: {summary['reason']}")
    if summary["action"] == "cannot_evaluate":
        raise typer.Exit(7)


def _monitor_flow(as_of: str | None, retrain: str) -> dict[str, Any]:
    """The monitor flow in this process (flow and task run logs kept off the terminal)."""
    target = _target()
    from flows.monitoring import monitor_flow

    _quiet_run_logs()

    if retrain not in ("subflow", "deployment", "off"):
        raise typer.BadParameter("--retrain must be subflow, deployment or off")
    mode: Literal["subflow", "deployment", "off"] = retrain  # type: ignore[assignment]
    return monitor_flow(as_of=as_of, retrain=mode, **target)


@app.command()
def retrain(
    reason: str = typer.Option("manual", help="Why (recorded as the run's trigger)"),
    until: str = typer.Option(None, help="Train on data up to this date"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retrain on the retrain window and run the promotion gate (Prefect flow)."""
    try:
        target = _target()
        from flows.monitoring import retrain_flow

        _quiet_run_logs()

        summary = retrain_flow(reason=reason, until=until, **target)
    except DriftloopError as exc:
        _fail(exc)
        return
    _emit(summary, as_json, summary["message"])


@app.command()
def replay(
    steps: int = typer.Option(None, help="Replay only the first N steps (default: all)"),
    online: bool = typer.Option(
        False,
        "--online",
        help="Serve each step through the running service and send labels back; compare "
        "promotion on the holdout gate alone with promotion after an online test",
    ),
    experiment: str = typer.Option(
        "shadow", help="--online: the online test of the gate's winner (shadow, ab, canary)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replay history as it arrived: the real loop, then a report comparing strategies."""
    with json_stdout(as_json):
        _replay(steps, online, experiment, as_json)


def _replay(steps: int | None, online: bool, experiment: str, as_json: bool) -> None:
    try:
        target = _target()
        where = {"project": target["project"], "params_file": target["params_file"]}
        if online:
            if experiment not in ("shadow", "ab", "canary"):
                raise ConfigError(f"--experiment {experiment!r}: must be shadow, ab or canary")
            from driftloop.online import check_online

            check_online(_context()[0])  # before any flow starts: one line, no traceback
            from flows.replay import online_replay_flow

            _quiet_run_logs()

            summary = online_replay_flow(steps=steps, experiment=experiment, **where)
        else:
            from flows.replay import replay_flow

            _quiet_run_logs()

            summary = replay_flow(steps=steps, **where)
    except DriftloopError as exc:
        _fail(exc)
        return
    lines = [f"report: {', '.join(summary['report'])}"]
    for name, res in summary["comparison"].items():
        lines.append(
            f"  {name:16s} accuracy {res['accuracy']:.4f}  ROC AUC {res['roc_auc']:.4f}  "
            f"retrains {res['retrains']}"
            + (f"  promotions {res['promotions']}" if "promotions" in res else "")
        )
    lines.append(f"  {summary['meta']['steps']} steps in {summary['meta']['wall_seconds']} s")
    if refused := summary["meta"].get("quarantined_steps"):
        typer.echo(
            f"warning: {refused} of {summary['meta']['steps']} steps quarantined a batch (the "
            f"replay went on without it; the report names each): {summary['report'][-1]}",
            err=True,
        )
    _emit(summary, as_json, "\n".join(lines))


@app.command()
def schedule() -> None:
    """Run the deployments (monitor daily, retrain, training) in this process (Prefect serve)."""
    try:
        target = _target()
        from deployments.serve import serve_all
    except DriftloopError as exc:
        _fail(exc)
        return
    serve_all(target)


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default: params serve.host)"),
    port: int = typer.Option(None, help="Port (default: params serve.port)"),
) -> None:
    """Serve the champion over HTTP: POST /predict, POST /feedback, GET /health, /metrics, /docs.

    The champion alias is followed (a promotion or rollback is swapped in without a restart);
    every prediction lands in the prediction log. Binding beyond 127.0.0.1 needs
    DRIFTLOOP_API_KEY, which every request must then carry (X-API-Key).
    Example: `driftloop serve --port 8000`.
    """
    from driftloop.serving import run_service

    try:
        params, settings = _context()
        run_service(params, settings, host or params.serve.host, port or params.serve.port)
    except DriftloopError as exc:
        _fail(exc)


@app.command()
def score(
    file: str = typer.Argument(..., help="A CSV/Parquet file of raw input rows"),
    output: str = typer.Option(None, help="Where to write (default: FILE.scored.csv/.parquet)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score a batch file with the champion (batch inference; logged with variant "batch").

    Example: `driftloop score new_rows.csv` writes new_rows.scored.csv and prints its path.
    """
    from pathlib import Path

    from driftloop.serving.batch import score_file

    with json_stdout(as_json):
        try:
            params, settings = _context()
            result = score_file(params, settings, Path(file), Path(output) if output else None)
        except DriftloopError as exc:
            _fail(exc)
            return
        _emit(result.__dict__, as_json, result.output)


feedback_app = typer.Typer(no_args_is_help=True, help="Labels sent back to the service.")
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("flush")
def feedback_flush(as_json: bool = typer.Option(False, "--json")) -> None:
    """Turn feedback received by the service into a label batch (the label gate, DVC).

    Labels whose row is not accepted data yet stay pending. Exit 4: the batch failed the gate
    (quarantined). Example: `driftloop feedback flush --json`.
    """
    from driftloop.serving.feedback import flush_feedback

    with json_stdout(as_json):
        try:
            params, settings = _context()
            result = flush_feedback(params, settings)
        except DriftloopError as exc:
            _fail(exc)
            return
        text = f"{result.sent} labels sent ({result.pending} pending) -> {result.path or '-'}"
        _emit(result.__dict__, as_json, text)


experiment_app = typer.Typer(
    no_args_is_help=True,
    help="Online experiments of `challenger` against `champion` (serve.experiment in params).\n\n"
    "Examples:\n\n  driftloop experiment start          # shadow, ab or canary, as params say\n\n"
    "  driftloop experiment status --json\n\n"
    '  driftloop experiment stop --reason "bad alerts"',
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("start")
def experiment_start(as_json: bool = typer.Option(False, "--json")) -> None:
    """Start serve.experiment: the `challenger` alias against `champion` (exit 8 if it cannot)."""
    from driftloop import experiments

    with json_stdout(as_json):
        try:
            params, settings = _context()
            state = experiments.start_experiment(params, settings)
            payload = experiments.experiment_status(settings, state.model_name)
        except DriftloopError as exc:
            _fail(exc)
            return
        _emit(payload, as_json, f"started: {payload['message']}")


@experiment_app.command("status")
def experiment_status(as_json: bool = typer.Option(False, "--json")) -> None:
    """The running experiment (or the last one, with how it ended)."""
    from driftloop import experiments

    with json_stdout(as_json):
        try:
            params, settings = _context()
            payload = experiments.experiment_status(settings, params.train.model_name)
        except DriftloopError as exc:
            _fail(exc)
            return
        _emit(payload, as_json, payload["message"])


@experiment_app.command("stop")
def experiment_stop(
    reason: str = typer.Option("stopped by hand", help="Why (recorded in the decision ledger)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stop the running experiment: all traffic back to the champion (exit 8 if none runs)."""
    from driftloop import experiments

    with json_stdout(as_json):
        try:
            params, settings = _context()
            name = params.train.model_name
            if experiments.stop_experiment(settings, name, reason) is None:
                raise experiments.ExperimentError(f"{name}: no experiment is running")
            payload = experiments.experiment_status(settings, name)
        except DriftloopError as exc:
            _fail(exc)
            return
        _emit(payload, as_json, payload["message"])


data_app = typer.Typer(no_args_is_help=True, help="Checks of the versioned data.")
app.add_typer(data_app, name="data")


@data_app.command("verify")
def data_verify(
    remote: bool = typer.Option(False, "--remote", help="Also rehash the default remote's copies"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Rehash every DVC object of the project (and the remote): a flipped byte is named with
    the file it holds (exit 3). DVC itself trusts its state database and misses bit rot.

    Repair: delete the object and `dvc fetch` it (cache), or delete it on the remote and
    `dvc push` (remote)."""
    from driftloop import versioning

    with json_stdout(as_json):
        try:
            settings = _context()[1]
            checked, bad = versioning.verify_objects(settings.project, remote=remote)
        except DriftloopError as exc:
            _fail(exc)
            return
        payload = {"checked": checked, "corrupt": [b.__dict__ for b in bad], "ok": not bad}
        text = "\n".join(
            [f"{checked} objects rehashed, {len(bad)} corrupt", *(b.line() for b in bad)]
        )
        _emit(payload, as_json, text)
        if bad:
            raise typer.Exit(3)


alerts_app = typer.Typer(
    no_args_is_help=True,
    help="Alerts through Prefect automations: drift, retrain, promotion, rollback, cannot "
    "evaluate and experiment guardrail events sent to a webhook (Slack, Teams, e-mail gateways).",
)
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("add")
def alerts_add(
    kind: str = typer.Argument(..., help="'webhook'"),
    url: str = typer.Argument(..., help="Where to POST each event (JSON)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Send every driftloop event to a webhook, on the Prefect server in PREFECT_API_URL.

    Example: `driftloop alerts add webhook https://hooks.slack.com/services/...`.
    """
    with json_stdout(as_json):
        try:
            if kind != "webhook":
                raise ConfigError(f"alerts add {kind!r}: only 'webhook' is supported")
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"alerts add webhook {url!r}: not an http(s) URL")
            _context()
            if not os.environ.get("PREFECT_API_URL"):
                raise ConfigError(
                    "alerts need a Prefect server: set PREFECT_API_URL (driftloop stack up, "
                    "or prefect server start)"
                )
            from tasks.alerts import add_webhook

            made = add_webhook(url)
        except DriftloopError as exc:
            _fail(exc)
            return
        _emit(
            {"url": url, **made},
            as_json,
            f"driftloop events -> {url} (automation {made['automation']})",
        )


ledger_app = typer.Typer(
    no_args_is_help=True,
    help="The decision ledger: every promotion, rollback, retrain claim and experiment, "
    "append-only and hash-chained (embedded SQLite, or DRIFTLOOP_STATE_URL).\n\n"
    "Examples:\n\n  driftloop ledger verify             # the chain, and each champion's alias\n\n"
    "  driftloop ledger verify --repair    # bring MLflow aliases in line with the ledger\n\n"
    "  driftloop ledger show --json",
)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("verify")
def ledger_verify(
    repair: bool = typer.Option(
        False, "--repair", help="Move MLflow champion aliases to the ledger's (recorded)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Recompute the hash chain (names any edited, removed or reordered event) and check that
    every model's MLflow champion alias agrees with the ledger (exit 9 if not)."""
    from driftloop import champion, registry

    with json_stdout(as_json):
        try:
            params, settings = _context()
            store = champion.store_of(settings)
            check = store.verify()
            client = registry.connect(settings)
            models = sorted({r.event.model for r in store.events()} | {params.train.model_name})
            aliases = {}
            for name in models:
                mended = champion.reconcile(settings, client, name) if repair else None
                ledger_v = store.champion(name)
                alias_v = champion.alias_version(client, name)
                aliases[name] = {
                    "ledger": ledger_v,
                    "alias": alias_v,
                    "agree": ledger_v == alias_v,
                    "repaired": mended.reason if mended else None,
                }
        except DriftloopError as exc:
            _fail(exc)
            return
        ok = check.ok and all(a["agree"] for a in aliases.values())
        payload = {
            "ok": ok,
            "events": check.events,
            "problems": check.problems,
            "models": aliases,
            "store": store.safe_url,
        }
        lines = [
            f"ledger {store.safe_url}: {check.events} events, chain "
            + ("intact" if check.ok else "BROKEN")
        ]
        lines += [f"  {p}" for p in check.problems]
        lines += [
            f"  {name}: ledger v{a['ledger']}, alias v{a['alias']}"
            + ("" if a["agree"] else "  DISAGREE (driftloop ledger verify --repair)")
            + (f"  repaired: {a['repaired']}" if a["repaired"] else "")
            for name, a in aliases.items()
        ]
        _emit(payload, as_json, "\n".join(lines))
        if not ok:
            raise typer.Exit(9)


@ledger_app.command("show")
def ledger_show(
    all_models: bool = typer.Option(False, "--all", help="Every model's events"),
    last: int = typer.Option(20, help="Show the last N events"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The ledger's events (this model's, or --all), newest last."""
    from driftloop import champion

    with json_stdout(as_json):
        try:
            params, settings = _context()
            store = champion.store_of(settings)
            events = store.events(None if all_models else params.train.model_name)[-last:]
        except DriftloopError as exc:
            _fail(exc)
            return
        rows = [e.to_dict() for e in events]
        text = (
            "\n".join(
                f"{r['seq']:>5} {r['at'][:19]} {r['model']} {r['kind']:16s} "
                f"{('v' + str(r['version'])) if r.get('version') else '':6s} "
                f"{r.get('decision') or r.get('outcome') or ''} {r.get('reason', '')[:90]}"
                for r in rows
            )
            or "no events"
        )
        _emit(rows, as_json, text)


stack_app = typer.Typer(
    no_args_is_help=True,
    help="The scale-out stack on this machine: Prefect server (PostgreSQL, Redis) with two "
    "workers, MLflow server with basic auth, a WebDAV DVC remote, the ledger on PostgreSQL.\n\n"
    "Examples:\n\n  driftloop stack up            # start it (or what is not running)\n\n"
    '  eval "$(driftloop stack env)"   # point this shell at it\n\n'
    "  driftloop --params examples/flights/params.yaml stack loop --steps 4\n\n"
    "  driftloop stack status --json\n\n  driftloop stack down",
)
app.add_typer(stack_app, name="stack")


def _stack_report(action: str, as_json: bool) -> None:
    from driftloop import stack

    with json_stdout(as_json):
        try:
            settings = _context()[1]
            report = getattr(stack, action)(settings)
        except DriftloopError as exc:
            _fail(exc)
            return
        lines = [
            f"  {p.name:17s} {'running' if p.running else 'stopped':8s} pid {p.pid or '-':<8} "
            f"{'' if p.healthy is None else 'healthy' if p.healthy else 'NOT ANSWERING'}"
            for p in report.parts
        ]
        lines += [f"  {name}: {url}" for name, url in report.urls.items()]
        head = "stack is up" if report.up else "stack is not (fully) running"
        text = "\n".join([head, *lines, f"  environment: {report.env_file}"])
        _emit(report.to_dict(), as_json, text)
        if action != "down" and not report.up:
            raise typer.Exit(10)


@stack_app.command("up")
def stack_up(as_json: bool = typer.Option(False, "--json")) -> None:
    """Start the stack (parts already running are left alone); takes a minute or two."""
    _stack_report("up", as_json)


@stack_app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Which parts run and answer (exit 10 when not all do)."""
    _stack_report("status", as_json)


@stack_app.command("down")
def stack_down(as_json: bool = typer.Option(False, "--json")) -> None:
    """Stop every part; the project gets its own DVC remote back."""
    _stack_report("down", as_json)


@stack_app.command("env")
def stack_env() -> None:
    """Print the environment that points a shell at the stack: `eval "$(driftloop stack env)"`
    (the same settings as `stack.env`, which a worker elsewhere sources)."""
    from driftloop import stack

    try:
        config = stack.StackConfig.of(_context()[1])
        path = stack.write_env_file(config)
    except DriftloopError as exc:
        _fail(exc)
        return
    lines = path.read_text().splitlines()
    typer.echo("".join(f"export {line}\n" for line in lines if line.strip()), nl=False)


@stack_app.command("loop")
def stack_loop(
    steps: int = typer.Option(3, help="How many steps of the model's calendar to run"),
    timeout: float = typer.Option(3600, help="Seconds to wait for any one flow run"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Run the model's loop through the stack's deployments: the first model (`training`) if
    there is no champion, then per step (every replay.step_days) the new rows and labels
    ingested, a `monitor-daily` run and the retrain it starts on the other worker. Prints each
    run with the worker that took it.

    Example: driftloop --params examples/flights/params.yaml stack loop --steps 4
    """
    with json_stdout(as_json):
        try:
            params, settings = _context()
            if not os.environ.get("PREFECT_API_URL"):
                raise ConfigError(
                    "PREFECT_API_URL is not set: point this shell at the stack first "
                    '(eval "$(driftloop stack env)")'
                )
            from deployments.loop import run_loop

            report = run_loop(params, settings, steps, timeout, typer.echo)  # --json: stderr
        except DriftloopError as exc:
            _fail(exc)
            return
        _emit(report.to_dict(), as_json, report.summary())


@app.command()
def ui(
    which: str = typer.Argument(..., help="'prefect' or 'mlflow'"),
    port: int = typer.Option(None, help="Port (default: prefect 4200, mlflow 5000)"),
) -> None:
    """Open the Prefect or MLflow UI on the project's embedded stores (runs until Ctrl-C).

    The Prefect UI asks its server where the API is (`/ui-settings`). Prefect answers from
    PREFECT_API_URL or PREFECT_SERVER_API_PORT, never from `--port`, so the server process gets
    both: on any other port than 4200 the UI would otherwise call a server that is not there.
    """
    from driftloop.config import Settings, apply_env_defaults

    settings = Settings()  # no params needed: a UI opens even when params.yaml is broken
    apply_env_defaults(settings)
    if which == "prefect":
        port = port or 4200
        api_url = f"http://127.0.0.1:{port}/api"
        os.environ.update(
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(port),
            PREFECT_API_URL=api_url,
            PREFECT_SERVER_UI_API_URL=api_url,
            PREFECT_UI_API_URL=api_url,  # the older alias, in case the user set it
        )
        # --no-prompt: never ask to switch or create the user's Prefect profiles.
        argv = [sys.executable, "-m", "prefect", "--no-prompt", "server", "start"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    elif which == "mlflow":
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            settings.mlflow_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port or 5000),
        ]
    else:
        raise typer.BadParameter("choose 'prefect' or 'mlflow'")
    typer.echo(" ".join(argv), err=True)
    os.execv(argv[0], argv)


def main() -> None:
    """Entry point: one-line errors (set DRIFTLOOP_DEBUG=1 for the traceback)."""
    # Skip the interpreter's final garbage collection of millions of library objects (~2-3 s).
    atexit.register(gc.freeze)
    args = sys.argv[1:]
    try:
        # One place for every command: with --json, stdout carries only the result document.
        with json_stdout("--json" in args and "--help" not in args):
            app(standalone_mode=True)
    except DriftloopError as exc:  # raised outside a command body (e.g. settings)
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("DRIFTLOOP_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        typer.echo(f"error: {exc.__class__.__name__}: {first}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
