"""Evidently's `ValueDrift`, computed without its plotly widget, for runs that keep no HTML.

`ValueDriftCalculation.calculate` always renders a distribution figure (~35 ms a column, ~80 %
of a small drift check). `ValueDriftScore` runs the very same calculation (same statistical
test, threshold and Evidently test verdict) and renders nothing. Import only where Evidently
is wanted: importing this module imports Evidently.
"""

from __future__ import annotations

from typing import Any

from evidently.core.metric_types import SingleValueCalculation
from evidently.metrics import ValueDrift
from evidently.metrics.column_statistics import ValueDriftCalculation


class ValueDriftScore(ValueDrift):
    """`ValueDrift` whose result carries no widget (its snapshot cannot render a figure)."""


class ValueDriftScoreCalculation(SingleValueCalculation[ValueDriftScore]):
    """Evidently's own ValueDrift calculation, with rendering left out."""

    calculate = ValueDriftCalculation.calculate
    display_name = ValueDriftCalculation.display_name

    def _render(self, result: Any, options: Any, color_options: Any) -> list[Any]:
        return []
