"""The gRPC health service every Flywheel server runs (grpc.health.v1: Check and Watch).

Written here rather than taken from grpcio-health-checking, whose asyncio `Watch` deletes a
service's condition when any one watch of that service ends: every other open watch of it then
waits on a condition nobody notifies again. A balanced client that connected to a replica while it
was starting (NOT_SERVING) would never hear it turn SERVING once any other client of that replica
closed its channel (a CLI command, a service's one-call channel), and would keep the replica out of
its round-robin. Here a known service's condition lives as long as the server; watches of a name
the server does not know share one condition (they get SERVICE_UNKNOWN and wait, as the protocol
says), so no caller can grow the map.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Response = health_pb2.HealthCheckResponse
ServingStatus = int  # a HealthCheckResponse.ServingStatus value


class HealthServicer(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": Response.SERVING}
        self._conditions: defaultdict[str, asyncio.Condition] = defaultdict(asyncio.Condition)
        self._unknown = asyncio.Condition()
        self._shutting_down = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Response:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:100]!r}")
        return Response(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        condition = self._conditions[request.service] if request.service in self._status else self._unknown
        last = None
        async with condition:
            while True:
                status = self._status.get(request.service, Response.SERVICE_UNKNOWN)
                if status != last:
                    await context.write(Response(status=status))
                last = status
                await condition.wait()

    async def set(self, service: str, status: ServingStatus) -> None:
        """Sets a service's status and wakes its watchers; ignored once the server is shutting down."""
        if not self._shutting_down:
            await self._set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good (later set() calls are ignored)."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for service in list(self._status):
            await self._set(service, Response.NOT_SERVING)

    async def _set(self, service: str, status: ServingStatus) -> None:
        condition = self._conditions[service]
        async with condition:
            self._status[service] = status
            condition.notify_all()
