"""`flywheel up --mtls`: every service requires a client certificate from the stack's CA on top of
TLS. A client without one, or with one from another CA, cannot connect at all, health included;
the admin's certificate (named in the credentials file) and token work, for stubs, tritonclient,
the CLI and `flywheel status`."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.auth.credentials import ClientCredentials
from flywheel.config import SERVICES
from flywheel.grpc.channels import ssl_credentials
from flywheel.stack.pki import ensure_pki
from flywheel.v1 import auth_pb2, auth_pb2_grpc

STACK_ARGS = ("--mtls",)


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_a_client_certificate_from_the_stacks_ca_is_required(stack, tmp_path):
    creds = stack.credentials
    assert creds.tls_cert_file is not None and creds.tls_key_file is not None, "the admin's certificate"
    for service in SERVICES:
        with stack.channel(service) as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    with stack.channel("registry") as channel:
        me = auth_pb2_grpc.TokenServiceStub(channel).WhoAmI(auth_pb2.WhoAmIRequest(), timeout=5)
        assert me.name == "admin"

    other = ensure_pki(tmp_path / "other-ca", ["intruder"]).clients["intruder"]
    refused = {
        "no certificate": ClientCredentials(None, creds.tls_ca_file),
        "another CA's certificate": ClientCredentials(None, creds.tls_ca_file, other.cert_file, other.key_file),
    }
    for case, client in refused.items():
        for service in SERVICES:
            with grpc.secure_channel(stack.address(service), ssl_credentials(client)) as channel:
                with pytest.raises(grpc.RpcError) as err:
                    _health(channel)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (case, service)
    with grpc.insecure_channel(stack.address("registry")) as plaintext, pytest.raises(grpc.RpcError):
        _health(plaintext)


def test_tritonclient_the_cli_and_status_present_the_admin_certificate(stack):
    client = stack.triton()
    try:
        assert client.is_server_live(headers=stack.headers)
    finally:
        client.close()
    whoami = stack.cli("tokens", "whoami")
    assert whoami.returncode == 0 and "admin" in whoami.stdout, whoami.stderr
    status = stack.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
