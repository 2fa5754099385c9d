"""The driftloop command line. Heavy libraries are imported inside commands, so --help is fast.

Exit codes: 0 ok; 1 unexpected; 2 config; 3 ingest; 4 validation failed (batch quarantined);
5 training; 6 registry.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from driftloop.errors import DriftloopError

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
    if params:
        os.environ["DRIFTLOOP_PARAMS"] = params  # this process and the tools it starts


def _context() -> tuple[Any, Any]:
    from driftloop.config import load_context

    return load_context()


def _emit(payload: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(text if text is not None else payload)


def _fail(exc: DriftloopError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def ingest(
    file: str = typer.Argument(None, help="A CSV/Parquet batch file (default: params data.source)"),
    source: str = typer.Option(None, help="'seattle' or a file path (overrides params)"),
    until: str = typer.Option(None, help="Ingest the source only up to this date (YYYY-MM-DD)"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output"),
) -> None:
    """Gate a batch with Great Expectations and version it with DVC (or quarantine it)."""
    from driftloop import pipeline

    try:
        params, settings = _context()
        src = file or source or params.data.source
        stop = until if until is not None else (params.data.until if src == "seattle" else None)
        result = pipeline.ingest(
            params, settings, pipeline.read_next_batch(params, settings, src, stop)
        )
    except DriftloopError as exc:
        _fail(exc)
        return
    text = (
        f"{result.origin}: nothing new to ingest (data md5 {result.data_md5 or '-'})"
        if result.nothing_new
        else f"accepted {result.rows} rows {result.first}..{result.last} -> {result.path} "
        f"(data md5 {result.data_md5})"
    )
    _emit({**result.__dict__, "path": str(result.path) if result.path else None}, as_json, text)


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
    from driftloop import stages

    try:
        params, settings = _context()
        data_md5 = stages.load_training_data(params, settings).data_md5
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
        None, help="Version to consider (default: from reports/train.json)"
    ),
    trigger: str = typer.Option("manual"),
) -> None:
    """Run the promotion gate for a registered version (the `promote` DVC stage)."""
    from driftloop import registry, stages

    try:
        params, settings = _context()
        if version is None:
            report = settings.path(stages.TRAIN_REPORT)
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
        _context()
        from flows.training import training_flow

        summary = training_flow(source=source, until=until, labels=labels)
    except DriftloopError as exc:
        _fail(exc)
        return
    _emit(summary, as_json, summary.get("message", str(summary)))


@app.command()
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Champion and challenger: versions, metrics, data hashes, last decision."""
    from driftloop import report

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
    from driftloop import report

    try:
        params, settings = _context()
        payload = report.lineage(params, settings, version)
    except DriftloopError as exc:
        _fail(exc)
        return
    _emit(payload, as_json, json.dumps(payload, indent=2, default=str))


@app.command()
def rollback(
    reason: str = typer.Option(..., help="Why (recorded on the version and in the audit log)"),
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
    typer.echo(f"champion v{before} -> v{after}: {reason}")


@app.command()
def monitor(
    as_of: str = typer.Option(
        None, help="Monitor the window ending on this date (default: newest)"
    ),
    retrain: str = typer.Option(
        "subflow", help="On a retrain decision: 'subflow' (in process), 'deployment', or 'off'"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Drift and performance of the champion on the newest window (Prefect flow)."""
    try:
        _context()
        from flows.monitoring import monitor_flow

        if retrain not in ("subflow", "deployment", "off"):
            raise typer.BadParameter("--retrain must be subflow, deployment or off")
        summary = monitor_flow(as_of=as_of, retrain=retrain)  # type: ignore[call-overload]
    except DriftloopError as exc:
        _fail(exc)
        return
    _emit(summary, as_json, f"{summary['action']}: {summary['reason']}")
    if summary["action"] == "cannot_evaluate":
        raise typer.Exit(7)


@app.command()
def retrain(
    reason: str = typer.Option("manual", help="Why (recorded as the run's trigger)"),
    until: str = typer.Option(None, help="Train on data up to this date"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retrain on the retrain window and run the promotion gate (Prefect flow)."""
    try:
        _context()
        from flows.monitoring import retrain_flow

        summary = retrain_flow(reason=reason, until=until)
    except DriftloopError as exc:
        _fail(exc)
        return
    _emit(summary, as_json, summary["message"])


@app.command()
def replay(
    steps: int = typer.Option(None, help="Replay only the first N steps (default: all)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Replay 2012-2015 as it arrived: the real loop, then a report comparing strategies."""
    try:
        _context()
        from flows.replay import replay_flow

        summary = replay_flow(steps=steps)
    except DriftloopError as exc:
        _fail(exc)
        return
    lines = [f"report: {', '.join(summary['report'])}"]
    for name, res in summary["comparison"].items():
        lines.append(
            f"  {name:16s} accuracy {res['accuracy']:.4f}  ROC AUC {res['roc_auc']:.4f}  "
            f"retrains {res['retrains']}"
        )
    lines.append(f"  {summary['meta']['steps']} steps in {summary['meta']['wall_seconds']} s")
    _emit(summary, as_json, "\n".join(lines))


@app.command()
def serve() -> None:
    """Run the deployments (monitor daily, retrain, training) in this process (Prefect serve)."""
    try:
        _context()
        from deployments.serve import serve_all
    except DriftloopError as exc:
        _fail(exc)
        return
    serve_all()


@app.command()
def ui(
    which: str = typer.Argument(..., help="'prefect' or 'mlflow'"),
    port: int = typer.Option(None, help="Port (default: prefect 4200, mlflow 5000)"),
) -> None:
    """Open the Prefect or MLflow UI on the project's embedded stores (runs until Ctrl-C)."""
    _, settings = _context()
    if which == "prefect":
        argv = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port or 4200)]
    elif which == "mlflow":
        argv = [
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
    os.execvp(argv[0], argv)


def main() -> None:
    """Entry point: one-line errors (set DRIFTLOOP_DEBUG=1 for the traceback)."""
    # Skip the interpreter's final garbage collection of millions of library objects (~2-3 s).
    atexit.register(gc.freeze)
    try:
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
