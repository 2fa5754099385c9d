"""Event-level tables run by params alone, through the real CLI, DVC, GE, MLflow and Evidently:

- a stocks-style table (several symbols per date, "price rises next month" per symbol), and
- a table with an id, categorical features and labels that arrive later in batches of their own;

plus the registered model answering `mlflow models serve` with probabilities.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from driftloop.lineage import Lineage
from tests.helpers import BIN_DIR, Project, cli, subprocess_env

pytestmark = pytest.mark.slow


def write_params(project: Project, name: str, raw: dict[str, Any]) -> Path:
    """A second model's params file in the project (its own model name and folders)."""
    path = project.root / "models" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def common(name: str) -> dict[str, Any]:
    return {
        "train": {
            "experiment": f"{name}-train",
            "model_name": name,
            "holdout_days": 60,
            "cv_splits": 2,
            "hyperparams": {"max_iter": 40, "max_depth": 3},
        },
        "promote": {"floor": 0.0, "min_holdout_rows": 5, "min_segment_rows": 5},
        "monitor": {
            "experiment": f"{name}-monitor",
            "reference": "training",
            "min_rows": 5,
            "min_labelled_rows": 5,
            "html_report": "on_action",
        },
    }


# -- stocks: entities and a forecast per entity ---------------------------------------------------


def stocks_params(project: Project) -> Path:
    raw = {
        "data": {
            "source": "unused",
            "timestamp_column": "date",
            "entity_columns": ["symbol"],
            "frequency": "D",
            "raw_dir": "data/stocks/raw",
            "labels_dir": "data/stocks/labels",
            "quarantine_dir": "data/stocks/quarantine",
            "monitoring_dir": "data/stocks/monitoring",
            "columns": {
                "symbol": {
                    "dtype": "category",
                    "allowed": ["MSFT", "AMZN", "IBM", "AAPL", "GOOG"],
                },
                "price": {"dtype": "float", "min": 0.0, "max": 10000.0},
            },
        },
        "target": {"name": "price_rises", "forecast": {"column": "price", "rises": True}},
        "validation": {"distribution_check": False},
        "features": {
            "numerical": ["price"],
            "categorical": ["symbol"],
            "lags": {"periods": [1, 2, 3]},
            "rolling": {"windows": ["95D"]},
            "calendar": ["month"],
        },
        "evaluation": {"segments": ["symbol"]},
        **common("stock_rise"),
    }
    raw["train"]["holdout_days"] = 400
    raw["monitor"]["window_days"] = 370
    return write_params(project, "stocks", raw)


@pytest.fixture(scope="module")
def stocks(module_project: Project) -> tuple[Project, Path, pd.DataFrame]:
    from vega_datasets import local_data

    table = local_data.stocks()
    params = stocks_params(module_project)
    early = module_project.root / "stocks_until_2007.csv"
    late = module_project.root / "stocks_2008.csv"
    table[table["date"] < "2008-01-01"].to_csv(early, index=False)
    table[(table["date"] >= "2008-01-01") & (table["date"] < "2009-01-01")].to_csv(
        late, index=False
    )
    return module_project, params, table


def test_a_stocks_table_trains_per_symbol_by_params_alone(
    stocks: tuple[Project, Path, pd.DataFrame],
) -> None:
    project, params, table = stocks
    first = cli("--params", str(params), "ingest", str(project.root / "stocks_until_2007.csv"))
    assert first.exit_code == 0, first.stderr
    trained = cli("--params", str(params), "train", "--json").json()
    assert trained["promoted"] is True, trained
    assert (project.root / "data" / "stocks" / "raw.dvc").is_file()
    assert not (project.root / "data" / "raw").exists()  # the default model's folder is untouched

    client = project.mlflow_client()
    version = client.get_model_version_by_alias("stock_rise", "champion")
    assert version.tags[Lineage.tag("params_file")] == "models/stocks.yaml"
    metrics = client.get_run(version.run_id).data.metrics
    symbols = set(table["symbol"])
    assert {f"holdout_symbol/{s}_accuracy" for s in symbols} <= set(metrics)


