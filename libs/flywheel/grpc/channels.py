"""The one place channels to Flywheel's services are made: address and options from settings, an
aio channel for services and a blocking one for the CLI, each carrying this process's bearer token
on every call and speaking TLS when a CA is configured.

Replicas. An address may name several replicas (flywheel.addresses: a list of IP:PORT, or one DNS
name such as dns:///serving:50054 that resolves to every pod). Such a channel balances round-robin
over the replicas whose gRPC health (service "", readiness) is SERVING: a replica that died, is
starting (a restarted serving replica is NOT_SERVING until it has loaded its models) or is draining
gets no new calls, and a call made while one replica is down goes to the others; a replica that
comes back is reconnected to within about a second. A single HOST:PORT keeps gRPC's default (first
address), as before.

Retries, for every channel: gRPC itself re-sends a call that never reached a server (transparent
retry). Beyond that, only reads are retried, on UNAVAILABLE, up to 4 attempts within about 0.7 s:
Get*/List*/Search*/Compare*/Download*/Read*/Watch*/WhoAmI of Flywheel's APIs, health checks, and the
Open Inference Protocol's ModelInfer and metadata calls (an inference changes nothing it would harm
to repeat: at worst a prediction whose first attempt was logged just before its replica died is
logged twice). A stream is retried only until its first response arrives. A change (create, ingest,
register, set, approve...) caught on a replica that dies mid-call is NOT retried, since it may have
been applied: it fails with UNAVAILABLE and the caller looks before repeating it (a repeated create
answers ALREADY_EXISTS, but a repeated StartRun would queue a second run). A change sent after the
replica died goes to a live one and succeeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import grpc

from flywheel import addresses
from flywheel.auth.credentials import ClientCredentials, client_credentials
from flywheel.config import Settings

Metadata = Sequence[tuple[str, str | bytes]]
ChannelOptions = list[tuple[str, Any]]

# Method names that only read: retried on UNAVAILABLE (see the module docstring).
_READ_PREFIXES = ("Get", "List", "Search", "Compare", "Download", "Read", "Watch", "WhoAmI")
_INFERENCE_SERVICE = "inference.GRPCInferenceService"
_INFERENCE_READS = (
    "ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelConfig",
    "ModelStatistics", "RepositoryIndex", "ModelInfer",
)  # fmt: skip
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)
_READ_RETRY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    size = settings.grpc_max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


def channel_target(address: str, settings: Settings) -> tuple[str, ChannelOptions]:
    """(target, options) for a channel to `address` in any flywheel.addresses form."""
    target = addresses.parse(address)
    options: ChannelOptions = [
        *channel_options(settings),
        ("grpc.service_config", _service_config(target.balanced)),
        # Our policy, not one a DNS TXT record could substitute.
        ("grpc.service_config_disable_resolution", 1),
    ]
    if target.authority is not None:
        options.append(("grpc.default_authority", target.authority))
    if target.balanced:
        # A replica that comes back is balanced to again within about a second: gRPC's default
        # reconnect backoff grows to minutes, and a client still backing off from the restarted
        # replica has no backend left when the next one goes down.
        options += [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 1000)]
    return target.uri, options


def client_address(settings: Settings, service: str, *, saved_file: bool = True) -> str:
    """Where `service` is: FLYWHEEL_<SERVICE>_ADDR, else (for the CLI, the demo and the tests, like
    their credentials) the list a running `flywheel up` saved in $FLYWHEEL_HOME, else this host on the
    service's port. Services pass saved_file=False: `up` hands them their lists in the environment."""
    explicit = getattr(settings, f"{service}_addr")
    if explicit:
        return str(explicit)
    saved = addresses.read_saved(settings.home).get(service) if saved_file else None
    return saved or settings.addr_for(service)


def tritonclient_args(settings: Settings, service: str = "serving") -> dict[str, Any]:
    """`url` and `channel_args` for tritonclient.grpc.InferenceServerClient, so that it balances and
    fails over like Flywheel's own clients (it takes any gRPC target with channel arguments). Given a
    bare HOST:PORT of one replica instead, tritonclient cannot fail over: point it at a list, a DNS
    name of every replica, or a load balancer."""
    url, options = channel_target(client_address(settings, service), settings)
    # A connection of each client's own: channels with equal arguments in one process share one
    # otherwise, and one connection reaches one serving worker (SO_REUSEPORT picks a worker per
    # connection), however many clients an application makes.
    return {"url": url, "channel_args": [*options, OWN_CONNECTION]}


@lru_cache(maxsize=2)
def _service_config(balanced: bool) -> str:
    config: dict[str, Any] = {"methodConfig": [{"name": _read_methods(), "retryPolicy": _READ_RETRY}]}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": ""}  # readiness: SERVING replicas only
    return json.dumps(config, separators=(",", ":"))


def _read_methods() -> list[dict[str, str]]:
    from grpc_health.v1 import health_pb2

    from flywheel.v1 import (
        auth_pb2,
        ingestion_pb2,
        monitoring_pb2,
        registry_pb2,
        serving_pb2,
        training_pb2,
    )

    names: list[dict[str, str]] = []
    for module in (ingestion_pb2, training_pb2, registry_pb2, serving_pb2, monitoring_pb2, auth_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            names += [
                {"service": service.full_name, "method": m.name}
                for m in service.methods
                if m.name.startswith(_READ_PREFIXES)
            ]
    names += [{"service": _INFERENCE_SERVICE, "method": m} for m in _INFERENCE_READS]
    health = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    names += [{"service": health, "method": "Check"}]
    return names


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
    identity (FLYWHEEL_AUTH_TOKEN), never the user credential file, to every replica of `service`."""
    address = client_address(settings, service, saved_file=False)
    return aio_channel_to(address, settings, client_credentials(settings, saved_file=False))


def aio_channel_to(address: str, settings: Settings, creds: ClientCredentials) -> grpc.aio.Channel:
    """A channel to `address` (any flywheel.addresses form) presenting `creds`."""
    interceptors = _aio_interceptors(creds.token)
    target, options = channel_target(address, settings)
    if creds.tls:
        return grpc.aio.secure_channel(target, ssl_credentials(creds), options=options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def sync_channel(settings: Settings, service: str) -> grpc.Channel:
    """A blocking channel to every replica of `service`, for the CLI."""
    creds = client_credentials(settings)
    target, options = channel_target(client_address(settings, service), settings)
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
