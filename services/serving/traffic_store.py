"""The stored traffic policy of every model, its audit trail and the replicas' views, in serving's
schema (migrations/0001_deployment_state.sql). Any replica changes a policy; every replica applies
what is stored (services/serving/traffic_sync.py).

A change is one transaction: the row (its generation + 1), an audit row and a DeploymentChanged
event through the outbox, so the event goes out exactly when the change is committed. Ending a
split because its challenger was promoted is a conditional UPDATE on the generation the replica
saw, so with N replicas noticing the promotion at once exactly one of them writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from flywheel.bus import Topics, enqueue
from flywheel.bus.serde import new_meta
from flywheel.v1 import events_pb2, serving_pb2
from services.serving.traffic_rules import (
    PRODUCTION_ONLY,
    PROMOTION_ACTOR,
    AppliedView,
    StoredPolicy,
    TrafficPolicy,
    promotion_reason,
)

S = serving_pb2
PRUNE_AFTER = "1 hour"  # a replica silent this long is forgotten (a clean stop deletes its row at once)


def _policy(mode: int, version: int, percent: float) -> TrafficPolicy:
    if mode in (S.TRAFFIC_MODE_CANARY, S.TRAFFIC_MODE_SHADOW):
        return TrafficPolicy(mode, int(version), float(percent))  # type: ignore[arg-type]
    return PRODUCTION_ONLY


def _stored(row: asyncpg.Record) -> StoredPolicy:
    return StoredPolicy(
        model=row["model"],
        policy=_policy(row["mode"], row["challenger_version"], row["percent"]),
        generation=row["generation"],
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
        reason=row["reason"],
    )


def split_proto(model: str, policy: TrafficPolicy, generation: int) -> serving_pb2.TrafficSplit:
    out = S.TrafficSplit(mode=policy.mode, percent=policy.percent, generation=generation)
    if policy.split:
        out.challenger.name, out.challenger.version = model, policy.challenger_version
    return out


def stored_proto(stored: StoredPolicy) -> serving_pb2.TrafficSplit:
    out = split_proto(stored.model, stored.policy, stored.generation)
    out.updated_by, out.reason = stored.updated_by, stored.reason
    if stored.updated_at is not None:
        out.update_time.FromDatetime(stored.updated_at)
    return out


@dataclass(frozen=True)
class ReplicaRow:
    """A replica's heartbeat and, for one model, its view (None: it has no deployment of it)."""

    replica: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    age_s: float  # by the database's clock
    view: AppliedView | None
    slots: bytes = b""  # a ReplicaView with only slots set
    view_updated_at: datetime | None = None


