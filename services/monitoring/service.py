"""gRPC surface of the monitoring service. RPCs not built yet answer UNIMPLEMENTED (the generated base)."""

from __future__ import annotations

from flywheel.app import ServiceContext
from flywheel.grpc import GrpcServer
from flywheel.v1 import monitoring_pb2, monitoring_pb2_grpc


class MonitoringService(monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server(MonitoringService(ctx), server.server)
    return [monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name]
