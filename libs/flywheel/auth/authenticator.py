"""Turns a call's `authorization: Bearer <token>` into a Principal, or refuses it.

Flywheel tokens are checked against PostgreSQL, JWTs against the identity provider's keys. A
validated credential is cached for `auth_cache_s` (revocation takes effect within that on every
replica) so the per-call cost on the hot path is a dictionary lookup; failures are cached briefly
too, so garbage tokens cannot turn into a database query per call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from flywheel.config import Settings
from flywheel.errors import Unauthenticated, Unavailable

from . import tokens
from .oidc import OidcVerifier
from .principal import Principal

AUTHORIZATION = "authorization"
_MAX_CACHED = 10_000
_NEGATIVE_S = 1.0


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, credential = text.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return credential.strip()
    raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>' metadata")


class Authenticator:
    def __init__(self, settings: Settings, pool: asyncpg.Pool | None) -> None:
        self._pool = pool
        self._ttl = settings.auth_cache_s
        self._timeout = settings.connect_timeout_s
        self._oidc = OidcVerifier(settings) if settings.oidc_issuer else None
        self._good: dict[str, tuple[Principal, float]] = {}
        self._bad: dict[str, tuple[str, float]] = {}

    async def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        credential = bearer(metadata)
        now = time.monotonic()
        hit = self._good.get(credential)
        if hit is not None and hit[1] > now and (hit[0].expires_at is None or hit[0].expires_at > time.time()):
            return hit[0]
        miss = self._bad.get(credential)
        if miss is not None and miss[1] > now:
            raise Unauthenticated(miss[0])
        try:
            principal = await self._verify(credential)
        except Unauthenticated as exc:
            _bounded_put(self._bad, credential, (str(exc), now + _NEGATIVE_S))
            raise
        _bounded_put(self._good, credential, (principal, now + self._ttl))
        return principal

    def forget(self) -> None:
        """Drops every cached decision (a revocation was announced)."""
        self._good.clear()
        self._bad.clear()

    async def _verify(self, credential: str) -> Principal:
        parsed = tokens.parse(credential)
        if parsed is not None:
            return await self._verify_token(*parsed)
        if self._oidc is not None and credential.count(".") == 2:
            return await self._oidc.verify(credential)
        raise Unauthenticated("invalid token")

    async def _verify_token(self, token_id: str, secret: str) -> Principal:
        if self._pool is None:
            raise Unavailable("token store not connected")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                found = await asyncio.wait_for(tokens.lookup(conn, token_id), self._timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise Unavailable(f"token store unavailable: {exc!r}") from exc
        if found is None or not tokens.matches(secret, found[1]):
            raise Unauthenticated("invalid token")
        info = found[0]
        if info.revoked_at is not None:
            raise Unauthenticated(f"token {info.token_id} was revoked")
        expires = info.expires_at.timestamp() if info.expires_at else None
        if expires is not None and expires <= datetime.now(UTC).timestamp():
            raise Unauthenticated(f"token {info.token_id} expired")
        return Principal(info.name, frozenset({info.role}), "token", expires)


def _bounded_put(cache: dict[str, Any], key: str, value: Any) -> None:
    if len(cache) >= _MAX_CACHED:  # oldest first: dicts keep insertion order
        for old in list(cache)[: _MAX_CACHED // 10]:
            del cache[old]
    cache.pop(key, None)
    cache[key] = value
