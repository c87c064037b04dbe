"""gRPC surface of the training service. RPCs not built yet answer UNIMPLEMENTED (the generated base)."""

from __future__ import annotations

from flywheel.app import ServiceContext
from flywheel.grpc import GrpcServer
from flywheel.v1 import training_pb2, training_pb2_grpc


class TrainingService(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    training_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingService(ctx), server.server)
    return [training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name]
