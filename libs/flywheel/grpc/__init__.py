"""gRPC server bootstrap (health, reflection, drain on shutdown) and domain-error mapping."""

from flywheel.grpc.channels import aio_channel, channel_options, sync_channel
from flywheel.grpc.errors import status_for, stream_header
from flywheel.grpc.methods import MethodWrapper
from flywheel.grpc.server import GrpcServer

__all__ = [
    "GrpcServer",
    "MethodWrapper",
    "aio_channel",
    "channel_options",
    "status_for",
    "stream_header",
    "sync_channel",
]
