"""gRPC server bootstrap (health, reflection, drain on shutdown) and domain-error mapping."""

from flywheel.grpc.errors import DomainErrorInterceptor, status_for, stream_header
from flywheel.grpc.server import GrpcServer, channel_options

__all__ = ["DomainErrorInterceptor", "GrpcServer", "channel_options", "status_for", "stream_header"]