def test_the_stocks_model_is_monitored_on_a_later_year(
    stocks: tuple[Project, Path, pd.DataFrame],
) -> None:
    project, params, _ = stocks
    later = cli("--params", str(params), "ingest", str(project.root / "stocks_2008.csv"))
    assert later.exit_code == 0, later.stderr
    result = cli("--params", str(params), "monitor", "--retrain", "off", "--json")
    assert result.exit_code in (0, 7), result.stderr
    payload = json.loads(result.stdout)
    champion = project.mlflow_client().get_model_version_by_alias("stock_rise", "champion")
    assert payload["champion"] == str(champion.version) == "2"  # v1 passed the gate, v2 its refit
    assert payload["drift"] is not None
    kinds = {c["column"]: c["kind"] for c in payload["drift"]["columns"]}
    assert kinds == {"price": "numerical", "symbol": "categorical"}
    assert payload["performance"]["n_pending"] == 5  # December 2008: next month not seen yet


# -- an id, categories and labels that arrive later ----------------------------------------------


def loans(n: int, start: str, seed: int) -> pd.DataFrame:
    """Loan applications: the region and the amount drive default; ids are unique."""
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1])
    amount = rng.gamma(3.0, 3000.0, n)
    risk = np.where(region == "west", 0.45, 0.12) + amount / 200_000
    hours = np.sort(rng.integers(0, 24 * 90, n))
    return pd.DataFrame(
        {
            "loan_id": [f"{start[:4]}-{seed}-{i:05d}" for i in range(n)],
            "applied_at": pd.Timestamp(start) + pd.to_timedelta(hours, "h"),
            "region": region,
            "amount": amount.round(2),
            "defaulted": (rng.random(n) < risk).astype(int),
        }
    )


def loan_params(project: Project) -> Path:
    raw = {
        "data": {
            "source": "unused",
            "timestamp_column": "applied_at",
            "id_column": "loan_id",
            "raw_dir": "data/loans/raw",
            "labels_dir": "data/loans/labels",
            "quarantine_dir": "data/loans/quarantine",
            "monitoring_dir": "data/loans/monitoring",
            "columns": {
                "loan_id": {"dtype": "str"},
                "region": {"dtype": "category"},
                "amount": {"dtype": "float", "min": 0.0},
                "defaulted": {"dtype": "int", "allowed": [0, 1], "required": False},
            },
        },
        "target": {"name": "default", "column": "defaulted"},
        "labels": {"join_column": "loan_id"},
        "validation": {"max_unknown_category_share": 0.0},
        "features": {"numerical": ["amount"], "categorical": ["region"], "calendar": ["weekday"]},
        "evaluation": {"segments": ["region"]},
        **common("loan_default"),
    }
    raw["train"]["holdout_days"] = 20
    raw["monitor"]["window_days"] = 30
    return write_params(project, "loans", raw)


def trained_loans(
    project: Project, seed: int, labelled: int
) -> tuple[Path, pd.DataFrame, dict[str, Any]]:
    """1,000 loan applications ingested, the first `labelled` labels ingested, and the first
    model trained and promoted (1,200 are generated: the last 200 are for serving)."""
    root = project.root
    table = loans(1200, "2014-01-01", seed=seed)
    table.drop(columns="defaulted").iloc[:1000].to_csv(root / "applications.csv", index=False)
    table.iloc[:labelled][["loan_id", "defaulted"]].to_csv(root / "labels-1.csv", index=False)
    params_file = loan_params(project)
    p = ["--params", str(params_file)]
    assert cli(*p, "ingest", str(root / "applications.csv")).exit_code == 0
    assert cli(*p, "ingest", "--labels", str(root / "labels-1.csv")).exit_code == 0
    first: dict[str, Any] = cli(*p, "train", "--json").json()
    assert first["promoted"] is True, first
    return params_file, table, first


@pytest.fixture(scope="module")
def lending(module_project: Project) -> tuple[Project, Path, pd.DataFrame]:
    root = module_project.root
    table = loans(1500, "2014-01-01", seed=1)
    table.drop(columns="defaulted").to_csv(root / "applications.csv", index=False)
    table.iloc[:900][["loan_id", "defaulted"]].to_csv(root / "labels-1.csv", index=False)
    table.iloc[900:1300][["loan_id", "defaulted"]].to_csv(root / "labels-2.csv", index=False)
    return module_project, loan_params(module_project), table


