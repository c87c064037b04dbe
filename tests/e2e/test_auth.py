"""The trust boundary with every service a real process: every method of every service refuses
callers without valid credentials (health excepted) and callers whose role the table does not
list, and lets the right role through; grpcurl lists services only with a token; a revoked token
stops working on every service within the cache time; the CLI's token commands; JWTs from an
outside identity provider (OIDC) are accepted with their roles."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.auth import roles
from flywheel.config import SERVICES
from flywheel.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    ingestion_pb2,
    monitoring_pb2,
    registry_pb2,
    serving_pb2,
    training_pb2,
)
from tests.integration.identities import mint, mint_many
from tests.polling import wait_until
from tests.unit.identity import Issuer
from tests.unit.proto_methods import HEALTH, REFLECTION, REFLECTION_V1, Method, all_methods

from .stack import UpProcess

GRPCURL = Path(sys.executable).parent / "grpcurl"
DEADLINE_S = 5.0
OPEN_STREAM_S = 2.0  # a stream the guard let through may stay open (WatchAlerts): this long is enough
CACHE_S = 5.0  # FLYWHEEL_AUTH_CACHE_S's default, which this stack keeps

# Where each service is served. Reflection is on every port.
HOSTED = {
    "flywheel.v1.IngestionService": "ingestion",
    "flywheel.v1.TrainingService": "training",
    "flywheel.v1.RegistryService": "registry",
    "flywheel.v1.TokenService": "registry",
    "inference.GRPCInferenceService": "serving",
    "flywheel.v1.ServingAdmin": "serving",
    "flywheel.v1.MonitoringService": "monitoring",
}
REFUSED_CASES = ("no credentials", "not bearer", "garbage token", "expired token", "revoked token")


@dataclass(frozen=True)
class Target:
    port_of: str  # the service whose port serves it
    method: Method


def targets() -> list[Target]:
    methods = all_methods()
    found = [Target(HOSTED[m.service], m) for m in methods.values() if m.service in HOSTED]
    found += [Target(s, m) for s in SERVICES for m in methods.values() if m.service == REFLECTION]
    return found


@pytest.fixture(scope="module")
def idp() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, idp):
    """A stack that also trusts an outside identity provider's JWTs (OIDC, with a PEM key file)."""
    base = tmp_path_factory.mktemp("auth")
    key_file = base / "idp.pem"
    key_file.write_bytes(idp.public_pem())
    env = {
        "FLYWHEEL_OIDC_ISSUER": idp.issuer,
        "FLYWHEEL_OIDC_AUDIENCE": idp.audience,
        "FLYWHEEL_OIDC_KEY_FILE": str(key_file),
        "FLYWHEEL_OIDC_ROLES_CLAIM": "realm_access.roles",
    }
    up = UpProcess(base / "home", env=env)
    up.start()
    yield up
    up.kill_all()


def _role_token_name(role: str) -> str:
    return "matrix-" + role.replace(":", "-")


@pytest.fixture(scope="module")
def credentials(stack) -> dict[str, list[tuple[str, str]] | None]:
    """Metadata for each case: the refused ones and one token per role, minted in the stack's database."""
    wanted = {role: (_role_token_name(role), role) for role in roles.ALL_ROLES}
    by_role = asyncio.run(mint_many(stack.dsn, wanted))
    past = datetime.now(UTC) - timedelta(hours=1)
    expired = asyncio.run(mint(stack.dsn, "matrix-expired-admin", roles.ADMIN, expires_at=past))
    revoked = asyncio.run(mint(stack.dsn, "matrix-revoked-admin", roles.ADMIN, revoked=True))
    garbage = f"fwk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"  # well formed, never minted

    def bearer(token: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token}")]

    cases: dict[str, list[tuple[str, str]] | None] = {
        "no credentials": None,
        "not bearer": [("authorization", "Basic YWRtaW46YWRtaW4=")],
        "garbage token": bearer(garbage),
        "expired token": bearer(expired),
        "revoked token": bearer(revoked),
    }
    cases.update({role: bearer(token) for role, token in by_role.items()})
    return cases


async def _call(channel: grpc.aio.Channel, method: Method, metadata: Iterable[tuple[str, str]] | None) -> tuple:
    """(status code, details) of calling `method` with an empty request (raw bytes, no stubs).

    A client stream sends no message at all: grpc.aio reports a write that meets an RPC the server
    already ended as INTERNAL (grpc/grpc#36066), which would hide the server's status."""
    path, md = method.path, tuple(metadata) if metadata else None
    try:
        if not method.client_streaming and not method.server_streaming:
            await channel.unary_unary(path)(b"", metadata=md, timeout=DEADLINE_S)
        elif method.client_streaming and not method.server_streaming:
            await channel.stream_unary(path)(iter(()), metadata=md, timeout=DEADLINE_S)
        else:
            call = (
                channel.unary_stream(path)(b"", metadata=md, timeout=DEADLINE_S)
                if not method.client_streaming
                else channel.stream_stream(path)(iter(()), metadata=md, timeout=DEADLINE_S)
            )
            try:
                await asyncio.wait_for(call.read(), OPEN_STREAM_S)  # a message, or the status
            except TimeoutError:
                call.cancel()
                return "STREAM_OPEN", "the guard let it through and the stream stayed open"
            call.cancel()
            code = await call.code()
            return (code.name, await call.details()) if code != grpc.StatusCode.CANCELLED else ("OK", "")
    except grpc.aio.AioRpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


