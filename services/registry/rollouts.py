"""The progressive rollout driver: every registry replica runs it; each tick takes each active rollout
row with FOR UPDATE SKIP LOCKED (so one replica at a time judges a rollout, and a replica that dies
mid-tick only loses its lock), tells serving the step's canary percent when it has not yet, reads the
canary's signals (serving's request counters, monitoring's canary report) and applies rollout.py's
verdict: wait, advance a step, promote (production moves, model.promoted; serving ends the split), or
abort (PROMOTION_STATE_ABORTED, the failing gate and its numbers in the audit, traffic back to
production). Decisions happen in the row's transaction, with the model locked like every promotion.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg

from flywheel import clients
from flywheel.app import ServiceContext
from flywheel.bus import Topics, enqueue
from flywheel.config import Settings
from flywheel.errors import Unavailable
from flywheel.logging import get_logger
from flywheel.slot_counts import since_baseline
from flywheel.telemetry import meter, tracer
from flywheel.v1 import common_pb2, monitoring_pb2, registry_pb2, serving_pb2
from services.registry import promotion, rollout, rules, store
from services.registry.promoter import apply_decision

log = get_logger(__name__)
R = registry_pb2
ACTOR = "rollout"
_meter = meter("flywheel.registry")
rollout_decisions = _meter.create_counter(
    "flywheel.registry.rollout_decisions",
    unit="{decision}",
    description="Progressive rollout steps, promotions, aborts",
)
tick_failures = _meter.create_counter("flywheel.registry.rollout_failures", unit="{failure}")


async def drive(ctx: ServiceContext) -> None:
    """The background loop: a failure is logged and counted, and the next tick tries again."""
    while True:
        await asyncio.sleep(ctx.settings.registry_rollout_tick_s)
        try:
            async with ctx.pool.acquire() as conn:
                active = await conn.fetch("SELECT model, version FROM rollouts WHERE state = 'active'")
        except Exception as exc:
            _failed("", exc)
            continue
        for row in active:
            # One span per tick: serving's and monitoring's side of the calls it makes join its trace.
            attributes = {"flywheel.model": row["model"], "flywheel.version": row["version"]}
            with tracer().start_as_current_span("rollout tick", attributes=attributes) as span:
                try:
                    span.set_attribute("flywheel.rollout.action", await drive_one(
                        ctx.pool, ctx.settings, row["model"], row["version"]
                    ))  # fmt: skip
                except Exception as exc:
                    span.set_attribute("flywheel.rollout.action", "failed")
                    _failed(row["model"], exc)


def _failed(model: str, exc: Exception) -> None:
    tick_failures.add(1, {"model": model})
    if isinstance(exc, Unavailable):
        log.warning("rollout: a dependency is away; retrying next tick", model=model, error=str(exc)[:300])
    else:
        log.error("rollout tick failed", model=model, error=repr(exc)[:300])


async def drive_one(pool: asyncpg.Pool, settings: Settings, model: str, version: int) -> str:
    """One tick of one rollout; returns what it did ("" when another replica holds it)."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM rollouts WHERE model = $1 AND version = $2 AND state = 'active' FOR UPDATE SKIP LOCKED",
            model,
            version,
        )
        if row is None:
            return ""
        record = await store.ensure_model(conn, model, lock=True)
        mv = await store.get_version(conn, model, version)
        policy = (
            common_pb2.PromotionPolicy.FromString(record["policy"])
            if record["policy"]
            else promotion.default_policy(mv.task)
        )
        production = await store.alias_version(conn, model, rules.PRODUCTION)
        if production != row["champion"] or mv.archived:
            why = "archived" if mv.archived else f"production moved to v{production} while the canary ran"
            return await _abort(conn, settings, mv, row, f"rollout stopped: {why}", [])
        pct = rollout.phases(policy)
        step = min(row["step"], len(pct) - 1)
        shadow = pct[step] == rollout.SHADOW
        role = common_pb2.SERVING_ROLE_SHADOW if shadow else common_pb2.SERVING_ROLE_CANARY
        if row["applied_step"] != step:
            await _tell_serving(settings, model, version, pct, step)
            baseline, _, _ = since_baseline({}, await clients.version_slots(settings, model, version, role))
            await conn.execute(
                "UPDATE rollouts SET applied_step = $3, step_started_at = now(), baseline = $4::jsonb,"
                " updated_at = now() WHERE model = $1 AND version = $2",
                model, version, step, json.dumps(baseline),
            )  # fmt: skip
            return "applied"
        now = datetime.now(UTC)
        baseline, requests, errors = since_baseline(
            row["baseline"], await clients.version_slots(settings, model, version, role)
        )  # per serving slot: a replica restarting mid-step neither erases nor invents requests
        await conn.execute(
            "UPDATE rollouts SET baseline = $3::jsonb WHERE model = $1 AND version = $2", model, version,
            json.dumps(baseline),
        )  # fmt: skip
        if shadow:
            comparison = await clients.shadow_comparison(
                settings, monitoring_pb2.GetShadowComparisonRequest(model_name=model, challenger_version=version)
            )
            signals = rollout.Signals(requests, errors, shadow=comparison)
        else:
            report_request = monitoring_pb2.GetCanaryReportRequest(model_name=model, canary_version=version)
            report_request.since.FromDatetime(row["step_started_at"])
            report_request.labels_since.FromDatetime(row["started_at"])
            signals = rollout.Signals(requests, errors, report=await clients.canary_report(settings, report_request))
        verdict = rollout.judge(policy, step, row["step_started_at"], now, signals)
        status = R.RolloutStatus(step=step, steps=len(pct), percent=pct[step], gates=verdict.gates, shadow=shadow)
        status.step_started.FromDatetime(row["step_started_at"])
        if verdict.action == rollout.ABORT:
            seen = {}  # what the prediction distributions were, so a PSI verdict explains itself
            if signals.report is not None and signals.report.canary_classes:
                seen = {"canary_classes": dict(signals.report.canary_classes),
                        "production_classes": dict(signals.report.production_classes)}  # fmt: skip
            return await _abort(conn, settings, mv, row, verdict.reason, list(verdict.gates), status, seen)
        if verdict.action == rollout.PROMOTE:
            status.percent = 100.0
            await apply_decision(
                conn, mv, R.PROMOTION_STATE_PROMOTED, verdict.reason, ACTOR, row["champion"], "", status
            )
            await _end(conn, row, "promoted", verdict.reason, status)
            rollout_decisions.add(1, {"model": model, "decision": "promoted"})
            return "promoted"
        if verdict.action == rollout.ADVANCE:
            await conn.execute(
                "UPDATE rollouts SET step = step + 1, updated_at = now() WHERE model = $1 AND version = $2",
                model,
                version,
            )
            await store.audit(
                conn, actor=ACTOR, action=R.AUDIT_ACTION_ROLLOUT_STEP, name=model, version=version,
                reason=verdict.reason, details={"step": step + 1, "percent": pct[step + 1], **_gate_details(status)},
            )  # fmt: skip
            rollout_decisions.add(1, {"model": model, "decision": "advanced"})
            log.info("rollout advanced", model=model, version=version, percent=pct[step + 1], reason=verdict.reason)
        await _save(conn, mv, verdict.reason if verdict.action == rollout.ADVANCE else mv.promotion.reason, status)
        return verdict.action


