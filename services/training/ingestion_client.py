"""What training asks of ingestion over gRPC: datasets and their versions."""

from __future__ import annotations

import grpc

from flywheel.config import Settings
from flywheel.errors import NotFound, Unavailable
from flywheel.grpc import channel_options
from flywheel.v1 import ingestion_pb2, ingestion_pb2_grpc
from services.training.queue import DataVersion


async def _call(settings: Settings, method: str, request: object) -> object:
    async with grpc.aio.insecure_channel(settings.addr_for("ingestion"), options=channel_options(settings)) as ch:
        stub = ingestion_pb2_grpc.IngestionServiceStub(ch)
        try:
            return await getattr(stub, method)(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(exc.details() or "not found", field="dataset") from exc
            raise Unavailable(f"ingestion: {exc.code().name}: {exc.details()}") from exc


async def get_dataset(settings: Settings, name: str) -> ingestion_pb2.Dataset:
    resp = await _call(settings, "GetDataset", ingestion_pb2.GetDatasetRequest(name=name))
    return resp.dataset  # type: ignore[attr-defined]


async def get_data_version(settings: Settings, name: str, version: int = 0) -> DataVersion:
    resp = await _call(
        settings, "GetDatasetVersion", ingestion_pb2.GetDatasetVersionRequest(dataset=name, version=version)
    )
    v = resp.version  # type: ignore[attr-defined]
    return DataVersion(
        name=v.ref.name,
        version=v.ref.version,
        content_hash=v.ref.content_hash,
        data_uri=v.data_uri,
        schema=v.schema,
        parents=[v.parent_version] if v.parent_version else [],
    )
