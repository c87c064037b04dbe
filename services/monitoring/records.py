"""What monitoring is told, written down: logged predictions fill drift windows; feedback labels,
joined to predictions by request id, fill quality windows. Used by the event handlers and by the
RecordFeedback call alike, inside the caller's transaction."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from google.protobuf import json_format

from flywheel.db import CONNECTION_ERRORS
from flywheel.errors import InvalidArgument
from flywheel.logging import get_logger
from flywheel.telemetry import meter
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2
from services.monitoring import evaluator
from services.monitoring.logged import stored_rows

log = get_logger(__name__)
window_failures = meter("flywheel.monitoring").create_counter(
    "flywheel.monitoring.window_failures", unit="{failure}", description="Window closings that failed and rolled back"
)


async def record_predictions(conn: asyncpg.Connection, event: events_pb2.PredictionsLogged) -> None:
    """Store the event's rows (checked first: InvalidArgument for a malformed or hostile event) and
    close the drift windows they fill. A window that fails to close leaves the rows stored."""
    model = event.model.name
    logged = await asyncio.to_thread(stored_rows, event)  # checks and JSON: CPU work, off the loop
    ref_version = await conn.fetchval("SELECT version FROM model_refs WHERE model = $1", model)
    rows = [
        (model, event.model.version, r.request_id, r.row_index, r.inputs, r.outputs, r.latency_ms, r.at)
        for r in logged
        # Shadow and canary traffic is not production's; its drift would be misattributed.
        if r.role in (common_pb2.SERVING_ROLE_PRODUCTION, common_pb2.SERVING_ROLE_UNSPECIFIED)
    ]
    challengers = [
        (model, event.model.version, r.role, r.request_id, r.row_index, r.outputs, r.latency_ms, r.at)
        for r in logged
        if r.role in (common_pb2.SERVING_ROLE_SHADOW, common_pb2.SERVING_ROLE_CANARY)
    ]
    if challengers:  # kept apart, for comparing a challenger with production on the same requests
        await conn.executemany(
            "INSERT INTO challenger_predictions (model, version, role, request_id, row_index, outputs, latency_ms, at)"
            " VALUES ($1,$2,$3,$4,$5,$6::jsonb,$7,$8)",
            challengers,
        )
    if not rows:
        return
    await conn.executemany(
        "INSERT INTO predictions (model, version, request_id, row_index, inputs, outputs, latency_ms, at)"
        " VALUES ($1,$2,$3,$4,$5::jsonb,$6::jsonb,$7,$8)",
        rows,
    )
    if ref_version is None or ref_version != event.model.version:
        return  # no reference for this version (yet): kept for feedback joins, not windowed
    await _closing_windows(conn, model, "drift", lambda: _close_full_drift_windows(conn, model, ref_version))


async def _close_full_drift_windows(conn: asyncpg.Connection, model: str, version: int) -> None:
    policy = await evaluator.load_policy(conn, model)
    if not policy.enabled:
        return
    pending = await _open_rows(conn, model, version)
    while pending >= policy.window.size_rows:
        await evaluator.close_drift_window(conn, model)
        pending = await _open_rows(conn, model, version)


async def _closing_windows(
    conn: asyncpg.Connection, model: str, kind: str, closing: Callable[[], Awaitable[object]]
) -> None:
    """Close windows in a savepoint: if that fails, what the caller stored stays stored (the ticker or
    the next event tries again), unless the connection itself is gone."""
    try:
        async with conn.transaction():
            await closing()
    except CONNECTION_ERRORS:
        raise
    except Exception as exc:
        window_failures.add(1, {"model": model, "kind": kind})
        log.error("window not closed; the rows stay open", model=model, kind=kind, error=repr(exc)[:300])


async def _open_rows(conn: asyncpg.Connection, model: str, version: int) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM predictions WHERE model = $1 AND version = $2 AND window_id IS NULL", model, version
    )
    return count


async def record_labels(
    conn: asyncpg.Connection, model: str, labels: list[monitoring_pb2.FeedbackLabel]
) -> tuple[int, int]:
    """Join labels to logged predictions; returns (accepted, matched). Callers check the labels
    (limits.feedback): only finite numbers, bools and bounded text reach the labels table."""
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
        value = json_format.MessageToDict(label.label)
        if row is None:
            matched += await _canary_label(conn, model, label, value)
            continue
        inserted = await conn.fetchval(
            "INSERT INTO labels (model, version, request_id, row_index, label, predicted, inputs)"
            " VALUES ($1,$2,$3,$4,$5::jsonb,$6,$7) ON CONFLICT DO NOTHING RETURNING true",
            model,
            row["version"],
            label.request_id,
            label.row_index,
            json.dumps(value, allow_nan=False),
            row["outputs"],
            row["inputs"],
        )
        matched += bool(inserted)
    if matched:
        await _closing_windows(conn, model, "quality", lambda: evaluator.close_quality_windows(conn, model))
    return len(labels), matched


async def _canary_label(conn: asyncpg.Connection, model: str, label: monitoring_pb2.FeedbackLabel, value: Any) -> int:
    """A label of a request a canary answered (no production row has its id): kept for the rollout's
    quality gate, never in production's quality windows. 1 when newly stored."""
    row = await conn.fetchrow(
        "SELECT version, outputs, at FROM challenger_predictions WHERE model = $1 AND role = $2 AND request_id = $3"
        " AND row_index = $4 ORDER BY id DESC LIMIT 1",
        model,
        common_pb2.SERVING_ROLE_CANARY,
        label.request_id,
        label.row_index,
    )
    if row is None:
        return 0
    inserted = await conn.fetchval(
        "INSERT INTO challenger_labels (model, version, request_id, row_index, label, predicted, at)"
        " VALUES ($1,$2,$3,$4,$5::jsonb,$6,$7) ON CONFLICT DO NOTHING RETURNING true",
        model,
        row["version"],
        label.request_id,
        label.row_index,
        json.dumps(value, allow_nan=False),
        row["outputs"],
        row["at"],
    )
    return int(bool(inserted))
