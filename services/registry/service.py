"""gRPC surface of the registry service. RPCs not built yet answer UNIMPLEMENTED (the generated base)."""

from __future__ import annotations

from flywheel.app import ServiceContext
from flywheel.grpc import GrpcServer
from flywheel.v1 import registry_pb2, registry_pb2_grpc


class RegistryService(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryService(ctx), server.server)
    return [registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name]
