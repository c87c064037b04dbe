"""Maps domain errors to gRPC status codes, so servicers raise plain exceptions (methods.py applies it).

Unexpected exceptions become INTERNAL; bad input never surfaces as UNKNOWN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc

from flywheel import errors

_CODES: list[tuple[type[errors.FlywheelError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DataLoss, grpc.StatusCode.DATA_LOSS),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, NotImplementedError):  # generated base servicers' methods we do not offer
        return grpc.StatusCode.UNIMPLEMENTED, "not implemented"
    if isinstance(exc, asyncpg.DataError):
        # A request value PostgreSQL (or asyncpg's encoder) cannot take, e.g. a number past a column's
        # range: the caller's input. The database's message may quote the value, so it is not repeated.
        return grpc.StatusCode.INVALID_ARGUMENT, "a value in the request does not fit the field it is stored in"
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see server logs"


async def stream_header(request_iterator: AsyncIterator[Any], field: str = "header") -> tuple[Any, AsyncIterator[Any]]:
    """For client-streaming uploads (a header, then chunks): the header and the rest of the stream."""
    it = request_iterator.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        raise errors.InvalidArgument(f"empty stream; send a {field} first", field=field) from None
    if first.WhichOneof("payload") != field:
        raise errors.InvalidArgument(f"the first message must be the {field}", field=field)
    return getattr(first, field), it
