"""Event reactions of serving.

model.registered -> staging checks, reported to the registry (one replica checks: the service's
shared consumer group). model.promoted -> warm the new version and swap. Every replica must swap,
so that topic is read by a consumer group of this process alone, from the latest offset; what
happened before the process started is covered by reconciliation at start-up.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import asyncpg

from flywheel import clients
from flywheel.app import ServiceContext
from flywheel.bus import EventConsumer, EventContext, Handler, Topics
from flywheel.errors import Unavailable
from flywheel.logging import get_logger
from flywheel.v1 import events_pb2
from services.serving import staging
from services.serving.runtime_state import runtime

log = get_logger(__name__)


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    async def on_registered(conn: asyncpg.Connection, event: events_pb2.ModelRegistered, ectx: EventContext) -> None:
        report = await staging.run_checks(runtime(ctx).manager, ctx.settings, event)
        decision = await clients.report_staging(ctx.settings, event.model, report, ectx.event_id)
        log.info(
            "staging checks reported",
            model=event.model.name,
            version=event.model.version,
            passed=report.passed,
            decision=decision.reason,
        )

    return {Topics.MODEL_REGISTERED: on_registered}


async def run_swap_consumer(ctx: ServiceContext) -> None:
    async def on_promoted(conn: asyncpg.Connection, event: events_pb2.ModelPromoted, ectx: EventContext) -> None:
        await runtime(ctx).manager.promote(event.model.name, event.model.version)

    instance = f"flywheel-serving-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    consumer = EventConsumer(
        ctx.settings, ctx.name, ctx.pool, ctx.producer, {Topics.MODEL_PROMOTED: on_promoted},
        group_id=instance, offset_reset="latest",
    )  # fmt: skip
    try:
        await consumer.run()
    finally:
        await consumer.stop()


async def reconcile(ctx: ServiceContext) -> None:
    """Load every model the registry has in production before reporting SERVING."""
    delay = 0.5
    while True:
        try:
            models = await clients.production_models(ctx.settings)
            break
        except Unavailable as exc:
            log.info("reconcile: registry not reachable yet", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    for model in models:
        version = model.aliases.get("production")
        if version:
            await runtime(ctx).manager.promote(model.name, version)
    log.info("reconciled production models", models={m.name: m.aliases.get("production") for m in models})


async def run_prediction_logger(ctx: ServiceContext) -> None:
    await runtime(ctx).logger.run()
