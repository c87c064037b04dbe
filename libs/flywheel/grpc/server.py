"""aio server with health, reflection, configured message limits and a graceful stop that drains
calls in flight.

Health answers two questions. Readiness (service "" and each registered service's full name) is
SERVING only while the process's dependencies answer: load balancers and Kubernetes readiness probes
drain a replica that cannot reach PostgreSQL or Kafka. Liveness (service `LIVENESS`) is SERVING from
start until shutdown whatever the dependencies do, so a brief database outage never gets every replica
restarted at once; only a process that stopped answering (or is shutting down) fails it.

Servicers register through `GrpcServer.add_servicer(add_XServicer_to_server, servicer)`: the generated
function registers on the GrpcServer itself, which wraps the methods (domain errors -> status codes,
server spans; see methods.py) before handing them to the aio server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from flywheel.auth.guard import Guard
from flywheel.config import Settings
from flywheel.errors import StartupError
from flywheel.logging import get_logger

from .channels import channel_options
from .health import HealthServicer
from .methods import MethodWrapper

log = get_logger(__name__)
ReadinessCheck = Callable[[], Awaitable[bool]]
LIVENESS = "flywheel.liveness"  # the health service name that reports liveness, not readiness
S = TypeVar("S")


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured (then the port serves TLS only), else None (plaintext)."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise StartupError("TLS needs both FLYWHEEL_TLS_CERT_FILE and FLYWHEEL_TLS_KEY_FILE")
    if settings.tls_require_client_auth and settings.tls_ca_file is None:
        raise StartupError("FLYWHEEL_TLS_REQUIRE_CLIENT_AUTH needs FLYWHEEL_TLS_CA_FILE to check clients against")
    try:
        key, cert = settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes()
        ca = settings.tls_ca_file.read_bytes() if settings.tls_ca_file else None
    except OSError as exc:
        raise StartupError(f"cannot read TLS files: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=settings.tls_require_client_auth
    )


def _connection_age(settings: Settings) -> list[tuple[str, int]]:
    """Connections end after grpc_max_connection_age_s (docs/scaling.md: clients of a headless
    Service would otherwise never see a replica added after they connected); calls in flight get
    the drain grace to finish."""
    if settings.grpc_max_connection_age_s <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.grpc_grace_s * 1000)),
    ]


class GrpcServer:
    def __init__(self, settings: Settings, port: int) -> None:
        self._settings = settings
        self.port = port
        self.server = grpc.aio.server(
            # so_reuseport=0: a second process on a taken port must fail, not silently share it;
            # only the workers of one pool (flywheel.workers) share their port on purpose.
            options=[
                *channel_options(settings),
                ("grpc.so_reuseport", 1 if settings.worker_index is not None else 0),
                # One connection cannot open unbounded concurrent calls (each holds memory and a task).
                ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
                *_connection_age(settings),
            ],
        )
        self.health = HealthServicer()
        self.serving = False  # mirrors the health status, for protocols with their own readiness call
        self._service_names: list[str] = []
        self._untraced: set[str] = set()
        # Every method but health passes the guard; the app gives it an authenticator once the
        # database is up (until then calls get UNAVAILABLE, never an unchecked pass).
        try:
            self.guard = Guard(settings.auth_mode)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        self._methods = MethodWrapper(self._untraced, guard=self.guard)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._bind()

    def _bind(self) -> None:
        address = f"{self._settings.grpc_host}:{self.port}"
        try:
            credentials = server_credentials(self._settings)
            if credentials is None:
                bound = self.server.add_insecure_port(address)
            else:
                bound = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {address}: port already in use or not bindable") from exc
        if bound == 0:
            raise StartupError(f"cannot listen on {address}: port already in use or not bindable")
        self.port = bound

    def untrace(self, *methods: str) -> None:
        """No spans for these methods ("/pkg.Service/Method"); call before registering their servicer."""
        self._untraced.update(methods)

    @property
    def untraced(self) -> frozenset[str]:
        return frozenset(self._untraced)

    # The two registration calls generated code makes on a server, our method wrapping in between.
    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(self._methods.generic(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        wrapped = {name: self._methods.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self.server.add_registered_method_handlers(service, wrapped)

    def add_servicer(self, add: Callable[[S, grpc.aio.Server], None], servicer: S) -> None:
        """`add` is a generated `add_XServicer_to_server`; it only calls the two registration methods
        below, so this object stands in for the aio server it expects."""
        add(servicer, cast("grpc.aio.Server", self))

    def add_services(self, full_names: Sequence[str]) -> None:
        self._service_names.extend(full_names)

    async def start(self) -> None:
        names = [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        # Registered through our wrapping, so reflection needs an identity like every other method.
        self.add_servicer(
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
            reflection.aio.ReflectionServicer([*names, reflection.SERVICE_NAME]),
        )
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.server.start()

    async def _set_all(self, status: int) -> None:
        """Readiness only: liveness is set once at start and falls with the graceful shutdown."""
        for name in ["", *self._service_names]:
            await self.health.set(name, status)

    async def watch_readiness(self, checks: Sequence[ReadinessCheck], interval_s: float = 1.0) -> None:
        """Report SERVING while every check passes, NOT_SERVING otherwise (load balancers drain us)."""
        serving: bool | None = None
        while True:
            ok = all(await asyncio.gather(*(c() for c in checks)))
            if ok != serving:
                serving = self.serving = ok
                status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                await self._set_all(status)
                log.info("health changed", serving=ok)
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        self.serving = False
        # Every status, liveness included, turns NOT_SERVING and stays so while calls drain.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self._settings.grpc_grace_s)
