"""Which database errors mean "the database is away" (retry the whole unit of work later) rather than
"this work is wrong" (retrying the same statements fails the same way)."""

from __future__ import annotations

import asyncpg

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the connection was closed under us
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    ConnectionError,  # refused or reset: the server is not there
)
