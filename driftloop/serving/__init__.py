"""The online prediction service: the champion (and a challenger) behind FastAPI.

`create_app(params, settings)` builds it; `driftloop serve` runs it with uvicorn. Plain typed
code, no Prefect: the model holder (hot swap on an alias move), the request schema built from the
model's feature step, the prediction and feedback logs, Prometheus metrics and the API key check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from driftloop.config import Params, Settings


def run_service(params: Params, settings: Settings, host: str, port: int) -> None:
    """Start the service with uvicorn (blocks until Ctrl-C or SIGTERM; the log rolls on exit)."""
    import uvicorn

    from driftloop.serving.app import create_app
    from driftloop.serving.models import limit_threads
    from driftloop.serving.security import check_bind

    check_bind(host)
    limit_threads()
    app = create_app(params, settings, freeze_heap=True)  # this process serves only this app
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
