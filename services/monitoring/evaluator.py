"""Closing windows: drift windows from logged predictions, quality windows from joined labels.
Statistics run off the event loop; results, alerts and drift.detected commit together."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np

from flywheel.app import ServiceContext
from flywheel.bus import Topics, enqueue
from flywheel.bus.serde import new_meta
from flywheel.logging import get_logger
from flywheel.pbutil import timestamp
from flywheel.telemetry import meter, tracer
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2
from services.monitoring import policy as policies
from services.monitoring.quality import quality_report, segment_report
from services.monitoring.windows import WindowInput, evaluate_window

log = get_logger(__name__)
M = monitoring_pb2
_meter = meter("flywheel.monitoring")
windows_evaluated = _meter.create_counter("flywheel.monitoring.windows", unit="{window}")
integrity_issues = _meter.create_counter("flywheel.monitoring.integrity_issues", unit="{value}")
_last_scores: dict[tuple[str, str, str], float] = {}


def _observe(_: Any) -> Any:
    from opentelemetry.metrics import Observation

    for (model, feature, statistic), score in list(_last_scores.items()):
        yield Observation(score, {"model": model, "feature": feature, "statistic": statistic})


_meter.create_observable_gauge("flywheel.monitoring.drift_score", callbacks=[_observe])


async def load_policy(conn: asyncpg.Connection, model: str) -> monitoring_pb2.MonitoringPolicy:
    raw = await conn.fetchval("SELECT policy FROM policies WHERE model = $1", model)
    return policies.effective(M.MonitoringPolicy.FromString(raw) if raw else None, model)


def _window_input(rows: list[asyncpg.Record], schema: common_pb2.Schema) -> WindowInput:
    inputs = [json.loads(r["inputs"]) for r in rows]
    outputs = [json.loads(r["outputs"]) for r in rows]
    counts: dict[str, int] = {}
    for row in inputs:
        for key in row:
            counts[key] = counts.get(key, 0) + 1
    names = set(counts) | {f.name for f in schema.fields}
    features = {name: np.array([row.get(name) for row in inputs], dtype=object) for name in names}
    outs: dict[str, np.ndarray] = {}
    if any("class" in o for o in outputs):
        outs["class"] = np.array([o.get("class") for o in outputs], dtype=object)
    if any("variable" in o for o in outputs):
        outs["variable"] = np.array([_scalar(o.get("variable")) for o in outputs], dtype=np.float64)
    latency = np.array([r["latency_ms"] for r in rows], dtype=np.float64)
    return WindowInput(features=features, outputs=outs, latency_ms=latency, field_counts=counts)


def _scalar(v: Any) -> float:
    while isinstance(v, list):
        v = v[0] if v else None
    return float("nan") if v is None else float(v)


async def close_drift_window(ctx: ServiceContext, conn: asyncpg.Connection, model: str) -> M.WindowReport | None:
    ref = await conn.fetchrow("SELECT * FROM model_refs WHERE model = $1 FOR UPDATE", model)
    if ref is None:
        return None
    policy = await load_policy(conn, model)
    rows = await conn.fetch(
        "SELECT id, inputs, outputs, latency_ms, at FROM predictions WHERE model = $1 AND window_id IS NULL"
        " AND version = $2 ORDER BY id LIMIT $3",
        model,
        ref["version"],
        policy.window.size_rows,  # a count window holds exactly this many rows, the oldest first
    )
    if not rows:
        return None
    schema = common_pb2.Schema.FromString(ref["schema"])
    profile = json.loads(ref["profile"])
    window = _window_input(rows, schema)
    report = await asyncio.to_thread(
        evaluate_window, profile, schema, policy, window, task=ref["task"], label_field=schema.label_field
    )
    window_id = f"w-{uuid.uuid4().hex[:12]}"
    report.window_id = window_id
    report.model.CopyFrom(common_pb2.ModelRef(name=model, version=ref["version"]))
    report.start.CopyFrom(timestamp(rows[0]["at"]))
    report.end.CopyFrom(timestamp(rows[-1]["at"]))
    report.rows = len(rows)
    report.reference.CopyFrom(common_pb2.DatasetRef(name=ref["dataset"], version=ref["dataset_version"]))
    await conn.execute(
        "UPDATE predictions SET window_id = $2 WHERE id = ANY($1::bigint[])", [r["id"] for r in rows], window_id
    )
    await _save_window(conn, report, "drift", None)
    for s in report.feature_scores:
        _last_scores[(model, s.feature, s.statistic)] = s.score
    for f in report.integrity.features:
        integrity_issues.add(f.nulls + f.out_of_range + f.unseen_categories + f.type_mismatches, {"model": model})
    windows_evaluated.add(1, {"model": model, "kind": "drift"})
    scores = {
        common_pb2.DRIFT_KIND_DATA_DRIFT: [s for s in report.feature_scores if s.breached],
        common_pb2.DRIFT_KIND_PREDICTION_DRIFT: [s for s in report.prediction_scores if s.breached],
        common_pb2.DRIFT_KIND_INTEGRITY: [s for s in report.integrity.scores if s.breached],
    }
    tracked = set(scores)
    await raise_alerts(conn, report, policy, set(report.breached) & tracked, tracked, scores)
    log.info("drift window closed", model=model, window=window_id, rows=len(rows), breached=list(report.breached))
    return report


async def _save_window(
    conn: asyncpg.Connection, report: M.WindowReport, kind: str, segments: M.GetSegmentReportResponse | None
) -> None:
    await conn.execute(
        "INSERT INTO windows (window_id, model, version, kind, started_at, ended_at, rows, report, segments, breached)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
        report.window_id,
        report.model.name,
        report.model.version,
        kind,
        report.start.ToDatetime(UTC),
        report.end.ToDatetime(UTC),
        report.rows,
        report.SerializeToString(),
        segments.SerializeToString() if segments is not None else None,
        list(report.breached),
    )


async def raise_alerts(
    conn: asyncpg.Connection,
    report: M.WindowReport,
    policy: M.MonitoringPolicy,
    breached: set[int],
    tracked: set[int],
    scores: dict[int, list[common_pb2.FeatureScore]],
    segment: common_pb2.Segment | None = None,
) -> list[M.Alert]:
    model = report.model.name
    streak_rows = await conn.fetch("SELECT kind, count FROM streaks WHERE model = $1", model)
    streaks = {r["kind"]: r["count"] for r in streak_rows if r["kind"] in tracked}
    last = {
        r["kind"]: r["at"]
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
    await conn.execute(
        "INSERT INTO alerts (alert_id, model, version, kind, window_id, alert, suppressed, trace_id)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        alert.alert_id,
        model,
        report.model.version,
        d.kind,
        report.window_id,
        alert.SerializeToString(),
        d.suppressed,
        trace_id,
    )
    log.warning(
        "alert" if not d.suppressed else "alert suppressed by cooldown",
        model=model,
        kind=policies.KIND_NAMES.get(d.kind, d.kind),
        message=alert.message,
    )
    return alert


def _message(kind: int, scores: list[common_pb2.FeatureScore], segment: common_pb2.Segment | None) -> str:
    what = policies.KIND_NAMES.get(kind, "drift")
    parts = [f"{s.feature} {s.statistic}={s.score:.3f} (> {s.threshold:g})" for s in scores[:8]]
    where = f" in segment {segment.field}={segment.value}" if segment is not None else ""
    return f"{what}{where}: " + (", ".join(parts) if parts else "thresholds breached")


async def close_quality_window(conn: asyncpg.Connection, model: str) -> M.WindowReport | None:
    ref = await conn.fetchrow("SELECT * FROM model_refs WHERE model = $1 FOR UPDATE", model)
    if ref is None:
        return None
    policy = await load_policy(conn, model)
    rows = await conn.fetch(
        "SELECT id, label, predicted, inputs, at FROM labels WHERE model = $1 AND window_id IS NULL ORDER BY id", model
    )
    if len(rows) < policy.quality.min_labelled_rows:
        return None
    task, class_labels = ref["task"], list(ref["class_labels"])
    recorded = json.loads(ref["recorded"])
    metric = policy.quality.metric or ("accuracy" if task != common_pb2.TASK_REGRESSION else "mae")
    labels = [json.loads(r["label"]) for r in rows]
    predicted = [json.loads(r["predicted"]) for r in rows]
    inputs = [json.loads(r["inputs"]) for r in rows]
    if task == common_pb2.TASK_REGRESSION:
        y_true = np.array(labels, dtype=np.float64)
        y_pred = np.array([_scalar(p.get("variable")) for p in predicted], dtype=np.float64)
    else:
        index = {c: i for i, c in enumerate(class_labels)}
        y_true = np.array([index.get(_label_str(v), -1) for v in labels])
        y_pred = np.array([index.get(str(p.get("class")), -1) for p in predicted])
        keep = (y_true >= 0) & (y_pred >= 0)
        y_true, y_pred = y_true[keep], y_pred[keep]
        inputs = [row for row, k in zip(inputs, keep, strict=True) if k]
    quality = await asyncio.to_thread(
        quality_report, task, metric, y_true, y_pred, None, class_labels, recorded.get(metric, float("nan")),
        policy.quality,
    )  # fmt: skip
    values = {seg.field: np.array([row.get(seg.field) for row in inputs], dtype=object) for seg in policy.segments}
    seg_stats, gaps = await asyncio.to_thread(
        segment_report, list(policy.segments), values, y_true, y_pred, task, class_labels
    )
    window_id = f"q-{uuid.uuid4().hex[:12]}"
    report = M.WindowReport(
        window_id=window_id,
        model=common_pb2.ModelRef(name=model, version=ref["version"]),
        rows=len(rows),
        quality=quality,
        reference=common_pb2.DatasetRef(name=ref["dataset"], version=ref["dataset_version"]),
    )
    report.start.CopyFrom(timestamp(rows[0]["at"]))
    report.end.CopyFrom(timestamp(rows[-1]["at"]))
    segment_breaches = [s for s in seg_stats if s.breached] + [g for g in gaps if g.breached]
    if quality.breached:
        report.breached.append(common_pb2.DRIFT_KIND_QUALITY)
    if segment_breaches:
        report.breached.append(common_pb2.DRIFT_KIND_SEGMENT)
    segments = M.GetSegmentReportResponse(model=report.model, window_id=window_id, segments=seg_stats, gaps=gaps)
    await conn.execute(
        "UPDATE labels SET window_id = $2 WHERE id = ANY($1::bigint[])", [r["id"] for r in rows], window_id
    )
    await _save_window(conn, report, "quality", segments)
    windows_evaluated.add(1, {"model": model, "kind": "quality"})
    quality_scores = [
        common_pb2.FeatureScore(
            feature=quality.metric, statistic="drop", score=quality.drop, threshold=policy.quality.max_drop or 0.05,
            breached=quality.breached,
        )
    ]  # fmt: skip
    tracked = {common_pb2.DRIFT_KIND_QUALITY}
    await raise_alerts(
        conn, report, policy, {common_pb2.DRIFT_KIND_QUALITY} & set(report.breached), tracked,
        {common_pb2.DRIFT_KIND_QUALITY: quality_scores},
    )  # fmt: skip
    for stat in [s for s in seg_stats if s.breached]:
        scores = [
            common_pb2.FeatureScore(feature=m.name, statistic="segment", score=m.value, breached=True)
            for m in stat.metrics
        ]
        await raise_alerts(
            conn, report, policy, {common_pb2.DRIFT_KIND_SEGMENT}, {common_pb2.DRIFT_KIND_SEGMENT},
            {common_pb2.DRIFT_KIND_SEGMENT: scores}, segment=stat.segment,
        )  # fmt: skip
    for gap in [g for g in gaps if g.breached]:
        scores = [
            common_pb2.FeatureScore(feature=gap.field, statistic=f"{gap.metric}_gap", score=gap.gap, breached=True)
        ]
        await raise_alerts(
            conn, report, policy, {common_pb2.DRIFT_KIND_SEGMENT}, {common_pb2.DRIFT_KIND_SEGMENT},
            {common_pb2.DRIFT_KIND_SEGMENT: scores}, segment=gap.worst,
        )  # fmt: skip
    log.info("quality window closed", model=model, window=window_id, rows=len(rows), breached=list(report.breached))
    return report


def _label_str(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # JSON numbers: 1.0 and 1 name the same class
    return str(v)
