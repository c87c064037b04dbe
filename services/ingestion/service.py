"""gRPC surface of the ingestion service: datasets, ingest (stream or URI), versions, reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pyarrow as pa
import pyarrow.csv as pacsv

from flywheel.app import ServiceContext
from flywheel.config import Settings
from flywheel.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from flywheel.grpc import GrpcServer, stream_header
from flywheel.paging import decode_token, next_token, page_size
from flywheel.v1 import common_pb2, ingestion_pb2, ingestion_pb2_grpc
from services.ingestion import datasets, store
from services.ingestion.decode_guard import BINARY_FORMATS, DecodeGuard
from services.ingestion.sources import local_path
from services.ingestion.tables import ReadLimits, field_names, read_csv, read_parquet
from services.ingestion.versioning import SPLIT_COLUMN
from services.ingestion.writer import write_version

DEFAULT_READ_BATCH = 10_000
SPLIT_NAMES = {common_pb2.SPLIT_TRAIN: "train", common_pb2.SPLIT_TEST: "test"}


class IngestionService(ingestion_pb2_grpc.IngestionServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._pool = ctx.pool
        self._limits = read_limits(ctx.settings)
        # Arrow and Parquet uploads are decoded in a child process under a memory limit.
        self._guard = DecodeGuard(ctx.settings.home / "tmp", self._limits)

    async def CreateDataset(
        self, request: ingestion_pb2.CreateDatasetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.CreateDatasetResponse:
        ds = datasets.check_dataset(ingestion_pb2.Dataset.FromString(request.dataset.SerializeToString()))
        ds.ClearField("create_time")
        ds.latest_version = 0
        async with self._pool.acquire() as conn:
            try:
                await conn.execute("INSERT INTO datasets (name, spec) VALUES ($1, $2)", ds.name, ds.SerializeToString())
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"dataset {ds.name!r} already exists", field="dataset.name") from None
            return ingestion_pb2.CreateDatasetResponse(dataset=await store.get_dataset(conn, ds.name))

    async def GetDataset(
        self, request: ingestion_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.GetDatasetResponse:
        async with self._pool.acquire() as conn:
            return ingestion_pb2.GetDatasetResponse(dataset=await store.get_dataset(conn, request.name))

    async def ListDatasets(
        self, request: ingestion_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.ListDatasetsResponse:
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT d.spec, d.created_at, coalesce(max(v.version), 0) AS latest FROM datasets d"
                " LEFT JOIN dataset_versions v ON v.dataset = d.name GROUP BY d.name ORDER BY d.name"
                " LIMIT $1 OFFSET $2",
                size,
                offset,
            )
        return ingestion_pb2.ListDatasetsResponse(
            datasets=[store.to_dataset(r) for r in rows], next_page_token=next_token(offset, size, len(rows))
        )

    async def IngestDataset(
        self,
        request_iterator: AsyncIterator[ingestion_pb2.IngestDatasetRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ingestion_pb2.IngestDatasetResponse:
        header, it = await stream_header(request_iterator)
        async with self._pool.acquire() as conn:
            ds = await store.get_dataset(conn, header.dataset)
        parts: list[bytes] = []
        limit, received = self._ctx.settings.ingestion_max_upload_mb * 1024 * 1024, 0
        async for msg in it:
            if msg.WhichOneof("payload") != "chunk":
                raise InvalidArgument("only chunks may follow the header", field="chunk")
            received += len(msg.chunk)
            if received > limit:  # refused before it is buffered: the whole upload is held in memory
                raise ResourceExhausted(
                    f"upload exceeds {limit} bytes (FLYWHEEL_INGESTION_MAX_UPLOAD_MB)", field="chunk"
                )
            parts.append(msg.chunk)
        if not received:
            raise InvalidArgument("no data after the header", field="chunk")
        fmt = header.format or ingestion_pb2.DATA_FORMAT_CSV
        raw = await self._decode(parts, fmt, ds.schema, header.csv_delimiter or ",")
        del parts
        result = await write_version(self._ctx, header.dataset, raw, header.mode, "stream")
        return ingestion_pb2.IngestDatasetResponse(version=result.version, created=result.created, stats=result.stats)

    async def IngestFromUri(
        self, request: ingestion_pb2.IngestFromUriRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.IngestFromUriResponse:
        async with self._pool.acquire() as conn:
            ds = await store.get_dataset(conn, request.dataset)
        source: Sequence[bytes] | Path
        limit = self._ctx.settings.ingestion_max_upload_mb * 1024 * 1024
        if request.uri.startswith("sha256:"):
            source = await self._artifact(request.uri.removeprefix("sha256:"), limit)
            path = Path(request.uri)
        else:
            path = source = local_path(request.uri, self._ctx.settings.ingest_roots)
            await asyncio.to_thread(_check_file, path, limit)
        fmt = request.format or _format_from_suffix(path.suffix)
        raw = await self._decode(source, fmt, ds.schema, ",")
        result = await write_version(self._ctx, request.dataset, raw, request.mode, f"uri:{request.uri}")
        return ingestion_pb2.IngestFromUriResponse(version=result.version, created=result.created, stats=result.stats)

    async def GetDatasetVersion(
        self, request: ingestion_pb2.GetDatasetVersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.GetDatasetVersionResponse:
        async with self._pool.acquire() as conn:
            row = await store.get_version(conn, request.dataset, request.version)
        return ingestion_pb2.GetDatasetVersionResponse(version=store.to_version(row))

    async def ListDatasetVersions(
        self, request: ingestion_pb2.ListDatasetVersionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingestion_pb2.ListDatasetVersionsResponse:
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        async with self._pool.acquire() as conn:
            await store.get_dataset(conn, request.dataset)
            rows = await conn.fetch(
                f"SELECT {store.VERSION_COLUMNS} FROM dataset_versions WHERE dataset = $1"
                " ORDER BY version DESC LIMIT $2 OFFSET $3",
                request.dataset,
                size,
                offset,
            )
        return ingestion_pb2.ListDatasetVersionsResponse(
            versions=[store.to_version(r) for r in rows], next_page_token=next_token(offset, size, len(rows))
        )

    async def ReadDatasetVersion(
        self, request: ingestion_pb2.ReadDatasetVersionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ingestion_pb2.ReadDatasetVersionResponse]:
        async with self._pool.acquire() as conn:
            row = await store.get_version(conn, request.dataset, request.version)
        ref = store.to_version(row).ref
        table = read_parquet(await self._ctx.artifacts.get_bytes(row["data_sha"]))
        table = await asyncio.to_thread(_select, table, request.split, list(request.columns))
        batch_rows = request.batch_rows or DEFAULT_READ_BATCH
        if batch_rows < 0:
            raise InvalidArgument("must be >= 0", field="batch_rows")
        fmt = request.format or ingestion_pb2.DATA_FORMAT_ARROW_IPC
        if fmt not in (ingestion_pb2.DATA_FORMAT_ARROW_IPC, ingestion_pb2.DATA_FORMAT_CSV):
            raise InvalidArgument("ARROW_IPC or CSV", field="format")
        first = True
        for batch in table.to_batches(max_chunksize=batch_rows) or [pa.record_batch([], schema=table.schema)]:
            data = await asyncio.to_thread(_encode, batch, fmt, first)
            msg = ingestion_pb2.ReadDatasetVersionResponse(data=data, rows=batch.num_rows)
            if first:
                msg.ref.CopyFrom(ref)
                first = False
            yield msg

    async def _artifact(self, sha256: str, limit: int) -> list[bytes]:
        """A stored artifact's chunks, refused as soon as they pass the upload cap (it may be any
        artifact: a model of a gigabyte, say)."""
        chunks, size = [], 0
        async for chunk in self._ctx.artifacts.get(sha256):
            size += len(chunk)
            if size > limit:
                raise ResourceExhausted(
                    f"artifact exceeds {limit} bytes (FLYWHEEL_INGESTION_MAX_UPLOAD_MB)", field="uri"
                )
            chunks.append(chunk)
        return chunks

    async def _decode(
        self, source: Sequence[bytes] | Path, fmt: int, schema: common_pb2.Schema, delimiter: str
    ) -> pa.Table:
        """Uploaded bytes (their chunks, or a file already checked) -> text columns for validation."""
        if fmt in BINARY_FORMATS:
            return await self._guard.decode(source, fmt, field_names(schema))
        if fmt != ingestion_pb2.DATA_FORMAT_CSV:
            raise InvalidArgument("CSV, ARROW_IPC or PARQUET", field="format")
        # CSV decodes to about its own size, in this process (no decompression).
        data = await asyncio.to_thread(source.read_bytes) if isinstance(source, Path) else b"".join(source)
        return await asyncio.to_thread(read_csv, data, schema, delimiter, self._limits)


def _format_from_suffix(suffix: str) -> int:
    formats = {
        ".csv": ingestion_pb2.DATA_FORMAT_CSV,
        ".arrow": ingestion_pb2.DATA_FORMAT_ARROW_IPC,
        ".arrows": ingestion_pb2.DATA_FORMAT_ARROW_IPC,
        ".parquet": ingestion_pb2.DATA_FORMAT_PARQUET,
    }
    if suffix.lower() not in formats:
        raise InvalidArgument("cannot infer the format from the file's extension; set format", field="format")
    return formats[suffix.lower()]


def _select(table: pa.Table, split: common_pb2.Split.ValueType, columns: list[str]) -> pa.Table:
    if split:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table[SPLIT_COLUMN], SPLIT_NAMES[split]))
    if columns:
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise InvalidArgument(f"unknown columns {missing}", field="columns")
        table = table.select(columns)
    return table


def _encode(batch: pa.RecordBatch, fmt: int, header: bool) -> bytes:
    sink = pa.BufferOutputStream()
    if fmt == ingestion_pb2.DATA_FORMAT_CSV:
        pacsv.write_csv(pa.Table.from_batches([batch]), sink, pacsv.WriteOptions(include_header=header))
    else:
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    server.add_servicer(ingestion_pb2_grpc.add_IngestionServiceServicer_to_server, IngestionService(ctx))
    return [ingestion_pb2.DESCRIPTOR.services_by_name["IngestionService"].full_name]


def read_limits(settings: Settings) -> ReadLimits:
    return ReadLimits(
        max_rows=settings.ingestion_max_rows,
        max_decoded_bytes=settings.ingestion_max_decoded_mb * 1024 * 1024,
        max_cell_chars=settings.ingestion_max_cell_chars,
    )


def _check_file(path: Path, limit: int) -> None:
    if not path.is_file():
        raise NotFound("no such file under the ingest roots", field="uri")
    if path.stat().st_size > limit:
        raise ResourceExhausted(f"file exceeds {limit} bytes (FLYWHEEL_INGESTION_MAX_UPLOAD_MB)", field="uri")