async def _run_matrix(stack: UpProcess, cases: dict[str, list[tuple[str, str]] | None]) -> list[tuple]:
    channels = {s: grpc.aio.insecure_channel(stack.address(s)) for s in SERVICES}
    limit = asyncio.Semaphore(32)

    async def one(target: Target, case: str) -> tuple:
        async with limit:
            code, details = await _call(channels[target.port_of], target.method, cases[case])
        return target, case, code, details

    try:
        jobs = [one(t, case) for t in targets() for case in cases]
        return await asyncio.gather(*jobs)
    finally:
        for ch in channels.values():
            await ch.close()


async def test_every_method_of_every_service_against_every_kind_of_caller(stack, credentials):
    # Every method the role table knows is in the matrix (the unit tests hold the table to the protos).
    covered = {t.method.path for t in targets()}
    assert set(roles.METHOD_ROLES) - {REFLECTION_V1} <= covered

    started = time.monotonic()
    results = await _run_matrix(stack, credentials)
    took = time.monotonic() - started

    wrong: list[str] = []
    refused = Counter[str]()
    for target, case, code, details in results:
        path = target.method.path
        needed = roles.METHOD_ROLES[path]
        where = f"{path} on {target.port_of} as {case}: {code} {details}"
        if case in REFUSED_CASES:
            refused[case] += 1
            if code != "UNAUTHENTICATED":
                wrong.append(where)
        elif roles.allowed(path, frozenset({case})):
            if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                wrong.append(where)
        elif code != "PERMISSION_DENIED" or f"needs the role {roles.describe(needed)}" not in details:
            wrong.append(where)
        elif f"{_role_token_name(case)} has {case}" not in details:
            wrong.append(where)
    assert wrong == [], f"{len(wrong)} of {len(results)} calls gave the wrong answer:\n" + "\n".join(wrong)

    calls_without_credentials = sum(refused.values())
    assert calls_without_credentials == len(targets()) * len(REFUSED_CASES)
    assert calls_without_credentials > 300  # 100% of them refused (above); the count shows what that covers
    assert took < 60, f"the matrix took {took:.1f}s"


def test_health_stays_open_without_credentials(stack, credentials):
    for service in SERVICES:
        with grpc.insecure_channel(stack.address(service)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for metadata in (None, credentials["garbage token"]):
                resp = health.Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=DEADLINE_S)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    assert roles.is_public(f"/{HEALTH}/Check")


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GRPCURL), *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_and_calls_with_a_token_and_cannot_without(stack):
    expected = {
        "ingestion": {"flywheel.v1.IngestionService"},
        "training": {"flywheel.v1.TrainingService"},
        "registry": {"flywheel.v1.RegistryService", "flywheel.v1.TokenService"},
        "serving": {"inference.GRPCInferenceService", "flywheel.v1.ServingAdmin"},
        "monitoring": {"flywheel.v1.MonitoringService"},
    }
    auth = f"authorization: Bearer {stack.token}"
    for service, api in expected.items():
        listed = _grpcurl("-H", auth, "-plaintext", stack.address(service), "list")
        assert listed.returncode == 0, listed.stderr
        assert set(listed.stdout.split()) == api | {HEALTH, REFLECTION}, listed.stdout
        anonymous = _grpcurl("-plaintext", stack.address(service), "list")
        assert anonymous.returncode != 0 and "Unauthenticated" in anonymous.stderr, anonymous
        assert "flywheel.v1" not in anonymous.stdout
    me = _grpcurl("-H", auth, "-plaintext", "-d", "{}", stack.address("registry"), "flywheel.v1.TokenService/WhoAmI")
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout) == {"name": "admin", "roles": ["admin"], "kind": "token"}


# One read per service, each open to viewers.
READS = {
    "ingestion": ("/flywheel.v1.IngestionService/ListDatasets", ingestion_pb2.ListDatasetsRequest()),
    "training": ("/flywheel.v1.TrainingService/ListSpecs", training_pb2.ListSpecsRequest()),
    "registry": ("/flywheel.v1.RegistryService/ListModels", registry_pb2.ListModelsRequest()),
    "serving": ("/flywheel.v1.ServingAdmin/ListDeployments", serving_pb2.ListDeploymentsRequest()),
    "monitoring": ("/flywheel.v1.MonitoringService/ListAlerts", monitoring_pb2.ListAlertsRequest(model_name="x")),
}


