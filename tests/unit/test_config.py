"""params.yaml is validated once; a wrong key, type, section or date is a ConfigError naming it."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftloop.config import Params, load_params, parse_params
from driftloop.errors import ConfigError
from tests.helpers import REPO_ROOT, cli

Raw = dict[str, Any]


@pytest.fixture(scope="module")
def raw_params() -> Raw:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def edited(raw: Raw, edit: Callable[[Raw], object]) -> Raw:
    changed = copy.deepcopy(raw)
    edit(changed)
    return changed


def test_repo_params_are_valid(raw_params: Raw) -> None:
    params = parse_params(raw_params)
    assert isinstance(params, Params)
    assert params.train.holdout_days == raw_params["train"]["holdout_days"]
    assert params.data.required_columns == ["precipitation", "temp_max", "temp_min", "wind"]
    assert params.data.key_columns == ["date"]
    assert params.target.forecast is not None and params.target.source_column == "precipitation"


BAD_PARAMS = [
    pytest.param(
        lambda r: r["train"].update(holdout_dayz=180), "train.holdout_dayz", id="misspelt-key"
    ),
    pytest.param(
        lambda r: r["train"].update(holdout_days="half a year"),
        "train.holdout_days",
        id="wrong-type",
    ),
    pytest.param(lambda r: r["train"].update(holdout_days=0), "train.holdout_days", id="below-min"),
    pytest.param(lambda r: r.update(trian={"seed": 1}), "trian", id="unknown-section"),
    pytest.param(lambda r: r.pop("target"), "target", id="missing-section"),
    pytest.param(
        lambda r: r["promote"].update(primary_metric="auc"),
        "promote.primary_metric",
        id="unknown-metric",
    ),
    pytest.param(
        lambda r: r["data"]["columns"]["wind"].update(dtype="double"),
        "data.columns.wind.dtype",
        id="nested-key",
    ),
]


@pytest.mark.parametrize(("edit", "key"), BAD_PARAMS)
def test_bad_params_raise_config_error_naming_the_key(
    raw_params: Raw, edit: Callable[[Raw], object], key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"key '{key}':") as info:
        parse_params(edited(raw_params, edit))
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize("bad_date", ["2015-13-45", "tomorrow", "31/12/2015"])
def test_bad_until_date_is_a_config_error_showing_the_value(raw_params: Raw, bad_date: str) -> None:
    with pytest.raises(ConfigError, match="until") as info:
        parse_params(edited(raw_params, lambda r: r["data"].update(until=bad_date)))
    assert repr(bad_date) in str(info.value)


def test_bad_until_date_names_the_full_key(raw_params: Raw) -> None:
    with pytest.raises(ConfigError, match=r"key 'data\.until'"):
        parse_params(edited(raw_params, lambda r: r["data"].update(until="2015-13-45")))


def test_bad_replay_date_is_a_config_error(raw_params: Raw) -> None:
    with pytest.raises(ConfigError, match=r"replay\.initial_until"):
        parse_params(edited(raw_params, lambda r: r["replay"].update(initial_until="soon")))


def test_an_unknown_retrain_window_names_its_key(raw_params: Raw) -> None:
    with pytest.raises(ConfigError, match=r"key 'retrain\.window'.*'rolling', 'growing'"):
        parse_params(edited(raw_params, lambda r: r["retrain"].update(window="sliding")))


def test_replay_cadences_are_whole_days_sorted_once(raw_params: Raw) -> None:
    params = parse_params(edited(raw_params, lambda r: r["replay"].update(cadences=[28, 7, 28])))
    assert params.replay.cadences == [7, 28]
    with pytest.raises(ConfigError, match=r"key 'replay\.cadences'.*>= 1"):
        parse_params(edited(raw_params, lambda r: r["replay"].update(cadences=[0, 7])))
    with pytest.raises(ConfigError, match=r"key 'replay\.random_seeds'"):
        parse_params(edited(raw_params, lambda r: r["replay"].update(random_seeds=1)))


def test_unknown_feature_column_is_named(raw_params: Raw) -> None:
    with pytest.raises(ConfigError, match=r"key 'features\.numerical'.*\['humidity'\]"):
        parse_params(edited(raw_params, lambda r: r["features"].update(numerical=["humidity"])))


CONTRACT_ERRORS = [
    pytest.param(
        lambda r: r["target"].update(column="weather"),
        "target",
        "exactly one of `column`",
        id="label-column-and-forecast",
    ),
    pytest.param(
        lambda r: r["target"].update(forecast={"column": "wind", "horizon": 1}),
        "target.forecast",
        "exactly one of `above`",
        id="forecast-without-rule",
    ),
    pytest.param(
        lambda r: r["data"].update(entity_columns=["station"]),
        "data",
        "'station'",
        id="entity-not-a-column",
    ),
    pytest.param(
        lambda r: r["data"].update(frequency="fortnightly"),
        "data.frequency",
        "pandas frequency",
        id="bad-frequency",
    ),
    pytest.param(
        lambda r: r["validation"].update(max_future_skew="soon"),
        "validation.max_future_skew",
        "duration",
        id="bad-skew",
    ),
    pytest.param(
        lambda r: r["features"].update(numerical=["wind"], categorical=["temp_max"]),
        "features.categorical",
        "'temp_max' has dtype float",
        id="float-as-categorical",
    ),
    pytest.param(
        lambda r: r["evaluation"].update(segments=["planet"]),
        "evaluation.segments",
        "planet",
        id="unknown-segment",
    ),
    pytest.param(
        lambda r: r["data"]["columns"]["weather"].update(min=0),
        "data.columns.weather",
        "numeric columns",
        id="range-on-a-string",
    ),
]


@pytest.mark.parametrize(("edit", "key", "message"), CONTRACT_ERRORS)
def test_data_contract_errors_name_the_key(
    raw_params: Raw, edit: Callable[[Raw], object], key: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"key '{key}'") as info:
        parse_params(edited(raw_params, edit))
    assert message in str(info.value)


def test_the_bundled_flights_example_is_a_valid_contract() -> None:
    params = load_params(REPO_ROOT / "examples" / "flights" / "params.yaml")
    assert params.data.key_columns == [params.data.id_column]
    assert params.join_column == "flight_id"
    assert params.target.column == "arr_delay"
    assert params.train.model_name != load_params(REPO_ROOT / "params.yaml").train.model_name


def test_a_params_file_is_chosen_by_env_or_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw_params: Raw
) -> None:
    from driftloop.config import Settings

    other = edited(raw_params, lambda r: r["train"].update(model_name="other_model"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "other.yaml").write_text(yaml.safe_dump(other))
    monkeypatch.setenv("DRIFTLOOP_PROJECT", str(tmp_path))
    monkeypatch.setenv("DRIFTLOOP_PARAMS", "models/other.yaml")
    settings = Settings()
    assert settings.params == tmp_path / "models" / "other.yaml"
    assert load_params(settings.params).train.model_name == "other_model"


def test_load_params_names_the_file(tmp_path: Path, raw_params: Raw) -> None:
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(edited(raw_params, lambda r: r["train"].update(seed="x"))))
    with pytest.raises(ConfigError, match=rf"^{file}: key 'train.seed':"):
        load_params(file)


@pytest.mark.parametrize(
    ("text", "message"),
    [("data: [unclosed", "not valid YAML"), ("- a\n- b\n", "top level must be a mapping")],
)
def test_load_params_rejects_non_mapping_yaml(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "params.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(file)


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda r: r["train"].update(holdout_days="half a year"), "train.holdout_days"),
        (lambda r: r.update(trian={}), "trian"),
    ],
    ids=["wrong-type", "unknown-section"],
)
@pytest.mark.parametrize("command", [["status"], ["train", "--json"], ["ingest"]])
def test_cli_exits_2_with_a_one_line_reason(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    raw_params: Raw,
    edit: Callable[[Raw], object],
    key: str,
    command: list[str],
) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited(raw_params, edit)))
    monkeypatch.setenv("DRIFTLOOP_PROJECT", str(tmp_path))
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path / ".driftloop"))

    result = cli(*command)

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert f"key '{key}'" in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / ".driftloop").exists()  # failed before touching any state


def test_env_defaults_create_the_prefect_home_on_a_fresh_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftloop.config import Settings, apply_env_defaults

    monkeypatch.delenv("PREFECT_HOME", raising=False)
    home = tmp_path / "clone" / ".driftloop"
    apply_env_defaults(Settings(project=tmp_path / "clone", home=home))
    assert os.environ["PREFECT_HOME"] == str(home / "prefect")
    assert (home / "prefect").is_dir()
