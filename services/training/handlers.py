"""Event reactions of training: new data queues a run for every spec that follows it; detected
drift queues a retraining of the specs that produce the model, within the loop's guard rails.
Every automatic decision is recorded (trigger_decisions) with its reason. Both events are hints
(services/training/hints.py): one its owner does not confirm is logged and queues nothing."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import propagate

from flywheel.app import ServiceContext
from flywheel.bus import EventContext, Handler, Topics
from flywheel.errors import NotFound, Unavailable
from flywheel.logging import get_logger
from flywheel.v1 import events_pb2, training_pb2
from services.training import hints, ingestion_client, metrics, store, triggers
from services.training.queue import DataVersion, covering_run, enqueue_run
from services.training.store import DB_ERRORS

log = get_logger(__name__)
T = training_pb2
ERROR = "error"  # the decision recorded when a spec's reaction failed
MAX_REASON_CHARS = 2000
_RETRYABLE: tuple[type[BaseException], ...] = (Unavailable, *DB_ERRORS)


def handlers(ctx: ServiceContext) -> dict[str, Handler[Any]]:
    async def on_data(conn: asyncpg.Connection, event: events_pb2.DataVersioned, ectx: EventContext) -> None:
        await on_data_versioned(ctx, conn, event, ectx)

    async def on_drift(conn: asyncpg.Connection, event: events_pb2.DriftDetected, ectx: EventContext) -> None:
        await on_drift_detected(ctx, conn, event, ectx)

    return {Topics.DATA_VERSIONED: on_data, Topics.DRIFT_DETECTED: on_drift}


async def decide(
    conn: asyncpg.Connection,
    spec: training_pb2.TrainingSpec,
    trigger: training_pb2.RunTrigger.ValueType,
    event_id: str,
    decision: str,
    reason: str,
    run_id: str = "",
) -> None:
    await conn.execute(
        "INSERT INTO trigger_decisions (spec_name, model_name, trigger, event_id, decision, reason, run_id)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7)",
        spec.name,
        spec.model_name,
        trigger,
        event_id,
        decision,
        reason,
        run_id,
    )
    log.info("trigger decision", spec=spec.name, decision=decision, reason=reason, run_id=run_id)


async def on_data_versioned(
    ctx: ServiceContext, conn: asyncpg.Connection, event: events_pb2.DataVersioned, ectx: EventContext
) -> None:
    specs = await store.latest_specs_for(conn, event.dataset.name)
    if not specs:
        return  # nothing follows the dataset: no need to ask ingestion
    # What runs train on is ingestion's record of the version (its data_uri), never the event's.
    data, why = await hints.confirmed_data_version(ctx.settings, event)
    if data is None:
        log.warning("data.versioned ignored", dataset=event.dataset.name, version=event.dataset.version,
                    reason=why, event_id=ectx.event_id)  # fmt: skip
        return
    for spec in specs:
        await _isolated(conn, spec, T.RUN_TRIGGER_DATA_VERSIONED, ectx.event_id, _data_for_spec(conn, spec, data, ectx))


async def _data_for_spec(
    conn: asyncpg.Connection, spec: training_pb2.TrainingSpec, data: DataVersion, ectx: EventContext
) -> None:
    pending = await conn.fetchrow("DELETE FROM pending_retrains WHERE spec_name = $1 RETURNING *", spec.name)
    if pending is not None:
        # The retraining drift asked for, now that there is new data; it continues the drift's trace.
        run_id, created = await enqueue_run(
            conn, spec, data, trigger=T.RUN_TRIGGER_DRIFT_DETECTED, trigger_event_id=pending["event_id"],
            trace_carrier=json.loads(pending["trace_context"]),
        )  # fmt: skip
        reason = f"new data arrived (dataset {data.name} v{data.version}) for the waiting retraining"
        await decide(conn, spec, T.RUN_TRIGGER_DRIFT_DETECTED, pending["event_id"], triggers.QUEUE, reason, run_id)
        return
    if not spec.triggers.on_data_versioned:
        return
    covered = await covering_run(conn, spec, data)
    if covered:  # e.g. a manual run got there first; one run per spec version and data version
        reason = f"run {covered} already covers spec v{spec.version} on {data.name} v{data.version}"
        await decide(conn, spec, T.RUN_TRIGGER_DATA_VERSIONED, ectx.event_id, "duplicate", reason, covered)
        return
    run_id, created = await enqueue_run(
        conn, spec, data, trigger=T.RUN_TRIGGER_DATA_VERSIONED, trigger_event_id=ectx.event_id
    )
    await decide(
        conn, spec, T.RUN_TRIGGER_DATA_VERSIONED, ectx.event_id, triggers.QUEUE if created else "duplicate",
        f"dataset {data.name} v{data.version}", run_id,
    )  # fmt: skip


async def on_drift_detected(
    ctx: ServiceContext, conn: asyncpg.Connection, event: events_pb2.DriftDetected, ectx: EventContext
) -> None:
    specs = await conn.fetch(
        "SELECT DISTINCT ON (name) spec, created_at FROM specs WHERE model_name = $1 ORDER BY name, version DESC",
        event.model.name,
    )
    if not any(store.to_spec(row).triggers.on_drift_detected for row in specs):
        return  # nothing retrains on drift: no need to ask monitoring
    why = await hints.confirmed_drift(ctx.settings, event, ectx.event_id)
    if why:
        log.warning("drift.detected ignored", model=event.model.name, alert_id=event.alert_id, reason=why,
                    event_id=ectx.event_id)  # fmt: skip
        return
    for row in specs:
        spec = store.to_spec(row)
        if not spec.triggers.on_drift_detected:
            continue
        await _isolated(conn, spec, T.RUN_TRIGGER_DRIFT_DETECTED, ectx.event_id, _drift_for_spec(ctx, conn, spec, ectx))


async def _drift_for_spec(
    ctx: ServiceContext, conn: asyncpg.Connection, spec: training_pb2.TrainingSpec, ectx: EventContext
) -> None:
    open_run = await conn.fetchval(
        "SELECT run_id FROM runs WHERE spec_name = $1 AND status IN ($2, $3) LIMIT 1",
        spec.name,
        T.RUN_STATUS_QUEUED,
        T.RUN_STATUS_RUNNING,
    )
    last = await conn.fetchval(
        "SELECT max(created_at) FROM runs WHERE spec_name = $1 AND trigger = $2",
        spec.name,
        T.RUN_TRIGGER_DRIFT_DETECTED,
    )
    waiting = await conn.fetchval("SELECT event_id FROM pending_retrains WHERE spec_name = $1", spec.name)
    if waiting:
        reason = f"a retraining is already waiting for new data (drift event {waiting})"
        await decide(conn, spec, T.RUN_TRIGGER_DRIFT_DETECTED, ectx.event_id, triggers.SKIP_OPEN, reason)
        return
    try:
        data = await ingestion_client.get_data_version(ctx.settings, spec.dataset)
    except NotFound:
        return
    trained = await conn.fetchval(
        "SELECT max(dataset_version) FROM runs WHERE spec_name = $1 AND status = $2",
        spec.name,
        T.RUN_STATUS_SUCCEEDED,
    )
    verdict = triggers.on_drift(
        spec,
        now=datetime.now(UTC),
        last_drift_run_at=last,
        open_run_id=open_run,
        newest_version=data.version,
        trained_version=trained or 0,
    )
    run_id = ""
    if verdict.decision == triggers.QUEUE:
        run_id, _ = await enqueue_run(
            conn, spec, data, trigger=T.RUN_TRIGGER_DRIFT_DETECTED, trigger_event_id=ectx.event_id
        )
    elif verdict.decision == triggers.WAIT:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        await conn.execute(
            "INSERT INTO pending_retrains (spec_name, event_id, trace_context) VALUES ($1, $2, $3::jsonb)"
            " ON CONFLICT (spec_name) DO NOTHING",
            spec.name,
            ectx.event_id,
            json.dumps(carrier),
        )
    await decide(conn, spec, T.RUN_TRIGGER_DRIFT_DETECTED, ectx.event_id, verdict.decision, verdict.reason, run_id)


async def _isolated(
    conn: asyncpg.Connection,
    spec: training_pb2.TrainingSpec,
    trigger: training_pb2.RunTrigger.ValueType,
    event_id: str,
    work: Coroutine[Any, Any, None],
) -> None:
    """One spec's reaction to an event, in a savepoint of its own. One the handler cannot take (a bug, a
    stored spec that no longer fits) is rolled back, recorded as an "error" decision, logged and counted,
    and the event's other specs still get theirs. An outage (the database, ingestion) fails the whole
    event instead, which the consumer retries."""
    try:
        async with conn.transaction():
            await work
    except _RETRYABLE:
        raise
    except Exception as exc:
        log.exception("trigger: a spec's reaction failed; skipped", spec=spec.name, event_id=event_id)
        metrics.loop_errors.add(1, {"loop": "triggers"})
        reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON_CHARS]
        await decide(conn, spec, trigger, event_id, ERROR, reason)
