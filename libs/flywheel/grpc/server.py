"""aio server with health (SERVING only while the process's dependencies answer), reflection,
configured message limits and a graceful stop that drains calls in flight.

Servicers register through `GrpcServer.add_servicer(add_XServicer_to_server, servicer)`: the generated
function registers on the GrpcServer itself, which wraps the methods (domain errors -> status codes,
server spans; see methods.py) before handing them to the aio server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flywheel.config import Settings
from flywheel.errors import StartupError
from flywheel.logging import get_logger

from .channels import channel_options
from .methods import MethodWrapper

log = get_logger(__name__)
ReadinessCheck = Callable[[], Awaitable[bool]]
S = TypeVar("S")


class GrpcServer:
    def __init__(self, settings: Settings, port: int) -> None:
        self._settings = settings
        self.port = port
        self.server = grpc.aio.server(
            # so_reuseport=0: a second process on a taken port must fail, not silently share it.
            options=[*channel_options(settings), ("grpc.so_reuseport", 0)],
        )
        self.health = health.aio.HealthServicer()
        self.serving = False  # mirrors the health status, for protocols with their own readiness call
        self._service_names: list[str] = []
        self._untraced: set[str] = set()
        self._methods = MethodWrapper(self._untraced)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._bind()

    def _bind(self) -> None:
        address = f"{self._settings.grpc_host}:{self.port}"
        try:
            bound = self.server.add_insecure_port(address)
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
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], self.server)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def _set_all(self, status: int) -> None:
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
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self._settings.grpc_grace_s)
