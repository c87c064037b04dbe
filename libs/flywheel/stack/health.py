"""Health probes the stack and `flywheel status` use: gRPC health, PostgreSQL, broker metadata."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
from aiokafka.admin import AIOKafkaAdminClient
from grpc_health.v1 import health_pb2

from flywheel.auth.credentials import ClientCredentials
from flywheel.config import Settings
from flywheel.grpc.channels import aio_channel_to


async def grpc_serving(
    address: str, settings: Settings, creds: ClientCredentials | None = None, timeout_s: float = 2.0
) -> bool:
    """SERVING on grpc.health.v1? Health needs no token, but over TLS the probe needs the CA (and,
    with mTLS, a client certificate): `creds` carries those files, plaintext when None."""
    async with aio_channel_to(address, settings, creds or ClientCredentials()) as channel:
        try:
            # Called by method path: the published stubs for grpc_health leave HealthStub.Check untyped.
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            resp = await check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING


async def postgres_ok(dsn: str, timeout_s: float = 2.0) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    try:
        return await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def broker_ok(bootstrap: str, timeout_s: float = 3.0) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.list_topics(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        await admin.close()
