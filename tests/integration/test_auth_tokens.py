"""API tokens against the real token store: only a hash is stored, revoked and expired tokens are
refused, and the Authenticator's cache keeps the database off the hot path (a hit costs no query,
garbage is remembered briefly) without outliving an expiry or the cache time after a revocation."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from flywheel import db
from flywheel.auth import Authenticator, tokens
from flywheel.errors import NotFound, Unauthenticated, Unavailable


@pytest.fixture
async def pool(infra) -> AsyncIterator[asyncpg.Pool]:
    p = await db.connect(infra.dsn, tokens.SCHEMA)
    await tokens.migrate(p)
    yield p
    await p.close()


@pytest.fixture
def lookups(monkeypatch) -> list[str]:
    """Every token id the Authenticator looks up in the database."""
    seen: list[str] = []
    real = tokens.lookup

    async def counting(conn: asyncpg.Connection, token_id: str) -> Any:
        seen.append(token_id)
        return await real(conn, token_id)

    monkeypatch.setattr(tokens, "lookup", counting)
    return seen


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def _mint(pool: asyncpg.Pool, name: str, role: str = "viewer", **kw: Any) -> tuple[tokens.TokenInfo, str]:
    async with pool.acquire() as conn:
        return await tokens.mint(conn, name, role, "tests", **kw)


async def test_a_minted_token_is_stored_as_a_hash_and_authenticates(infra, pool, unique):
    info, token = await _mint(pool, f"alice-{unique}", "deployer")
    token_id, secret = tokens.parse(token) or ("", "")
    assert token_id == info.token_id and len(secret) == 43
    row = await pool.fetchrow("SELECT * FROM flywheel_auth.tokens WHERE token_id = $1", token_id)
    assert secret not in " ".join(str(v) for v in row.values()), "the secret itself is never stored"
    assert row["secret_hash"] == tokens.secret_hash(secret)

    principal = await Authenticator(infra.settings(), pool).authenticate(_bearer(token))
    assert (principal.name, principal.roles, principal.kind) == (f"alice-{unique}", frozenset({"deployer"}), "token")
    async with pool.acquire() as conn:
        assert token_id in {t.token_id for t in await tokens.list_tokens(conn)}


async def test_wrong_secret_revoked_and_expired_tokens_are_refused(infra, pool, unique):
    auth = Authenticator(infra.settings(), pool)
    info, token = await _mint(pool, f"bob-{unique}")
    forged = f"fwk_{info.token_id}_{secrets.token_urlsafe(32)}"  # a real id, a guessed secret
    with pytest.raises(Unauthenticated, match="invalid token"):
        await auth.authenticate(_bearer(forged))

    _, expired = await _mint(pool, f"old-{unique}", expires_at=datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(Unauthenticated, match="expired"):
        await auth.authenticate(_bearer(expired))

    async with pool.acquire() as conn:
        revoked = await tokens.revoke(conn, f"bob-{unique}", "tests")
        assert [t.token_id for t in revoked] == [info.token_id] and revoked[0].revoked_by == "tests"
        with pytest.raises(NotFound):
            await tokens.revoke(conn, f"bob-{unique}", "tests")  # nothing live left by that name
        assert info.token_id not in {t.token_id for t in await tokens.list_tokens(conn)}
        assert info.token_id in {t.token_id for t in await tokens.list_tokens(conn, include_revoked=True)}
    with pytest.raises(Unauthenticated, match="revoked"):
        await Authenticator(infra.settings(), pool).authenticate(_bearer(token))


async def test_a_cache_hit_does_not_touch_the_database(infra, pool, unique, lookups):
    _, token = await _mint(pool, f"carol-{unique}")
    auth = Authenticator(infra.settings(auth_cache_s=60), pool)
    for _ in range(50):
        assert (await auth.authenticate(_bearer(token))).name == f"carol-{unique}"
    assert len(lookups) == 1
    # A validated token keeps working through a database outage while it is cached ...
    await pool.close()
    assert (await auth.authenticate(_bearer(token))).name == f"carol-{unique}"
    # ... and one not yet seen gets UNAVAILABLE (try again), never UNAUTHENTICATED (drop the token).
    with pytest.raises(Unavailable):
        await auth.authenticate(_bearer(f"fwk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"))


async def test_garbage_is_remembered_briefly(infra, pool, lookups):
    auth = Authenticator(infra.settings(), pool)
    garbage = f"fwk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
    for _ in range(20):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(_bearer(garbage))
    assert len(lookups) == 1, "one query for twenty tries"
    await asyncio.sleep(1.1)  # the negative cache lasts a second: a token minted since then is seen
    with pytest.raises(Unauthenticated):
        await auth.authenticate(_bearer(garbage))
    assert len(lookups) == 2
    # Malformed credentials never reach the database at all.
    for bad in ("not-a-token", "fwk_short_secret", "Bearer"):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(_bearer(bad))
    assert len(lookups) == 2


async def test_expiry_is_honoured_even_while_cached(infra, pool, unique, lookups):
    _, token = await _mint(pool, f"dan-{unique}", expires_at=datetime.now(UTC) + timedelta(seconds=1.5))
    auth = Authenticator(infra.settings(auth_cache_s=60), pool)
    assert (await auth.authenticate(_bearer(token))).name == f"dan-{unique}"
    assert (await auth.authenticate(_bearer(token))).name == f"dan-{unique}"
    assert len(lookups) == 1, "the second call was a cache hit"
    await asyncio.sleep(1.7)
    with pytest.raises(Unauthenticated, match="expired"):
        await auth.authenticate(_bearer(token))


async def test_a_revocation_takes_effect_within_the_cache_time(infra, pool, unique):
    _, token = await _mint(pool, f"erin-{unique}")
    auth = Authenticator(infra.settings(auth_cache_s=0.5), pool)
    assert await auth.authenticate(_bearer(token))
    async with pool.acquire() as conn:
        await tokens.revoke(conn, f"erin-{unique}", "tests")
    await asyncio.sleep(0.6)
    with pytest.raises(Unauthenticated, match="revoked"):
        await auth.authenticate(_bearer(token))
