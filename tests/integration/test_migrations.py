"""Forward-only migrations: ordered, recorded, applied once even when replicas start together."""

from __future__ import annotations

import asyncio

import pytest

from flywheel import db
from flywheel.errors import StartupError


def _write(dir_, name: str, sql: str) -> None:
    dir_.mkdir(exist_ok=True)
    (dir_ / name).write_text(sql)


async def test_replicas_starting_together_apply_each_file_once(infra, unique, tmp_path):
    schema = f"m_{unique}"
    mig = tmp_path / "migrations"
    _write(mig, "0001_create.sql", "CREATE TABLE things (id int PRIMARY KEY, note text);")
    _write(mig, "0002_seed.sql", "INSERT INTO things VALUES (1, 'first');")
    pools = [await db.connect(infra.dsn, schema) for _ in range(4)]
    try:
        results = await asyncio.gather(*(db.migrate(p, schema, [db.LIBRARY_MIGRATIONS, mig]) for p in pools))
        applied = [name for r in results for name in r]  # one replica applied all, the others none
        assert applied == [
            "0000_flywheel_bus.sql",
            "0001_flywheel_offsets.sql",
            "0002_flywheel_dead_letters.sql",
            "0001_create.sql",
            "0002_seed.sql",
        ]
        assert await pools[0].fetchval("SELECT count(*) FROM things") == 1
        tables = {
            r["table_name"]
            for r in await pools[0].fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        }
        assert {"outbox", "inbox", "things", "schema_migrations"} <= tables

        _write(mig, "0003_more.sql", "ALTER TABLE things ADD COLUMN extra int;")
        assert await db.migrate(pools[1], schema, [db.LIBRARY_MIGRATIONS, mig]) == ["0003_more.sql"]
        assert await db.migrate(pools[2], schema, [db.LIBRARY_MIGRATIONS, mig]) == []
    finally:
        for p in pools:
            await p.close()


async def test_an_edited_migration_is_refused(infra, unique, tmp_path):
    schema = f"m_{unique}"
    mig = tmp_path / "migrations"
    _write(mig, "0001_create.sql", "CREATE TABLE t (id int);")
    pool = await db.connect(infra.dsn, schema)
    try:
        await db.migrate(pool, schema, [mig])
        _write(mig, "0001_create.sql", "CREATE TABLE t (id bigint);")
        with pytest.raises(StartupError, match=r"0001_create\.sql in schema .* changed after it was applied"):
            await db.migrate(pool, schema, [mig])
    finally:
        await pool.close()
