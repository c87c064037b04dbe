"""gRPC surface of the registry: immutable model versions, aliases, tags, lineage, audit, and
policy-driven promotion (staging reports, approval, rejection, rollback).

A thin servicer: each method checks the request's shape, makes one call into the catalog
(versions, artifacts, tags, policies, lineage, audit) or the promoter (aliases and production),
and wraps the answer in its response message. Domain errors become status codes in flywheel.grpc.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any, Protocol, TypeAlias

import grpc

from flywheel.app import ServiceContext
from flywheel.auth import roles
from flywheel.auth.principal import current
from flywheel.errors import InvalidArgument
from flywheel.grpc import GrpcServer, stream_header
from flywheel.grpc.context import actor
from flywheel.paging import decode_token, next_token, page_size
from flywheel.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.registry import rules, token_service
from services.registry.catalog import Catalog
from services.registry.model_check import MAX_NAME_CHARS
from services.registry.promoter import Promoter

R = registry_pb2
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"  # generic in the stubs only
DEFAULT_CHUNK = 1024 * 1024
MIN_CHUNK = 64 * 1024
MAX_REPORT_BYTES = 1024 * 1024  # a staging report, serialized (it is stored and sent on in events)


class _Paged(Protocol):
    @property
    def page_size(self) -> int: ...
    @property
    def page_token(self) -> str: ...


def _page(request: _Paged) -> tuple[int, int]:
    """(limit, offset) of the page a List request asks for."""
    return page_size(request.page_size), decode_token(request.page_token)


class _Acting(Protocol):
    @property
    def actor(self) -> str: ...


def _who(request: _Acting, context: Context, reason: str = "") -> str:
    """Who acts (the caller's identity, or with auth off the request's actor), once the free text the
    request carries into audit rows and events is within bounds."""
    if len(request.actor) > MAX_NAME_CHARS:
        raise InvalidArgument(f"at most {MAX_NAME_CHARS} characters", field="actor")
    rules.check_text(reason, "reason")
    return actor(context, request.actor)


async def _chunks(rest: AsyncIterator[registry_pb2.RegisterModelRequest]) -> AsyncIterator[bytes]:
    """The artifact bytes that follow an upload's header."""
    async for msg in rest:
        if msg.WhichOneof("payload") != "chunk":
            raise InvalidArgument("only chunks may follow the header", field="chunk")
        yield msg.chunk


