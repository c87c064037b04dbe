"""Real credentials for tests that build servers without a database: an OIDC identity provider
of the test's own (an RSA key; JWTs signed with PyJWT) whose public key the server trusts.

The server's Authenticator is the production one, configured by settings exactly as a deployment
would configure it, so a test whose subject is not authentication still runs with it on.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from flywheel.auth import Authenticator
from flywheel.config import Settings
from flywheel.grpc import GrpcServer

ISSUER = "https://idp.flywheel.test"
AUDIENCE = "flywheel"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Issuer:
    """An identity provider: one signing key (with a key id), its issuer and audience."""

    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    issuer: str = ISSUER
    audience: str = AUDIENCE

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def token(
        self,
        sub: str = "alice",
        roles: list[str] | tuple[str, ...] | str | None = ("admin",),
        *,
        ttl_s: float = 300,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT; `claims` override or add to the standard ones (None removes a claim, roles too)."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + int(ttl_s),
            "roles": list(roles) if isinstance(roles, tuple) else roles,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def settings(self, key_file: Path, **overrides: Any) -> Settings:
        """Settings of a server that trusts this provider through a PEM key file."""
        key_file.write_bytes(self.public_pem())
        base: dict[str, Any] = {"oidc_issuer": self.issuer, "oidc_audience": self.audience, "oidc_key_file": key_file}
        base.update(overrides)
        return Settings(**base)


def arm(server: GrpcServer, settings: Settings) -> None:
    """What flywheel.app does once the database is up; here there is no token store, only OIDC."""
    server.guard.authenticator = Authenticator(settings, None)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]