def test_labels_arrive_in_batches_of_their_own_and_only_labelled_rows_train(
    lending: tuple[Project, Path, pd.DataFrame],
) -> None:
    project, params, _ = lending
    p = ["--params", str(params)]
    assert cli(*p, "ingest", str(project.root / "applications.csv")).exit_code == 0
    assert cli(*p, "ingest", "--labels", str(project.root / "labels-1.csv")).exit_code == 0
    first = cli(*p, "train", "--json").json()
    assert first["promoted"] is True, first
    run = project.mlflow_client().get_run(first["run_id"])
    assert run.data.metrics["n_train"] + run.data.metrics["n_holdout"] == 900  # labelled only
    assert (project.root / "data" / "loans" / "labels.dvc").is_file()

    assert cli(*p, "ingest", "--labels", str(project.root / "labels-2.csv")).exit_code == 0
    second = cli(*p, "train", "--no-promote", "--json").json()
    run = project.mlflow_client().get_run(second["run_id"])
    assert run.data.metrics["n_train"] + run.data.metrics["n_holdout"] == 1300
    tags = project.mlflow_client().get_model_version("loan_default", second["version"]).tags
    assert tags[Lineage.tag("labels_md5")] != ""


def test_a_label_batch_with_unknown_ids_is_quarantined_and_nothing_changes(
    lending: tuple[Project, Path, pd.DataFrame],
) -> None:
    project, params, _ = lending
    bad = pd.DataFrame({"loan_id": ["nobody-1", "nobody-2"], "defaulted": [1, 0]})
    path = project.root / "labels-unknown.csv"
    bad.to_csv(path, index=False)
    labels_dir = project.root / "data" / "loans" / "labels"
    before = sorted(p.name for p in labels_dir.iterdir())

    result = cli("--params", str(params), "ingest", "--labels", str(path))

    assert result.exit_code == 4
    assert "loan_id" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in labels_dir.iterdir()) == before
    quarantined = list((project.root / "data" / "loans" / "quarantine").iterdir())
    assert any((q / "labels-unknown.csv").is_file() for q in quarantined)


def test_monitoring_judges_labelled_rows_and_counts_pending_ones(
    lending: tuple[Project, Path, pd.DataFrame],
) -> None:
    _, params, table = lending
    result = cli("--params", str(params), "monitor", "--retrain", "off", "--json")
    assert result.exit_code in (0, 7), result.stderr
    payload = json.loads(result.stdout)
    perf = payload["performance"]
    window_start = pd.Timestamp(payload["window_start"])
    in_window = table[table["applied_at"] >= window_start]
    labelled = in_window[in_window.index < 1300]  # labels-1 and labels-2 cover rows 0..1299
    assert perf["n_labelled"] + perf["n_pending"] == len(in_window)
    assert perf["n_pending"] == len(in_window) - len(labelled)
    assert perf["n_pending"] > 0 and perf["n_labelled"] > 0


# -- the registered model outside driftloop --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_mlflow_models_serve_answers_the_champion_with_probabilities(
    lending: tuple[Project, Path, pd.DataFrame],
) -> None:
    project, _, _ = lending
    port = free_port()
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": project.settings.mlflow_uri}
    server = subprocess.Popen(
        [
            str(BIN_DIR / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/loan_default@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        rows = [
            {"amount": 1200.0, "weekday": 2.0, "region": "west"},
            {"amount": 300.0, "weekday": 5.0, "region": "atlantis"},
        ]  # an unseen category
        body = json.dumps({"dataframe_records": rows}).encode()
        answer = None
        deadline = time.monotonic() + 120
        while answer is None and time.monotonic() < deadline:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    body,
                    {"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(1)
        assert answer is not None, "mlflow models serve did not answer within 120 s"
        predictions = np.asarray(answer["predictions"], dtype=float)
        assert predictions.shape == (2, 2)  # P(class 0), P(class 1) per row
        assert np.allclose(predictions.sum(axis=1), 1.0)
        assert ((predictions > 0) & (predictions < 1)).all()
    finally:
        import os
        import signal

        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
