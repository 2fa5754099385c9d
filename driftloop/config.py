"""Parameters (params.yaml) and settings (environment), loaded once and validated.

`params.yaml` holds every tunable, grouped by stage. The environment holds where things live
(tracking URI, Prefect API, project home). A wrong key or type is a `ConfigError` whose message
names the key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from driftloop.errors import ConfigError

PARAMS_FILE = "params.yaml"


def _iso_date(value: Any, optional: bool = False) -> Any:
    """A YYYY-MM-DD string (an unquoted YAML date is accepted and written back as text)."""
    if value is None and optional:
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"must be a date YYYY-MM-DD, got {value!r}") from None
    return str(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """Schema of one raw column of a batch."""

    dtype: Literal["float", "int", "str"] = "float"
    min: float | None = None
    max: float | None = None
    required: bool = True


class DataParams(_Strict):
    source: str = "seattle"
    until: str | None = None
    date_column: str = "date"
    raw_dir: str = "data/raw"
    quarantine_dir: str = "data/quarantine"
    columns: dict[str, ColumnSpec]

    _until_is_date = field_validator("until", mode="before")(lambda v: _iso_date(v, True))

    @property
    def required_columns(self) -> list[str]:
        return [name for name, spec in self.columns.items() if spec.required]


class TargetParams(_Strict):
    name: str = "target"
    column: str
    horizon: int = Field(1, ge=0)
    threshold: float = 0.0


class ValidationParams(_Strict):
    min_rows: int = Field(1, ge=1)
    max_rows: int = Field(10_000_000, ge=1)
    max_null_share: float = Field(0.0, ge=0.0, le=1.0)


class FeatureParams(_Strict):
    numeric: list[str]
    lags: list[int] = Field(default_factory=list)
    rolling_windows: list[int] = Field(default_factory=list)
    season: bool = True

    @model_validator(mode="after")
    def _positive_windows(self) -> FeatureParams:
        if any(v < 1 for v in [*self.lags, *self.rolling_windows]):
            raise ValueError("lags and rolling_windows must be >= 1")
        return self


class TrainParams(_Strict):
    experiment: str = "driftloop-train"
    model_name: str = "driftloop_model"
    holdout_days: int = Field(180, ge=1)
    cv_splits: int = Field(4, ge=2)
    seed: int = 42
    model: Literal["hist_gradient_boosting", "logistic_regression", "random_forest"] = (
        "hist_gradient_boosting"
    )
    hyperparams: dict[str, Any] = Field(default_factory=dict)


Metric = Literal["roc_auc", "f1", "accuracy", "log_loss", "brier"]


class PromoteParams(_Strict):
    primary_metric: Metric = "roc_auc"
    min_delta: float = Field(0.0, ge=0.0)
    max_segment_drop: float = Field(0.05, ge=0.0)
    floor: float = 0.5
    segment: str = "season"
    min_holdout_rows: int = Field(21, ge=1)  # holdout rows neither model has trained on


class FeatureDrift(_Strict):
    """Evidently stattest for one column: method name and threshold."""

    method: str = "ks"
    threshold: float | None = None


class MonitorParams(_Strict):
    experiment: str = "driftloop-monitor"
    window_days: int = Field(28, ge=1)  # the newest window of ingested data
    min_rows: int = Field(14, ge=2)  # fewer rows: cannot evaluate
    drift_share: float = Field(0.5, gt=0.0, le=1.0)  # retrain when this share of columns drift
    method: str = "ks"  # default Evidently stattest for numeric columns
    threshold: float | None = None  # default stattest threshold (None: Evidently's)
    per_feature: dict[str, FeatureDrift] = Field(default_factory=dict)
    prediction_drift: bool = True
    max_metric_drop: float = Field(0.10, ge=0.0)  # allowed drop of the primary metric vs holdout
    min_labelled_rows: int = Field(14, ge=1)
    html_report: Literal["always", "on_action"] = "always"  # Evidently HTML (~4 MB each)
    cooldown_days: int = Field(28, ge=0)  # no drift-triggered retrain this soon after one
    # The reference: the champion's training rows of the window's time of year ("seasonal"), or
    # all of them ("training": a 4-week window always differs from a year of every season).
    reference: Literal["seasonal", "training"] = "seasonal"
    season_margin_days: int = Field(15, ge=0, le=183)  # seasonal: days either side of the window


class RetrainParams(_Strict):
    window_days: int | None = Field(365, ge=30)  # train on the most recent N days (None: all)
    schedule_every_days: int = Field(28, ge=1)  # the scheduled-only strategy, for comparison


class ReplayParams(_Strict):
    initial_until: str = "2012-04-30"  # the first model sees only these months
    end: str = "2015-12-31"
    step_days: int = Field(7, ge=1)  # a new batch arrives every step
    holdout_days: int = Field(30, ge=7)  # shorter holdout for the short early history
    report_dir: str = "reports/replay"

    _dates = field_validator("initial_until", "end", mode="before")(_iso_date)

    @field_validator("end")
    @classmethod
    def _ends_after_start(cls, end: str, info: ValidationInfo) -> str:
        start = info.data.get("initial_until")
        if start is not None and end <= start:
            raise ValueError(f"{end} must be after replay.initial_until {start}")
        return end


class Params(_Strict):
    """The whole of params.yaml."""

    data: DataParams
    target: TargetParams
    validation: ValidationParams = ValidationParams()
    features: FeatureParams
    train: TrainParams = TrainParams()
    promote: PromoteParams = PromoteParams()
    monitor: MonitorParams = MonitorParams()
    retrain: RetrainParams = RetrainParams()
    replay: ReplayParams = ReplayParams()

    @model_validator(mode="after")
    def _features_exist(self) -> Params:
        unknown = [c for c in self.features.numeric if c not in self.data.columns]
        if unknown:
            raise ValueError(f"features.numeric names columns not in data.columns: {unknown}")
        if self.target.column not in self.data.columns:
            raise ValueError(f"target.column {self.target.column!r} is not in data.columns")
        return self


def _error_key(err: Any) -> str:
    return ".".join(str(p) for p in err["loc"]) or "<root>"


def parse_params(raw: dict[str, Any], origin: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise ConfigError naming the first bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _error_key(first)
        raise ConfigError(f"{origin}: key '{key}': {first['msg']}") from None


def load_params(path: Path | str | None = None) -> Params:
    """Load and validate params.yaml (default: the project's)."""
    file = Path(path) if path is not None else project_root() / PARAMS_FILE
    if not file.exists():
        raise ConfigError(f"{file}: params file not found")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: top level must be a mapping of sections")
    return parse_params(raw, origin=str(file))


def project_root() -> Path:
    """The project directory: $DRIFTLOOP_PROJECT, else the nearest parent holding params.yaml."""
    env = os.environ.get("DRIFTLOOP_PROJECT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / PARAMS_FILE).exists():
            return candidate
    return here


class Settings(BaseSettings):
    """Where things live. Embedded defaults: everything under <project>/.driftloop."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", extra="ignore")

    project: Path = Field(default_factory=project_root)
    home: Path | None = None
    tracking_uri: str | None = None
    artifact_root: str | None = None
    triggered_by: str = Field(default_factory=lambda: os.environ.get("USER", "cli"))
    mlflow_ui: str = "http://127.0.0.1:5000"

    @property
    def state_dir(self) -> Path:
        return (self.home or self.project / ".driftloop").resolve()

    @property
    def mlflow_uri(self) -> str:
        return (
            self.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{self.state_dir / 'mlflow.db'}"
        )

    @property
    def tracking_uri_is_server(self) -> bool:
        return self.mlflow_uri.startswith(("http://", "https://"))

    @property
    def mlflow_artifacts(self) -> str:
        return self.artifact_root or (self.state_dir / "mlartifacts").as_uri()

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.jsonl"

    @property
    def lock_dir(self) -> Path:
        return self.state_dir / "locks"

    def path(self, relative: str) -> Path:
        """A project-relative path from params.yaml, made absolute."""
        return (self.project / relative).resolve()


QUIET_OFFLINE_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "TQDM_DISABLE": "1",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


def apply_env_defaults(settings: Settings | None = None) -> None:
    """Telemetry off and embedded homes, unless the user set them. Call before heavy imports."""
    for key, value in QUIET_OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    settings = settings or Settings()
    os.environ.setdefault("PREFECT_HOME", str(settings.state_dir / "prefect"))
    # Prefect creates its home without parents: on a fresh clone .driftloop/ does not exist yet.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    for noisy in ("great_expectations", "dvc", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
