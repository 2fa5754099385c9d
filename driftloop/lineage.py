"""What a model version traces back to, as one typed object that writes and reads its MLflow tags.

Nothing else in driftloop spells a `driftloop.*` tag name: a typo here is a test failure, not a
silent None somewhere else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import pandas as pd

PREFIX = "driftloop."
COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own name, so its UI links the commit


def _parse_time(value: str) -> pd.Timestamp | None:
    return pd.Timestamp(value) if value and value != "all" else None


@dataclass(frozen=True)
class Tagged:
    """A frozen record stored as MLflow tags `driftloop.<field>` (commit under MLflow's name)."""

    RENAMED: ClassVar[dict[str, str]] = {"git_commit": COMMIT_TAG}

    @classmethod
    def tag(cls, name: str) -> str:
        """The MLflow tag name of a field (raises on a field that does not exist)."""
        if name not in {f.name for f in fields(cls)}:
            raise KeyError(f"{cls.__name__} has no field {name!r}")
        return cls.RENAMED.get(name, PREFIX + name)

    def to_tags(self) -> dict[str, str]:
        return {self.tag(f.name): str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Any:
        """Read the record back; fields without a tag get their default ('' when none)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = tags.get(cls.tag(f.name))
            if raw is not None:
                values[f.name] = raw
            elif f.default is dataclasses.MISSING:
                values[f.name] = ""
        return cls(**values)


@dataclass(frozen=True)
class Lineage(Tagged):
    """The data, code, params and trigger behind a trained model version."""

    data_md5: str
    labels_md5: str = ""
    git_commit: str = "unknown"
    params_file: str = "params.yaml"
    trigger: str = "manual"
    triggered_by: str = "cli"
    validation: str = "passed"
    run_id: str = ""
    model_params: str = ""  # JSON: the data contract, features and target it was trained with
    train_params: str = ""  # JSON of params.train
    train_since: str = "all"  # ISO timestamp after which training rows start, or "all"
    train_until: str = ""  # ISO timestamp of the last training row
    labels_as_of: str = ""  # labels known at this time were joined
    refit_of: str = ""  # the version whose gate this refit (on the whole window) passed

    @property
    def since(self) -> pd.Timestamp | None:
        return _parse_time(self.train_since)

    @property
    def until(self) -> pd.Timestamp | None:
        return _parse_time(self.train_until)

    @property
    def until_date(self) -> dt.date | None:
        stamp = self.until
        return None if stamp is None else stamp.date()


@dataclass(frozen=True)
class Verdict(Tagged):
    """The promotion decision recorded on a version (and a rollback's reason, if any)."""

    decision: str = ""
    reason: str = ""
    champion_before: str = ""
    rollback_reason: str = ""


@dataclass(frozen=True)
class MonitorRun(Tagged):
    """The tags of a monitoring run: the window's end, the champion judged and the decision."""

    as_of: str
    action: str = ""
    reason: str = ""
    champion: str = ""
    model: str = ""
    flow_run: str = ""  # the Prefect flow run that monitored ('' outside one)


COMPLETE_TAG = PREFIX + "training_complete"  # a run tag: written last, nothing without it ships