class RegistryService(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._settings = ctx.settings
        self._catalog = Catalog(ctx.pool, ctx.artifacts, ctx.settings)
        self._promoter = Promoter(ctx.pool)

    # -- registration and reads -------------------------------------------------------------

    async def RegisterModel(
        self, request_iterator: AsyncIterator[registry_pb2.RegisterModelRequest], context: Context
    ) -> registry_pb2.RegisterModelResponse:
        header: registry_pb2.RegisterModelHeader
        header, rest = await stream_header(request_iterator)
        version, created = await self._catalog.register(header, _chunks(rest), actor(context, header.actor))
        return R.RegisterModelResponse(version=version, created=created)

    async def GetModelVersion(
        self, request: registry_pb2.GetModelVersionRequest, context: Context
    ) -> registry_pb2.GetModelVersionResponse:
        version = await self._catalog.version(request.name, request.version, request.alias)
        return R.GetModelVersionResponse(version=version)

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: Context
    ) -> registry_pb2.ListModelsResponse:
        size, offset = _page(request)
        models = await self._catalog.models(request.alias, size, offset)
        return R.ListModelsResponse(models=models, next_page_token=next_token(offset, size, len(models)))

    async def ListModelVersions(
        self, request: registry_pb2.ListModelVersionsRequest, context: Context
    ) -> registry_pb2.ListModelVersionsResponse:
        size, offset = _page(request)
        versions = await self._catalog.versions(request.name, request.include_archived, size, offset)
        return R.ListModelVersionsResponse(versions=versions, next_page_token=next_token(offset, size, len(versions)))

    async def SearchModelVersions(
        self, request: registry_pb2.SearchModelVersionsRequest, context: Context
    ) -> registry_pb2.SearchModelVersionsResponse:
        size, offset = _page(request)
        versions = await self._catalog.search(request, size, offset)
        return R.SearchModelVersionsResponse(versions=versions, next_page_token=next_token(offset, size, len(versions)))

    async def DownloadArtifact(
        self, request: registry_pb2.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[registry_pb2.DownloadArtifactResponse]:
        chunk_size = request.chunk_size or DEFAULT_CHUNK
        limit = self._settings.grpc_max_message_mb * 1024 * 1024 - 1024  # room for the message's other fields
        if not MIN_CHUNK <= chunk_size <= limit:
            # A floor too: one-byte chunks would make a large model millions of messages.
            raise InvalidArgument(f"must be 0 (default) or in [{MIN_CHUNK}, {limit}]", field="chunk_size")
        async for piece in self._catalog.download(request.name, request.version, request.alias, chunk_size):
            resp = R.DownloadArtifactResponse(chunk=piece.data, offset=piece.offset)
            if piece.first:
                resp.sha256 = piece.version.checksum
                resp.size_bytes = piece.version.size_bytes
                resp.model.CopyFrom(piece.version.ref)
            yield resp

    # -- aliases, tags, archive -------------------------------------------------------------

    async def SetAlias(self, request: registry_pb2.SetAliasRequest, context: Context) -> registry_pb2.SetAliasResponse:
        alias, previous = await self._promoter.set_alias(
            request.name, request.alias, request.version, request.reason, _who(request, context, request.reason)
        )
        return R.SetAliasResponse(alias=alias, previous_version=previous)

    async def DeleteAlias(
        self, request: registry_pb2.DeleteAliasRequest, context: Context
    ) -> registry_pb2.DeleteAliasResponse:
        who = _who(request, context, request.reason)
        await self._promoter.delete_alias(request.name, request.alias, request.reason, who)
        return R.DeleteAliasResponse()

    async def GetAlias(self, request: registry_pb2.GetAliasRequest, context: Context) -> registry_pb2.GetAliasResponse:
        return R.GetAliasResponse(alias=await self._promoter.alias(request.name, request.alias))

    async def SetTags(self, request: registry_pb2.SetTagsRequest, context: Context) -> registry_pb2.SetTagsResponse:
        who = _who(request, context)
        if len(request.remove_keys) > rules.MAX_TAGS or any(
            len(k) > rules.MAX_TAG_KEY_CHARS for k in request.remove_keys
        ):
            raise InvalidArgument(
                f"at most {rules.MAX_TAGS} keys of at most {rules.MAX_TAG_KEY_CHARS} characters", field="remove_keys"
            )
        version = await self._catalog.set_tags(
            request.name, request.version, request.tags, list(request.remove_keys), who
        )
        return R.SetTagsResponse(version=version)

    async def ArchiveVersion(
        self, request: registry_pb2.ArchiveVersionRequest, context: Context
    ) -> registry_pb2.ArchiveVersionResponse:
        version = await self._catalog.archive(
            request.name, request.version, request.reason, _who(request, context, request.reason)
        )
        return R.ArchiveVersionResponse(version=version)

    # -- lineage, audit, policies -----------------------------------------------------------

    async def GetLineage(
        self, request: registry_pb2.GetLineageRequest, context: Context
    ) -> registry_pb2.GetLineageResponse:
        version, ancestry = await self._catalog.lineage(request.name, request.version)
        return R.GetLineageResponse(version=version, lineage=version.lineage, dataset_ancestry=ancestry)

    async def ListAuditEvents(
        self, request: registry_pb2.ListAuditEventsRequest, context: Context
    ) -> registry_pb2.ListAuditEventsResponse:
        size, offset = _page(request)
        events = await self._catalog.audit_events(
            name=request.name,
            version=request.version,
            action=request.action,
            since=request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None,
            limit=size,
            offset=offset,
        )
        return R.ListAuditEventsResponse(events=events, next_page_token=next_token(offset, size, len(events)))

    async def SetPromotionPolicy(
        self, request: registry_pb2.SetPromotionPolicyRequest, context: Context
    ) -> registry_pb2.SetPromotionPolicyResponse:
        policy = await self._catalog.set_policy(request.model_name, request.policy, _who(request, context))
        return R.SetPromotionPolicyResponse(policy=policy)

    async def GetPromotionPolicy(
        self, request: registry_pb2.GetPromotionPolicyRequest, context: Context
    ) -> registry_pb2.GetPromotionPolicyResponse:
        return R.GetPromotionPolicyResponse(policy=await self._catalog.policy(request.model_name))

    # -- promotion --------------------------------------------------------------------------

    async def ReportStagingChecks(
        self, request: registry_pb2.ReportStagingChecksRequest, context: Context
    ) -> registry_pb2.ReportStagingChecksResponse:
        if request.report.ByteSize() > MAX_REPORT_BYTES:
            raise InvalidArgument(f"at most {MAX_REPORT_BYTES} bytes serialized", field="report")
        if len(request.causation_id) > MAX_NAME_CHARS:
            raise InvalidArgument(f"at most {MAX_NAME_CHARS} characters", field="causation_id")
        version, decision = await self._promoter.report_staging(
            request.model.name, request.model.version, request.report, request.causation_id
        )
        return R.ReportStagingChecksResponse(version=version, decision=decision)

    async def ApproveVersion(
        self, request: registry_pb2.ApproveVersionRequest, context: Context
    ) -> registry_pb2.ApproveVersionResponse:
        version, decision = await self._promoter.approve(
            request.name, request.version, request.reason, _who(request, context, request.reason)
        )
        return R.ApproveVersionResponse(version=version, decision=decision)

    async def RejectVersion(
        self, request: registry_pb2.RejectVersionRequest, context: Context
    ) -> registry_pb2.RejectVersionResponse:
        version, decision = await self._promoter.reject(
            request.name, request.version, request.reason, _who(request, context, request.reason)
        )
        return R.RejectVersionResponse(version=version, decision=decision)

    async def Rollback(self, request: registry_pb2.RollbackRequest, context: Context) -> registry_pb2.RollbackResponse:
        who = _who(request, context, request.reason)
        caller = current().roles
        if roles.SERVICE_MONITORING in caller and not caller & {roles.DEPLOYER, roles.ADMIN}:
            # Monitoring may roll back only as the post-promotion guard: the version it watched, by name.
            if not request.from_version:
                raise InvalidArgument("the guard rolls back only the version it watched", field="from_version")
            who = rules.GUARD_ACTOR
        production, previous = await self._promoter.rollback(
            request.name, request.to_version, request.reason, who, request.from_version
        )
        return R.RollbackResponse(
            production=common_pb2.ModelRef(name=request.name, version=production), previous_version=previous
        )


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    server.add_servicer(registry_pb2_grpc.add_RegistryServiceServicer_to_server, RegistryService(ctx))
    return [
        registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
        *token_service.register(server, ctx.pool),
    ]
