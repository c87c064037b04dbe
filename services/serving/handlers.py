"""Event reactions of serving.

model.registered -> staging checks, reported to the registry (one replica checks: the service's
shared consumer group). model.promoted -> warm the new version and swap; deployment.changed ->
apply the stored traffic policy. Every replica must do both, so those topics are read by a consumer
group of this process alone, from the latest offset; what happened before the process started (or
while its group joined) is covered by reconciliation at start-up and every serving_reconcile_s.

Both events are hints (services/serving/hints.py): the registry is asked before anything loads,
so a forged or stale event swaps nothing and checks nothing the registry does not hold.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any

import asyncpg

from flywheel import clients
from flywheel.app import ServiceContext
from flywheel.bus import EventConsumer, EventContext, Handler, Topics
from flywheel.errors import Unavailable
from flywheel.logging import get_logger
from flywheel.retry import Backoff, retry
from flywheel.v1 import events_pb2
from services.serving import hints, metrics, staging
from services.serving.runtime import ModelLoadError
from services.serving.runtime_state import runtime

log = get_logger(__name__)


def handlers(ctx: ServiceContext) -> dict[str, Handler[Any]]:
    async def on_registered(conn: asyncpg.Connection, event: events_pb2.ModelRegistered, ectx: EventContext) -> None:
        name, version = event.model.name, event.model.version
        candidate = await hints.registry_version(ctx.settings, name, version) if name and version > 0 else None
        why = hints.staging_verdict(candidate)
        if candidate is None or why:
            log.warning("model.registered ignored", model=name, version=version, reason=why, event_id=ectx.event_id)
            return
        report = await staging.run_checks(runtime(ctx).manager, ctx.settings, hints.as_registered(candidate), candidate)
        decision = await clients.report_staging(ctx.settings, candidate.ref, report, ectx.event_id)
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
        if await swap_if_production(ctx, event.model.name, event.model.version, ectx.event_id):
            # A split whose challenger this was is over: end it in the store now (one replica wins).
            await runtime(ctx).traffic.sync_model(event.model.name)

    async def on_changed(conn: asyncpg.Connection, event: events_pb2.DeploymentChanged, ectx: EventContext) -> None:
        # A hint: the stored row is read and applied, whatever the event says.
        if event.model_name:
            await runtime(ctx).traffic.sync_model(event.model_name)

    instance = f"flywheel-serving-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    consumer = EventConsumer(
        ctx.settings, ctx.name, ctx.pool, ctx.producer,
        {Topics.MODEL_PROMOTED: on_promoted, Topics.DEPLOYMENT_CHANGED: on_changed},
        group_id=instance, offset_reset="latest",
    )  # fmt: skip
    try:
        await consumer.run()
    finally:
        await consumer.stop()


async def swap_if_production(ctx: ServiceContext, name: str, version: int, event_id: str) -> bool:
    """Swaps to `version` only when the registry has it in production; True when it did (or had)."""
    production = await hints.registry_version(ctx.settings, name, alias="production") if name else None
    why = hints.promotion_verdict(version, production)
    if production is None or why:
        log.warning("model.promoted ignored", model=name, version=version, reason=why, event_id=event_id)
        return False
    try:
        await runtime(ctx).manager.promote(name, version, production)
    except ModelLoadError as exc:
        # The file's own fault: another try of this event would fail alike. The failure is on the
        # deployment for operators, and the reconciler tries the version again after a backoff.
        log.error("production version failed to load", model=name, version=version, error=str(exc),
                  event_id=event_id)  # fmt: skip
        return False
    return True


async def start_up(ctx: ServiceContext) -> None:
    """Before reporting SERVING: production models loaded, then the stored traffic policies applied
    (a restarted replica comes back with the canary in force) and the first heartbeat written."""
    await reconcile(ctx)
    await runtime(ctx).traffic.sync_all()


async def reconcile(ctx: ServiceContext) -> None:
    """Load every model the registry has in production (waiting out a registry that is not up yet).
    Models load one by one; one that fails is reported and skipped, never holding serving back
    from starting."""
    await retry(
        lambda: reconcile_once(ctx),
        backoff=Backoff.from_settings(ctx.settings),
        what="reconcile: load production models",
        retry_on=(Unavailable,),
    )


async def reconcile_once(ctx: ServiceContext) -> None:
    """One pass: the registry's list of production models (its failure is the caller's), then each
    model on its own; a model that fails to load is recorded on its deployment, counted and logged."""
    manager = runtime(ctx).manager
    for model in await clients.production_models(ctx.settings):
        version = model.aliases.get("production")
        current = manager.production(model.name)
        if not version or (current is not None and current.version == version):
            continue
        failure = manager.failure(model.name)
        if failure is not None and not failure.due(version):
            continue  # failed before: waiting out its backoff
        log.info("reconcile: loading production", model=model.name, version=version)
        try:
            await manager.promote_when_due(model.name, version)
        except Exception as exc:
            failure = manager.failure(model.name)
            metrics.reconcile_failures.add(1, {"model": model.name})
            log.error("reconcile: production version failed to load", model=model.name, version=version,
                      error=str(exc), error_type=type(exc).__name__,
                      retry_in_s=failure.retry_in_s() if failure else None)  # fmt: skip


async def reconcile_forever(ctx: ServiceContext) -> None:
    """Level-triggered safety net: a model.promoted this replica missed (it joins its own consumer
    group from the latest offset, and a join takes seconds) is caught up within serving_reconcile_s."""
    while True:
        await asyncio.sleep(ctx.settings.serving_reconcile_s)
        try:
            await reconcile_once(ctx)
        except Exception as exc:  # the registry's list is unreachable: the next pass asks again
            metrics.background_failures.add(1, {"loop": "reconcile"})
            log.warning("reconcile: failed, will retry", error=repr(exc))
        try:  # the stored traffic policies and this replica's heartbeat, whatever the registry did
            await runtime(ctx).traffic.sync_all()
        except Exception as exc:  # the database is away: the next pass tries again
            metrics.background_failures.add(1, {"loop": "traffic"})
            log.warning("traffic sync: failed, will retry", error=repr(exc))


async def refresh_views_forever(ctx: ServiceContext) -> None:
    """Re-reads the stored policies and every replica's view every second (two indexed queries), so
    that deploy status and GetDeployment answer from memory and are never more than a second behind."""
    period = min(1.0, ctx.settings.serving_reconcile_s)
    while True:
        await asyncio.sleep(period)
        try:
            await runtime(ctx).traffic.refresh_views()
        except Exception as exc:  # the database is away: keep the last views, their ages keep growing
            metrics.background_failures.add(1, {"loop": "traffic views"})
            log.warning("traffic views: refresh failed, will retry", error=repr(exc))


async def run_prediction_logger(ctx: ServiceContext) -> None:
    await runtime(ctx).logger.run()
