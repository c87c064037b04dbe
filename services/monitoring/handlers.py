"""Event reactions of monitoring: promoted models bring their reference; logged predictions fill
drift windows; feedback labels, joined to predictions by request id, fill quality windows."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from google.protobuf import json_format

from flywheel import clients
from flywheel.app import ServiceContext
from flywheel.bus import EventContext, Handler, Topics
from flywheel.errors import InvalidArgument, Unavailable
from flywheel.logging import get_logger
from flywheel.predictions import logged_rows
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2
from services.monitoring import evaluator
from services.monitoring.references import load_reference

log = get_logger(__name__)
TICK_S = 1.0
KEEP_PREDICTIONS = "7 days"  # long enough for late labels to join; older rows are deleted
PRUNE_EVERY_TICKS = 600


def handlers(ctx: ServiceContext) -> dict[str, Handler]:
    async def on_promoted(conn: asyncpg.Connection, event: events_pb2.ModelPromoted, ectx: EventContext) -> None:
        await load_reference(ctx, conn, event.model.name, event.model.version)

    async def on_predictions(conn: asyncpg.Connection, event: events_pb2.PredictionsLogged, ectx: EventContext) -> None:
        await record_predictions(ctx, conn, event)

    async def on_feedback(conn: asyncpg.Connection, event: events_pb2.Feedback, ectx: EventContext) -> None:
        label = monitoring_pb2.FeedbackLabel(request_id=event.request_id, row_index=event.row_index, label=event.label)
        await record_labels(conn, event.model_name, [label])

    return {
        Topics.MODEL_PROMOTED: on_promoted,
        Topics.PREDICTIONS_LOGGED: on_predictions,
        Topics.FEEDBACK: on_feedback,
    }


async def record_predictions(
    ctx: ServiceContext, conn: asyncpg.Connection, event: events_pb2.PredictionsLogged
) -> None:
    model = event.model.name
    logged = logged_rows(event)
    if not logged:
        raise InvalidArgument("a predictions.logged event without records or columns", field="records")
    ref_version = await conn.fetchval("SELECT version FROM model_refs WHERE model = $1", model)
    rows = [
        (
            model,
            event.model.version,
            r.request_id,
            r.row_index,
            json.dumps(r.inputs),
            json.dumps(r.outputs),
            r.latency_ms,
            r.occurred_at,
        )
        for r in logged
        # Shadow and canary traffic is not production's; its drift would be misattributed.
        if r.role in (common_pb2.SERVING_ROLE_PRODUCTION, common_pb2.SERVING_ROLE_UNSPECIFIED)
    ]
    if not rows:
        return
    await conn.executemany(
        "INSERT INTO predictions (model, version, request_id, row_index, inputs, outputs, latency_ms, at)"
        " VALUES ($1,$2,$3,$4,$5::jsonb,$6::jsonb,$7,$8)",
        rows,
    )
    if ref_version is None or ref_version != event.model.version:
        return  # no reference for this version (yet): kept for feedback joins, not windowed
    policy = await evaluator.load_policy(conn, model)
    if not policy.enabled:
        return
    pending = await conn.fetchval(
        "SELECT count(*) FROM predictions WHERE model = $1 AND version = $2 AND window_id IS NULL", model, ref_version
    )
    while pending >= policy.window.size_rows:
        await evaluator.close_drift_window(ctx, conn, model)
        pending = await conn.fetchval(
            "SELECT count(*) FROM predictions WHERE model = $1 AND version = $2 AND window_id IS NULL",
            model,
            ref_version,
        )


async def record_labels(
    conn: asyncpg.Connection, model: str, labels: list[monitoring_pb2.FeedbackLabel]
) -> tuple[int, int]:
    """Join labels to logged predictions; returns (accepted, matched)."""
    matched = 0
    for i, label in enumerate(labels):
        if not label.request_id:
            raise InvalidArgument("each label needs the request id it answers", field=f"labels[{i}].request_id")
        row = await conn.fetchrow(
            "SELECT version, inputs, outputs FROM predictions WHERE model = $1 AND request_id = $2 AND row_index = $3"
            " ORDER BY id DESC LIMIT 1",
            model,
            label.request_id,
            label.row_index,
        )
        if row is None:
            continue
        value = json_format.MessageToDict(label.label)
        inserted = await conn.fetchval(
            "INSERT INTO labels (model, version, request_id, row_index, label, predicted, inputs)"
            " VALUES ($1,$2,$3,$4,$5::jsonb,$6,$7) ON CONFLICT DO NOTHING RETURNING true",
            model,
            row["version"],
            label.request_id,
            label.row_index,
            json.dumps(value),
            row["outputs"],
            row["inputs"],
        )
        matched += bool(inserted)
    if matched:
        await evaluator.close_quality_window(conn, model)
    return len(labels), matched


async def close_due_windows(ctx: ServiceContext) -> None:
    """Time-based windows: close a window whose oldest row is older than the policy's duration
    (and, now and then, forget predictions too old for any label to join)."""
    ticks = 0
    while True:
        await asyncio.sleep(TICK_S)
        ticks += 1
        try:
            if ticks % PRUNE_EVERY_TICKS == 0:
                async with ctx.pool.acquire() as conn:
                    await conn.execute(
                        "DELETE FROM predictions WHERE window_id IS NOT NULL"
                        f" AND at < now() - interval '{KEEP_PREDICTIONS}'"
                    )
            async with ctx.pool.acquire() as conn:
                models = await conn.fetch(
                    "SELECT r.model, min(p.at) AS oldest FROM model_refs r JOIN predictions p"
                    " ON p.model = r.model AND p.version = r.version AND p.window_id IS NULL GROUP BY r.model"
                )
            for m in models:
                async with ctx.pool.acquire() as conn, conn.transaction():
                    policy = await evaluator.load_policy(conn, m["model"])
                    age = await conn.fetchval("SELECT extract(epoch FROM now() - $1::timestamptz)", m["oldest"])
                    if policy.enabled and age >= policy.window.duration.ToTimedelta().total_seconds():
                        await evaluator.close_drift_window(ctx, conn, m["model"])
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("window ticker: database error", error=str(exc))


async def reconcile(ctx: ServiceContext) -> None:
    """Start monitoring whatever the registry has in production (a missed model.promoted or a restart)."""

    async def attempt() -> None:
        delay = 0.5
        while True:
            try:
                models = await clients.production_models(ctx.settings)
                break
            except Unavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for model in models:
            version = model.aliases.get("production")
            async with ctx.pool.acquire() as conn:
                known = await conn.fetchval("SELECT version FROM model_refs WHERE model = $1", model.name)
                if version and known != version:
                    try:
                        await load_reference(ctx, conn, model.name, version)
                    except Exception as exc:
                        log.warning("reconcile: reference not loaded", model=model.name, error=repr(exc))

    # In the background: monitoring need not wait for the registry to report SERVING.
    asyncio.get_running_loop().create_task(attempt())
