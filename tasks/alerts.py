"""Alerts through Prefect's own events, automations and notification blocks.

The loop emits one event per thing a person should hear about, named `driftloop.<what>` and
tied to the model as its resource (`driftloop.model.<name>`):

| event | when |
|---|---|
| `driftloop.drift.detected` | monitoring found the champion's inputs or predictions drifted |
| `driftloop.retrain.decided` | monitoring decided to retrain (with the signals that fired) |
| `driftloop.promotion` | the gate (or an experiment) promoted, staged or rejected a candidate |
| `driftloop.rollback` | the champion was rolled back |
| `driftloop.monitor.cannot-evaluate` | monitoring could not judge: never a silent "no drift" |
| `driftloop.experiment.guardrail` | an online experiment's guardrail sent traffic back |

`driftloop alerts add webhook URL` saves a `CustomWebhookNotificationBlock` and an automation
that sends every `driftloop.*` event to it (Slack, Teams or e-mail gateways take the same JSON).
"""

from __future__ import annotations

import contextlib
from typing import Any

EVENTS = (
    "driftloop.drift.detected",
    "driftloop.retrain.decided",
    "driftloop.promotion",
    "driftloop.rollback",
    "driftloop.monitor.cannot-evaluate",
    "driftloop.experiment.guardrail",
)
AUTOMATION = "driftloop-alerts"


def emit(event: str, model: str, payload: dict[str, Any]) -> None:
    """Emit one of the loop's events (a Prefect event: automations and the UI see it)."""
    from prefect.events import emit_event

    from driftloop import jsonio

    emit_event(
        event=event,
        resource={
            "prefect.resource.id": f"driftloop.model.{model}",
            "prefect.resource.name": model,
        },
        payload=jsonio.to_jsonable(payload),
    )


def publish(event: str, model: str, payload: dict[str, Any]) -> bool:
    """Emit the event where someone can hear it: inside a flow run, or with a Prefect API set
    (the service, the CLI on a stack). Without either there is no one to tell; False."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return False
    try:
        emit(event, model, payload)
    except Exception as exc:  # an alert must never break the loop that raises it
        import logging

        logging.getLogger("driftloop").warning("alert %s not sent: %s", event, exc)
        return False
    return True


def add_webhook(url: str, name: str = AUTOMATION) -> dict[str, str]:
    """A webhook notification block and an automation sending every `driftloop.*` event to it
    (replacing one of the same name)."""
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block = CustomWebhookNotificationBlock(
        name=name,
        url=url,
        method="POST",
        json_data={"text": "{{subject}}: {{body}}", "subject": "{{subject}}", "body": "{{body}}"},
    )
    block_id = block.save(name, overwrite=True)
    with contextlib.suppress(Exception):  # none of that name yet (Prefect raises, not None)
        old: Any = Automation.read(name=name)
        old.delete()
    automation: Any = Automation(
        name=name,
        description="Every driftloop event (drift, retrain, promotion, rollback, cannot evaluate, "
        "experiment guardrail) to a webhook",
        trigger=EventTrigger(expect={"driftloop.*"}, posture=Posture.Reactive, threshold=1),
        actions=[
            SendNotification(
                block_document_id=block_id,
                subject="{{ event.event }} ({{ event.resource['prefect.resource.name'] }})",
                body="{{ event.payload | tojson }} at {{ event.occurred }}",
            )
        ],
    ).create()
    return {"block": str(block_id), "automation": str(getattr(automation, "id", ""))}
