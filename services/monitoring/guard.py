"""Post-promotion guard: for a while after a promotion, a window of the new production version that
breaches one of the policy's `guard.rollback_on` kinds rolls production back to the version it
replaced, automatically, audited as actor "guard".

The decision is a guard_rollbacks row written in the window's transaction (with the alert that names
the breach), and the guard disarms for that version: one rollback per promotion. The ticker carries
decisions out against the registry (`carry_out`), which rolls back only while the watched version
still holds production, so a late or repeated call never undoes a newer promotion. A rollback's own
promotion is not guarded (it would bounce back), and a redelivered model.promoted never re-arms a
version the guard already rolled back.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import FlywheelError, Unavailable
from flywheel.logging import get_logger
from flywheel.telemetry import meter, tracer
from flywheel.v1 import common_pb2, events_pb2, monitoring_pb2, registry_pb2
from services.monitoring.policy import KIND_NAMES, DriftKind

log = get_logger(__name__)
M = monitoring_pb2
GUARD_ACTOR = "guard"
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


def reason(report: M.WindowReport, kinds: set[DriftKind], to_version: int) -> str:
    """What the audit row and the event say: the breach, with its numbers."""
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
    return (
        f"guard: v{report.model.version} breached in window {report.window_id}: {'; '.join(parts)};"
        f" rolled back to v{to_version}"
    )


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
    already rolled back, and at most once per reference."""
    until = guarded_until(event, policy)
    if until is None:
        return
    await conn.execute(
        "UPDATE model_refs SET guard_until = $3, guard_previous = $4 WHERE model = $1 AND version = $2"
        " AND guard_previous = 0 AND NOT EXISTS"
        " (SELECT 1 FROM guard_rollbacks g WHERE g.model = $1 AND g.from_version = $2)",
        event.model.name,
        event.model.version,
        until,
        event.previous_version,
    )


async def judge(
    conn: asyncpg.Connection, ref: asyncpg.Record, report: M.WindowReport, policy: M.MonitoringPolicy
) -> bool:
    """Decides a rollback for a closed window of the reference (in the window's transaction, with
    `ref` locked); True when it did."""
    kinds = breaches(report, policy, ref["version"], ref["guard_until"], datetime.now(UTC))
    if not kinds or not ref["guard_previous"]:
        return False
    model, version, previous = ref["model"], ref["version"], ref["guard_previous"]
    why = reason(report, kinds, previous)
    await conn.execute(
        "INSERT INTO guard_rollbacks (model, from_version, to_version, reason, window_id, kinds)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        model,
        version,
        previous,
        why,
        report.window_id,
        sorted(kinds),
    )
    await conn.execute("UPDATE model_refs SET guard_until = NULL WHERE model = $1", model)
    log.warning("post-promotion guard: rolling back", model=model, version=version, to_version=previous, reason=why)
    return True


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
