"""Clients for Flywheel's own services, used by the others: one place for the calls and for
turning gRPC errors back into domain errors (NOT_FOUND -> NotFound, the rest -> Unavailable)."""

from __future__ import annotations

import hashlib
import io

import grpc
import pyarrow as pa

from flywheel.config import Settings
from flywheel.errors import FailedPrecondition, NotFound, Unavailable
from flywheel.grpc import channel_options
from flywheel.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)


def _channel(settings: Settings, service: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(settings.addr_for(service), options=channel_options(settings))


def _translate(exc: grpc.aio.AioRpcError, service: str) -> Exception:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or "not found")
    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(exc.details() or "failed precondition")
    return Unavailable(f"{service}: {exc.code().name}: {exc.details()}")


async def production_models(settings: Settings) -> list[registry_pb2.Model]:
    models: list[registry_pb2.Model] = []
    token = ""
    async with _channel(settings, "registry") as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        while True:
            try:
                resp = await stub.ListModels(
                    registry_pb2.ListModelsRequest(alias="production", page_token=token), timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                raise _translate(exc, "registry") from exc
            models.extend(resp.models)
            token = resp.next_page_token
            if not token:
                return models


async def model_version(settings: Settings, name: str, version: int = 0, alias: str = "") -> registry_pb2.ModelVersion:
    request = registry_pb2.GetModelVersionRequest(name=name)
    if alias:
        request.alias = alias
    elif version:
        request.version = version
    async with _channel(settings, "registry") as ch:
        try:
            resp = await registry_pb2_grpc.RegistryServiceStub(ch).GetModelVersion(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "registry") from exc
    return resp.version


async def download(settings: Settings, name: str, version: int) -> tuple[bytes, str]:
    """The artifact's bytes, verified against the sha256 the registry announces."""
    parts: list[bytes] = []
    sha = ""
    async with _channel(settings, "registry") as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        try:
            async for msg in stub.DownloadArtifact(
                registry_pb2.DownloadArtifactRequest(name=name, version=version), timeout=120
            ):
                sha = sha or msg.sha256
                parts.append(msg.chunk)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "registry") from exc
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != sha:
        raise Unavailable(f"artifact of {name} v{version} failed its checksum")
    return data, sha


async def report_staging(
    settings: Settings, ref: common_pb2.ModelRef, report: registry_pb2.StagingReport, causation_id: str
) -> registry_pb2.PromotionDecision:
    async with _channel(settings, "registry") as ch:
        try:
            resp = await registry_pb2_grpc.RegistryServiceStub(ch).ReportStagingChecks(
                registry_pb2.ReportStagingChecksRequest(model=ref, report=report, causation_id=causation_id),
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "registry") from exc
    return resp.decision


async def test_split(settings: Settings, dataset: common_pb2.DatasetRef, columns: list[str], limit: int) -> pa.Table:
    """Up to `limit` rows of a dataset version's test split, asked of ingestion."""
    tables: list[pa.Table] = []
    rows = 0
    async with _channel(settings, "ingestion") as ch:
        stub = ingestion_pb2_grpc.IngestionServiceStub(ch)
        request = ingestion_pb2.ReadDatasetVersionRequest(
            dataset=dataset.name, version=dataset.version, split=common_pb2.SPLIT_TEST, columns=columns
        )
        try:
            async for msg in stub.ReadDatasetVersion(request, timeout=120):
                tables.append(pa.ipc.open_stream(io.BytesIO(msg.data)).read_all())
                rows += msg.rows
                if rows >= limit:
                    break
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "ingestion") from exc
    return pa.concat_tables(tables).slice(0, limit) if tables else pa.table({})


async def dataset_version(settings: Settings, dataset: common_pb2.DatasetRef) -> ingestion_pb2.DatasetVersion:
    async with _channel(settings, "ingestion") as ch:
        try:
            resp = await ingestion_pb2_grpc.IngestionServiceStub(ch).GetDatasetVersion(
                ingestion_pb2.GetDatasetVersionRequest(dataset=dataset.name, version=dataset.version), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "ingestion") from exc
    return resp.version


async def dataset(settings: Settings, name: str) -> ingestion_pb2.Dataset:
    async with _channel(settings, "ingestion") as ch:
        try:
            resp = await ingestion_pb2_grpc.IngestionServiceStub(ch).GetDataset(
                ingestion_pb2.GetDatasetRequest(name=name), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, "ingestion") from exc
    return resp.dataset
