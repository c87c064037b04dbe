"""gRPC surface of the serving service: the Open Inference Protocol (KServe v2) through the
servicer base tritonclient ships, and ServingAdmin. RPCs not built yet answer UNIMPLEMENTED."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2 as oip_pb2
from tritonclient.grpc import service_pb2_grpc as oip_pb2_grpc

from flywheel.app import ServiceContext
from flywheel.grpc import GrpcServer
from flywheel.v1 import serving_pb2, serving_pb2_grpc


class InferenceService(oip_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, ctx: ServiceContext, server: GrpcServer) -> None:
        self._ctx = ctx
        self._server = server

    async def ServerLive(self, request: oip_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return oip_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: oip_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext):
        # Ready means the same as health SERVING: database and broker reachable.
        status = await self._server.health.check(health_pb2.HealthCheckRequest(service=""), context)
        return oip_pb2.ServerReadyResponse(ready=status.status == health_pb2.HealthCheckResponse.SERVING)


class ServingAdmin(serving_pb2_grpc.ServingAdminServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    oip_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(ctx, server), server.server)
    serving_pb2_grpc.add_ServingAdminServicer_to_server(ServingAdmin(ctx), server.server)
    return [
        oip_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        serving_pb2.DESCRIPTOR.services_by_name["ServingAdmin"].full_name,
    ]
