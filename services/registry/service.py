"""gRPC surface of the registry: immutable model versions, aliases, tags, lineage, audit.

Promotion decisions (ReportStagingChecks, Approve/Reject, Rollback) arrive with the deploy
pipeline and answer UNIMPLEMENTED until then (the generated base class).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC

import asyncpg
import grpc

from flywheel.app import ServiceContext
from flywheel.bus import Topics, enqueue
from flywheel.bus.serde import new_meta
from flywheel.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel.grpc import GrpcServer, channel_options, stream_header
from flywheel.grpc.context import actor
from flywheel.logging import get_logger
from flywheel.paging import decode_token, next_token, page_size
from flywheel.pbutil import timestamp
from flywheel.v1 import (
    common_pb2,
    events_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)
from services.registry import promotion, rules, store

log = get_logger(__name__)
A = registry_pb2  # audit actions are enum values of this module
DEFAULT_CHUNK = 1024 * 1024
COMPARISONS = {A.COMPARISON_GT: ">", A.COMPARISON_GTE: ">=", A.COMPARISON_LT: "<", A.COMPARISON_LTE: "<=",
               A.COMPARISON_EQ: "="}  # fmt: skip


class RegistryService(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._pool = ctx.pool

    # -- registration ---------------------------------------------------------------------

    async def RegisterModel(
        self,
        request_iterator: AsyncIterator[registry_pb2.RegisterModelRequest],
        context: grpc.aio.ServicerContext,
    ) -> registry_pb2.RegisterModelResponse:
        header, it = await stream_header(request_iterator)
        name = rules.check_name(header.model_name, "header.model_name")
        fmt = rules.check_format(header.format)
        rules.check_signature(header.signature)
        who = actor(context, header.actor)

        if header.idempotency_key:
            async with self._pool.acquire() as conn:
                existing = await conn.fetchval(
                    "SELECT version FROM model_versions WHERE name = $1 AND idempotency_key = $2",
                    name,
                    header.idempotency_key,
                )
                if existing is not None:  # a retried registration: same answer, nothing new
                    return registry_pb2.RegisterModelResponse(
                        version=await store.get_version(conn, name, existing), created=False
                    )

        sha, size = await self._store_artifact(header, it)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO models (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
            model = await store.ensure_model(conn, name, lock=True)
            if header.idempotency_key:  # re-check under the model lock: a concurrent retry may have won
                existing = await conn.fetchval(
                    "SELECT version FROM model_versions WHERE name = $1 AND idempotency_key = $2",
                    name,
                    header.idempotency_key,
                )
                if existing is not None:
                    return registry_pb2.RegisterModelResponse(
                        version=await store.get_version(conn, name, existing), created=False
                    )
            version = int(
                await conn.fetchval("SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE name = $1", name)
            )
            if header.HasField("promotion_policy") and model["policy"] is None:
                await conn.execute(
                    "UPDATE models SET policy = $2 WHERE name = $1",
                    name,
                    header.promotion_policy.SerializeToString(),
                )
            metrics_holder = registry_pb2.ModelVersion(metrics=header.metrics)
            pending = registry_pb2.PromotionDecision(
                state=A.PROMOTION_STATE_PENDING_CHECKS, reason="waiting for serving's staging checks", actor="registry"
            )
            pending.time.GetCurrentTime()
            await conn.execute(
                "INSERT INTO model_versions (name, version, description, task, checksum, size_bytes, format,"
                " signature, metrics, metric_values, params, lineage, dataset_name, dataset_version, run_id, tags,"
                " idempotency_key, created_by, promotion)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::jsonb,$11::jsonb,$12,$13,$14,$15,$16::jsonb,$17,$18,$19)",
                name,
                version,
                header.description,
                header.task,
                sha,
                size,
                fmt,
                header.signature.SerializeToString(),
                metrics_holder.SerializeToString(),
                json.dumps(rules.metric_values(header.metrics)),
                store.params_json(header),
                header.lineage.SerializeToString(),
                header.lineage.dataset.name,
                header.lineage.dataset.version,
                header.lineage.run_id,
                json.dumps(dict(header.tags)),
                header.idempotency_key or None,
                who,
                pending.SerializeToString(),
            )
            await store.audit(
                conn,
                actor=who,
                action=A.AUDIT_ACTION_REGISTERED,
                name=name,
                version=version,
                details={"checksum": sha, "run_id": header.lineage.run_id},
            )
            event = events_pb2.ModelRegistered(
                meta=new_meta("registry", causation_id=header.lineage.run_id),
                model=common_pb2.ModelRef(name=name, version=version),
                checksum=sha,
                artifact_uri=f"sha256:{sha}",
                signature=header.signature,
                metrics=header.metrics,
                lineage=header.lineage,
                tags=dict(header.tags),
                task=header.task,
                size_bytes=size,
            )
            await enqueue(conn, Topics.MODEL_REGISTERED, name, event)
            mv = await store.get_version(conn, name, version)
        log.info("model registered", model=name, version=version, checksum=sha)
        return registry_pb2.RegisterModelResponse(version=mv, created=True)

    async def _store_artifact(
        self, header: registry_pb2.RegisterModelHeader, rest: AsyncIterator[registry_pb2.RegisterModelRequest]
    ) -> tuple[str, int]:
        artifacts = self._ctx.artifacts
        if header.artifact_uri:
            sha = header.artifact_uri.removeprefix("sha256:")
            if not await artifacts.exists(sha):
                raise NotFound(f"no artifact at {header.artifact_uri}", field="header.artifact_uri")
            if header.sha256 and header.sha256 != sha:
                raise InvalidArgument("does not match artifact_uri", field="header.sha256")
            size = sum([len(c) async for c in artifacts.get(sha)])  # verifies the stored bytes too
            return sha, size

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in rest:
                if msg.WhichOneof("payload") != "chunk":
                    raise InvalidArgument("only chunks may follow the header", field="chunk")
                yield msg.chunk

        sha, size = await artifacts.put(chunks(), expected_sha256=header.sha256 or None)
        if size == 0:
            raise InvalidArgument("no artifact bytes and no artifact_uri", field="chunk")
        return sha, size

    # -- reads ----------------------------------------------------------------------------

    async def GetModelVersion(self, request, context):  # type: ignore[no-untyped-def]
        async with self._pool.acquire() as conn:
            await store.ensure_model(conn, request.name)
            v = await store.resolve(conn, request.name, request.version, request.alias)
            return registry_pb2.GetModelVersionResponse(version=await store.get_version(conn, request.name, v))

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT m.name, m.policy, m.created_at FROM models m"
                " WHERE $1 = '' OR EXISTS (SELECT 1 FROM aliases a WHERE a.name = m.name AND a.alias = $1)"
                " ORDER BY m.name LIMIT $2 OFFSET $3",
                request.alias,
                size,
                offset,
            )
            models = []
            for r in rows:
                aliases = {
                    a["alias"]: a["version"]
                    for a in await conn.fetch("SELECT alias, version FROM aliases WHERE name = $1", r["name"])
                }
                latest = await conn.fetchval("SELECT max(version) FROM model_versions WHERE name = $1", r["name"])
                models.append(store.to_model(r, aliases, latest or 0))
        return registry_pb2.ListModelsResponse(models=models, next_page_token=next_token(offset, size, len(rows)))

    async def ListModelVersions(self, request, context):  # type: ignore[no-untyped-def]
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        async with self._pool.acquire() as conn:
            await store.ensure_model(conn, request.name)
            rows = await conn.fetch(
                f"SELECT {store.VERSION_COLUMNS} FROM model_versions v WHERE v.name = $1 AND ($2 OR NOT v.archived)"
                " ORDER BY v.version DESC LIMIT $3 OFFSET $4",
                request.name,
                request.include_archived,
                size,
                offset,
            )
        return registry_pb2.ListModelVersionsResponse(
            versions=[store.to_version(r) for r in rows], next_page_token=next_token(offset, size, len(rows))
        )

    async def SearchModelVersions(self, request, context):  # type: ignore[no-untyped-def]
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        where, args = ["($1 OR NOT v.archived)"], [request.include_archived]

        def arg(value: object) -> str:
            args.append(value)
            return f"${len(args)}"

        if request.name:
            where.append(f"v.name = {arg(request.name)}")
        for key, value in request.tags.items():
            where.append(f"v.tags ->> {arg(key)} = {arg(value)}")
        for i, f in enumerate(request.metric_filters):
            op = COMPARISONS.get(f.op)
            if op is None or not f.metric:
                raise InvalidArgument("needs a metric and a comparison", field=f"metric_filters[{i}]")
            where.append(f"(v.metric_values ->> {arg(f.metric)})::float8 {op} {arg(f.value)}")
        if request.dataset_name:
            where.append(f"v.dataset_name = {arg(request.dataset_name)}")
        if request.dataset_version:
            where.append(f"v.dataset_version = {arg(request.dataset_version)}")
        if request.HasField("created_after"):
            where.append(f"v.created_at > {arg(request.created_after.ToDatetime(tzinfo=UTC))}")
        if request.HasField("created_before"):
            where.append(f"v.created_at < {arg(request.created_before.ToDatetime(tzinfo=UTC))}")
        order = "v.created_at DESC, v.name, v.version DESC"
        if request.order_by_metric:
            direction = "ASC" if request.ascending else "DESC"
            order = f"(v.metric_values ->> {arg(request.order_by_metric)})::float8 {direction} NULLS LAST, " + order
        sql = (
            f"SELECT {store.VERSION_COLUMNS} FROM model_versions v WHERE {' AND '.join(where)}"
            f" ORDER BY {order} LIMIT {arg(size)} OFFSET {arg(offset)}"
        )
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        return registry_pb2.SearchModelVersionsResponse(
            versions=[store.to_version(r) for r in rows], next_page_token=next_token(offset, size, len(rows))
        )

    async def DownloadArtifact(self, request, context):  # type: ignore[no-untyped-def]
        chunk_size = request.chunk_size or DEFAULT_CHUNK
        limit = self._ctx.settings.grpc_max_message_mb * 1024 * 1024 - 1024
        if chunk_size < 0 or chunk_size > limit:
            raise InvalidArgument(f"must be in [1, {limit}]", field="chunk_size")
        async with self._pool.acquire() as conn:
            await store.ensure_model(conn, request.name)
            v = await store.resolve(conn, request.name, request.version, request.alias)
            mv = await store.get_version(conn, request.name, v)
        offset = 0
        buffer = b""
        first = True
        async for piece in self._ctx.artifacts.get(mv.checksum):
            buffer += piece
            while len(buffer) >= chunk_size:
                out, buffer = buffer[:chunk_size], buffer[chunk_size:]
                yield self._chunk(mv, out, offset, first)
                offset += len(out)
                first = False
        if buffer or first:
            yield self._chunk(mv, buffer, offset, first)

    @staticmethod
    def _chunk(
        mv: registry_pb2.ModelVersion, data: bytes, offset: int, first: bool
    ) -> registry_pb2.DownloadArtifactResponse:
        resp = registry_pb2.DownloadArtifactResponse(chunk=data, offset=offset)
        if first:
            resp.sha256 = mv.checksum
            resp.size_bytes = mv.size_bytes
            resp.model.CopyFrom(mv.ref)
        return resp

    # -- aliases, tags, archive -----------------------------------------------------------

    async def SetAlias(self, request, context):  # type: ignore[no-untyped-def]
        alias = rules.check_alias(request.alias)
        who = actor(context, request.actor)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.ensure_model(conn, request.name, lock=True)
            mv = await store.get_version(conn, request.name, request.version)
            if mv.archived:
                raise InvalidArgument(f"version {request.version} is archived", field="version")
            previous = await store.alias_version(conn, request.name, alias)
            row = await conn.fetchrow(
                "INSERT INTO aliases (name, alias, version, updated_by) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (name, alias) DO UPDATE SET version = $3, updated_by = $4, updated_at = now()"
                " RETURNING updated_at",
                request.name,
                alias,
                request.version,
                who,
            )
            await store.audit(
                conn,
                actor=who,
                action=A.AUDIT_ACTION_ALIAS_SET,
                name=request.name,
                version=request.version,
                alias=alias,
                from_version=previous or 0,
                to_version=request.version,
                reason=request.reason,
            )
            if alias == rules.PRODUCTION and previous != request.version:
                await _emit_promoted(conn, mv, previous or 0, who, request.reason or "alias moved by hand")
        return registry_pb2.SetAliasResponse(
            alias=registry_pb2.Alias(
                model_name=request.name,
                alias=alias,
                version=request.version,
                update_time=timestamp(row["updated_at"]),
                updated_by=who,
            ),
            previous_version=previous or 0,
        )

    async def DeleteAlias(self, request, context):  # type: ignore[no-untyped-def]
        who = actor(context, request.actor)
        async with self._pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(
                "DELETE FROM aliases WHERE name = $1 AND alias = $2 RETURNING version",
                request.name,
                request.alias,
            )
            if version is None:
                await store.ensure_model(conn, request.name)
                raise NotFound(f"model {request.name!r} has no alias {request.alias!r}", field="alias")
            await store.audit(
                conn,
                actor=who,
                action=A.AUDIT_ACTION_ALIAS_DELETED,
                name=request.name,
                version=version,
                alias=request.alias,
                from_version=version,
                reason=request.reason,
            )
        return registry_pb2.DeleteAliasResponse()

    async def GetAlias(self, request, context):  # type: ignore[no-untyped-def]
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT version, updated_at, updated_by FROM aliases WHERE name = $1 AND alias = $2",
                request.name,
                request.alias,
            )
            if row is None:
                await store.ensure_model(conn, request.name)
                raise NotFound(f"model {request.name!r} has no alias {request.alias!r}", field="alias")
        return registry_pb2.GetAliasResponse(
            alias=registry_pb2.Alias(
                model_name=request.name,
                alias=request.alias,
                version=row["version"],
                update_time=timestamp(row["updated_at"]),
                updated_by=row["updated_by"],
            )
        )

    async def SetTags(self, request, context):  # type: ignore[no-untyped-def]
        who = actor(context, request.actor)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.get_version(conn, request.name, request.version)
            await conn.execute(
                "UPDATE model_versions SET tags = (tags - $3::text[]) || $4::jsonb WHERE name = $1 AND version = $2",
                request.name,
                request.version,
                list(request.remove_keys),
                json.dumps(dict(request.tags)),
            )
            await store.audit(
                conn,
                actor=who,
                action=A.AUDIT_ACTION_TAGS_SET,
                name=request.name,
                version=request.version,
                details={"set": dict(request.tags), "removed": list(request.remove_keys)},
            )
            return registry_pb2.SetTagsResponse(version=await store.get_version(conn, request.name, request.version))

    async def ArchiveVersion(self, request, context):  # type: ignore[no-untyped-def]
        if not request.reason:
            raise InvalidArgument("archiving needs a reason", field="reason")
        who = actor(context, request.actor)
        async with self._pool.acquire() as conn, conn.transaction():
            mv = await store.get_version(conn, request.name, request.version)
            rules.check_archivable(list(mv.aliases))
            await conn.execute(
                "UPDATE model_versions SET archived = true, archive_reason = $3 WHERE name = $1 AND version = $2",
                request.name,
                request.version,
                request.reason,
            )
            await store.audit(
                conn,
                actor=who,
                action=A.AUDIT_ACTION_ARCHIVED,
                name=request.name,
                version=request.version,
                reason=request.reason,
            )
            return registry_pb2.ArchiveVersionResponse(
                version=await store.get_version(conn, request.name, request.version)
            )

    # -- lineage, audit, policies -----------------------------------------------------------

    async def GetLineage(self, request, context):  # type: ignore[no-untyped-def]
        async with self._pool.acquire() as conn:
            await store.ensure_model(conn, request.name)
            v = await store.resolve(conn, request.name, request.version)
            mv = await store.get_version(conn, request.name, v)
        lineage = mv.lineage
        ancestry = await self._dataset_ancestry(lineage)
        return registry_pb2.GetLineageResponse(version=mv, lineage=lineage, dataset_ancestry=ancestry)

    async def _dataset_ancestry(self, lineage: common_pb2.Lineage) -> list[common_pb2.DatasetRef]:
        """The training dataset version and its parents, nearest first, asked of ingestion."""
        if not lineage.dataset.name:
            return []
        settings = self._ctx.settings
        refs: list[common_pb2.DatasetRef] = []
        async with grpc.aio.insecure_channel(
            settings.addr_for("ingestion"), options=channel_options(settings)
        ) as channel:
            stub = ingestion_pb2_grpc.IngestionServiceStub(channel)
            version = lineage.dataset.version
            while version:
                try:
                    resp = await stub.GetDatasetVersion(
                        ingestion_pb2.GetDatasetVersionRequest(dataset=lineage.dataset.name, version=version),
                        timeout=5,
                    )
                except grpc.aio.AioRpcError as exc:
                    # Ingestion away: fall back to what training recorded at registration.
                    log.warning("lineage: ingestion unavailable", error=exc.details())
                    return [lineage.dataset] + [
                        common_pb2.DatasetRef(name=lineage.dataset.name, version=p)
                        for p in lineage.parent_dataset_versions
                    ]
                refs.append(resp.version.ref)
                version = resp.version.parent_version
        return refs

    async def ListAuditEvents(self, request, context):  # type: ignore[no-untyped-def]
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM audit_events WHERE ($1 = '' OR name = $1) AND ($2 = 0 OR version = $2)"
                " AND ($3 = 0 OR action = $3) AND ($4::timestamptz IS NULL OR at >= $4)"
                " ORDER BY id LIMIT $5 OFFSET $6",
                request.name,
                request.version,
                request.action,
                since,
                size,
                offset,
            )
        return registry_pb2.ListAuditEventsResponse(
            events=[store.to_audit(r) for r in rows], next_page_token=next_token(offset, size, len(rows))
        )

    async def SetPromotionPolicy(self, request, context):  # type: ignore[no-untyped-def]
        name = rules.check_name(request.model_name, "model_name")
        policy = request.policy
        if not policy.metric:
            raise InvalidArgument("a policy needs a metric", field="policy.metric")
        if policy.min_improvement < 0:
            raise InvalidArgument("must be >= 0", field="policy.min_improvement")
        who = actor(context, request.actor)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO models (name, policy) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET policy = $2",
                name,
                policy.SerializeToString(),
            )
            await store.audit(
                conn,
                actor=who,
                action=A.AUDIT_ACTION_POLICY_SET,
                name=name,
                details={"metric": policy.metric, "min_improvement": policy.min_improvement},
            )
        return registry_pb2.SetPromotionPolicyResponse(policy=policy)

    async def GetPromotionPolicy(self, request, context):  # type: ignore[no-untyped-def]
        async with self._pool.acquire() as conn:
            row = await store.ensure_model(conn, request.model_name)
        if row["policy"] is None:
            raise NotFound(f"model {request.model_name!r} has no promotion policy", field="model_name")
        return registry_pb2.GetPromotionPolicyResponse(policy=common_pb2.PromotionPolicy.FromString(row["policy"]))

    # -- promotion ----------------------------------------------------------------------------

    async def ReportStagingChecks(self, request, context):  # type: ignore[no-untyped-def]
        name, version = request.model.name, request.model.version
        async with self._pool.acquire() as conn, conn.transaction():
            model = await store.ensure_model(conn, name, lock=True)
            mv = await store.get_version(conn, name, version)
            if mv.HasField("staging") and mv.promotion.state != A.PROMOTION_STATE_PENDING_CHECKS:
                # A repeated report (a redelivered model.registered): the first decision stands.
                return registry_pb2.ReportStagingChecksResponse(version=mv, decision=mv.promotion)
            report = request.report
            await conn.execute(
                "UPDATE model_versions SET staging = $3 WHERE name = $1 AND version = $2",
                name,
                version,
                report.SerializeToString(),
            )
            await store.audit(
                conn,
                actor=report.reporter or "serving",
                action=A.AUDIT_ACTION_CHECKS_REPORTED,
                name=name,
                version=version,
                reason="passed" if report.passed else "failed",
                causation_id=request.causation_id,
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
                policy, report, list(mv.metrics), champion_version or 0, list(champion.metrics) if champion else []
            )
            result = await _apply_decision(
                conn, mv, decision.state, decision.reason, "registry", champion_version or 0, request.causation_id
            )
            return registry_pb2.ReportStagingChecksResponse(
                version=await store.get_version(conn, name, version), decision=result
            )

    async def ApproveVersion(self, request, context):  # type: ignore[no-untyped-def]
        who = actor(context, request.actor)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.ensure_model(conn, request.name, lock=True)
            mv = await store.get_version(conn, request.name, request.version)
            if mv.promotion.state != A.PROMOTION_STATE_PENDING_APPROVAL:
                state = A.PromotionState.Name(mv.promotion.state)
                raise FailedPrecondition(
                    f"version {request.version} is {state}, not awaiting approval", field="version"
                )
            await store.audit(
                conn, actor=who, action=A.AUDIT_ACTION_APPROVED, name=request.name, version=request.version,
                reason=request.reason,
            )  # fmt: skip
            previous = await store.alias_version(conn, request.name, rules.PRODUCTION)
            reason = f"approved by {who}" + (f": {request.reason}" if request.reason else "")
            decision = await _apply_decision(conn, mv, A.PROMOTION_STATE_PROMOTED, reason, who, previous or 0, "")
            return registry_pb2.ApproveVersionResponse(
                version=await store.get_version(conn, request.name, request.version), decision=decision
            )

    async def RejectVersion(self, request, context):  # type: ignore[no-untyped-def]
        if not request.reason:
            raise InvalidArgument("rejecting needs a reason", field="reason")
        who = actor(context, request.actor)
        async with self._pool.acquire() as conn, conn.transaction():
            mv = await store.get_version(conn, request.name, request.version)
            if mv.promotion.state == A.PROMOTION_STATE_PROMOTED:
                raise FailedPrecondition("the version was already promoted; use Rollback", field="version")
            decision = await _apply_decision(conn, mv, A.PROMOTION_STATE_REJECTED, request.reason, who, 0, "")
            return registry_pb2.RejectVersionResponse(
                version=await store.get_version(conn, request.name, request.version), decision=decision
            )

    async def Rollback(self, request, context):  # type: ignore[no-untyped-def]
        who = actor(context, request.actor)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.ensure_model(conn, request.name, lock=True)
            current = await store.alias_version(conn, request.name, rules.PRODUCTION)
            if current is None:
                raise FailedPrecondition(f"model {request.name!r} has nothing in production", field="name")
            target = request.to_version or await conn.fetchval(
                "SELECT from_version FROM audit_events WHERE name = $1 AND alias = $2 AND to_version = $3"
                " AND from_version <> 0 AND from_version <> $3 ORDER BY id DESC LIMIT 1",
                request.name,
                rules.PRODUCTION,
                current,
            )
            if not target:
                raise FailedPrecondition("no earlier production version to roll back to", field="to_version")
            mv = await store.get_version(conn, request.name, target)
            if mv.archived:
                raise FailedPrecondition(f"version {target} is archived", field="to_version")
            reason = request.reason or f"rollback from v{current}"
            await _move_production(conn, mv, current, who, reason, A.AUDIT_ACTION_ROLLED_BACK, "", rollback=True)
        return registry_pb2.RollbackResponse(
            production=common_pb2.ModelRef(name=request.name, version=target), previous_version=current
        )


async def _apply_decision(
    conn: asyncpg.Connection,
    mv: registry_pb2.ModelVersion,
    state: int,
    reason: str,
    who: str,
    champion_version: int,
    causation_id: str,
) -> registry_pb2.PromotionDecision:
    """Record the decision on the version, audit it, and move production when it says so."""
    decision = registry_pb2.PromotionDecision(state=state, reason=reason, actor=who)
    decision.time.GetCurrentTime()
    name, version = mv.ref.name, mv.ref.version
    await conn.execute(
        "UPDATE model_versions SET promotion = $3 WHERE name = $1 AND version = $2",
        name,
        version,
        decision.SerializeToString(),
    )
    if state == A.PROMOTION_STATE_PROMOTED:
        await _move_production(conn, mv, champion_version, who, reason, A.AUDIT_ACTION_PROMOTED, causation_id)
    else:
        action = A.AUDIT_ACTION_REJECTED if state == A.PROMOTION_STATE_REJECTED else A.AUDIT_ACTION_NOT_PROMOTED
        if state == A.PROMOTION_STATE_PENDING_APPROVAL:
            action = A.AUDIT_ACTION_CHECKS_REPORTED
        await store.audit(
            conn, actor=who, action=action, name=name, version=version, reason=reason, causation_id=causation_id,
            details={"state": A.PromotionState.Name(state)},
        )  # fmt: skip
    log.info("promotion decision", model=name, version=version, state=A.PromotionState.Name(state), reason=reason)
    return decision


async def _move_production(
    conn: asyncpg.Connection,
    mv: registry_pb2.ModelVersion,
    previous: int,
    who: str,
    reason: str,
    action: int,
    causation_id: str,
    *,
    rollback: bool = False,
) -> None:
    await conn.execute(
        "INSERT INTO aliases (name, alias, version, updated_by) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (name, alias) DO UPDATE SET version = $3, updated_by = $4, updated_at = now()",
        mv.ref.name,
        rules.PRODUCTION,
        mv.ref.version,
        who,
    )
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


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryService(ctx), server)
    return [registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name]
