"""What monitoring is told, written down: logged predictions fill drift windows; feedback labels,
joined to predictions by request id, fill quality windows. Used by the event handlers and by the
RecordFeedback call alike, inside the caller's transaction."""

from __future__ import annotations

import json

import asyncpg
from google.protobuf import json_format

from flywheel.errors import InvalidArgument
from flywheel.predictions import logged_rows
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2
from services.monitoring import evaluator


async def record_predictions(conn: asyncpg.Connection, event: events_pb2.PredictionsLogged) -> None:
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
    pending = await _open_rows(conn, model, ref_version)
    while pending >= policy.window.size_rows:
        await evaluator.close_drift_window(conn, model)
        pending = await _open_rows(conn, model, ref_version)


async def _open_rows(conn: asyncpg.Connection, model: str, version: int) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM predictions WHERE model = $1 AND version = $2 AND window_id IS NULL", model, version
    )
    return count


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
        await evaluator.close_quality_windows(conn, model)
    return len(labels), matched
