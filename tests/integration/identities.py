"""API tokens minted straight into a database's token store, as `flywheel tokens create` would:
the tests' own identities for services they start themselves (and for states the API cannot make,
such as a token that expired an hour ago)."""

from __future__ import annotations

from datetime import datetime

from flywheel import db
from flywheel.auth import tokens

CREATED_BY = "tests"


async def mint(dsn: str, name: str, role: str, *, expires_at: datetime | None = None, revoked: bool = False) -> str:
    """A token for `name` with `role` in the database at `dsn` (its token store migrated first)."""
    pool = await db.connect(dsn, tokens.SCHEMA, min_size=1, max_size=1)
    try:
        await tokens.migrate(pool)
        async with pool.acquire() as conn:
            info, token = await tokens.mint(conn, name, role, CREATED_BY, expires_at)
            if revoked:
                await tokens.revoke(conn, info.token_id, CREATED_BY)
    finally:
        await pool.close()
    return token


async def mint_many(dsn: str, wanted: dict[str, tuple[str, str]]) -> dict[str, str]:
    """{key: token} for {key: (name, role)}, over one connection."""
    pool = await db.connect(dsn, tokens.SCHEMA, min_size=1, max_size=1)
    try:
        await tokens.migrate(pool)
        async with pool.acquire() as conn:
            return {key: (await tokens.mint(conn, name, role, CREATED_BY))[1] for key, (name, role) in wanted.items()}
    finally:
        await pool.close()
