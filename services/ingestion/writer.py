"""Turns incoming rows into an immutable dataset version: validate, combine with the parent,
split, hash, profile (CPU work, off the event loop), then store the Parquet and profile
artifacts and commit the version row with its `data.versioned` event (outbox)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pyarrow as pa

from flywheel.app import ServiceContext
from flywheel.bus import Topics, enqueue
from flywheel.bus.serde import new_meta
from flywheel.logging import get_logger
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2
from services.ingestion import store
from services.ingestion.pipeline import PreparedVersion, prepare_version
from services.ingestion.profile import profile_summary, profile_to_json
from services.ingestion.tables import read_parquet

log = get_logger(__name__)


@dataclass
class WriteResult:
    version: ingestion_pb2.DatasetVersion
    created: bool
    stats: ingestion_pb2.IngestStats


class _ParentMoved(Exception):
    """Another writer created a version meanwhile: prepare again on top of it."""


async def write_version(
    ctx: ServiceContext,
    dataset: str,
    raw: pa.Table,
    mode: int,
    source: str,
    *,
    conn: asyncpg.Connection | None = None,
) -> WriteResult:
    for _ in range(5):
        try:
            return await _attempt(ctx, dataset, raw, mode, source, conn)
        except _ParentMoved:
            continue
    raise RuntimeError(f"dataset {dataset!r} kept changing while a version was being written")


async def _attempt(
    ctx: ServiceContext, dataset: str, raw: pa.Table, mode: int, source: str, conn: asyncpg.Connection | None
) -> WriteResult:
    async with _connection(ctx, conn) as c:
        ds = await store.get_dataset(c, dataset)
        parent = await c.fetchrow(
            f"SELECT {store.VERSION_COLUMNS} FROM dataset_versions WHERE dataset = $1 ORDER BY version DESC LIMIT 1",
            dataset,
        )
    parent_table = None
    if parent is not None and mode != common_pb2.WRITE_MODE_REPLACE:
        parent_table = read_parquet(await ctx.artifacts.get_bytes(parent["data_sha"]))
    prepared: PreparedVersion = await asyncio.to_thread(
        prepare_version, raw, ds.schema, ds.invalid_row_policy, parent_table, mode
    )
    stats = prepared.stats.to_proto()

    async with _connection(ctx, conn) as c, _transaction(c, conn is None):
        await store.get_dataset(c, dataset, lock=True)
        existing = await store.find_by_hash(c, dataset, prepared.content_hash)
        if existing is not None:  # identical content: the version already exists, nothing to announce
            return WriteResult(store.to_version(existing), False, stats)
        latest = await c.fetchval("SELECT max(version) FROM dataset_versions WHERE dataset = $1", dataset)
        if (latest or 0) != (parent["version"] if parent else 0):
            raise _ParentMoved
        data_sha, _ = await ctx.artifacts.put_bytes(prepared.parquet)
        profile_sha, _ = await ctx.artifacts.put_bytes(profile_to_json(prepared.profile))
        summary = profile_summary(prepared.profile, ds.schema)
        version = (latest or 0) + 1
        parent_version = parent["version"] if parent else 0
        row = await c.fetchrow(
            "INSERT INTO dataset_versions (dataset, version, content_hash, parent_version, mode, row_count,"
            " train_rows, test_rows, quarantined_rows, data_sha, profile_sha, profile, schema, source)"
            " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
            f" RETURNING {store.VERSION_COLUMNS}",
            dataset,
            version,
            prepared.content_hash,
            parent_version,
            mode or common_pb2.WRITE_MODE_APPEND,
            prepared.row_count,
            prepared.train_rows,
            prepared.test_rows,
            stats.rows_quarantined,
            data_sha,
            profile_sha,
            summary.SerializeToString(),
            ds.schema.SerializeToString(),
            source,
        )
        dv = store.to_version(row)
        event = events_pb2.DataVersioned(
            meta=new_meta("ingestion"),
            dataset=dv.ref,
            parent_version=parent_version,
            mode=dv.mode,
            row_count=dv.row_count,
            train_rows=dv.train_rows,
            test_rows=dv.test_rows,
            quarantined_rows=dv.quarantined_rows,
            profile_uri=dv.profile_uri,
            data_uri=dv.data_uri,
            schema=ds.schema,
        )
        await enqueue(c, Topics.DATA_VERSIONED, dataset, event)
    log.info("dataset version created", dataset=dataset, version=version, rows=dv.row_count, source=source)
    return WriteResult(dv, True, stats)


@contextlib.asynccontextmanager
async def _connection(ctx: ServiceContext, conn: asyncpg.Connection | None) -> AsyncIterator[asyncpg.Connection]:
    if conn is not None:
        yield conn
    else:
        async with ctx.pool.acquire() as own:
            yield own


@contextlib.asynccontextmanager
async def _transaction(conn: asyncpg.Connection, own: bool) -> AsyncIterator[None]:
    if own:
        async with conn.transaction():
            yield
    else:  # the caller's transaction (batch consumer) already surrounds us
        yield
