"""gRPC surface of API tokens (TokenService), hosted by the registry: a thin servicer over
flywheel.auth.tokens, which owns the table every service validates against."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import grpc

from flywheel.auth import current, tokens
from flywheel.errors import InvalidArgument
from flywheel.grpc import GrpcServer
from flywheel.v1 import auth_pb2, auth_pb2_grpc

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
MAX_TTL = timedelta(days=3650)


class TokenService(auth_pb2_grpc.TokenServiceServicer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def CreateToken(self, request: auth_pb2.CreateTokenRequest, context: Context) -> auth_pb2.CreateTokenResponse:
        if not 0 <= request.ttl_seconds <= MAX_TTL.total_seconds():
            raise InvalidArgument(
                f"must be in [0, {int(MAX_TTL.total_seconds())}] (0: never expires)", field="ttl_seconds"
            )
        expires = datetime.now(UTC) + timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None
        async with self._pool.acquire() as conn:
            info, secret = await tokens.mint(conn, request.name, request.role, current().name, expires)
        return auth_pb2.CreateTokenResponse(token=tokens.to_proto(info), secret=secret)

    async def ListTokens(self, request: auth_pb2.ListTokensRequest, context: Context) -> auth_pb2.ListTokensResponse:
        async with self._pool.acquire() as conn:
            found = await tokens.list_tokens(conn, include_revoked=request.include_revoked)
        return auth_pb2.ListTokensResponse(tokens=[tokens.to_proto(t) for t in found])

    async def RevokeToken(self, request: auth_pb2.RevokeTokenRequest, context: Context) -> auth_pb2.RevokeTokenResponse:
        if not request.name:
            raise InvalidArgument("name a token id or a token name", field="name")
        async with self._pool.acquire() as conn:
            revoked = await tokens.revoke(conn, request.name, current().name)
        return auth_pb2.RevokeTokenResponse(revoked=[tokens.to_proto(t) for t in revoked])

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Context) -> auth_pb2.WhoAmIResponse:
        me = current()
        return auth_pb2.WhoAmIResponse(name=me.name, roles=sorted(me.roles), kind=me.kind)


def register(server: GrpcServer, pool: asyncpg.Pool) -> list[str]:
    server.add_servicer(auth_pb2_grpc.add_TokenServiceServicer_to_server, TokenService(pool))
    return [auth_pb2.DESCRIPTOR.services_by_name["TokenService"].full_name]
