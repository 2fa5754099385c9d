"""Parameters (params.yaml) and settings (environment), loaded once and validated.

`params.yaml` holds every tunable, grouped by stage: the data contract (timestamp, id, entities,
columns), the target, features, training, evaluation, promotion, monitoring. The environment holds
where things live (tracking URI, Prefect API, project home). A wrong key or type is a
`ConfigError` whose message names the key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal, TypedDict

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
PARAMS_ENV = "DRIFTLOOP_PARAMS"
BUNDLED_SOURCES = ("seattle", "flights")
CALENDAR_FEATURES = ("day_of_year", "weekday", "hour", "month")
DERIVED_SEGMENTS = ("season", "month", "weekday", "hour")


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


def _offset(value: Any, optional: bool = False) -> Any:
    """A pandas offset alias such as `D`, `h`, `15min` (checked with pandas)."""
    if value is None and optional:
        return None
    import pandas as pd

    try:
        pd.tseries.frequencies.to_offset(str(value))
    except ValueError:
        raise ValueError(
            f"must be a pandas frequency such as D, h or 15min, got {value!r}"
        ) from None
    return str(value)


def _timedelta(value: Any) -> Any:
    """A duration such as `1D`, `36h`, `7 days` (checked with pandas)."""
    import pandas as pd

    try:
        pd.Timedelta(str(value))
    except ValueError:
        raise ValueError(f"must be a duration such as 1D, 36h or 7 days, got {value!r}") from None
    return str(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Dtype = Literal["float", "int", "str", "category", "bool"]
CATEGORICAL_DTYPES = frozenset({"str", "category"})


class ColumnSpec(_Strict):
    """Schema of one raw column of a batch: type, range or allowed values, required or not."""

    dtype: Dtype = "float"
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | bool] | None = None  # the complete set of values (str/category/int)
    required: bool = True

    @model_validator(mode="after")
    def _range_fits_dtype(self) -> ColumnSpec:
        if self.dtype in CATEGORICAL_DTYPES | {"bool"} and (
            self.min is not None or self.max is not None
        ):
            raise ValueError(f"min/max apply to numeric columns, not dtype {self.dtype!r}")
        return self


SourceKind = Literal["bundled", "file", "folder", "sql"]
READABLE_SUFFIXES = (".csv", ".parquet", ".pq")
_GLOB_CHARS = frozenset("*?[")


class SourceSpec(_Strict):
    """Where batches come from: a bundled example, a file that may grow, a folder (or glob) of
    drops, or a SQL table or query read by a time watermark.

    In a params file a plain string is enough for the first three: a bundled name
    (`seattle`, `flights`), a `.csv`/`.parquet` path (a file), anything else a folder or a glob
    (`drops/*.parquet`). A SQL source is a mapping; its URL comes from the environment variable
    named by `url_env`, never from params (it may hold a password).
    """

    kind: SourceKind
    name: str | None = None  # bundled: the example's name
    path: str | None = None  # file: the file; folder: a folder or a glob (relative to the project)
    url_env: str = "DRIFTLOOP_SOURCE_URL"  # sql: the variable holding the SQLAlchemy URL
    table: str | None = None  # sql: a table (optionally schema.table) ...
    query: str | None = None  # ... or a SELECT whose rows are read
    # sql: rows are read after the newest value seen in this column (default: the time column:
    # the event time for data, labels.time_column for labels); an insertion time catches late rows
    watermark_column: str | None = None

    @model_validator(mode="after")
    def _fields_of_kind(self) -> SourceSpec:
        needs = {"bundled": "name", "file": "path", "folder": "path"}
        if self.kind in needs and not getattr(self, needs[self.kind]):
            raise ValueError(f"a {self.kind} source needs `{needs[self.kind]}`")
        if self.kind == "bundled" and self.name not in BUNDLED_SOURCES:
            raise ValueError(f"bundled sources are {list(BUNDLED_SOURCES)}, got {self.name!r}")
        if self.kind == "sql":
            if (self.table is None) == (self.query is None):
                raise ValueError("a sql source needs exactly one of `table` or `query`")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.url_env):
                raise ValueError(f"url_env must name an environment variable, got {self.url_env!r}")
        return self

    @property
    def label(self) -> str:
        """How the source is named in messages and batch origins."""
        if self.kind == "bundled":
            return f"bundled:{self.name}"
        if self.kind == "sql":
            return f"sql:{self.table or 'query'}"
        return str(self.path)


def source_spec(value: Any) -> Any:
    """A source from params: a mapping as it is, or a string (bundled name, file, folder/glob)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        raise ValueError("a source cannot be empty")
    if text in BUNDLED_SOURCES:
        return {"kind": "bundled", "name": text}
    if text.lower().startswith(("postgresql:", "postgres:", "mysql:", "sqlite:", "mssql:")):
        raise ValueError(
            "a database URL does not belong in params (it may hold a password): use "
            "{kind: sql, url_env: VARIABLE, table: ...} and set VARIABLE in the environment"
        )
    is_file = Path(text).suffix.lower() in READABLE_SUFFIXES and not (_GLOB_CHARS & set(text))
    return {"kind": "file" if is_file else "folder", "path": text}