class TrafficStore:
    def __init__(self, pool: asyncpg.Pool, replica: str) -> None:
        self._pool = pool
        self.replica = replica  # host:port: names this process in audits and views

    # -- the policy ------------------------------------------------------------------------------

    async def get(self, model: str) -> StoredPolicy:
        row = await self._pool.fetchrow("SELECT * FROM deployment_state WHERE model = $1", model)
        return _stored(row) if row is not None else StoredPolicy(model)

    async def get_many(self, models: Iterable[str] | None = None) -> dict[str, StoredPolicy]:
        """Every stored policy (None), or those of `models` (a model never set is absent)."""
        if models is None:
            rows = await self._pool.fetch("SELECT * FROM deployment_state")
        else:
            rows = await self._pool.fetch("SELECT * FROM deployment_state WHERE model = ANY($1::text[])", list(models))
        return {r["model"]: _stored(r) for r in rows}

    async def change(self, model: str, policy: TrafficPolicy, actor: str, reason: str) -> StoredPolicy:
        """Stores `policy` for `model` (generation + 1), audited, with its DeploymentChanged event."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO deployment_state (model, mode) VALUES ($1, $2) ON CONFLICT (model) DO NOTHING",
                model,
                S.TRAFFIC_MODE_PRODUCTION_ONLY,
            )
            # Row lock: concurrent changes through different replicas get consecutive generations.
            old = _stored(await conn.fetchrow("SELECT * FROM deployment_state WHERE model = $1 FOR UPDATE", model))
            return await self._write(conn, old, policy, actor, reason)

    async def end_promoted(self, seen: StoredPolicy, version: int) -> StoredPolicy | None:
        """Ends the split `seen` whose challenger `version` is now production, unless the stored
        row moved on since (another replica ended it, or an operator changed it): then None."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM deployment_state WHERE model = $1 AND generation = $2 AND challenger_version = $3"
                " AND mode = ANY($4::int[]) FOR UPDATE SKIP LOCKED",
                seen.model,
                seen.generation,
                version,
                [S.TRAFFIC_MODE_CANARY, S.TRAFFIC_MODE_SHADOW],
            )
            if row is None:  # changed meanwhile, or being changed right now by another replica
                return None
            return await self._write(conn, _stored(row), PRODUCTION_ONLY, PROMOTION_ACTOR, promotion_reason(version))

    async def _write(
        self, conn: asyncpg.Connection, old: StoredPolicy, policy: TrafficPolicy, actor: str, reason: str
    ) -> StoredPolicy:
        row = await conn.fetchrow(
            "UPDATE deployment_state SET mode = $2, challenger_version = $3, percent = $4,"
            " generation = generation + 1, updated_at = now(), updated_by = $5, reason = $6"
            " WHERE model = $1 RETURNING *",
            old.model,
            policy.mode,
            policy.challenger_version,
            policy.percent,
            actor,
            reason,
        )
        new = _stored(row)
        await conn.execute(
            "INSERT INTO deployment_audit (at, model, actor, reason, replica, generation, old_mode,"
            " old_challenger_version, old_percent, new_mode, new_challenger_version, new_percent)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            new.updated_at,
            old.model,
            actor,
            reason,
            self.replica,
            new.generation,
            old.policy.mode,
            old.policy.challenger_version,
            old.policy.percent,
            policy.mode,
            policy.challenger_version,
            policy.percent,
        )
        event = events_pb2.DeploymentChanged(
            meta=new_meta("serving"),
            model_name=old.model,
            generation=new.generation,
            role=policy.role,
            challenger_version=policy.challenger_version,
            percent=policy.percent,
            actor=actor,
            reason=reason,
        )
        await enqueue(conn, Topics.DEPLOYMENT_CHANGED, old.model, event)
        return new

    async def history(self, model: str, limit: int, offset: int) -> list[serving_pb2.TrafficChange]:
        """The model's changes, newest first."""
        rows = await self._pool.fetch(
            "SELECT * FROM deployment_audit WHERE model = $1 ORDER BY id DESC LIMIT $2 OFFSET $3", model, limit, offset
        )
        out = []
        for r in rows:
            change = S.TrafficChange(
                id=r["id"],
                model_name=r["model"],
                actor=r["actor"],
                reason=r["reason"],
                replica=r["replica"],
                before=split_proto(
                    model, _policy(r["old_mode"], r["old_challenger_version"], r["old_percent"]), r["generation"] - 1
                ),
                after=split_proto(
                    model, _policy(r["new_mode"], r["new_challenger_version"], r["new_percent"]), r["generation"]
                ),
            )
            change.time.FromDatetime(r["at"])
            change.after.update_time.FromDatetime(r["at"])
            change.after.updated_by, change.after.reason = r["actor"], r["reason"]
            out.append(change)
        return out

    # -- replicas --------------------------------------------------------------------------------

    async def heartbeat(self, pid: int, started_at: datetime, views: Sequence[tuple[AppliedView, bytes]]) -> None:
        """This replica is alive and applies `views` (with each model's slots, serialised)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO replicas (replica, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, now())"
                " ON CONFLICT (replica) DO UPDATE SET pid = $2, started_at = $3, heartbeat_at = now()",
                self.replica,
                pid,
                started_at,
            )
            await conn.execute(
                "DELETE FROM replica_views WHERE replica = $1 AND NOT (model = ANY($2::text[]))",
                self.replica,
                [v.model for v, _ in views],
            )
            await conn.executemany(
                "INSERT INTO replica_views (replica, model, generation, mode, challenger_version, percent,"
                " production_version, error, slots, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())"
                " ON CONFLICT (replica, model) DO UPDATE SET generation = $3, mode = $4, challenger_version = $5,"
                " percent = $6, production_version = $7, error = $8, slots = $9, updated_at = now()",
                [
                    (
                        self.replica,
                        v.model,
                        v.generation,
                        v.policy.mode,
                        v.policy.challenger_version,
                        v.policy.percent,
                        v.production_version,
                        v.error,
                        slots,
                    )
                    for v, slots in views
                ],
            )
            await conn.execute(f"DELETE FROM replicas WHERE heartbeat_at < now() - interval '{PRUNE_AFTER}'")

    async def leave(self) -> None:
        """At a clean stop: this replica no longer answers (its views go with it)."""
        await self._pool.execute("DELETE FROM replicas WHERE replica = $1", self.replica)

    async def replicas(self, models: Sequence[str]) -> dict[str, list[ReplicaRow]]:
        """For each of `models`, every known replica (oldest heartbeat row first by name) with its view."""
        rows = await self._pool.fetch(
            "SELECT r.replica, r.pid, r.started_at, r.heartbeat_at,"
            " extract(epoch FROM now() - r.heartbeat_at)::float8 AS age_s, m.model, v.generation, v.mode,"
            " v.challenger_version, v.percent, v.production_version, v.error, v.slots, v.updated_at"
            " FROM replicas r CROSS JOIN unnest($1::text[]) AS m(model)"
            " LEFT JOIN replica_views v ON v.replica = r.replica AND v.model = m.model"
            " ORDER BY m.model, r.replica",
            list(models),
        )
        out: dict[str, list[ReplicaRow]] = {m: [] for m in models}
        for r in rows:
            view = None
            if r["generation"] is not None:
                view = AppliedView(
                    model=r["model"],
                    generation=r["generation"],
                    policy=_policy(r["mode"], r["challenger_version"], r["percent"]),
                    production_version=r["production_version"],
                    error=r["error"],
                )
            out[r["model"]].append(
                ReplicaRow(
                    replica=r["replica"],
                    pid=r["pid"],
                    started_at=r["started_at"],
                    heartbeat_at=r["heartbeat_at"],
                    age_s=max(0.0, r["age_s"]),
                    view=view,
                    slots=bytes(r["slots"]) if r["slots"] is not None else b"",
                    view_updated_at=r["updated_at"],
                )
            )
        return out
