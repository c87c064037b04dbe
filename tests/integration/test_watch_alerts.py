"""WatchAlerts: an open stream gets an alert as soon as it commits (LISTEN/NOTIFY, not a poll), all
streams of a process share one listening connection, and a lost listener connection comes back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
import pytest

from flywheel import db
from flywheel.app import ServiceContext
from flywheel.artifacts import LocalArtifactStore
from flywheel.auth import Authenticator
from flywheel.auth.credentials import client_credentials
from flywheel.bus import EventProducer
from flywheel.grpc import GrpcServer
from flywheel.grpc.channels import aio_channel_to
from flywheel.v1 import common_pb2, monitoring_pb2, monitoring_pb2_grpc
from services.monitoring import policy as policies
from services.monitoring.alerts import raise_alerts
from services.monitoring.definition import DEFINITION
from services.monitoring.watch import FALLBACK_POLL_S

from .harness import await_for

M = monitoring_pb2
K = common_pb2
PROMPT_S = 1.0  # well under FALLBACK_POLL_S: only a notification delivers this fast


@dataclass
class Monitoring:
    schema: str
    dsn: str
    pool: asyncpg.Pool
    stub: Any

    def watch(self, model: str = "", kinds: tuple[int, ...] = ()) -> Any:
        return self.stub.WatchAlerts(M.WatchAlertsRequest(model_name=model, kinds=list(kinds)))

    async def raise_alert(self, model: str, kind: int = K.DRIFT_KIND_DATA_DRIFT) -> str:
        """Raise one alert through monitoring's own code, committed from another connection (as the
        event consumer would)."""
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": f"{self.schema},public"})
        try:
            async with conn.transaction():
                report = M.WindowReport(
                    window_id=f"w-{uuid.uuid4().hex[:12]}", model=K.ModelRef(name=model, version=1), rows=100
                )
                score = K.FeatureScore(feature="f0", statistic="psi", score=0.9, threshold=0.2, breached=True)
                policy = policies.effective(None, model)
                policy.cooldown.FromSeconds(0)
                (alert,) = await raise_alerts(conn, report, policy, {kind}, {kind}, {kind: [score]})
        finally:
            await conn.close()
        return str(alert.alert_id)

    def in_use(self) -> int:
        return self.pool.get_size() - self.pool.get_idle_size()


@asynccontextmanager
async def monitoring(infra: Any, unique: str, tmp_path: Path) -> AsyncIterator[Monitoring]:
    """Monitoring's gRPC surface in this process, on its own schema (no consumers, no ticker)."""
    schema = f"monitoring_{unique}"
    settings = infra.settings(grpc_grace_s=1.0)
    pool = await db.connect(infra.dsn, schema)
    await db.migrate(pool, schema, [db.LIBRARY_MIGRATIONS, DEFINITION.migrations])
    # The servicer never publishes (the outbox relay does), so it needs no producer here.
    ctx = ServiceContext(schema, settings, pool, cast(EventProducer, None), LocalArtifactStore(tmp_path / "a"))
    server = GrpcServer(settings, 0)
    server.guard.authenticator = Authenticator(settings, pool)  # as flywheel.app arms it
    server.add_services(DEFINITION.register(server, ctx))
    await server.start()
    # The session's admin token on every call, the way services and the CLI make channels.
    channel = aio_channel_to(f"127.0.0.1:{server.port}", settings, client_credentials(settings))
    try:
        yield Monitoring(schema, infra.dsn, pool, monitoring_pb2_grpc.MonitoringServiceStub(channel))
    finally:
        await channel.close()
        await server.stop()
        await ctx.tasks.close()
        await pool.close()


async def _next(call: Any, timeout_s: float) -> tuple[M.Alert, float]:
    """The next alert on the stream and how long it took to arrive."""
    start = time.monotonic()
    resp = await asyncio.wait_for(call.read(), timeout_s)
    assert resp is not grpc.aio.EOF
    return resp.alert, time.monotonic() - start


async def _opened(call: Any) -> None:
    """Wait until the stream is open: from then on it sees every alert committed."""
    await asyncio.wait_for(call.initial_metadata(), 10)


async def test_an_open_stream_gets_a_new_alert_at_once(infra, unique, tmp_path):
    async with monitoring(infra, unique, tmp_path) as m:
        call = m.watch(model="churn", kinds=(K.DRIFT_KIND_DATA_DRIFT, K.DRIFT_KIND_QUALITY))
        await _opened(call)
        for _ in range(3):
            await asyncio.sleep(0.3)  # the stream is waiting again, not mid-read
            await m.raise_alert("other-model")  # neither this model ...
            await m.raise_alert("churn", K.DRIFT_KIND_SEGMENT)  # ... nor this kind is watched
            started = time.monotonic()
            alert_id = await m.raise_alert("churn", K.DRIFT_KIND_QUALITY)
            alert, _ = await _next(call, 3 * FALLBACK_POLL_S)
            took = time.monotonic() - started
            assert (alert.alert_id, alert.model.name, alert.kind) == (alert_id, "churn", K.DRIFT_KIND_QUALITY)
            assert took < PROMPT_S, f"alert took {took:.2f}s to arrive (fallback poll is {FALLBACK_POLL_S}s)"
        call.cancel()


async def test_streams_share_one_listening_connection(infra, unique, tmp_path):
    async with monitoring(infra, unique, tmp_path) as m:
        calls = [m.watch() for _ in range(4)]
        for call in calls:
            await _opened(call)
        alert_id = await m.raise_alert("shared")
        for call in calls:
            alert, _ = await _next(call, 3 * FALLBACK_POLL_S)
            assert alert.alert_id == alert_id

        # Four idle streams hold one connection between them (the listener), not one each.
        async def one_held() -> bool:
            return m.in_use() == 1

        await await_for(one_held, 3, "one held connection", interval_s=0.05)
        started = time.monotonic()
        alert_id = await m.raise_alert("shared")
        for call in calls:
            alert, _ = await _next(call, 3 * FALLBACK_POLL_S)
            assert alert.alert_id == alert_id
        assert time.monotonic() - started < PROMPT_S
        for call in calls:
            call.cancel()


@pytest.mark.timeout(120)
async def test_a_lost_listener_connection_reconnects_and_misses_nothing(infra, unique, tmp_path):
    async with monitoring(infra, unique, tmp_path) as m:
        call = m.watch(model="blip")
        await _opened(call)
        await asyncio.sleep(0.3)  # the listener is up and the stream waits on it
        alert_id = await m.raise_alert("blip")
        alert, took = await _next(call, 3 * FALLBACK_POLL_S)
        assert alert.alert_id == alert_id and took < PROMPT_S
        admin = await asyncpg.connect(infra.dsn)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                f"flywheel-{m.schema}",
            )
        finally:
            await admin.close()
        assert killed >= 1
        # Raised while the listener is down or reconnecting: the wake-up after reconnecting delivers it.
        alert_id = await m.raise_alert("blip")
        alert, took = await _next(call, 3 * FALLBACK_POLL_S)
        assert alert.alert_id == alert_id
        assert took < FALLBACK_POLL_S
        await asyncio.sleep(0.3)
        started = time.monotonic()
        alert_id = await m.raise_alert("blip")
        alert, _ = await _next(call, 3 * FALLBACK_POLL_S)
        assert alert.alert_id == alert_id
        assert time.monotonic() - started < PROMPT_S, "listening again after the reconnect"
        call.cancel()
