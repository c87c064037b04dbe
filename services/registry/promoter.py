"""How aliases move: by hand (set, delete), and the production alias by promotion. Serving's staging
report leads to a decision (promotion.py's rule); a promoted decision, an approval or a rollback
moves production. Every move is audited, and every move of production is announced as
model.promoted through the transactional outbox, in the same transaction as the move.

Transport-free: plain values and protobuf messages in and out, domain errors for what was wrong;
SQL lives in store.py.
"""

from __future__ import annotations

import asyncpg

from flywheel.bus import Topics, enqueue
from flywheel.bus.serde import new_meta
from flywheel.errors import FailedPrecondition, InvalidArgument
from flywheel.logging import get_logger
from flywheel.pbutil import timestamp
from flywheel.v1 import common_pb2, events_pb2, registry_pb2
from services.registry import promotion, rollout, rules, store

log = get_logger(__name__)
R = registry_pb2


class Promoter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- aliases by hand ------------------------------------------------------------------

    async def set_alias(
        self, name: str, alias: str, version: int, reason: str, who: str
    ) -> tuple[registry_pb2.Alias, int]:
        """Points the alias at the version; returns the alias and the version it pointed at before (0: none).
        Moving `production` by hand is announced like a promotion."""
        alias = rules.check_alias(alias)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.ensure_model(conn, name, lock=True)
            mv = await store.get_version(conn, name, version)
            if mv.archived:
                raise InvalidArgument(f"version {version} is archived", field="version")
            previous = await store.alias_version(conn, name, alias)
            updated_at = await store.set_alias(conn, name, alias, version, who)
            await store.audit(
                conn,
                actor=who,
                action=R.AUDIT_ACTION_ALIAS_SET,
                name=name,
                version=version,
                alias=alias,
                from_version=previous or 0,
                to_version=version,
                reason=reason,
            )
            if alias == rules.PRODUCTION and previous != version:
                await _emit_promoted(conn, mv, previous or 0, who, reason or "alias moved by hand")
        updated = registry_pb2.Alias(
            model_name=name, alias=alias, version=version, update_time=timestamp(updated_at), updated_by=who
        )
        return updated, previous or 0

    async def delete_alias(self, name: str, alias: str, reason: str, who: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            version = await store.delete_alias(conn, name, alias)
            if version is None:
                raise await store.missing_alias(conn, name, alias)
            await store.audit(
                conn,
                actor=who,
                action=R.AUDIT_ACTION_ALIAS_DELETED,
                name=name,
                version=version,
                alias=alias,
                from_version=version,
                reason=reason,
            )

    async def alias(self, name: str, alias: str) -> registry_pb2.Alias:
        async with self._pool.acquire() as conn:
            found = await store.get_alias(conn, name, alias)
            if found is None:
                raise await store.missing_alias(conn, name, alias)
        return found

    # -- promotion --------------------------------------------------------------------------

    async def report_staging(
        self, name: str, version: int, report: registry_pb2.StagingReport, causation_id: str
    ) -> tuple[registry_pb2.ModelVersion, registry_pb2.PromotionDecision]:
        """Records serving's staging report and decides: promote, wait for approval, or not."""
        async with self._pool.acquire() as conn, conn.transaction():
            model = await store.ensure_model(conn, name, lock=True)
            mv = await store.get_version(conn, name, version)
            if mv.promotion.state != R.PROMOTION_STATE_PENDING_CHECKS:
                # A repeated report (a redelivered model.registered), or one for a version already
                # decided another way (rejected by hand while its checks ran): the decision stands.
                return mv, mv.promotion
            await store.save_staging(conn, name, version, report)
            await store.audit(
                conn,
                actor=report.reporter or "serving",
                action=R.AUDIT_ACTION_CHECKS_REPORTED,
                name=name,
                version=version,
                reason="passed" if report.passed else "failed",
                causation_id=causation_id,
                details={"checks": {c.name: c.passed for c in report.checks}, "p99_ms": report.latency_p99_ms},
            )
            policy = (
                common_pb2.PromotionPolicy.FromString(model["policy"])
                if model["policy"]
                else promotion.default_policy(mv.task)
            )
            champion_version = await store.alias_version(conn, name, rules.PRODUCTION)
            champion = await store.get_version(conn, name, champion_version) if champion_version else None
            decision = promotion.decide(
                policy, report, list(mv.metrics), champion_version or 0, list(champion.metrics) if champion else [],
                await store.guard_rolled_back(conn, name, mv.checksum),
            )  # fmt: skip
            if decision.state == R.PROMOTION_STATE_PROMOTED and champion_version and rollout.progressive(policy):
                result = await start_rollout(conn, mv, policy, champion_version, decision.reason, "registry")
            else:
                result = await apply_decision(
                    conn, mv, decision.state, decision.reason, "registry", champion_version or 0, causation_id
                )
            return await store.get_version(conn, name, version), result

    async def approve(
        self, name: str, version: int, reason: str, who: str
    ) -> tuple[registry_pb2.ModelVersion, registry_pb2.PromotionDecision]:
        """A person's approval of a version awaiting it: production moves to it."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.ensure_model(conn, name, lock=True)
            mv = await store.get_version(conn, name, version)
            if mv.promotion.state != R.PROMOTION_STATE_PENDING_APPROVAL:
                state = R.PromotionState.Name(mv.promotion.state)
                raise FailedPrecondition(f"version {version} is {state}, not awaiting approval", field="version")
            await store.audit(
                conn, actor=who, action=R.AUDIT_ACTION_APPROVED, name=name, version=version, reason=reason
            )
            previous = await store.alias_version(conn, name, rules.PRODUCTION)
            because = f"approved by {who}" + (f": {reason}" if reason else "")
            model = await store.ensure_model(conn, name)
            policy = common_pb2.PromotionPolicy.FromString(model["policy"]) if model["policy"] else None
            if previous and policy is not None and rollout.progressive(policy):
                decision = await start_rollout(conn, mv, policy, previous, because, who)
            else:
                decision = await apply_decision(conn, mv, R.PROMOTION_STATE_PROMOTED, because, who, previous or 0, "")
            return await store.get_version(conn, name, version), decision

    async def reject(
        self, name: str, version: int, reason: str, who: str
    ) -> tuple[registry_pb2.ModelVersion, registry_pb2.PromotionDecision]:
        if not reason:
            raise InvalidArgument("rejecting needs a reason", field="reason")
        async with self._pool.acquire() as conn, conn.transaction():
            mv = await store.get_version(conn, name, version)
            if mv.promotion.state == R.PROMOTION_STATE_PROMOTED:
                raise FailedPrecondition("the version was already promoted; use Rollback", field="version")
            decision = await apply_decision(conn, mv, R.PROMOTION_STATE_REJECTED, reason, who, 0, "")
            return await store.get_version(conn, name, version), decision

    async def rollback(self, name: str, to_version: int, reason: str, who: str, from_version: int = 0) -> tuple[
        int, int
    ]:  # fmt: skip
        """Moves production back to `to_version` (0: the version it last moved from), only while
        `from_version` holds it when that is set; returns (the version now in production, the one it
        replaced)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.ensure_model(conn, name, lock=True)
            current = await store.alias_version(conn, name, rules.PRODUCTION)
            if current is None:
                raise FailedPrecondition(f"model {name!r} has nothing in production", field="name")
            if from_version and current != from_version:
                raise FailedPrecondition(
                    f"v{from_version} no longer holds production (v{current} does)", field="from_version"
                )
            target = to_version or await store.previous_production(conn, name, current)
            if not target:
                raise FailedPrecondition("no earlier production version to roll back to", field="to_version")
            mv = await store.get_version(conn, name, target)
            if mv.archived:
                raise FailedPrecondition(f"version {target} is archived", field="to_version")
            await _move_production(
                conn, mv, current, who, reason or f"rollback from v{current}", R.AUDIT_ACTION_ROLLED_BACK, "",
                rollback=True,
            )  # fmt: skip
        return target, current


async def start_rollout(
    conn: asyncpg.Connection,
    mv: registry_pb2.ModelVersion,
    policy: common_pb2.PromotionPolicy,
    champion: int,
    reason: str,
    who: str,
) -> registry_pb2.PromotionDecision:
    """The version earned promotion under a progressive policy: it becomes a canary at the first step,
    or a shadow first (the rollout driver tells serving and judges the gates). A rollout already under
    way for the model is superseded (its canary is replaced by this one)."""
    name, version = mv.ref.name, mv.ref.version
    pct = rollout.phases(policy)
    for old in await conn.fetch(
        "UPDATE rollouts SET state = 'aborted', reason = $2, updated_at = now() WHERE model = $1 AND state = 'active'"
        " RETURNING version, champion",
        name,
        f"superseded by v{version}",
    ):
        why = f"rollout superseded by v{version}"
        superseded = registry_pb2.PromotionDecision(state=R.PROMOTION_STATE_ABORTED, reason=why, actor=who)
        superseded.time.GetCurrentTime()
        await store.save_promotion(conn, name, old["version"], superseded)
        ended = rollout.ended(name, old["version"], old["champion"], False, why, who)
        await enqueue(conn, Topics.ROLLOUT_ENDED, name, ended)
    decision = registry_pb2.PromotionDecision(
        state=R.PROMOTION_STATE_ROLLING_OUT,
        reason=f"{reason}; rolling out: {rollout.where(pct[0])} (step 1 of {len(pct)})",
        actor=who,
        rollout=registry_pb2.RolloutStatus(step=0, steps=len(pct), percent=pct[0], shadow=pct[0] == rollout.SHADOW),
    )
    decision.time.GetCurrentTime()
    decision.rollout.step_started.CopyFrom(decision.time)
    await store.save_promotion(conn, name, version, decision)
    await conn.execute(
        "INSERT INTO rollouts (model, version, champion) VALUES ($1, $2, $3) ON CONFLICT (model, version) DO UPDATE"
        " SET state = 'active', step = 0, applied_step = -1, started_at = now(), step_started_at = now(),"
        " baseline = '{}'::jsonb, champion = $3, updated_at = now()",
        name,
        version,
        champion,
    )
    await store.audit(
        conn, actor=who, action=R.AUDIT_ACTION_ROLLOUT_STEP, name=name, version=version, reason=decision.reason,
        details={"step": 0, "percent": pct[0]},
    )  # fmt: skip
    log.info("rollout started", model=name, version=version, percent=pct[0], champion=champion)
    return decision


async def apply_decision(
    conn: asyncpg.Connection,
    mv: registry_pb2.ModelVersion,
    state: registry_pb2.PromotionState.ValueType,
    reason: str,
    who: str,
    champion_version: int,
    causation_id: str,
    rollout_status: registry_pb2.RolloutStatus | None = None,
) -> registry_pb2.PromotionDecision:
    """Record the decision on the version, audit it, and move production when it says so."""
    decision = registry_pb2.PromotionDecision(state=state, reason=reason, actor=who, rollout=rollout_status)
    decision.time.GetCurrentTime()
    name, version = mv.ref.name, mv.ref.version
    await store.save_promotion(conn, name, version, decision)
    if state == R.PROMOTION_STATE_PROMOTED:
        await _move_production(conn, mv, champion_version, who, reason, R.AUDIT_ACTION_PROMOTED, causation_id)
    else:
        action: registry_pb2.AuditAction.ValueType = (
            R.AUDIT_ACTION_REJECTED if state == R.PROMOTION_STATE_REJECTED else R.AUDIT_ACTION_NOT_PROMOTED
        )
        if state == R.PROMOTION_STATE_PENDING_APPROVAL:
            action = R.AUDIT_ACTION_CHECKS_REPORTED
        await store.audit(
            conn, actor=who, action=action, name=name, version=version, reason=reason, causation_id=causation_id,
            details={"state": R.PromotionState.Name(state)},
        )  # fmt: skip
    log.info("promotion decision", model=name, version=version, state=R.PromotionState.Name(state), reason=reason)
    return decision


async def _move_production(
    conn: asyncpg.Connection,
    mv: registry_pb2.ModelVersion,
    previous: int,
    who: str,
    reason: str,
    action: registry_pb2.AuditAction.ValueType,
    causation_id: str,
    *,
    rollback: bool = False,
) -> None:
    await store.set_alias(conn, mv.ref.name, rules.PRODUCTION, mv.ref.version, who)
    await store.audit(
        conn,
        actor=who,
        action=action,
        name=mv.ref.name,
        version=mv.ref.version,
        alias=rules.PRODUCTION,
        from_version=previous,
        to_version=mv.ref.version,
        reason=reason,
        causation_id=causation_id,
    )
    await _emit_promoted(conn, mv, previous, who, reason, rollback=rollback)


async def _emit_promoted(
    conn: asyncpg.Connection,
    mv: registry_pb2.ModelVersion,
    previous: int,
    who: str,
    reason: str,
    *,
    rollback: bool = False,
) -> None:
    event = events_pb2.ModelPromoted(
        meta=new_meta("registry"),
        model=mv.ref,
        previous_version=previous,
        alias=rules.PRODUCTION,
        reason=reason,
        actor=who,
        rollback=rollback,
        artifact_uri=mv.artifact_uri,
        checksum=mv.checksum,
        lineage=mv.lineage,
    )
    await enqueue(conn, Topics.MODEL_PROMOTED, mv.ref.name, event)
