"""Post-promotion guard: for a while after a promotion, the new production version is watched, and a
breach rolls production back to the version it replaced, automatically, audited as actor "guard":
- a window of it breaches one of the policy's `guard.rollback_on` kinds (quality, estimated
  performance by default), or one of the live checks the policy sets: its p99 latency over the
  replaced version's, its predictions' PSI against its own predictions on its staging sample;
- its live error rate (serving's counters, every replica, since the guard first read them) passes
  `guard.max_error_rate` (checked by the ticker: a model that fails every request closes no window).

The decision is a guard_rollbacks row written in one transaction with a DRIFT_KIND_GUARD_ROLLBACK
alert that names the breach, and the guard disarms for that version: one rollback per promotion. The ticker carries
decisions out against the registry (`carry_out`), which rolls back only while the watched version
still holds production, so a late or repeated call never undoes a newer promotion. A rollback's own
promotion is not guarded (it would bounce back), and a redelivered model.promoted never re-arms a
version the guard already rolled back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
from google.protobuf.message import DecodeError

from flywheel import clients, histograms
from flywheel.config import Settings
from flywheel.errors import FlywheelError, Unavailable
from flywheel.logging import get_logger
from flywheel.slot_counts import since_baseline
from flywheel.telemetry import meter, tracer
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2, registry_pb2
from services.monitoring.alerts import raise_deployment_alert
from services.monitoring.drift import psi
from services.monitoring.policy import KIND_NAMES, DriftKind

log = get_logger(__name__)
M = monitoring_pb2
GUARD_ACTOR = "guard"
DEFAULT_MAX_ERROR_RATE = 0.01
DEFAULT_MIN_REQUESTS = 100
ERRORS_EVERY_S = 3.0  # how often the ticker reads serving's counters for each guarded version
BASELINE_WINDOWS = 5  # the replaced version's last drift windows its p99 baseline is the median of
_meter = meter("flywheel.monitoring")
guard_rollbacks = _meter.create_counter(
    "flywheel.monitoring.guard_rollbacks", unit="{rollback}", description="Post-promotion guard decisions, by outcome"
)


# ------------------------------------------------------------------------------------------ rules


def breaches(
    report: M.WindowReport, policy: M.MonitoringPolicy, version: int, guard_until: datetime | None, now: datetime
) -> set[DriftKind]:
    """The kinds of `report` that make the guard roll back: the window is of the guarded version,
    inside the guard's time, and breached a kind the policy rolls back on."""
    if guard_until is None or policy.guard.disabled or report.model.version != version or now > guard_until:
        return set()
    return set(report.breached) & set(policy.guard.rollback_on)


def error_check(policy: M.MonitoringPolicy, requests: int, errors: int) -> common_pb2.FeatureScore:
    """The guarded version's live error rate since the guard's baseline, judged from min_requests."""
    g = policy.guard
    limit = g.max_error_rate if g.HasField("max_error_rate") else DEFAULT_MAX_ERROR_RATE
    rate = errors / requests if requests > 0 else 0.0
    judged = requests >= (g.min_requests or DEFAULT_MIN_REQUESTS)
    return common_pb2.FeatureScore(feature="guard", statistic="error_rate", score=rate, threshold=limit,
                                   breached=judged and rate > limit)  # fmt: skip


def window_checks(
    policy: M.MonitoringPolicy,
    task: int,
    outputs: Mapping[str, np.ndarray],
    p99_ms: float,
    previous_p99_ms: float | None,
    staging: common_pb2.PredictionHistogram | None,
    judged: bool,
) -> list[common_pb2.FeatureScore]:
    """The live checks the guard policy sets, on one window of the guarded version: p99 latency over
    the replaced version's, and PSI of its predictions against its staging sample's. A check with
    nothing to compare with (no baseline, no staging histogram) is left out."""
    g, out = policy.guard, []
    if g.HasField("max_p99_latency_ratio") and previous_p99_ms and previous_p99_ms > 0 and p99_ms > 0:
        ratio = p99_ms / previous_p99_ms
        out.append(common_pb2.FeatureScore(feature="guard", statistic="p99_latency_ratio", score=ratio,
                                           threshold=g.max_p99_latency_ratio,
                                           breached=judged and ratio > g.max_p99_latency_ratio))  # fmt: skip
    if g.HasField("max_staging_psi") and staging is not None:
        value = staging_psi(task, outputs, staging)
        if math.isfinite(value):
            out.append(common_pb2.FeatureScore(feature="guard", statistic="staging_psi", score=value,
                                               threshold=g.max_staging_psi,
                                               breached=judged and value > g.max_staging_psi))  # fmt: skip
    return out


