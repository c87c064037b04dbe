"""One retry policy: backoff doubles to its cap, only retryable errors are retried, and a failed
call to another service comes back as the domain error a caller can act on."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from flywheel import errors
from flywheel.clients import translate
from flywheel.retry import Backoff, retry


def test_backoff_doubles_up_to_its_cap_and_resets():
    b = Backoff(0.1, 0.5)
    assert [b.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next_delay() == 0.1


async def test_retry_waits_out_unavailable_then_returns():
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise errors.Unavailable("registry: UNAVAILABLE")
        return "ok"

    assert await retry(flaky, backoff=Backoff(0.001, 0.002), what="test") == "ok"
    assert len(calls) == 3


async def test_retry_gives_up_after_its_attempts_with_the_last_error():
    calls = []

    async def down() -> None:
        calls.append(1)
        raise errors.Unavailable(f"down {len(calls)}")

    with pytest.raises(errors.Unavailable, match="down 4"):
        await retry(down, backoff=Backoff(0.001, 0.002), what="test", attempts=4)
    assert len(calls) == 4


async def test_retry_never_retries_a_callers_mistake():
    calls = []

    async def bad() -> None:
        calls.append(1)
        raise errors.InvalidArgument("must be positive", field="version")

    with pytest.raises(errors.InvalidArgument):
        await retry(bad, backoff=Backoff(0.001, 0.002), what="test")
    assert len(calls) == 1


def _rpc_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "expected", "retryable"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument, False),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound, False),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition, False),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied, False),
        (grpc.StatusCode.DATA_LOSS, errors.DataLoss, False),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.Unavailable, True),
        (grpc.StatusCode.INTERNAL, errors.Unavailable, True),
    ],
)
def test_client_errors_keep_their_meaning(code, expected, retryable):
    exc = translate(_rpc_error(code, "version: must be positive"), "registry")
    assert type(exc) is expected
    assert "must be positive" in str(exc)
    assert isinstance(exc, errors.Unavailable) is retryable
