"""Domain errors. Domain modules raise these; the gRPC layer maps them to status codes.

Kept free of grpc imports so rules stay plain Python.
"""

from __future__ import annotations


class FlywheelError(Exception):
    """Base: a message for people, and the request field at fault when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArgument(FlywheelError):
    pass


class NotFound(FlywheelError):
    pass


class AlreadyExists(FlywheelError):
    pass


class FailedPrecondition(FlywheelError):
    pass


class ResourceExhausted(FlywheelError):
    pass


class DeadlineExceeded(FlywheelError):
    """The work took longer than it may (e.g. a model run past serving_infer_timeout_s) and was stopped."""


class Unauthenticated(FlywheelError):
    pass


class PermissionDenied(FlywheelError):
    pass


class DataLoss(FlywheelError):
    """Stored data is corrupt or unreadable (a checksum failed): not the caller's fault, not retryable."""


class Unavailable(FlywheelError):
    """A dependency (database, broker, another service) cannot be reached right now."""


class StartupError(Exception):
    """A process cannot start; the message is the one line an operator sees before exit."""
