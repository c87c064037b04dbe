"""Raising alerts from a closed window's breaches, and reading them back for a watcher.

An alert row, its drift.detected event (outbox) and a NOTIFY on ALERTS_CHANNEL commit in the
caller's transaction, so a watcher is woken exactly when the alert becomes visible.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from flywheel.bus import Topics, enqueue
from flywheel.bus.serde import new_meta
from flywheel.logging import get_logger
from flywheel.telemetry import tracer
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2
from services.monitoring import policy as policies
from services.monitoring.policy import DriftKind

log = get_logger(__name__)
M = monitoring_pb2
# One channel per database: a wake-up only makes a watcher re-read, so a stray one costs a query.
ALERTS_CHANNEL = "flywheel_monitoring_alerts"


async def raise_alerts(
    conn: asyncpg.Connection,
    report: M.WindowReport,
    policy: M.MonitoringPolicy,
    breached: set[DriftKind],
    tracked: set[DriftKind],
    scores: dict[DriftKind, list[common_pb2.FeatureScore]],
    segment: common_pb2.Segment | None = None,
) -> list[M.Alert]:
    model = report.model.name
    streak_rows = await conn.fetch("SELECT kind, count FROM streaks WHERE model = $1", model)
    streaks = {DriftKind(r["kind"]): r["count"] for r in streak_rows if r["kind"] in tracked}
    last = {
        DriftKind(r["kind"]): r["at"]
        for r in await conn.fetch(
            "SELECT kind, max(created_at) AS at FROM alerts WHERE model = $1 AND NOT suppressed GROUP BY kind", model
        )
    }
    decisions, new_streaks = policies.decide_alerts(policy, breached, streaks, last, datetime.now(UTC))
    for kind, count in new_streaks.items():
        await conn.execute(
            "INSERT INTO streaks (model, kind, count) VALUES ($1, $2, $3)"
            " ON CONFLICT (model, kind) DO UPDATE SET count = $3",
            model,
            kind,
            count,
        )
    alerts = []
    for d in decisions:
        alert_id = f"a-{uuid.uuid4().hex[:12]}"
        # One span per alert, so the chain it starts (drift.detected -> retraining) hangs off it.
        with tracer().start_as_current_span(
            "alert raised",
            attributes={
                "flywheel.alert_id": alert_id,
                "flywheel.alert_kind": d.kind,
                "flywheel.suppressed": d.suppressed,
            },
        ) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            alerts.append(await _raise(conn, report, d, alert_id, scores.get(d.kind, []), segment, trace_id))
    return alerts


async def _raise(
    conn: asyncpg.Connection,
    report: M.WindowReport,
    d: policies.AlertDecision,
    alert_id: str,
    scores: list[common_pb2.FeatureScore],
    segment: common_pb2.Segment | None,
    trace_id: str,
) -> M.Alert:
    model = report.model.name
    alert = M.Alert(
        alert_id=alert_id,
        model=report.model,
        kind=d.kind,
        window_id=report.window_id,
        scores=scores,
        message=_message(d.kind, scores, segment),
        suppressed=d.suppressed,
    )
    if segment is not None:
        alert.segment.CopyFrom(segment)
    alert.create_time.GetCurrentTime()
    if not d.suppressed:
        event = events_pb2.DriftDetected(
            meta=new_meta("monitoring"),
            model=report.model,
            window_id=report.window_id,
            kind=d.kind,
            scores=alert.scores,
            window_start=report.start,
            window_end=report.end,
            window_rows=report.rows,
            alert_id=alert.alert_id,
        )
        if segment is not None:
            event.segment.CopyFrom(segment)
        alert.event_id = await enqueue(conn, Topics.DRIFT_DETECTED, model, event)
    await _store(conn, alert, trace_id)
    return alert


async def _store(conn: asyncpg.Connection, alert: M.Alert, trace_id: str) -> None:
    """The alert's row and its NOTIFY, in the caller's transaction."""
    await conn.execute(
        "INSERT INTO alerts (alert_id, model, version, kind, window_id, alert, suppressed, trace_id)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        alert.alert_id,
        alert.model.name,
        alert.model.version,
        alert.kind,
        alert.window_id,
        alert.SerializeToString(),
        alert.suppressed,
        trace_id,
    )
    # Delivered at commit (and dropped on rollback), like the row itself.
    await conn.execute("SELECT pg_notify($1, $2)", ALERTS_CHANNEL, alert.model.name)
    log.warning(
        "alert" if not alert.suppressed else "alert suppressed by cooldown",
        model=alert.model.name,
        kind=policies.KIND_NAMES.get(alert.kind, alert.kind),
        message=alert.message,
    )


async def raise_deployment_alert(
    conn: asyncpg.Connection,
    model: common_pb2.ModelRef,
    kind: DriftKind,
    message: str,
    scores: Sequence[common_pb2.FeatureScore] = (),
    window_id: str = "",
) -> M.Alert:
    """An alert about the deployment, not the data (the guard rolled back, a rollout aborted): the row
    and the NOTIFY in the caller's transaction, no cooldown, and no drift.detected (retraining on the
    same data would not mend it)."""
    alert_id = f"a-{uuid.uuid4().hex[:12]}"
    attributes: dict[str, str | int] = {"flywheel.alert_id": alert_id, "flywheel.alert_kind": int(kind),
                                        "flywheel.model": model.name}  # fmt: skip
    with tracer().start_as_current_span("alert raised", attributes=attributes) as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    alert = M.Alert(alert_id=alert_id, model=model, kind=kind, window_id=window_id, scores=scores, message=message)
    alert.create_time.GetCurrentTime()
    await _store(conn, alert, trace_id)
    return alert


def _message(kind: DriftKind, scores: list[common_pb2.FeatureScore], segment: common_pb2.Segment | None) -> str:
    what = policies.KIND_NAMES.get(kind, "drift")
    parts = [f"{s.feature} {s.statistic}={s.score:.3f} (> {s.threshold:g})" for s in scores[:8]]
    where = f" in segment {segment.field}={segment.value}" if segment is not None else ""
    return f"{what}{where}: " + (", ".join(parts) if parts else "thresholds breached")


async def alerts_after(
    conn: asyncpg.Connection, since: datetime, model: str, kinds: Sequence[DriftKind]
) -> list[asyncpg.Record]:
    """Alerts created after `since` (oldest first), of `model` ('' = any) and `kinds` (empty = any).
    Alerts of one window share their transaction's created_at, so they come back together."""
    return await conn.fetch(
        "SELECT alert, created_at FROM alerts WHERE created_at > $1 AND ($2 = '' OR model = $2)"
        " AND (cardinality($3::int[]) = 0 OR kind = ANY($3::int[])) ORDER BY created_at",
        since,
        model,
        list(kinds),
    )
