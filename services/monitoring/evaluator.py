"""Closing windows: drift windows from logged predictions, quality windows from joined labels.

A window's rows are decoded and judged off the event loop (JSON, NumPy and the statistics are CPU
work); its results, alerts and drift.detected commit together in the caller's transaction.

Stored rows are read defensively (a row that is not what monitoring writes today counts as empty
or as a mismatch, never as an error), and a window that still cannot be judged is set aside (its
rows get a window id starting "x-", with a log line and flywheel.monitoring.windows_set_aside), so
one bad row can never keep a model's later windows from closing.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np

from flywheel import evaluation
from flywheel.errors import InvalidArgument
from flywheel.logging import get_logger
from flywheel.telemetry import meter
from flywheel.v1 import common_pb2, monitoring_pb2
from services.monitoring import estimation, guard
from services.monitoring import policy as policies
from services.monitoring.alerts import raise_alerts
from services.monitoring.comparison import label_text
from services.monitoring.policy import DriftKind
from services.monitoring.quality import quality_report, segment_report
from services.monitoring.windows import Task, WindowInput, evaluate_window

log = get_logger(__name__)
M = monitoring_pb2
# A quality window reads at most this many labelled rows (or the policy's min_labelled_rows, if
# larger), so a label backlog is judged as several windows rather than loaded into memory at once.
QUALITY_WINDOW_MAX_ROWS = 10_000
_meter = meter("flywheel.monitoring")
windows_evaluated = _meter.create_counter("flywheel.monitoring.windows", unit="{window}")
windows_set_aside = _meter.create_counter(
    "flywheel.monitoring.windows_set_aside", unit="{window}", description="Windows whose rows could not be judged"
)
integrity_issues = _meter.create_counter("flywheel.monitoring.integrity_issues", unit="{value}")
_last_scores: dict[tuple[str, str, str], float] = {}


def _observe(_: Any) -> Any:
    from opentelemetry.metrics import Observation

    for (model, feature, statistic), score in list(_last_scores.items()):
        yield Observation(score, {"model": model, "feature": feature, "statistic": statistic})


_meter.create_observable_gauge("flywheel.monitoring.drift_score", callbacks=[_observe])
_last_estimates: dict[tuple[str, str], float] = {}


def _observe_estimates(_: Any) -> Any:
    from opentelemetry.metrics import Observation

    for (model, metric), value in list(_last_estimates.items()):
        yield Observation(value, {"model": model, "metric": metric})


_meter.create_observable_gauge(
    "flywheel.monitoring.estimated_performance", callbacks=[_observe_estimates],
    description="A classifier's performance estimated without labels in its last drift window",
)  # fmt: skip


async def load_policy(conn: asyncpg.Connection, model: str) -> monitoring_pb2.MonitoringPolicy:
    raw = await conn.fetchval("SELECT policy FROM policies WHERE model = $1", model)
    stored = M.MonitoringPolicy.FromString(raw) if raw else None
    if stored is not None:
        try:
            policies.check(stored)
        except InvalidArgument as exc:
            # Stored before today's limits (a NaN threshold, an absurd cooldown): every window would
            # trip on it, so the defaults stand in until the policy is set again.
            log.warning("stored monitoring policy is invalid; defaults used", model=model, error=str(exc))
            stored = None
    return policies.effective(stored, model)


def stored_object(text: Any) -> dict[str, Any]:
    """A stored inputs/outputs column as a dict; anything else (not written by today's code) is empty."""
    value = json.loads(text) if isinstance(text, str | bytes) else text
    return value if isinstance(value, dict) else {}


def _window_input(rows: Sequence[asyncpg.Record], schema: common_pb2.Schema) -> WindowInput:
    inputs = [stored_object(r["inputs"]) for r in rows]
    outputs = [stored_object(r["outputs"]) for r in rows]
    counts: dict[str, int] = {}
    for row in inputs:
        for key in row:
            counts[key] = counts.get(key, 0) + 1
    names = set(counts) | {f.name for f in schema.fields}
    features = {name: _column(row.get(name) for row in inputs) for name in names}
    outs: dict[str, np.ndarray] = {}
    if any("class" in o for o in outputs):
        outs["class"] = _column(o.get("class") for o in outputs)
    if any("variable" in o for o in outputs):
        outs["variable"] = np.array([_scalar(o.get("variable")) for o in outputs], dtype=np.float64)
    latency = np.array([r["latency_ms"] for r in rows], dtype=np.float64)
    return WindowInput(features=features, outputs=outs, latency_ms=latency, field_counts=counts)


def _column(values: Iterable[Any]) -> np.ndarray:
    """One value per row, as a 1-D object array (np.array would make rows of equal-length lists 2-D)."""
    items = list(values)
    return np.fromiter(items, dtype=object, count=len(items))


def _scalar(v: Any) -> float:
    """A numeric output (or label) as a float: the first element of a list, NaN for anything that is
    not a finite number or numeric text (bools included: they are not numbers here)."""
    while isinstance(v, list):
        v = v[0] if v else None
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return math.nan
    try:
        x = float(v)
    except (ValueError, OverflowError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _judge_drift(
    rows: Sequence[asyncpg.Record],
    ref: asyncpg.Record,
    schema: common_pb2.Schema,
    policy: M.MonitoringPolicy,
) -> M.WindowReport:
    """Decode a drift window's rows and judge them against the reference profile, and estimate the
    classifier's performance on them where it has a calibration (CPU only)."""
    window = _window_input(rows, schema)
    profile = json.loads(ref["profile"])
    task = Task(ref["task"])
    report = evaluate_window(profile, schema, policy, window, task=task, label_field=schema.label_field)
    estimate = _estimate(ref, policy, [stored_object(r["outputs"]) for r in rows], policy.window.min_rows)
    if estimate is not None:
        report.estimated.CopyFrom(estimate[0])
        if estimate[0].breached:
            report.breached.append(common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE)
    if guard.guarding(ref, policy, datetime.now(UTC)):
        report.guard_checks.extend(guard.window_checks(
            policy, task, window.outputs, report.latency.p99_ms, ref["guard_previous_p99"],
            guard.staging_histogram(ref), len(rows) >= policy.window.min_rows,
        ))  # fmt: skip
        if any(c.breached for c in report.guard_checks):  # the window says why it rolled production back
            report.breached.append(common_pb2.DRIFT_KIND_GUARD_ROLLBACK)
    return report


def _calibration(ref: asyncpg.Record, policy: M.MonitoringPolicy) -> estimation.Calibration | None:
    """The reference's calibration, when the model is a classifier with one and estimation is on."""
    raw = ref["calibration"]
    if raw is None or policy.estimated_performance.disabled or Task(ref["task"]) == common_pb2.TASK_REGRESSION:
        return None
    try:
        calibration = estimation.Calibration.from_json(json.loads(raw) if isinstance(raw, str | bytes) else raw)
    except (estimation.CalibrationError, ValueError) as exc:
        log.warning("stored calibration unusable; no estimate", model=ref["model"], error=str(exc)[:300])
        return None
    return calibration if list(calibration.class_labels) == list(ref["class_labels"]) else None


def _estimate(
    ref: asyncpg.Record,
    policy: M.MonitoringPolicy,
    outputs: Sequence[dict[str, Any]],
    min_rows: int,
    labels: Sequence[int] | None = None,
) -> tuple[M.PerformanceEstimate, np.ndarray] | None:
    """The estimate over the rows whose outputs carry probabilities (and, with `labels`, class indices
    per row, the realized value of the same metric on the same rows), and those rows' indexes; None
    without a calibration or with fewer than `min_rows` such rows."""
    calibration = _calibration(ref, policy)
    if calibration is None:
        return None
    k = len(calibration.class_labels)
    proba, predicted, kept = estimation.decode_outputs(outputs, k)
    if len(kept) < max(min_rows, 1):
        return None
    metric = policy.estimated_performance.metric
    realized = None
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)[kept]
        ev = evaluation.classification_metrics(y, predicted, proba, list(calibration.class_labels))
        realized = evaluation.aggregate(ev).get(metric, math.nan)
    reference = _reference(json.loads(ref["recorded"]), metric)
    est = estimation.report(
        estimation.estimate(calibration, proba, predicted), len(kept), metric, reference,
        policy.estimated_performance.max_drop, realized,
    )  # fmt: skip
    return est, kept


async def close_drift_window(conn: asyncpg.Connection, model: str) -> M.WindowReport | None:
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
    try:
        report = await asyncio.to_thread(_judge_drift, rows, ref, schema, policy)
    except Exception as exc:
        await _set_aside(conn, "predictions", model, rows, "drift", exc)
        return None
    window_id = f"w-{uuid.uuid4().hex[:12]}"
    report.window_id = window_id
    report.model.CopyFrom(common_pb2.ModelRef(name=model, version=ref["version"]))
    report.start.FromDatetime(rows[0]["at"])
    report.end.FromDatetime(rows[-1]["at"])
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
    scores: dict[DriftKind, list[common_pb2.FeatureScore]] = {
        common_pb2.DRIFT_KIND_DATA_DRIFT: [s for s in report.feature_scores if s.breached],
        common_pb2.DRIFT_KIND_PREDICTION_DRIFT: [s for s in report.prediction_scores if s.breached],
        common_pb2.DRIFT_KIND_INTEGRITY: [s for s in report.integrity.scores if s.breached],
    }
    if report.HasField("estimated"):  # a window without an estimate neither breaks nor extends the streak
        e = report.estimated
        _last_estimates[(model, e.metric)] = e.value
        scores[common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE] = [
            common_pb2.FeatureScore(
                feature=e.metric, statistic="estimated_drop", score=e.drop,
                threshold=policy.estimated_performance.max_drop, breached=e.breached,
            )
        ]  # fmt: skip
    tracked = set(scores)
    await raise_alerts(conn, report, policy, set(report.breached) & tracked, tracked, scores)
    await guard.judge(conn, ref, report, policy)
    log.info("drift window closed", model=model, window=window_id, rows=len(rows), breached=list(report.breached))
    return report


async def _set_aside(
    conn: asyncpg.Connection, table: str, model: str, rows: Sequence[asyncpg.Record], kind: str, exc: Exception
) -> None:
    """A window that cannot be judged: its rows leave the open window (kept for label joins), so the
    next window starts after them instead of failing on them again."""
    window_id = f"x-{uuid.uuid4().hex[:12]}"
    await conn.execute(
        f"UPDATE {table} SET window_id = $2 WHERE id = ANY($1::bigint[])", [r["id"] for r in rows], window_id
    )
    windows_set_aside.add(1, {"model": model, "kind": kind})
    log.error(
        f"{kind} window could not be judged; its rows were set aside",
        model=model,
        window=window_id,
        rows=len(rows),
        error=type(exc).__name__,
        detail=str(exc)[:300],
    )


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


def _judge_quality(
    rows: Sequence[asyncpg.Record],
    task: Task,
    class_labels: list[str],
    metric: str,
    reference_value: float,
    policy: M.MonitoringPolicy,
) -> tuple[M.QualityReport, list[M.SegmentStats], list[M.SegmentGap]]:
    """Decode a quality window's labelled rows; its quality and segment analysis (CPU only)."""
    labels = [json.loads(r["label"]) for r in rows]
    predicted = [stored_object(r["predicted"]) for r in rows]
    inputs = [stored_object(r["inputs"]) for r in rows]
    if task == common_pb2.TASK_REGRESSION:
        y_true = np.array([_scalar(v) for v in labels], dtype=np.float64)
        y_pred = np.array([_scalar(p.get("variable")) for p in predicted], dtype=np.float64)
    else:
        index = {c: i for i, c in enumerate(class_labels)}
        y_true = np.array([index.get(label_text(v), -1) for v in labels])
        y_pred = np.array([index.get(str(p.get("class")), -1) for p in predicted])
        keep = (y_true >= 0) & (y_pred >= 0)
        y_true, y_pred = y_true[keep], y_pred[keep]
        inputs = [row for row, k in zip(inputs, keep, strict=True) if k]
    quality = quality_report(task, metric, y_true, y_pred, None, class_labels, reference_value, policy.quality)
    values = {seg.field: _column(row.get(seg.field) for row in inputs) for seg in policy.segments}
    seg_stats, gaps = segment_report(list(policy.segments), values, y_true, y_pred, task, class_labels)
    return quality, seg_stats, gaps


def _judge_estimate(
    rows: Sequence[asyncpg.Record], ref: asyncpg.Record, policy: M.MonitoringPolicy
) -> M.PerformanceEstimate | None:
    """Estimated next to realized on a quality window's labelled rows of the reference version."""
    class_labels = list(ref["class_labels"])
    index = {c: i for i, c in enumerate(class_labels)}
    mine = [r for r in rows if r["version"] == ref["version"]]
    y = [index.get(label_text(json.loads(r["label"])), -1) for r in mine]
    labelled = [(r, label) for r, label in zip(mine, y, strict=True) if label >= 0]
    outputs = [stored_object(r["predicted"]) for r, _ in labelled]
    estimate = _estimate(ref, policy, outputs, policy.quality.min_labelled_rows, [label for _, label in labelled])
    return estimate[0] if estimate is not None else None


async def close_quality_windows(conn: asyncpg.Connection, model: str) -> list[M.WindowReport]:
    """Close quality windows while enough labels are open (one, unless a backlog exceeds the cap)."""
    reports = []
    while (report := await close_quality_window(conn, model)) is not None:
        reports.append(report)
        if report.rows < QUALITY_WINDOW_MAX_ROWS:
            break  # it took every open label
    return reports


async def close_quality_window(conn: asyncpg.Connection, model: str) -> M.WindowReport | None:
    ref = await conn.fetchrow("SELECT * FROM model_refs WHERE model = $1 FOR UPDATE", model)
    if ref is None:
        return None
    policy = await load_policy(conn, model)
    rows = await conn.fetch(
        "SELECT id, version, label, predicted, inputs, at FROM labels WHERE model = $1 AND window_id IS NULL"
        " ORDER BY id"
        " LIMIT $2",
        model,
        max(policy.quality.min_labelled_rows, QUALITY_WINDOW_MAX_ROWS),
    )
    if len(rows) < policy.quality.min_labelled_rows:
        return None
    task, class_labels = Task(ref["task"]), list(ref["class_labels"])
    recorded = json.loads(ref["recorded"])
    metric = policy.quality.metric or ("accuracy" if task != common_pb2.TASK_REGRESSION else "mae")
    try:
        quality, seg_stats, gaps = await asyncio.to_thread(
            _judge_quality, rows, task, class_labels, metric, _reference(recorded, metric), policy
        )
        estimate = await asyncio.to_thread(_judge_estimate, rows, ref, policy)
    except Exception as exc:
        await _set_aside(conn, "labels", model, rows, "quality", exc)
        return None
    window_id = f"q-{uuid.uuid4().hex[:12]}"
    report = M.WindowReport(
        window_id=window_id,
        model=common_pb2.ModelRef(name=model, version=ref["version"]),
        rows=len(rows),
        quality=quality,
        reference=common_pb2.DatasetRef(name=ref["dataset"], version=ref["dataset_version"]),
    )
    if estimate is not None:
        estimate.breached = False  # reported next to what the labels say; the quality verdict is theirs
        report.estimated.CopyFrom(estimate)
    report.start.FromDatetime(rows[0]["at"])
    report.end.FromDatetime(rows[-1]["at"])
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
    quality_kind: set[DriftKind] = {common_pb2.DRIFT_KIND_QUALITY}
    segment_kind: set[DriftKind] = {common_pb2.DRIFT_KIND_SEGMENT}
    await raise_alerts(
        conn, report, policy, quality_kind & set(report.breached), quality_kind,
        {common_pb2.DRIFT_KIND_QUALITY: quality_scores},
    )  # fmt: skip
    for stat in [s for s in seg_stats if s.breached]:
        scores = [
            common_pb2.FeatureScore(feature=m.name, statistic="segment", score=m.value, breached=True)
            for m in stat.metrics
        ]
        await raise_alerts(
            conn, report, policy, segment_kind, segment_kind, {common_pb2.DRIFT_KIND_SEGMENT: scores},
            segment=stat.segment,
        )  # fmt: skip
    for gap in [g for g in gaps if g.breached]:
        scores = [
            common_pb2.FeatureScore(feature=gap.field, statistic=f"{gap.metric}_gap", score=gap.gap, breached=True)
        ]
        await raise_alerts(
            conn, report, policy, segment_kind, segment_kind, {common_pb2.DRIFT_KIND_SEGMENT: scores},
            segment=gap.worst,
        )  # fmt: skip
    await guard.judge(conn, ref, report, policy)
    log.info("quality window closed", model=model, window=window_id, rows=len(rows), breached=list(report.breached))
    return report


def _reference(recorded: Any, metric: str) -> float:
    value = recorded.get(metric) if isinstance(recorded, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