def _read_everywhere(stack: UpProcess, token: str) -> dict[str, str]:
    """The status of one read on each service with `token`."""
    codes = {}
    for service, (path, request) in READS.items():
        with grpc.insecure_channel(stack.address(service)) as channel:
            try:
                channel.unary_unary(path, request_serializer=lambda m: m.SerializeToString())(
                    request, metadata=[("authorization", f"Bearer {token}")], timeout=DEADLINE_S
                )
                codes[service] = "OK"
            except grpc.RpcError as err:
                codes[service] = err.code().name
    return codes


def test_a_revoked_token_is_refused_by_every_service_within_the_cache_time(stack, api):
    created = api.tokens.CreateToken(auth_pb2.CreateTokenRequest(name="short-lived", role="viewer"))
    assert created.token.created_by == "admin" and created.secret.startswith("fwk_")
    assert _read_everywhere(stack, created.secret) == dict.fromkeys(READS, "OK")  # now cached everywhere

    revoked = api.tokens.RevokeToken(auth_pb2.RevokeTokenRequest(name="short-lived")).revoked
    assert [t.token_id for t in revoked] == [created.token.token_id]
    at = time.monotonic()
    refused_at: dict[str, float] = {}

    def all_refused() -> bool:
        for service, code in _read_everywhere(stack, created.secret).items():
            if code == "UNAUTHENTICATED":
                refused_at.setdefault(service, time.monotonic() - at)
            else:
                assert code == "OK", (service, code)
        return len(refused_at) == len(READS)

    wait_until(all_refused, CACHE_S + 10, "every service to refuse the revoked token", interval_s=0.2)
    assert max(refused_at.values()) <= CACHE_S + 1.5, refused_at
    listed = api.tokens.ListTokens(auth_pb2.ListTokensRequest(include_revoked=True)).tokens
    mine = [t for t in listed if t.token_id == created.token.token_id]
    assert mine and mine[0].revoked_by == "admin" and mine[0].HasField("revoke_time")
    assert created.token.token_id not in {
        t.token_id for t in api.tokens.ListTokens(auth_pb2.ListTokensRequest()).tokens
    }


def test_the_cli_creates_uses_and_revokes_a_token(stack):
    created = stack.cli("tokens", "create", "ci-bot", "--role", "viewer", "--expires", "1d")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("fwk_") and "\n" not in secret, "the secret alone on stdout"

    whoami = stack.cli("tokens", "whoami", "--json", token=secret)
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout) == {"name": "ci-bot", "roles": ["viewer"], "kind": "token"}
    assert stack.cli("models", "list", token=secret).returncode == 0
    denied = stack.cli("tokens", "list", token=secret)
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr, denied.stderr

    listed = json.loads(stack.cli("tokens", "list", "--json").stdout)["tokens"]
    bot = [t for t in listed if t["name"] == "ci-bot"]
    assert len(bot) == 1 and bot[0]["role"] == "viewer" and "expire_time" in bot[0]
    assert secret not in json.dumps(listed), "secrets are never listed"

    assert stack.cli("tokens", "revoke", "ci-bot").returncode == 0
    refused = wait_until(
        lambda: (r := stack.cli("models", "list", token=secret)).returncode != 0 and r,
        CACHE_S + 10,
        "the CLI with the revoked token to be refused",
        interval_s=0.5,
    )
    assert "UNAUTHENTICATED" in refused.stderr, refused.stderr


def test_jwts_from_the_identity_provider_are_accepted_with_their_roles(stack, idp):
    def whoami(token: str) -> auth_pb2.WhoAmIResponse:
        with grpc.insecure_channel(stack.address("registry")) as channel:
            stub = auth_pb2_grpc.TokenServiceStub(channel)
            return stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=5)

    def as_jwt(token: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token}")]

    deployer = idp.token("dora@example.com", None, realm_access={"roles": ["deployer", "offline_access"]})
    me = whoami(deployer)
    assert (me.name, list(me.roles), me.kind) == ("dora@example.com", ["deployer"], "jwt")

    with grpc.insecure_channel(stack.address("registry")) as channel:
        set_alias = channel.unary_unary(
            "/flywheel.v1.RegistryService/SetAlias", request_serializer=lambda m: m.SerializeToString()
        )
        request = registry_pb2.SetAliasRequest(name="m", alias="production", version=1)
        with pytest.raises(grpc.RpcError) as denied:
            set_alias(request, metadata=as_jwt(deployer), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "needs the role admin; dora@example.com has deployer" in denied.value.details()
        for bad in (
            idp.token("eve", None, realm_access={"roles": ["admin"]}, ttl_s=-30),  # expired
            idp.token("eve", None, realm_access={"roles": ["admin"]}, aud="another-api"),
            idp.token("eve", None, realm_access={"roles": ["admin"]}, iss="https://evil.example"),
            Issuer().token("eve", None, realm_access={"roles": ["admin"]}),  # another provider's key
        ):
            with pytest.raises(grpc.RpcError) as refused:
                set_alias(request, metadata=as_jwt(bad), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
