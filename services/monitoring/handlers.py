"""Event reactions of monitoring: promoted models bring their reference (once the registry confirms
the version is in production: flywheel.confirm); logged predictions fill drift windows;
feedback labels, joined to predictions by request id, fill quality windows; an aborted progressive
rollout (once the registry confirms it) raises an alert."""

from __future__ import annotations

from typing import Any

import asyncpg

from flywheel import confirm
from flywheel.app import ServiceContext
from flywheel.bus import EventContext, Handler, Topics
from flywheel.logging import get_logger
from flywheel.rollout_gates import gate_scores
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2, registry_pb2
from services.monitoring import limits
from services.monitoring.alerts import raise_deployment_alert
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

    async def on_rollout_ended(conn: asyncpg.Connection, event: events_pb2.RolloutEnded, ectx: EventContext) -> None:
        # A hint: the alert says what the registry has recorded (its reason and gates), only for a
        # version the registry has ABORTED by a breached gate (a rollout stopped by a person moving
        # production, or superseded, is logged), and once per version.
        name, version = event.model.name, event.model.version
        if event.promoted or not name or version <= 0:
            return
        mv = await confirm.registry_version(ctx.settings, name, version)
        if mv is None or mv.promotion.state != registry_pb2.PROMOTION_STATE_ABORTED:
            log.warning("rollout.ended ignored: the registry has no aborted rollout of it", model=name,
                        version=version, event_id=ectx.event_id)  # fmt: skip
            return
        gates = gate_scores(mv.promotion.rollout)
        if not any(g.breached for g in gates):
            log.info("rollout ended without a breached gate", model=name, version=version, reason=mv.promotion.reason)
            return
        kind = common_pb2.DRIFT_KIND_ROLLOUT_ABORTED
        if await conn.fetchval("SELECT 1 FROM alerts WHERE model = $1 AND version = $2 AND kind = $3", name, version,
                               kind):  # fmt: skip
            return
        message = f"rollout of v{mv.ref.version} aborted: {mv.promotion.reason}"
        await raise_deployment_alert(conn, mv.ref, kind, message, gates)

    return {
        Topics.MODEL_PROMOTED: on_promoted,
        Topics.ROLLOUT_ENDED: on_rollout_ended,
        Topics.PREDICTIONS_LOGGED: on_predictions,
        Topics.FEEDBACK: on_feedback,
    }