class DataParams(_Strict):
    """The data contract: what one row is, which columns it has, where batches live."""

    # where batches come from (see SourceSpec): "seattle", "export.csv", "drops/*.parquet", ...
    source: SourceSpec = SourceSpec(kind="bundled", name="seattle")
    until: str | None = None
    # A row with a new key older than the newest accepted timestamp minus this is refused
    # (None: no limit). SQL sources read from the newest accepted time minus this.
    lateness: str | None = None
    timestamp_column: str = "timestamp"  # event time; many rows may share one
    id_column: str | None = None  # unique row key; required when labels arrive separately
    entity_columns: list[str] = Field(default_factory=list)  # lags/forecasts per entity
    frequency: str | None = None  # rows at a finer grain than this are refused (D, h, ...)
    raw_dir: str = "data/raw"
    labels_dir: str = "data/labels"
    quarantine_dir: str = "data/quarantine"
    monitoring_dir: str = "data/monitoring"
    columns: dict[str, ColumnSpec]

    _until_is_date = field_validator("until", mode="before")(lambda v: _iso_date(v, True))
    _frequency = field_validator("frequency", mode="before")(lambda v: _offset(v, True))
    _source = field_validator("source", mode="before")(source_spec)
    _lateness = field_validator("lateness", mode="before")(
        lambda v: None if v is None else _timedelta(v)
    )

    @model_validator(mode="after")
    def _keys_are_columns(self) -> DataParams:
        for name in [*self.entity_columns, *([self.id_column] if self.id_column else [])]:
            if name not in self.columns:
                raise ValueError(f"{name!r} (id or entity column) is not in data.columns")
        if self.timestamp_column in self.columns:
            raise ValueError(
                f"timestamp_column {self.timestamp_column!r} is implicit: remove it from columns"
            )
        return self

    @property
    def required_columns(self) -> list[str]:
        return [name for name, spec in self.columns.items() if spec.required]

    @property
    def key_columns(self) -> list[str]:
        """What makes a row unique: the id column, else (timestamp, *entities)."""
        if self.id_column:
            return [self.id_column]
        return [self.timestamp_column, *self.entity_columns]


class ForecastTarget(_Strict):
    """A label derived from a later row of the same entity: `column` `horizon` rows ahead."""

    column: str
    horizon: int = Field(1, ge=1)
    above: float | None = None  # label = future value > above
    rises: bool = False  # label = future value > current value

    @model_validator(mode="after")
    def _one_rule(self) -> ForecastTarget:
        if (self.above is None) == (not self.rises):
            raise ValueError("set exactly one of `above` (a threshold) or `rises: true`")
        return self


class TargetParams(_Strict):
    """The binary label: an explicit column (may arrive later), or a forecast of a later row."""

    name: str = "target"
    column: str | None = None  # explicit label column: 0/1, bool, or numeric with above/at_least
    above: float | None = None  # label = column > above
    at_least: float | None = None  # label = column >= at_least
    forecast: ForecastTarget | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TargetParams:
        if (self.column is None) == (self.forecast is None):
            raise ValueError("set exactly one of `column` (a label column) or `forecast`")
        if self.above is not None and self.at_least is not None:
            raise ValueError("set at most one of `above` and `at_least`")
        if self.forecast is not None and (self.above is not None or self.at_least is not None):
            raise ValueError(
                "`above`/`at_least` belong to an explicit `column`; use forecast.above"
            )
        return self

    @property
    def source_column(self) -> str:
        """The raw column the label is computed from."""
        return self.column if self.column is not None else self.forecast.column  # type: ignore[union-attr]


