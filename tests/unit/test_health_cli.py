"""`flywheel health` against a real GrpcServer: readiness and liveness are separate answers (liveness
ignores dependencies, both fall at shutdown), exit 0 only when SERVING, one line of output, the
address from FLYWHEEL_SERVICE and the port settings, TLS from the settings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.auth import roles
from flywheel.cli import main
from flywheel.cli.health import Target, target
from flywheel.config import Settings, get_settings
from flywheel.grpc import GrpcServer
from flywheel.grpc.server import LIVENESS
from flywheel.stack.pki import ensure_pki
from flywheel.stack.procs import free_port

from .identity import Issuer, arm, bearer

IDP = Issuer()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """No FLYWHEEL_* from the caller's environment; settings read afresh by every command."""
    import os

    for key in list(os.environ):
        if key.startswith("FLYWHEEL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))  # no credentials file there
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _server(tmp_path, **settings: object) -> GrpcServer:  # type: ignore[no-untyped-def]
    s = IDP.settings(tmp_path / "idp.pem", **settings)
    server = GrpcServer(s, free_port())
    arm(server, s)
    return server


def health(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Runs `flywheel health ARGV` in this process: (exit code, lines printed on stdout)."""
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as done:
        main(["health", *argv])
    # The server under test logs to the same stdout; the command's own line names the probe kind.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("readiness", "liveness"))]
    return int(done.value.code or 0), lines


async def ahealth(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    # Blocking gRPC client off the event loop, which serves the server under test.
    return await asyncio.to_thread(health, capsys, *argv)


async def test_liveness_ignores_readiness_and_both_fall_at_shutdown(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(roles.METHOD_ROLES, "/t.T/Slow", frozenset({roles.VIEWER}))
    server = _server(tmp_path)

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(1.0)
        return b"done"

    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("t.T", {"Slow": grpc.unary_unary_rpc_method_handler(slow)}),)
    )
    server.add_services(["t.T"])
    await server.start()
    address = f"127.0.0.1:{server.port}"
    ready = asyncio.Event()

    async def dependencies() -> bool:
        return ready.is_set()

    watcher = asyncio.create_task(server.watch_readiness([dependencies], interval_s=0.05))
    try:
        # Dependencies down: not ready, but alive (a liveness probe must not restart it).
        assert await ahealth(capsys, "--address", address) == (1, [f"readiness {address}: NOT_SERVING"])
        assert await ahealth(capsys, "--address", address, "--liveness") == (0, [f"liveness {address}: SERVING"])
        ready.set()
        await asyncio.sleep(0.2)
        assert await ahealth(capsys, "--address", address) == (0, [f"readiness {address}: SERVING"])

        # Shutting down: liveness falls with readiness while calls in flight drain. A watcher that
        # was already connected (a load balancer) is told NOT_SERVING; a new probe is refused.
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=LIVENESS))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            call = channel.unary_unary("/t.T/Slow")(b"x", metadata=bearer(IDP.token("tester", ["viewer"])))
            await asyncio.sleep(0.2)
            stopping = asyncio.create_task(server.stop())
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # a watch never ends by itself: the drain would wait its whole grace for it
            code, lines = await ahealth(capsys, "--address", address, "--liveness")
            assert code == 1 and lines[0] in (f"liveness {address}: {s}" for s in ("NOT_SERVING", "UNAVAILABLE"))
            assert await call == b"done"
            await stopping
        code, lines = await ahealth(capsys, "--address", address, "--liveness", "--timeout", "0.5")
        assert code == 1 and lines == [f"liveness {address}: UNAVAILABLE"]
    finally:
        watcher.cancel()
        await server.stop()


async def test_address_comes_from_the_service_and_its_port(tmp_path, capsys, monkeypatch):
    server = _server(tmp_path)
    await server.start()
    try:
        # What a container sets: which service it runs, and that service's port.
        monkeypatch.setenv("FLYWHEEL_SERVICE", "serving")
        monkeypatch.setenv("FLYWHEEL_SERVING_PORT", str(server.port))
        assert await ahealth(capsys, "--liveness") == (0, [f"liveness 127.0.0.1:{server.port}: SERVING"])
        # --service wins over the environment; FLYWHEEL_GRPC_PORT wins over the per-service port,
        # as it does for the service itself.
        monkeypatch.setenv("FLYWHEEL_SERVING_PORT", str(free_port()))
        monkeypatch.setenv("FLYWHEEL_GRPC_PORT", str(server.port))
        assert await ahealth(capsys, "--liveness", "--service", "registry") == (
            0,
            [f"liveness 127.0.0.1:{server.port}: SERVING"],
        )
    finally:
        await server.stop()


def test_without_a_service_it_says_what_is_missing(capsys):
    code, lines = health(capsys)
    assert code == 1
    assert lines == ["readiness: error: no service to check: pass --service or --address, or set FLYWHEEL_SERVICE"]


def test_an_unknown_service_in_the_environment_is_named(capsys, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_SERVICE", "servign")
    code, lines = health(capsys, "--liveness")
    assert code == 1 and lines[0].startswith("liveness: error: unknown service 'servign'; one of ingestion, ")


def test_nothing_listening_is_unhealthy(capsys):
    address = f"127.0.0.1:{free_port()}"
    assert health(capsys, "--address", address, "--timeout", "0.5") == (1, [f"readiness {address}: UNAVAILABLE"])


async def test_tls_uses_the_ca_from_the_settings(tmp_path, capsys, monkeypatch):
    pki = ensure_pki(tmp_path / "tls", [])
    server = _server(
        tmp_path,
        tls_cert_file=pki.server.cert_file,
        tls_key_file=pki.server.key_file,
        tls_ca_file=pki.ca_file,
    )
    await server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        # Without the CA the handshake fails: unhealthy, never a plaintext fallback.
        code, lines = await ahealth(capsys, "--address", address, "--liveness", "--timeout", "1")
        assert code == 1 and lines == [f"liveness {address}: UNAVAILABLE"]
        monkeypatch.setenv("FLYWHEEL_TLS_CA_FILE", str(pki.ca_file))
        assert await ahealth(capsys, "--address", address, "--liveness") == (0, [f"liveness {address}: SERVING"])
    finally:
        await server.stop()


def test_target_follows_the_settings() -> None:
    settings = Settings(serving_port=6000, serving_addr="serving:50054", registry_addr="[::1]:7")
    assert target(settings, "serving", None) == Target("127.0.0.1:6000", tls_name="serving")
    assert target(settings, "registry", None) == Target("127.0.0.1:50053", tls_name="::1")
    assert target(settings, "training", None) == Target("127.0.0.1:50052", tls_name=None)
    assert target(settings, None, "flywheel-serving.example:7") == Target("flywheel-serving.example:7")


async def test_tls_checks_the_name_clients_use_not_127_0_0_1(tmp_path, capsys, monkeypatch):
    """A certificate naming only the service's host (as in Kubernetes) passes the check on 127.0.0.1,
    because the check expects the host FLYWHEEL_<SERVICE>_ADDR names, like every other client."""
    secrets = _generate_secrets_module()
    ca_key, ca = secrets.issue_ca(tmp_path)
    secrets.issue_leaf(tmp_path, "serving", ca_key, ca, hosts=("serving",), server=True)
    server = _server(tmp_path, tls_cert_file=tmp_path / "serving.crt", tls_key_file=tmp_path / "serving.key")
    await server.start()
    try:
        monkeypatch.setenv("FLYWHEEL_TLS_CA_FILE", str(tmp_path / "ca.crt"))
        monkeypatch.setenv("FLYWHEEL_SERVICE", "serving")
        monkeypatch.setenv("FLYWHEEL_SERVING_PORT", str(server.port))
        # Checked against 127.0.0.1, which the certificate does not name: refused.
        code, lines = await ahealth(capsys, "--liveness", "--timeout", "1")
        assert code == 1 and lines == [f"liveness 127.0.0.1:{server.port}: UNAVAILABLE"]
        monkeypatch.setenv("FLYWHEEL_SERVING_ADDR", "serving:50054")
        assert await ahealth(capsys, "--liveness") == (0, [f"liveness 127.0.0.1:{server.port}: SERVING"])
    finally:
        await server.stop()


def _generate_secrets_module():  # type: ignore[no-untyped-def]
    """deploy/generate_secrets.py (a script, not a package): its CA and leaf certificates."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "deploy" / "generate_secrets.py"
    spec = importlib.util.spec_from_file_location("generate_secrets", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
