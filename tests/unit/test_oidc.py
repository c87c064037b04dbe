"""JWTs from an outside identity provider: accepted with the right issuer, audience and roles claim
(nested too), refused when anything is off; keys from a PEM file, a JWKS file or a JWKS URL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flywheel.auth import Authenticator
from flywheel.auth.oidc import OidcVerifier
from flywheel.config import Settings
from flywheel.errors import Unauthenticated

from .identity import AUDIENCE, ISSUER, Issuer, bearer, new_key


@pytest.fixture(scope="module")
def idp() -> Issuer:
    return Issuer()


@pytest.fixture
def pem_settings(idp, tmp_path) -> Settings:
    return idp.settings(tmp_path / "idp.pem")


class JwksServer:
    """The provider's JWKS endpoint on 127.0.0.1, counting fetches."""

    def __init__(self, document: dict[str, object]) -> None:
        self.document = document
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"


@pytest.fixture
def jwks_server(idp) -> Iterator[JwksServer]:
    server = JwksServer(idp.jwks())
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def test_a_token_with_the_right_issuer_audience_and_roles_is_accepted(idp, pem_settings):
    verifier = OidcVerifier(pem_settings)
    principal = await verifier.verify(idp.token("alice@example.com", ["deployer", "viewer"]))
    assert principal.name == "alice@example.com"
    assert principal.roles == frozenset({"deployer", "viewer"})
    assert principal.kind == "jwt" and principal.expires_at is not None
    # Roles Flywheel does not know are dropped, not trusted.
    assert (await verifier.verify(idp.token("bob", ["viewer", "root", "superuser"]))).roles == {"viewer"}
    # A space- or comma-separated string claim works too.
    assert (await verifier.verify(idp.token("carl", "trainer, producer"))).roles == {"trainer", "producer"}


async def test_roles_from_a_nested_claim_and_the_name_from_a_configured_claim(idp, tmp_path):
    settings = idp.settings(
        tmp_path / "idp.pem", oidc_roles_claim="realm_access.roles", oidc_name_claim="preferred_username"
    )
    verifier = OidcVerifier(settings)
    token = idp.token("uuid-1", None, realm_access={"roles": ["admin"]}, preferred_username="dana")
    principal = await verifier.verify(token)
    assert (principal.name, principal.roles) == ("dana", frozenset({"admin"}))
    # The top-level `roles` claim is not where this provider puts them.
    assert (await verifier.verify(idp.token("x", ["admin"], preferred_username="eve"))).roles == frozenset()


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("wrong issuer", "issuer"),
        ("wrong audience", "(?i)audience"),
        ("no audience", "aud"),
        ("expired", "expired"),
        ("bad signature", "(?i)signature"),
        ("no subject", "'sub'"),
        ("not a jwt", "invalid token"),
    ],
)
async def test_refused(idp, pem_settings, case, expect):
    tokens = {
        "wrong issuer": lambda: idp.token(iss="https://evil.example"),
        "wrong audience": lambda: idp.token(aud="someone-else"),
        "no audience": lambda: idp.token(aud=None),
        "expired": lambda: idp.token(ttl_s=-60),
        "bad signature": lambda: idp.token(key=new_key()),  # same kid, another key: a forgery
        "no subject": lambda: idp.token(sub=None),
        "not a jwt": lambda: "a.b.c",
    }
    with pytest.raises(Unauthenticated, match=expect):
        await OidcVerifier(pem_settings).verify(tokens[case]())


async def test_keys_from_a_jwks_file_and_an_unknown_kid(idp, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    settings = Settings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_key_file=path)
    verifier = OidcVerifier(settings)
    assert (await verifier.verify(idp.token("fay", ["viewer"]))).name == "fay"
    with pytest.raises(Unauthenticated, match="unknown key"):
        await verifier.verify(Issuer().token("mallory", ["admin"]))  # another provider's key and kid
    with pytest.raises(Unauthenticated):
        await verifier.verify(idp.token("mallory", ["admin"], key=new_key()))


async def test_keys_from_a_jwks_url(idp, jwks_server):
    settings = Settings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=jwks_server.url)
    verifier = OidcVerifier(settings)
    assert (await verifier.verify(idp.token("gus", ["trainer"]))).roles == {"trainer"}
    assert (await verifier.verify(idp.token("gus", ["trainer"]))).name == "gus"
    assert jwks_server.fetches == 1, "the key set is fetched once and cached"
    with pytest.raises(Unauthenticated):
        await verifier.verify(Issuer().token("mallory", ["admin"]))  # unknown kid
    with pytest.raises(Unauthenticated):
        await verifier.verify(idp.token("mallory", ["admin"], key=new_key()))  # known kid, wrong key
    with pytest.raises(Unauthenticated):
        await verifier.verify(idp.token("hal", ["viewer"], iss="https://evil.example"))


async def test_the_authenticator_takes_jwts_when_oidc_is_configured(idp, jwks_server, tmp_path: Path):
    settings = Settings(oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=jwks_server.url)
    authenticator = Authenticator(settings, None)
    principal = await authenticator.authenticate(bearer(idp.token("ivy", ["predictor"])))
    assert (principal.name, principal.roles, principal.kind) == ("ivy", frozenset({"predictor"}), "jwt")
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(bearer(idp.token("ivy", ["predictor"], aud="other")))
    # Without OIDC settings a JWT is just an invalid token.
    with pytest.raises(Unauthenticated, match="invalid token"):
        await Authenticator(Settings(), None).authenticate(bearer(idp.token("ivy", ["admin"])))


def test_incomplete_oidc_settings_are_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="JWKS_URL or"):
        OidcVerifier(Settings(oidc_issuer=ISSUER))
    with pytest.raises(ValueError):
        Authenticator(Settings(oidc_issuer=ISSUER), None)