async def _tell_serving(settings: Settings, model: str, version: int, pct: list[float], step: int) -> None:
    """The step's traffic in serving's store: the shadow step mirrors every request, a canary step
    answers its percent (either replaces what the step before set)."""
    reason = f"progressive rollout of v{version}: step {step + 1} of {len(pct)}"
    if pct[step] == rollout.SHADOW:
        await clients.set_shadow(settings, serving_pb2.SetShadowRequest(
            model_name=model, challenger_version=version, percent=100.0, actor=ACTOR, reason=reason,
        ))  # fmt: skip
    else:
        await clients.set_canary(settings, serving_pb2.SetCanaryRequest(
            model_name=model, challenger_version=version, percent=pct[step], actor=ACTOR, reason=reason,
        ))  # fmt: skip


async def _save(conn: asyncpg.Connection, mv: registry_pb2.ModelVersion, reason: str, status: R.RolloutStatus) -> None:
    """The version's decision stays ROLLING_OUT; its status shows the step and the gates' latest values."""
    decision = R.PromotionDecision(state=R.PROMOTION_STATE_ROLLING_OUT, reason=reason, actor=ACTOR, rollout=status)
    decision.time.GetCurrentTime()
    await store.save_promotion(conn, mv.ref.name, mv.ref.version, decision)


def _gate_details(status: R.RolloutStatus) -> dict[str, Any]:
    return {g.gate: {"value": g.value, "threshold": g.threshold, "sample": g.sample} for g in status.gates}


async def _abort(
    conn: asyncpg.Connection,
    settings: Settings,
    mv: registry_pb2.ModelVersion,
    row: asyncpg.Record,
    reason: str,
    gates: list[R.RolloutGateResult],
    status: R.RolloutStatus | None = None,
    seen: dict[str, Any] | None = None,
) -> str:
    """Traffic back to production first (serving's store), then the decision, audit, rollout.ended
    (monitoring's alert) and counter."""
    model, version = mv.ref.name, mv.ref.version
    await clients.clear_traffic(settings, serving_pb2.ClearTrafficRequest(model_name=model, actor=ACTOR, reason=reason))
    decision = R.PromotionDecision(state=R.PROMOTION_STATE_ABORTED, reason=reason, actor=ACTOR)
    if status is not None:
        decision.rollout.CopyFrom(status)
    decision.time.GetCurrentTime()
    await store.save_promotion(conn, model, version, decision)
    details = _gate_details(status) if status is not None else {}
    await store.audit(
        conn, actor=ACTOR, action=R.AUDIT_ACTION_ROLLOUT_ABORTED, name=model, version=version, reason=reason,
        details={"breached": [g.gate for g in gates if g.breached], **details, **(seen or {})},
    )  # fmt: skip
    await _end(conn, row, "aborted", reason, status)
    rollout_decisions.add(1, {"model": model, "decision": "aborted"})
    log.warning("rollout aborted", model=model, version=version, reason=reason)
    return "aborted"


async def _end(
    conn: asyncpg.Connection, row: asyncpg.Record, state: str, reason: str, status: R.RolloutStatus | None
) -> None:
    """The row's end, and rollout.ended (outbox, same transaction) for monitoring's alert and for operators."""
    await conn.execute(
        "UPDATE rollouts SET state = $3, reason = $4, updated_at = now() WHERE model = $1 AND version = $2",
        row["model"],
        row["version"],
        state,
        reason,
    )
    event = rollout.ended(row["model"], row["version"], row["champion"], state == "promoted", reason, ACTOR, status)
    await enqueue(conn, Topics.ROLLOUT_ENDED, row["model"], event)
