"""The closed loop over TLS: `flywheel up --tls` serves every service over TLS with a local CA, the
services call each other over it, and the core scenario of test_closed_loop.py (drift -> retrain ->
promote -> serve, in one trace) passes unchanged, its clients configured from the credentials file.
A client that does not speak TLS, or does not trust the stack's CA, gets nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.config import SERVICES
from flywheel.v1 import auth_pb2, auth_pb2_grpc

# The scenario itself, collected here too and run against this module's stack.
from .test_closed_loop import headers, infer, test_drift_retrains_promotes_and_serves_in_one_trace  # noqa: F401

STACK_ARGS = ("--tls",)
GRPCURL = Path(sys.executable).parent / "grpcurl"


def _whoami(channel: grpc.Channel, token: str) -> auth_pb2.WhoAmIResponse:
    stub = auth_pb2_grpc.TokenServiceStub(channel)
    return stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=5)


def test_clients_without_the_stacks_tls_are_refused(stack):
    creds = stack.credentials
    assert creds.tls_ca_file is not None and creds.tls_ca_file.is_file(), "up --tls hands clients the CA"
    with stack.channel("registry") as channel:
        assert _whoami(channel, stack.token).name == "admin"

    for service in SERVICES:
        with grpc.insecure_channel(stack.address(service)) as plaintext:
            with pytest.raises(grpc.RpcError) as refused:
                health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, service
    # TLS, but trusting the system's roots rather than the stack's CA: the server is not believed.
    with grpc.secure_channel(stack.address("registry"), grpc.ssl_channel_credentials()) as untrusting:
        with pytest.raises(grpc.RpcError) as unverified:
            _whoami(untrusting, stack.token)
        assert unverified.value.code() == grpc.StatusCode.UNAVAILABLE

    auth = f"authorization: Bearer {stack.token}"
    plain = subprocess.run(
        [str(GRPCURL), "-H", auth, "-plaintext", stack.address("ingestion"), "list"], capture_output=True, text=True
    )
    assert plain.returncode != 0 and "flywheel.v1" not in plain.stdout
    tls = subprocess.run(
        [str(GRPCURL), "-H", auth, "-cacert", str(creds.tls_ca_file), stack.address("ingestion"), "list"],
        capture_output=True,
        text=True,
    )
    assert tls.returncode == 0 and "flywheel.v1.IngestionService" in tls.stdout, tls.stderr
