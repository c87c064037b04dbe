"""gRPC server bootstrap (health, reflection, drain on shutdown) and domain-error mapping."""

from flywheel.grpc.errors import status_for, stream_header
from flywheel.grpc.methods import MethodWrapper
from flywheel.grpc.server import GrpcServer, channel_options

__all__ = ["GrpcServer", "MethodWrapper", "channel_options", "status_for", "stream_header"]