def staging_psi(task: int, outputs: Mapping[str, np.ndarray], staging: common_pb2.PredictionHistogram) -> float:
    """PSI of a window's predictions against the staging sample's histogram: over its classes plus one
    bucket for any other answer (classification), or over its bins of the predicted value (regression).
    NaN when the histogram is not one (a stored or forged one of the wrong shape) or a side is empty."""
    counts = np.asarray(staging.counts, dtype=np.float64)
    if len(counts) == 0 or (counts < 0).any():
        return math.nan
    if task == common_pb2.TASK_REGRESSION:
        edges = np.asarray(staging.edges, dtype=np.float64)
        if len(counts) != len(edges) + 1 or not np.isfinite(edges).all() or (np.diff(edges) <= 0).any():
            return math.nan
        return psi(counts, histograms.bin_counts(edges, np.asarray(outputs.get("variable", []), dtype=np.float64)))
    if len(counts) != len(staging.classes):
        return math.nan
    index = {c: i for i, c in enumerate(staging.classes)}
    found = [index.get(c, len(counts)) if isinstance(c, str) else len(counts) for c in outputs.get("class", [])]
    live = np.bincount(np.asarray(found, dtype=np.int64), minlength=len(counts) + 1)
    return psi(np.append(counts, 0.0), live)


def breach(report: M.WindowReport, kinds: set[DriftKind]) -> str:
    """What the window breached, with its numbers."""
    parts = []
    for kind in sorted(kinds):
        if kind == common_pb2.DRIFT_KIND_QUALITY and report.HasField("quality"):
            q = report.quality
            parts.append(f"{q.metric} {q.value:.4f} vs recorded {q.reference_value:.4f} (drop {q.drop:.4f})")
        elif kind == common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE and report.HasField("estimated"):
            e = report.estimated
            parts.append(f"estimated {e.metric} {e.value:.4f} vs recorded {e.reference_value:.4f} (drop {e.drop:.4f})")
        else:
            parts.append(KIND_NAMES.get(kind, str(kind)))
    parts += [_check_text(c) for c in report.guard_checks if c.breached]
    return f"guard: v{report.model.version} breached in window {report.window_id}: {'; '.join(parts)}"


def reason(report: M.WindowReport, kinds: set[DriftKind], to_version: int) -> str:
    """What the audit row says once the registry rolled back: the breach, with its numbers."""
    return f"{breach(report, kinds)}; rolled back to v{to_version}"


def kind_scores(
    report: M.WindowReport, kinds: set[DriftKind], policy: M.MonitoringPolicy
) -> list[common_pb2.FeatureScore]:
    """The breached scores behind `kinds` (the alert's scores)."""
    out = []
    for kind in sorted(kinds):
        if kind == common_pb2.DRIFT_KIND_QUALITY and report.HasField("quality"):
            q = report.quality
            out.append(common_pb2.FeatureScore(feature=q.metric, statistic="quality_drop", score=q.drop,
                                               threshold=policy.quality.max_drop, breached=True))  # fmt: skip
        elif kind == common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE and report.HasField("estimated"):
            e = report.estimated
            limit = policy.estimated_performance.max_drop
            out.append(common_pb2.FeatureScore(feature=e.metric, statistic="estimated_drop", score=e.drop,
                                               threshold=limit, breached=True))  # fmt: skip
        else:
            scores: Sequence[common_pb2.FeatureScore] = {
                common_pb2.DRIFT_KIND_DATA_DRIFT: report.feature_scores,
                common_pb2.DRIFT_KIND_PREDICTION_DRIFT: report.prediction_scores,
                common_pb2.DRIFT_KIND_INTEGRITY: report.integrity.scores,
            }.get(kind, [])
            out += [sc for sc in scores if sc.breached][:8]
    return out


