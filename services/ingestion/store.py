"""Ingestion tables: datasets and versions, read back as protobuf messages."""

from __future__ import annotations

import asyncpg

from flywheel.errors import NotFound
from flywheel.pbutil import timestamp
from flywheel.v1 import common_pb2, ingestion_pb2
from services.ingestion.datasets import NAME


async def get_dataset(conn: asyncpg.Connection, name: str, *, lock: bool = False) -> ingestion_pb2.Dataset:
    if not NAME.match(name):
        # No dataset has such a name (a NUL, say, which PostgreSQL text cannot even hold): not looked
        # up, and not repeated, since a request or record key may carry anything.
        raise NotFound("no such dataset (not a valid dataset name)", field="dataset")
    row = await conn.fetchrow(
        "SELECT d.spec, d.created_at, coalesce(max(v.version), 0) AS latest FROM datasets d"
        " LEFT JOIN dataset_versions v ON v.dataset = d.name WHERE d.name = $1 GROUP BY d.name",
        name,
    )
    if row is None:
        raise NotFound(f"no dataset named {name!r}", field="dataset")
    if lock:  # serialises version numbering per dataset
        await conn.execute("SELECT 1 FROM datasets WHERE name = $1 FOR UPDATE", name)
    return to_dataset(row)


def to_dataset(row: asyncpg.Record) -> ingestion_pb2.Dataset:
    ds = ingestion_pb2.Dataset.FromString(row["spec"])
    ds.create_time.CopyFrom(timestamp(row["created_at"]))
    ds.latest_version = row["latest"]
    return ds


VERSION_COLUMNS = (
    "dataset, version, content_hash, parent_version, mode, row_count, train_rows, test_rows, quarantined_rows,"
    " data_sha, profile_sha, profile, schema, source, created_at"
)


def to_version(row: asyncpg.Record) -> ingestion_pb2.DatasetVersion:
    return ingestion_pb2.DatasetVersion(
        ref=common_pb2.DatasetRef(name=row["dataset"], version=row["version"], content_hash=row["content_hash"]),
        parent_version=row["parent_version"],
        mode=row["mode"],
        row_count=row["row_count"],
        train_rows=row["train_rows"],
        test_rows=row["test_rows"],
        quarantined_rows=row["quarantined_rows"],
        data_uri=f"sha256:{row['data_sha']}",
        profile_uri=f"sha256:{row['profile_sha']}",
        profile=ingestion_pb2.ProfileSummary.FromString(row["profile"]),
        schema=common_pb2.Schema.FromString(row["schema"]),
        source=row["source"],
        create_time=timestamp(row["created_at"]),
    )


async def get_version(conn: asyncpg.Connection, dataset: str, version: int) -> asyncpg.Record:
    """Version `version` of `dataset`, or its latest when `version` is 0."""
    if not NAME.match(dataset):
        await get_dataset(conn, dataset)  # NotFound, without a query
    if version:
        row = await conn.fetchrow(
            f"SELECT {VERSION_COLUMNS} FROM dataset_versions WHERE dataset = $1 AND version = $2", dataset, version
        )
    else:
        row = await conn.fetchrow(
            f"SELECT {VERSION_COLUMNS} FROM dataset_versions WHERE dataset = $1 ORDER BY version DESC LIMIT 1",
            dataset,
        )
    if row is None:
        await get_dataset(conn, dataset)
        what = f"version {version}" if version else "versions yet"
        raise NotFound(f"dataset {dataset!r} has no {what}", field="version")
    return row


async def find_by_hash(conn: asyncpg.Connection, dataset: str, content_hash: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {VERSION_COLUMNS} FROM dataset_versions WHERE dataset = $1 AND content_hash = $2",
        dataset,
        content_hash,
    )
