"""Server bootstrap: health starts NOT_SERVING and follows readiness; stop drains calls in flight;
message size limits are enforced with RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.auth import roles
from flywheel.config import Settings
from flywheel.grpc import GrpcServer
from flywheel.stack.procs import free_port

from .identity import Issuer, arm, bearer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


IDP = Issuer()
CREDS = bearer(IDP.token("tester", ["viewer"], ttl_s=3600))


@pytest.fixture
def make_server(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A server with authentication on (trusting IDP), serving /t.T/Slow to viewers."""
    monkeypatch.setitem(roles.METHOD_ROLES, "/t.T/Slow", frozenset({roles.VIEWER}))

    def make(**settings: object) -> GrpcServer:
        return _server(IDP.settings(tmp_path / "idp.pem", **settings))

    return make


def _server(settings: Settings) -> GrpcServer:
    server = GrpcServer(settings, free_port())
    arm(server, settings)

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0.5)
        return b"done:" + request[:10]

    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.T", {"Slow": grpc.unary_unary_rpc_method_handler(slow)}),)
    )
    server.add_services(["t.T"])
    return server


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return resp.status


async def test_health_follows_readiness_checks(make_server):
    server = make_server()
    await server.start()
    ready = asyncio.Event()

    async def check() -> bool:
        return ready.is_set()

    watcher = asyncio.create_task(server.watch_readiness([check], interval_s=0.05))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert await _health(channel) == NOT_SERVING
            ready.set()
            await asyncio.sleep(0.2)
            assert await _health(channel) == SERVING and await _health(channel, "t.T") == SERVING
            ready.clear()
            await asyncio.sleep(0.2)
            assert await _health(channel) == NOT_SERVING
    finally:
        watcher.cancel()
        await server.stop()


async def test_a_watcher_hears_serving_after_another_watcher_of_the_same_service_left(make_server):
    """What a balanced client relies on to put a restarted replica back in its round-robin: its health
    watch, opened while the replica was NOT_SERVING, hears SERVING, even though another client's watch
    of the same service ended meanwhile (grpcio's own servicer loses it: flywheel/grpc/health.py)."""
    server = make_server()
    await server.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as staying,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as leaving,
        ):
            watch = health_pb2_grpc.HealthStub(staying).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == NOT_SERVING
            other = health_pb2_grpc.HealthStub(leaving).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await other.read()).status == NOT_SERVING
            other.cancel()
            await asyncio.sleep(0.1)  # the server has seen that watch end
            await server.health.set("", SERVING)
            assert (await asyncio.wait_for(watch.read(), 5)).status == SERVING
            unknown = health_pb2_grpc.HealthStub(staying).Watch(health_pb2.HealthCheckRequest(service="no.Such"))
            assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            unknown.cancel()
            watch.cancel()
    finally:
        await server.stop()


async def test_stop_drains_calls_in_flight(make_server):
    server = make_server(grpc_grace_s=5.0)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = asyncio.ensure_future(channel.unary_unary("/t.T/Slow")(b"inflight", metadata=CREDS))
        await asyncio.sleep(0.1)  # the call is now running on the server
        await server.stop()
        assert await call == b"done:inflight"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as after:
            await channel.unary_unary("/t.T/Slow")(b"late", timeout=2, metadata=CREDS)
        assert after.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_oversized_request_is_resource_exhausted(make_server):
    server = make_server(grpc_max_message_mb=1)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}", options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary("/t.T/Slow")(b"x" * (2 * 1024 * 1024), timeout=5, metadata=CREDS)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await channel.unary_unary("/t.T/Slow")(b"small", timeout=5, metadata=CREDS) == b"done:small"
    finally:
        await server.stop()
