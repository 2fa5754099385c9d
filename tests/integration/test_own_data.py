"""A user's own late-label table, by params alone, through every command, each run twice:
`run` (the training flow), `train`, `monitor`, `replay` of the file source with its labels
arriving days later from a separate file, and `score`. Column names and category values carry
unicode, spaces and punctuation (`amount (€)`, `€uro Shop`, `50% Off`, `A+B (outlet)`, `#1 Store`):
they must reach MLflow (sanitized names, raw names kept), the reports and the service schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests import owndata
from tests.helpers import Project, cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own(module_project: Project, prefect_harness: None) -> tuple[Project, Path, pd.DataFrame]:
    table = owndata.events(days=42, per_day=30)
    root = module_project.root
    owndata.write_csv(owndata.rows_only(table), root / "exports" / "events.csv")
    owndata.write_csv(owndata.labels_of(table), root / "exports" / "labels.csv")
    raw = owndata.params(
        "exports/events.csv",
        "exports/labels.csv",
        replay={"initial_until": "2024-01-21", "end": "2024-02-04"},
    )
    raw["data"]["until"] = "2024-01-28"
    return module_project, owndata.write_params(root, raw), table


def test_run_twice_trains_once_and_names_reach_mlflow(
    own: tuple[Project, Path, pd.DataFrame],
) -> None:
    project, params, _ = own
    first = cli("--params", str(params), "run", "--json").json()
    assert first["promoted"] is True, first
    second = cli("--params", str(params), "run", "--json").json()
    assert second["reason"] == "already trained"
    assert second["version"] == (first.get("refit") or first["version"])  # the champion

    client = project.mlflow_client()
    run = client.get_run(first["run_id"])
    names = json.loads(
        Path(client.download_artifacts(run.info.run_id, "metric_names.json")).read_text()
    )
    raw_names = set(names.values())
    assert "holdout_store name/€uro Shop_roc_auc" in raw_names
    assert "holdout_store name/A+B (outlet)_roc_auc" in raw_names
    assert set(names) <= set(run.data.metrics)  # every sanitized name was logged
    assert "holdout_store name/Café Zürich_roc_auc" in run.data.metrics  # valid as it is

    status = cli("--params", str(params), "status", "--json").json()
    assert status["champion"]["version"] == second["version"]


def test_train_and_monitor_run_twice_and_say_the_same(
    own: tuple[Project, Path, pd.DataFrame],
) -> None:
    _, params, _ = own
    trained = [cli("--params", str(params), "train", "--json").json() for _ in range(2)]
    assert trained[0]["reason"] == trained[1]["reason"]
    assert not trained[1]["promoted"]  # the same data and model: not better than itself
    watched = [
        cli("--params", str(params), "monitor", "--retrain", "off", "--json") for _ in range(2)
    ]
    assert [w.exit_code for w in watched] == [0, 0], watched[0].stderr
    results = [w.json() for w in watched]
    assert results[0]["action"] == results[1]["action"]
    assert results[0]["performance"]["n_labelled"] > 0  # labels joined from the label file


def test_score_takes_rows_with_any_column_names(
    own: tuple[Project, Path, pd.DataFrame], tmp_path: Path
) -> None:
    _, params, table = own
    rows = owndata.rows_only(table).tail(20)
    path = owndata.write_csv(rows, tmp_path / "new rows (€).csv")
    scored = cli("--params", str(params), "score", str(path), "--json").json()
    out = pd.read_csv(scored["output"])
    assert len(out) == 20 and out["probability"].between(0, 1).all()
    assert out[owndata.STORE].tolist() == rows[owndata.STORE].tolist()


def test_replay_of_a_file_source_with_late_labels_from_a_separate_file(
    own: tuple[Project, Path, pd.DataFrame],
) -> None:
    _, params, _ = own
    result = cli("--params", str(params), "replay", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["meta"]["steps"] == 2
    report = json.loads(Path(summary["report"][0]).read_text())
    steps = report["timeline"]
    assert [s["as_of"] for s in steps] == ["2024-01-28", "2024-02-04"]
    # labels arrive 2-10 days late: at each step some rows are labelled and some still pending
    assert all(s["n_labelled"] > 0 and s["n_pending"] > 0 for s in steps)
    loop = report["comparison"]["drift_triggered"]
    assert loop["n_predictions"] > 0 and 0.0 <= loop["roc_auc"] <= 1.0
    html = Path(summary["report"][1]).read_text()
    assert "returns replay" in html


BAD_DAY = "2024-02-01"


def test_replay_of_a_folder_of_drops_with_labels_from_a_table(
    own: tuple[Project, Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step ingests the drops' rows that had arrived by its end and the labels known by
    then, from a folder of daily files and a SQLite table of labels; a drop the gate refuses
    is quarantined, named in the report, and the replay goes on."""
    import sqlalchemy as sa

    project, _, table = own
    rows = owndata.rows_only(table)
    drops = project.root / "drops"
    drops.mkdir()
    days = rows[owndata.TIME].dt.strftime("%Y-%m-%d")
    for day in sorted(days.unique()):
        drop = rows[days == day].copy()
        if day == BAD_DAY:  # one day's export in cents, with a sign error: the gate refuses it
            drop[owndata.AMOUNT] = -100 * drop[owndata.AMOUNT]
        drop.to_parquet(drops / f"events-{day}.parquet", index=False)
    url = f"sqlite:///{project.root / 'labels.db'}"
    engine = sa.create_engine(url)
    owndata.labels_of(table).to_sql("labels", engine, index=False)
    engine.dispose()
    monkeypatch.setenv("RETURNS_LABELS_DB", url)
    labels = {"kind": "sql", "url_env": "RETURNS_LABELS_DB", "table": "labels"}
    raw = owndata.params(
        "drops",
        labels,
        name="returns_drops",
        replay={"initial_until": "2024-01-21", "end": "2024-02-04"},
    )
    params = owndata.write_params(project.root, raw, "returns_drops")

    result = cli("--params", str(params), "replay", "--json")
    assert result.exit_code == 0, result.stderr  # a quarantined drop does not end the replay
    summary = json.loads(result.stdout)
    report = json.loads(Path(summary["report"][0]).read_text())
    assert [s["as_of"] for s in report["timeline"]] == ["2024-01-28", "2024-02-04"]
    assert all(s["n_labelled"] > 0 for s in report["timeline"])
    first, second = report["timeline"]
    assert first["quarantined"] == ""
    assert f"events-{BAD_DAY}.parquet" in second["quarantined"]
    assert "amount" in second["quarantined"]
    assert report["meta"]["quarantined_steps"] == 1
    assert "Quarantined batches (1 of 2 steps)" in Path(summary["report"][1]).read_text()
    assert "warning: 1 of 2 steps quarantined a batch" in result.stderr
    workspace = Path(summary["meta"]["workspace"])
    from driftloop.config import load_params

    ws_params = load_params(workspace / "params.yaml")
    accepted = pd.concat(
        pd.read_parquet(p) for p in (workspace / ws_params.data.raw_dir).glob("*.parquet")
    )
    assert accepted[owndata.TIME].max() <= pd.Timestamp("2024-02-05")  # nothing from the future
    assert len(accepted) == ((rows[owndata.TIME] < "2024-02-05") & (days != BAD_DAY)).sum()


def test_a_failure_after_the_batch_was_accepted_is_mended_by_running_again(
    own: tuple[Project, Path, pd.DataFrame],
) -> None:
    project, _, _ = own
    raw = owndata.params("exports/events.csv", "exports/labels.csv", name="returns_fix")
    raw["data"]["until"] = "2024-01-28"
    raw["train"]["hyperparams"] = {"max_iter": 40, "no_such_setting": 1}
    params = owndata.write_params(project.root, raw, "returns_fix")
    broken = cli("--params", str(params), "run")
    assert broken.exit_code == 5, broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1 and "no_such_setting" in broken.stderr
    assert any((project.root / "data" / "returns_fix" / "raw").glob("*.parquet"))  # accepted

    raw["train"]["hyperparams"] = {"max_iter": 40}
    owndata.write_params(project.root, raw, "returns_fix")
    fixed = cli("--params", str(params), "run", "--json").json()
    assert fixed["promoted"] is True
