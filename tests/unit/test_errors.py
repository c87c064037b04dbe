"""Domain errors become the right gRPC status with field and reason; surprises become INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from flywheel import errors
from flywheel.artifacts import CorruptArtifact
from flywheel.auth import roles
from flywheel.grpc import GrpcServer, status_for
from flywheel.stack.procs import free_port

from .identity import Issuer, arm, bearer


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (
            errors.InvalidArgument("must be positive", field="train_fraction"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (errors.NotFound("no such dataset"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("exists"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("not staged"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhausted("too big"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unavailable("db down"), grpc.StatusCode.UNAVAILABLE),
        (CorruptArtifact("stored object is corrupt"), grpc.StatusCode.DATA_LOSS),
        (ZeroDivisionError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_for(exc, code):
    assert status_for(exc)[0] is code


def test_message_names_the_field():
    assert status_for(errors.InvalidArgument("must be in (0, 1)", field="train_fraction"))[1] == (
        "train_fraction: must be in (0, 1)"
    )


async def test_interceptor_maps_errors_for_unary_and_streaming_calls(tmp_path, monkeypatch):
    # Authentication stays on: the errors are mapped for a caller the guard let through.
    idp = Issuer()
    settings = idp.settings(tmp_path / "idp.pem")
    for method in ("/t.T/U", "/t.T/S"):
        monkeypatch.setitem(roles.METHOD_ROLES, method, frozenset({roles.VIEWER}))
    creds = bearer(idp.token("tester", ["viewer"]))
    server = GrpcServer(settings, free_port())

    async def unary(request: bytes, context):
        if request == b"bad":
            raise errors.InvalidArgument("row 7: value 'abc' is not a float", field="records")
        if request == b"boom":
            raise RuntimeError("bug")
        return b"ok:" + request

    async def stream(request: bytes, context):
        yield b"first"
        raise errors.NotFound("dataset 'x' has no version 9", field="version")

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T",
                {
                    "U": grpc.unary_unary_rpc_method_handler(unary),
                    "S": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )
    arm(server, settings)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            u = channel.unary_unary("/t.T/U")
            assert await u(b"hi", metadata=creds) == b"ok:hi"
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await u(b"bad", metadata=creds)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert bad.value.details() == "records: row 7: value 'abc' is not a float"
            with pytest.raises(grpc.aio.AioRpcError) as boom:
                await u(b"boom", metadata=creds)
            assert boom.value.code() == grpc.StatusCode.INTERNAL  # never UNKNOWN
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                async for item in channel.unary_stream("/t.T/S")(b"", metadata=creds):
                    got.append(item)
            assert got == [b"first"]
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            assert "version: dataset 'x' has no version 9" == missing.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await u(b"hi")
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED, "the guard runs before the handler"
            assert await u(b"still", metadata=creds) == b"ok:still", "the server keeps serving after errors"
    finally:
        await server.stop()
