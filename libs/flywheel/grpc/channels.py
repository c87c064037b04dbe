"""The one place channels to Flywheel's services are made: address and options from settings, an
aio channel for services and a blocking one for the CLI, each carrying this process's bearer token
on every call and speaking TLS when a CA is configured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import grpc

from flywheel.auth.credentials import ClientCredentials, client_credentials
from flywheel.config import Settings

Metadata = Sequence[tuple[str, str | bytes]]


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    size = settings.grpc_max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


def auth_metadata(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def ssl_credentials(creds: ClientCredentials) -> grpc.ChannelCredentials:
    def read(path: Any) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(creds.tls_ca_file),
        private_key=read(creds.tls_key_file),
        certificate_chain=read(creds.tls_cert_file),
    )


def aio_channel(settings: Settings, service: str) -> grpc.aio.Channel:
    """A channel from one service to another ("registry", "serving", ...), with this process's own
    identity (FLYWHEEL_AUTH_TOKEN), never the user credential file."""
    return aio_channel_to(settings.addr_for(service), settings, client_credentials(settings, saved_file=False))


def aio_channel_to(target: str, settings: Settings, creds: ClientCredentials) -> grpc.aio.Channel:
    interceptors = _aio_interceptors(creds.token)
    options = channel_options(settings)
    if creds.tls:
        return grpc.aio.secure_channel(target, ssl_credentials(creds), options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def sync_channel(settings: Settings, service: str) -> grpc.Channel:
    """A blocking channel to `service`, for the CLI."""
    creds = client_credentials(settings)
    target, options = settings.addr_for(service), channel_options(settings)
    if creds.tls:
        channel = grpc.secure_channel(target, ssl_credentials(creds), options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if not creds.token:
        return channel
    return grpc.intercept_channel(channel, _SyncAuth(auth_metadata(creds.token)))


# -- adding the token to every call ------------------------------------------------------------------


def _with_metadata(details: grpc.aio.ClientCallDetails, extra: list[tuple[str, str]]) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *extra)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


def _aio_interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor] | None:
    if not token:
        return None
    extra = auth_metadata(token)

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(_with_metadata(details, extra), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(_with_metadata(details, extra), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
            return await continuation(_with_metadata(details, extra), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
            return await continuation(_with_metadata(details, extra), request_iterator)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


class _SyncDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SyncAuth(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, extra: list[tuple[str, str]]) -> None:
        self._extra = extra

    def _details(self, d: Any) -> Any:
        return _SyncClientCallDetails(
            d.method, d.timeout, [*(d.metadata or ()), *self._extra], d.credentials, d.wait_for_ready,
            getattr(d, "compression", None),
        )  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class _SyncClientCallDetails(_SyncDetails, grpc.ClientCallDetails):
    """grpc.ClientCallDetails is an abstract interface; the interceptor API needs an instance of it."""
