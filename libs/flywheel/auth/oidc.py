"""JWTs from an outside identity provider (OIDC), validated with PyJWT: signature against the
provider's keys (a JWKS URL or a key file), issuer, audience, expiry; roles from a claim."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jwt
from jwt import PyJWKClient, PyJWKSet

from flywheel.config import Settings
from flywheel.errors import Unauthenticated, Unavailable

from .principal import Principal
from .roles import ALL_ROLES


class OidcVerifier:
    def __init__(self, settings: Settings) -> None:
        if not settings.oidc_issuer:
            raise ValueError("OIDC needs FLYWHEEL_OIDC_ISSUER")
        if not (settings.oidc_jwks_url or settings.oidc_key_file):
            raise ValueError("OIDC needs FLYWHEEL_OIDC_JWKS_URL or FLYWHEEL_OIDC_KEY_FILE")
        self._issuer = settings.oidc_issuer
        self._audience = settings.oidc_audience
        self._algorithms = list(settings.oidc_algorithms)
        self._roles_claim = settings.oidc_roles_claim
        self._name_claim = settings.oidc_name_claim
        self._jwks_client = PyJWKClient(settings.oidc_jwks_url, cache_keys=True) if settings.oidc_jwks_url else None
        self._static_keys: Any = _load_key_file(settings.oidc_key_file.read_text()) if settings.oidc_key_file else None

    async def verify(self, token: str) -> Principal:
        try:
            key = await self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss"] + (["aud"] if self._audience else [])},
            )
        except jwt.PyJWKClientConnectionError as exc:  # the provider is away: not the caller's fault
            raise Unavailable(f"identity provider keys unavailable: {exc}") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        name = claims.get(self._name_claim)
        if not isinstance(name, str) or not name:
            raise Unauthenticated(f"token has no {self._name_claim!r} claim")
        return Principal(name, _roles(claims, self._roles_claim), "jwt", float(claims["exp"]))

    async def _key(self, token: str) -> Any:
        if self._jwks_client is not None:
            # Fetches the provider's keys on first use and on an unknown kid: network IO, off the loop.
            signing = await asyncio.to_thread(self._jwks_client.get_signing_key_from_jwt, token)
            return signing.key
        keys = self._static_keys
        if isinstance(keys, PyJWKSet):
            kid = jwt.get_unverified_header(token).get("kid")
            for k in keys.keys:
                if kid is None or k.key_id == kid:
                    return k.key
            raise Unauthenticated("token signed with an unknown key")
        return keys


def _load_key_file(text: str) -> Any:
    """A JWKS document ({"keys": [...]}) or a PEM public key."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return PyJWKSet.from_dict(json.loads(stripped))
    return text


def _roles(claims: dict[str, Any], path: str) -> frozenset[str]:
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list):
        return frozenset()
    return frozenset(r for r in value if isinstance(r, str) and r in ALL_ROLES)
