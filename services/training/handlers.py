"""Event reactions of the training service: new data queues a run for every spec that follows it."""

from __future__ import annotations

import asyncpg

from flywheel.app import ServiceContext
from flywheel.bus import EventContext, Handler, Topics, acknowledge_only
from flywheel.logging import get_logger
from flywheel.v1 import events_pb2, training_pb2
from services.training import store
from services.training.queue import DataVersion, enqueue_run

log = get_logger(__name__)


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    return {
        Topics.DATA_VERSIONED: on_data_versioned,
        Topics.DRIFT_DETECTED: acknowledge_only("enqueue a retraining run for the model's spec (issue 6)"),
    }


async def on_data_versioned(conn: asyncpg.Connection, event: events_pb2.DataVersioned, ectx: EventContext) -> None:
    data = DataVersion(
        name=event.dataset.name,
        version=event.dataset.version,
        content_hash=event.dataset.content_hash,
        data_uri=event.data_uri,
        schema=event.schema,
        parents=[event.parent_version] if event.parent_version else [],
    )
    for spec in await store.latest_specs_for(conn, data.name):
        if not spec.triggers.on_data_versioned:
            continue
        run_id, created = await enqueue_run(
            conn, spec, data, trigger=training_pb2.RUN_TRIGGER_DATA_VERSIONED, trigger_event_id=ectx.event_id
        )
        log.info("run queued" if created else "run already queued", run_id=run_id, spec=spec.name)