def _check_text(c: common_pb2.FeatureScore) -> str:
    return f"{c.statistic} {c.score:.4g} > {c.threshold:g}"


def guarded_until(event: events_pb2.ModelPromoted, policy: M.MonitoringPolicy) -> datetime | None:
    """Until when the promotion `event` is guarded; None when it is not (a rollback, a first version,
    guard off)."""
    if event.rollback or event.previous_version <= 0 or policy.guard.disabled:
        return None
    start = event.meta.occurred_at.ToDatetime(UTC) if event.meta.HasField("occurred_at") else datetime.now(UTC)
    return start + timedelta(seconds=policy.guard.duration.ToTimedelta().total_seconds())


# ---------------------------------------------------------------------------------------- storage


async def arm(conn: asyncpg.Connection, event: events_pb2.ModelPromoted, policy: M.MonitoringPolicy) -> None:
    """Starts guarding the promoted version (the model's reference by now); never a version the guard
    already rolled back, and at most once per reference. The replaced version's p99 latency (the
    median over its last drift windows) is kept as the latency check's baseline."""
    until = guarded_until(event, policy)
    if until is None:
        return
    reports = await conn.fetch(
        "SELECT report FROM windows WHERE model = $1 AND version = $2 AND kind = 'drift' AND rows > 0"
        " ORDER BY created_at DESC LIMIT $3",
        event.model.name,
        event.previous_version,
        BASELINE_WINDOWS,
    )
    p99s = [p for r in reports if (p := _p99(r["report"])) > 0]
    await conn.execute(
        "UPDATE model_refs SET guard_until = $3, guard_previous = $4, guard_previous_p99 = $5, guard_baseline = NULL"
        " WHERE model = $1 AND version = $2 AND guard_previous = 0 AND NOT EXISTS"
        " (SELECT 1 FROM guard_rollbacks g WHERE g.model = $1 AND g.from_version = $2)",
        event.model.name,
        event.model.version,
        until,
        event.previous_version,
        float(np.median(p99s)) if p99s else None,
    )


def _p99(raw: bytes) -> float:
    try:
        return M.WindowReport.FromString(raw).latency.p99_ms
    except DecodeError:
        return 0.0


def guarding(ref: asyncpg.Record, policy: M.MonitoringPolicy, now: datetime) -> bool:
    """The reference's version is under guard now (armed, in time, and the policy's guard is on)."""
    until = ref["guard_until"]
    return not policy.guard.disabled and bool(ref["guard_previous"]) and until is not None and now <= until


def staging_histogram(ref: asyncpg.Record) -> common_pb2.PredictionHistogram | None:
    """The stored staging histogram; None when there is none (a version staged before serving reported
    one) or it does not decode."""
    raw = ref["staging_predictions"]
    try:
        return common_pb2.PredictionHistogram.FromString(raw) if raw else None
    except DecodeError:
        return None


async def judge(
    conn: asyncpg.Connection, ref: asyncpg.Record, report: M.WindowReport, policy: M.MonitoringPolicy
) -> bool:
    """Decides a rollback for a closed window of the reference (in the window's transaction, with
    `ref` locked); True when it did."""
    if not guarding(ref, policy, datetime.now(UTC)):
        return False
    kinds = breaches(report, policy, ref["version"], ref["guard_until"], datetime.now(UTC))
    checks = [c for c in report.guard_checks if c.breached]
    if not (kinds or checks):
        return False
    return await _decide(
        conn, report.model, ref["guard_previous"], breach(report, kinds), report.window_id, sorted(kinds),
        kind_scores(report, kinds, policy) + checks,
    )  # fmt: skip


async def _decide(
    conn: asyncpg.Connection,
    model: common_pb2.ModelRef,
    previous: int,
    what: str,
    window_id: str,
    kinds: Sequence[int],
    scores: Sequence[common_pb2.FeatureScore],
) -> bool:
    """The rollback decision (its reason is what the registry audits once done), its alert, and the
    guard off for the model, in the caller's transaction."""
    decided = await conn.fetchval(
        "INSERT INTO guard_rollbacks (model, from_version, to_version, reason, window_id, kinds)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true",
        model.name,
        model.version,
        previous,
        f"{what}; rolled back to v{previous}",
        window_id,
        list(kinds),
    )
    await conn.execute("UPDATE model_refs SET guard_until = NULL WHERE model = $1", model.name)
    if not decided:
        return False
    message = f"{what}; rolling back to v{previous}"
    await raise_deployment_alert(conn, model, common_pb2.DRIFT_KIND_GUARD_ROLLBACK, message, scores, window_id)
    log.warning("post-promotion guard: rolling back", model=model.name, version=model.version, to_version=previous,
                reason=message)  # fmt: skip
    return True


