"""Event reactions of monitoring: promoted models bring their reference (once the registry confirms
the version is in production: flywheel.confirm); logged predictions fill drift windows;
feedback labels, joined to predictions by request id, fill quality windows."""

from __future__ import annotations

from typing import Any

import asyncpg

from flywheel.app import ServiceContext
from flywheel.bus import EventContext, Handler, Topics
from flywheel.logging import get_logger
from flywheel.v1 import events_pb2, monitoring_pb2
from services.monitoring import limits
from services.monitoring.records import record_labels, record_predictions
from services.monitoring.references import follow_production

log = get_logger(__name__)


def handlers(ctx: ServiceContext) -> dict[str, Handler[Any]]:
    async def on_promoted(conn: asyncpg.Connection, event: events_pb2.ModelPromoted, ectx: EventContext) -> None:
        name, version = event.model.name, event.model.version
        why = await follow_production(ctx, conn, name, version, event) if name else "no model name"
        if why:
            log.warning("model.promoted ignored", model=name, version=version, reason=why, event_id=ectx.event_id)

    async def on_predictions(conn: asyncpg.Connection, event: events_pb2.PredictionsLogged, ectx: EventContext) -> None:
        await record_predictions(conn, event)

    async def on_feedback(conn: asyncpg.Connection, event: events_pb2.Feedback, ectx: EventContext) -> None:
        # Anyone may produce feedback: a label that is not a finite number, bool or short text is
        # refused here (InvalidArgument: dead-lettered at once), before it reaches a quality window.
        limits.text(event.model_name, "model_name", required=True)
        limits.feedback(event.request_id, event.row_index, event.label, "")
        label = monitoring_pb2.FeedbackLabel(request_id=event.request_id, row_index=event.row_index, label=event.label)
        await record_labels(conn, event.model_name, [label])

    return {
        Topics.MODEL_PROMOTED: on_promoted,
        Topics.PREDICTIONS_LOGGED: on_predictions,
        Topics.FEEDBACK: on_feedback,
    }