class LabelParams(_Strict):
    """Ground truth that arrives later, in label batches of its own."""

    join_column: str | None = None  # default: data.id_column
    time_column: str | None = None  # when the label became known (default: when ingested)
    # where label batches come from (file, folder, sql; see SourceSpec); None: a bundled
    # example's own labels, else only `driftloop ingest --labels FILE`
    source: SourceSpec | None = None

    _source = field_validator("source", mode="before")(
        lambda v: None if v is None else source_spec(v)
    )


class ValidationParams(_Strict):
    min_rows: int = Field(1, ge=1)
    max_rows: int = Field(10_000_000, ge=1)
    max_null_share: float = Field(0.0, ge=0.0, le=1.0)  # per required column
    max_future_skew: str = "1D"  # timestamps later than now + this are refused
    max_unknown_category_share: float = Field(0.0, ge=0.0, le=1.0)  # unseen categories per column
    # Mean and median of each numeric column must stay within the accepted data's quantile range
    # [lower, upper], widened by `margin` x its width (a unit switch must not pass).
    distribution_check: bool = True
    distribution_min_history: int = Field(60, ge=1)  # accepted rows needed before checking
    distribution_quantiles: tuple[float, float] = (0.01, 0.99)
    distribution_margin: float = Field(0.1, ge=0.0)

    _skew = field_validator("max_future_skew", mode="before")(_timedelta)

    @field_validator("distribution_quantiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] < value[1] <= 1.0:
            raise ValueError("must be two quantiles 0 <= lower < upper <= 1")
        return value


class LagParams(_Strict):
    columns: list[str] | None = None  # default: features.numerical
    periods: list[int] = Field(default_factory=list)  # rows back, per entity

    @field_validator("periods")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("lag periods must be >= 1")
        return value


class RollingParams(_Strict):
    columns: list[str] | None = None  # default: features.numerical
    windows: list[str] = Field(default_factory=list)  # time windows per entity, e.g. 7D, 3h

    @field_validator("windows", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return [_timedelta(v) for v in (value or [])]


class FeatureParams(_Strict):
    """Model inputs: raw numerical and categorical columns, plus derived history and calendar."""

    numerical: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    lags: LagParams = LagParams()
    rolling: RollingParams = RollingParams()
    calendar: list[Literal["day_of_year", "weekday", "hour", "month"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_features(self) -> FeatureParams:
        if not self.numerical and not self.categorical:
            raise ValueError("declare at least one of numerical or categorical")
        overlap = sorted(set(self.numerical) & set(self.categorical))
        if overlap:
            raise ValueError(f"columns both numerical and categorical: {overlap}")
        return self

    @property
    def lag_columns(self) -> list[str]:
        return list(self.lags.columns if self.lags.columns is not None else self.numerical)

    @property
    def rolling_columns(self) -> list[str]:
        return list(self.rolling.columns if self.rolling.columns is not None else self.numerical)

    @property
    def raw(self) -> list[str]:
        """The monitored raw feature columns (numerical, then categorical)."""
        return [*self.numerical, *self.categorical]


Metric = Literal["roc_auc", "f1", "accuracy", "log_loss", "brier"]
ModelKind = Literal["hist_gradient_boosting", "logistic_regression", "random_forest"]


class Candidate(_Strict):
    """One model of the family `train.candidates` chooses from: its kind and hyperparameters."""

    model: ModelKind
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    # how a logistic regression sees numbers: standardised, or through their quantiles mapped to
    # a normal (heavy tails, or a mass at zero such as a day's rain, become usable by a line)
    numbers: Literal["standard", "quantile"] = "standard"


class TrainParams(_Strict):
    experiment: str = "driftloop-train"
    model_name: str = "driftloop_model"
    holdout_days: int = Field(180, ge=1)
    cv_splits: int = Field(4, ge=2)
    seed: int = 42
    # the single model trained when `candidates` is empty
    model: ModelKind = "hist_gradient_boosting"
    hyperparams: dict[str, Any] = Field(default_factory=dict)
    # name -> candidate: the one with the best mean time-series CV `select_by` is trained
    candidates: dict[str, Candidate] = Field(default_factory=dict)
    select_by: Metric = "roc_auc"
    # calibrate the chosen model's probability (on time-ordered out-of-fold predictions) where
    # that lowers the CV log loss: auto tries sigmoid (and isotonic with enough rows), none never
    calibration: Literal["auto", "sigmoid", "isotonic", "none"] = "auto"
    # the decision threshold of label metrics, chosen on the CV folds' out-of-fold predictions to
    # maximise this metric and stored with the model; fixed: evaluation.threshold
    threshold_for: Literal["accuracy", "f1", "fixed"] = "accuracy"
    cv_max_rows: int | None = Field(None, ge=100)  # CV on at most this many rows (time order kept)
    refit: bool = True  # a gate winner is refitted on its whole window (holdout too) first
    max_categories: int = Field(250, ge=2, le=254)  # rarer categories are grouped

    @field_validator("candidates", mode="before")
    @classmethod
    def _named_candidates(cls, value: Any) -> Any:
        """A list of kinds is accepted too (each with its default hyperparameters)."""
        if isinstance(value, list):
            return {str(kind): {"model": kind} for kind in value}
        return value

    def family(self) -> dict[str, Candidate]:
        """The candidates to choose from (the single `model` when none are listed)."""
        if self.candidates:
            return dict(self.candidates)
        return {self.model: Candidate(model=self.model, hyperparams=self.hyperparams)}


class EvaluationParams(_Strict):
    """How candidates are scored: segments to slice metrics by and the decision threshold."""

    segments: list[str] = Field(default_factory=list)  # data columns or season/month/weekday/hour
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # probability above which the label is 1


class PromoteParams(_Strict):
    primary_metric: Metric = "roc_auc"
    # "better": the challenger must beat the champion by min_delta on the comparable holdout
    # rows; "not_worse": it is promoted unless it is significantly worse there (a paired test
    # on the same rows at `confidence`), and no segment is significantly worse by more than
    # max_segment_drop (min_delta then applies only where no paired test can be made)
    rule: Literal["better", "not_worse"] = "better"
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    min_delta: float = Field(0.0, ge=0.0)
    max_segment_drop: float = Field(0.05, ge=0.0)  # applies to every evaluation segment
    floor: float = 0.5
    min_holdout_rows: int = Field(21, ge=1)  # holdout rows neither model has trained on
    min_segment_rows: int = Field(20, ge=1)  # smaller segments are not judged
    # What passing the gate does: "gate" moves `champion` at once; "experiment" makes the
    # candidate the `challenger` and starts serve.experiment (it wins only on served traffic).
    via: Literal["gate", "experiment"] = "gate"


TriggerName = Literal["performance", "estimated", "drift", "multivariate", "season"]
DEFAULT_TRIGGERS: tuple[TriggerName, ...] = ("performance", "drift", "multivariate", "season")


class FeatureDrift(_Strict):
    """Evidently stattest for one column: method name and threshold."""

    method: str | None = None  # None: the default method for the column's kind
    threshold: float | None = None


class MonitorParams(_Strict):
    experiment: str = "driftloop-monitor"
    window_days: int = Field(28, ge=1)  # the newest window of ingested data
    min_rows: int = Field(14, ge=2)  # fewer rows: cannot evaluate
    drift_share: float = Field(0.5, gt=0.0, le=1.0)  # retrain when this share of columns drift
    method: str = "ks"  # Evidently stattest for numerical columns
    threshold: float | None = None  # its threshold (None: Evidently's)
    # Evidently stattest for categorical columns: a distance (chisquare against the reference's
    # proportions false-alarms often when the reference is about as small as the window)
    categorical_method: str = "jensenshannon"
    categorical_threshold: float | None = None
    prediction_method: str = "ks"  # on the predicted probability
    prediction_threshold: float | None = None
    per_feature: dict[str, FeatureDrift] = Field(default_factory=dict)
    prediction_drift: bool = True
    # The tolerated drop of the primary metric vs holdout: a retrain when the window's metric
    # is significantly (interval at `confidence`) below holdout - this, or estimated below it.
    max_metric_drop: float = Field(0.10, ge=0.0)
    min_labelled_rows: int = Field(14, ge=1)
    html_report: Literal["always", "on_action"] = "always"  # Evidently HTML (~4 MB each)
    cooldown_days: int = Field(28, ge=0)  # no drift-triggered retrain this soon after one
    # The reference: the champion's training rows of the window's time of year ("seasonal"), or
    # all of them ("training": a 4-week window always differs from a year of every season).
    reference: Literal["seasonal", "training"] = "seasonal"
    season_margin_days: int = Field(15, ge=0, le=183)  # seasonal: days either side of the window
    max_rows: int = Field(200_000, ge=1000)  # larger frames are sampled (seeded) for drift
    # Drift thresholds: "calibrated" from the reference itself (each statistic's distribution
    # over reference chunks of the window's size; an alert beyond `calibration_quantile` of it),
    # or "fixed" (threshold, categorical_threshold, prediction_threshold, per_feature).
    drift_thresholds: Literal["calibrated", "fixed"] = "calibrated"
    calibration_quantile: float = Field(0.99, gt=0.5, lt=1.0)
    calibration_chunks: int = Field(100, ge=10)  # reference chunks per statistic
    # Drift weighted by the champion's permutation importance on its holdout: drift in a
    # feature the model ignores counts for nothing.
    importance_weighting: bool = True
    # Multivariate drift: a domain classifier (reference vs window, cross-validated ROC AUC)
    # on the features the champion uses, alerting beyond the same quantile of its reference null.
    domain_classifier: bool = True
    domain_chunks: int = Field(20, ge=5)  # reference chunks for its null distribution
    domain_max_rows: int = Field(20_000, ge=200)  # rows per fit (reference sampled down)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)  # of the realised metric's interval
    # The signals that may start a retrain (the others are recorded, not acted on). "estimated"
    # (CBPE before labels) is recorded by default: a window of one season spreads its scores
    # less than the holdout, so its expected ROC AUC sits below the holdout's without any loss.
    triggers: list[TriggerName] = Field(default_factory=lambda: list(DEFAULT_TRIGGERS))


WindowKind = Literal["rolling", "growing", "seasonal"]
WINDOW_KINDS: tuple[WindowKind, ...] = ("rolling", "growing", "seasonal")


class RetrainParams(_Strict):
    """Which accepted rows a retrain learns from (`window`), and the schedule compared with."""

    # rolling: the most recent window_days; growing: all history; seasonal: the same season of
    # earlier years (the retrain day's anniversaries +- season_days) plus the last recent_days
    window: WindowKind = "rolling"
    window_days: int | None = Field(365, ge=7)  # rolling: the most recent N days (None: all)
    season_days: int = Field(45, ge=1, le=182)  # seasonal: days either side of each anniversary
    recent_days: int = Field(90, ge=1)  # seasonal: and the most recent N days
    schedule_every_days: int = Field(28, ge=1)  # the scheduled-only strategy, for comparison


class ExperimentParams(_Strict):
    """An online test of `challenger` against `champion` (driftloop experiment start|stop)."""

    kind: Literal["shadow", "ab", "canary"] = "shadow"
    shadow_share: float = Field(1.0, gt=0.0, le=1.0)  # shadow: share of requests also scored
    weight: float = Field(0.5, gt=0.0, lt=1.0)  # ab: the challenger's share of traffic
    sticky_key: str | None = None  # ab/canary: column hashed for assignment (default: the id)
    canary_steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5])
    bake_minutes: float = Field(30.0, ge=0.0)  # canary: time at each step before the next
    max_error_rate: float = Field(0.02, ge=0.0, le=1.0)  # guardrail: challenger errors
    max_p99_ms: float = Field(250.0, gt=0.0)  # guardrail: challenger p99 latency
    min_guardrail_requests: int = Field(50, ge=1)  # guardrails judge after this many requests
    metric: Literal["log_loss", "brier", "accuracy"] = "log_loss"  # judged on labels
    min_effect: float = Field(0.02, gt=0.0)  # the smallest difference worth detecting
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    power: float = Field(0.8, gt=0.5, lt=1.0)
    max_days: float = Field(14.0, gt=0.0)  # no verdict by then: ends without promotion

    @field_validator("canary_steps")
    @classmethod
    def _ramp(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 < v <= 1.0 for v in value) or value != sorted(value):
            raise ValueError("must be increasing shares in (0, 1]")
        return value


class ServeParams(_Strict):
    """The online prediction service (driftloop serve)."""

    host: str = "127.0.0.1"  # another address needs DRIFTLOOP_API_KEY
    port: int = Field(8000, ge=1, le=65535)
    max_rows: int = Field(1000, ge=1)  # rows per request
    max_body_bytes: int = Field(2_000_000, ge=1024)
    reload_seconds: float = Field(1.0, gt=0.0)  # how often the champion alias is checked
    log_dir: str = "data/predictions"  # the prediction log (immutable, DVC-versioned rolls)
    feedback_dir: str = "data/feedback"  # labels sent back, before they become label batches
    roll_every: str = "1D"  # the prediction log is rolled into Parquet this often
    flush_seconds: float = Field(1.0, gt=0.0)  # a crash loses at most this much of the log
    shadow_queue: int = Field(1000, ge=1)  # shadow work beyond this is dropped, never waited on
    experiment: ExperimentParams = ExperimentParams()

    _roll = field_validator("roll_every", mode="before")(_timedelta)


class ReportParams(_Strict):
    """Where the DVC stages write their stable outputs (dvc.yaml templates these paths)."""

    ingest: str = "reports/ingest.json"
    validation: str = "reports/validation.json"
    train: str = "reports/train.json"
    promotion: str = "reports/promotion.json"


class ReplayParams(_Strict):
    initial_until: str = "2012-04-30"  # the first model sees only these months
    end: str = "2015-12-31"
    step_days: int = Field(7, ge=1)  # a new batch arrives every step
    holdout_days: int = Field(30, ge=1)  # shorter holdout for the short early history
    report_dir: str = "reports/replay"
    title: str = "driftloop replay"
    # Baselines judged on the same rows as the loop (fitted directly, never registered):
    cadences: list[int] = Field(default_factory=lambda: [7, 14, 28, 56, 91])  # fixed schedules
    random_seeds: int = Field(10, ge=2)  # random triggers with the loop's retrain count
    # "tomorrow as today": each row scored with the last label known at its time in its series
    # (entity); auto: on for a forecast target, off for labels that arrive on their own
    persistence: Literal["auto", "last_label", "off"] = "auto"
    windows: list[WindowKind] = Field(  # retrain windows compared at retrain.schedule_every_days
        default_factory=lambda: list(WINDOW_KINDS)
    )

    _dates = field_validator("initial_until", "end", mode="before")(_iso_date)

    @field_validator("cadences")
    @classmethod
    def _cadences(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("must be whole days >= 1")
        return sorted(set(value))

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
    labels: LabelParams = LabelParams()
    validation: ValidationParams = ValidationParams()
    features: FeatureParams
    train: TrainParams = TrainParams()
    evaluation: EvaluationParams = EvaluationParams()
    promote: PromoteParams = PromoteParams()
    monitor: MonitorParams = MonitorParams()
    retrain: RetrainParams = RetrainParams()
    replay: ReplayParams = ReplayParams()
    reports: ReportParams = ReportParams()
    serve: ServeParams = ServeParams()

    @model_validator(mode="after")
    def _columns_exist(self) -> Params:
        data, features = self.data, self.features
        for key, names in (
            ("features.numerical", features.numerical),
            ("features.categorical", features.categorical),
            ("features.lags.columns", features.lag_columns),
            ("features.rolling.columns", features.rolling_columns),
        ):
            unknown = [c for c in names if c not in data.columns]
            if unknown:
                raise ValueError(f"{key}: names columns not in data.columns: {unknown}")
        if self.target.source_column not in data.columns:
            raise ValueError(
                f"target.{'column' if self.target.column else 'forecast.column'}: "
                f"{self.target.source_column!r} is not in data.columns"
            )
        if self.target.source_column in features.raw and self.target.column is not None:
            raise ValueError(f"target.column: {self.target.column!r} cannot also be a feature")
        for name in features.categorical:
            if data.columns[name].dtype not in CATEGORICAL_DTYPES | {"bool", "int"}:
                raise ValueError(f"features.categorical: {name!r} has dtype float")
        for name in features.numerical:
            if data.columns[name].dtype in CATEGORICAL_DTYPES:
                raise ValueError(f"features.numerical: {name!r} has dtype str (categorical?)")
        unknown_segments = [
            s
            for s in self.evaluation.segments
            if s not in data.columns and s not in DERIVED_SEGMENTS
        ]
        if unknown_segments:
            raise ValueError(
                f"evaluation.segments: names neither columns nor {list(DERIVED_SEGMENTS)}: "
                f"{unknown_segments}"
            )
        if self.labels.source is not None and self.target.column is None:
            raise ValueError(
                "labels.source: a forecast target is computed from later rows; it takes no "
                "label batches"
            )
        if self.target.column is not None and data.columns[self.target.column].required:
            raise ValueError(
                f"data.columns.{self.target.column}.required: a label column arrives later; "
                "mark it required: false"
            )
        return self

    @property
    def join_column(self) -> str | None:
        """The column label batches are keyed on (labels.join_column, else data.id_column)."""
        return self.labels.join_column or self.data.id_column


def _error_key(err: Any) -> str:
    return ".".join(str(p) for p in err["loc"]) or "<root>"


def parse_params(raw: dict[str, Any], origin: str = PARAMS_FILE) -> Params:
    """Validate a params mapping; raise ConfigError naming the first bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = _error_key(first)
        message = str(first["msg"]).removeprefix("Value error, ")
        named = re.match(r"^([a-z_]+(?:\.[\w]+)+): (.*)$", message)
        if key == "<root>" and named:  # a cross-section check names its key first
            key, message = named.groups()
        raise ConfigError(f"{origin}: key '{key}': {message}") from None


def load_params(path: Path | str | None = None) -> Params:
    """Load and validate a params file (default: $DRIFTLOOP_PARAMS, else the project's)."""
    file = Path(path) if path is not None else params_path()
    if not file.exists():
        raise ConfigError(f"{file}: params file not found")
    if file.is_dir():
        raise ConfigError(f"{file}: is a folder, not a params file")
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


def params_path(project: Path | None = None) -> Path:
    """The params file in use: $DRIFTLOOP_PARAMS (relative to the project), else params.yaml."""
    root = project or project_root()
    chosen = os.environ.get(PARAMS_ENV)
    if not chosen:
        return root / PARAMS_FILE
    path = Path(chosen)
    return (path if path.is_absolute() else root / path).resolve()


class Settings(BaseSettings):
    """Where things live. Embedded defaults: everything under <project>/.driftloop."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", extra="ignore")

    project: Path = Field(default_factory=project_root)
    params_file: Path | None = Field(default=None, validation_alias="DRIFTLOOP_PARAMS")
    home: Path | None = None
    tracking_uri: str | None = None
    artifact_root: str | None = None
    triggered_by: str = Field(default_factory=lambda: os.environ.get("USER", "cli"))
    mlflow_ui: str = "http://127.0.0.1:5000"
    # A tracking server that does not answer fails a command within seconds, not minutes.
    tracking_timeout: float = Field(5.0, gt=0)
    tracking_retries: int = Field(1, ge=0)

    @property
    def params(self) -> Path:
        """The params file of this model (absolute)."""
        if self.params_file is None:
            return self.project / PARAMS_FILE
        path = Path(self.params_file)
        return (path if path.is_absolute() else self.project / path).resolve()

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
    def lock_dir(self) -> Path:
        return self.state_dir / "locks"

    def path(self, relative: str) -> Path:
        """A project-relative path from params.yaml, made absolute."""
        return (self.project / relative).resolve()


def load_context(
    project: str | Path | None = None,
    params_file: str | Path | None = None,
    home: str | Path | None = None,
    tracking_uri: str | None = None,
) -> tuple[Params, Settings]:
    """Settings (explicit values over the environment) and the params file they name."""
    given = {"project": project, "home": home, "tracking_uri": tracking_uri}
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if params_file is not None:
        overrides["DRIFTLOOP_PARAMS"] = params_file
    settings = Settings(**overrides)
    apply_env_defaults(settings)
    return load_params(settings.params), settings


class FlowTarget(TypedDict):
    """Flow parameters naming exactly one project and model (explicit, never via os.environ)."""

    project: str
    params_file: str
    home: str
    tracking_uri: str


def flow_target(settings: Settings) -> FlowTarget:
    """What a subflow or a deployment run needs to work on the same project and model."""
    return FlowTarget(
        project=str(settings.project),
        params_file=str(settings.params),
        home=str(settings.state_dir),
        tracking_uri=settings.mlflow_uri,
    )


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
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # no "View run at ..." lines
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
    # MLflow's HTTP client retries for ~4 minutes by default; bound it (Prefect tasks retry).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.tracking_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(settings.tracking_timeout)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    for noisy in ("great_expectations", "dvc", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
