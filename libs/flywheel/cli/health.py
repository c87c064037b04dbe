"""`flywheel health`: one gRPC health check of one service, for container HEALTHCHECKs and exec probes.

Readiness (the default) asks for service "": SERVING only while the service reaches PostgreSQL and
Kafka. `--liveness` asks for `flywheel.liveness`: SERVING while the process runs and is not shutting
down, whatever its dependencies do. Health needs no token; over TLS the check verifies the server
with the CA from the settings (and presents a client certificate for mTLS), like every client. It
connects to 127.0.0.1 but, when FLYWHEEL_<SERVICE>_ADDR names the service's host, expects the
certificate to name that host: the name every other client checks, so no certificate needs 127.0.0.1.

Exit 0 when SERVING, 1 otherwise (Docker reads any other code as "reserved"), one line on stdout.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from flywheel.auth.credentials import client_credentials
from flywheel.config import SERVICES, Settings, get_settings
from flywheel.grpc.channels import channel_options, ssl_credentials
from flywheel.grpc.server import LIVENESS

SERVICE_ENV = "FLYWHEEL_SERVICE"  # set in every container: which service this one runs


@dataclass(frozen=True)
class Target:
    address: str  # HOST:PORT to connect to
    tls_name: str | None = None  # the name the server's certificate must carry, when not the host's


def target(settings: Settings, service: str | None, address: str | None) -> Target:
    """Where to check: --address, else this host on the service's port (grpc_port wins, as the service
    itself binds it). ValueError names what is missing or wrong."""
    if address:
        return Target(address)
    name = service or os.environ.get(SERVICE_ENV, "")
    if not name:
        raise ValueError(f"no service to check: pass --service or --address, or set {SERVICE_ENV}")
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    configured = getattr(settings, f"{name}_addr")  # how other clients reach it, when set
    host = configured.rpartition(":")[0].strip("[]") if configured and "/" not in configured else ""
    return Target(f"127.0.0.1:{settings.grpc_port or settings.port_for(name)}", host or None)


def check(settings: Settings, where: Target, *, liveness: bool, timeout_s: float) -> tuple[bool, str]:
    """(SERVING?, the status name or why there is none)."""
    creds = client_credentials(settings)
    options: list[tuple[str, int | str]] = [*channel_options(settings)]
    if creds.tls:
        if where.tls_name:
            options.append(("grpc.ssl_target_name_override", where.tls_name))
        channel = grpc.secure_channel(where.address, ssl_credentials(creds), options=options)
    else:
        channel = grpc.insecure_channel(where.address, options=options)
    with channel:
        # Called by method path: the published stubs for grpc_health leave HealthStub.Check untyped.
        call = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = call(health_pb2.HealthCheckRequest(service=LIVENESS if liveness else ""), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            return False, code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    return serving, health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def cmd_health(args: argparse.Namespace) -> int:
    settings = get_settings()
    kind = "liveness" if args.liveness else "readiness"
    try:
        where = target(settings, args.service, args.address)
        ok, status = check(settings, where, liveness=args.liveness, timeout_s=args.timeout)
    except (ValueError, OSError) as exc:  # OSError: a TLS file from the settings cannot be read
        print(f"{kind}: error: {exc}", flush=True)
        return 1
    print(f"{kind} {where.address}: {status}", flush=True)
    return 0 if ok else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "health",
        help="check one service's gRPC health (readiness, or --liveness); exit 0 only when SERVING",
    )
    p.add_argument("--liveness", action="store_true", help="liveness instead of readiness (ignores dependencies)")
    p.add_argument("--service", choices=SERVICES, help=f"which service (default ${SERVICE_ENV})")
    p.add_argument("--address", metavar="HOST:PORT", help="where to check (default 127.0.0.1:<the service's port>)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="deadline of the check (default 2)")
    p.set_defaults(func=cmd_health)