PolicyLoader = Callable[[asyncpg.Connection, str], Awaitable[M.MonitoringPolicy]]


async def watch_errors(pool: asyncpg.Pool, settings: Settings, load_policy: PolicyLoader) -> int:
    """The live error rate of every guarded version (serving's counters, read outside any transaction):
    each slot counts from the first tick that saw it serve the version (since_baseline). Returns the
    rollbacks decided."""
    async with pool.acquire() as conn:
        guarded = await conn.fetch(
            "SELECT model, version FROM model_refs WHERE guard_until >= now() AND guard_previous > 0"
        )
    decided = 0
    for row in guarded:
        model = common_pb2.ModelRef(name=row["model"], version=row["version"])
        try:
            slots = await clients.version_slots(settings, model.name, model.version, common_pb2.SERVING_ROLE_PRODUCTION)
        except FlywheelError as exc:  # one model's trouble must not blind the guard to the others
            log.info("post-promotion guard: no error rate from serving", model=model.name, error=str(exc)[:200])
            continue
        async with pool.acquire() as conn, conn.transaction():
            ref = await conn.fetchrow(
                "SELECT * FROM model_refs WHERE model = $1 AND version = $2 FOR UPDATE", model.name, model.version
            )
            if ref is None:
                continue
            policy = await load_policy(conn, model.name)
            if not guarding(ref, policy, datetime.now(UTC)):
                continue
            baseline, requests, errors = since_baseline(ref["guard_baseline"], slots)
            await conn.execute(
                "UPDATE model_refs SET guard_baseline = $2::jsonb WHERE model = $1", model.name, json.dumps(baseline)
            )
            check = error_check(policy, requests, errors)
            if check.breached:
                rate = f"{check.score:.4g} > {check.threshold:g} over {requests} requests"
                what = f"guard: v{model.version} live error rate {rate}"
                decided += await _decide(conn, model, ref["guard_previous"], what, "", [], [check])
    return decided


async def carry_out(pool: asyncpg.Pool, settings: Settings) -> int:
    """Asks the registry for every decided rollback not yet done; returns how many ended. A registry
    that is away leaves the decision for the next tick; a refusal (production moved on) ends it."""
    ended = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM guard_rollbacks WHERE done_at IS NULL ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
            )
            if row is None:
                return ended
            request = registry_pb2.RollbackRequest(
                name=row["model"], to_version=row["to_version"], from_version=row["from_version"],
                actor=GUARD_ACTOR, reason=row["reason"],
            )  # fmt: skip
            attributes = {"flywheel.model": row["model"], "flywheel.version": row["from_version"],
                          "flywheel.window_id": row["window_id"]}  # fmt: skip
            try:
                with tracer().start_as_current_span("guard rollback", attributes=attributes):
                    await clients.rollback(settings, request)  # the registry's side joins this trace
                outcome = "rolled back"
            except Unavailable as exc:
                await conn.execute(
                    "UPDATE guard_rollbacks SET attempts = attempts + 1 WHERE model = $1 AND from_version = $2",
                    row["model"],
                    row["from_version"],
                )
                log.warning("post-promotion guard: registry unavailable; retrying", model=row["model"], error=str(exc))
                return ended
            except FlywheelError as exc:
                outcome = f"refused: {type(exc).__name__}: {exc}"[:500]
            await conn.execute(
                "UPDATE guard_rollbacks SET done_at = now(), outcome = $3, attempts = attempts + 1"
                " WHERE model = $1 AND from_version = $2",
                row["model"],
                row["from_version"],
                outcome,
            )
            guard_rollbacks.add(1, {"model": row["model"], "outcome": outcome.split(":")[0]})
            log.info("post-promotion guard", model=row["model"], version=row["from_version"], outcome=outcome)
            ended += 1
