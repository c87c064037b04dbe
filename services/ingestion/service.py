"""gRPC surface of the ingestion service. RPCs not built yet answer UNIMPLEMENTED (the generated base)."""

from __future__ import annotations

from flywheel.app import ServiceContext
from flywheel.grpc import GrpcServer
from flywheel.v1 import ingestion_pb2, ingestion_pb2_grpc


class IngestionService(ingestion_pb2_grpc.IngestionServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    ingestion_pb2_grpc.add_IngestionServiceServicer_to_server(IngestionService(ctx), server.server)
    return [ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name]
