"""Clients for Flywheel's own services, used by the others: every inter-service call goes through
here, and so does turning gRPC errors back into domain errors.

The caller's mistakes (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...) come back as the same
domain error and are never worth retrying; a dependency that is away or failing (UNAVAILABLE,
DEADLINE_EXCEEDED, INTERNAL, ...) comes back as `Unavailable`, the one error `flywheel.retry`
retries by default.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import TypeVar

import grpc
import pyarrow as pa

from flywheel import errors
from flywheel.config import Settings
from flywheel.errors import Unavailable
from flywheel.grpc import aio_channel
from flywheel.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    monitoring_pb2,
    monitoring_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    serving_pb2,
    serving_pb2_grpc,
)

CHUNK = 1024 * 1024
T = TypeVar("T")
_CALLER_ERRORS: dict[grpc.StatusCode, type[errors.FlywheelError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.DATA_LOSS: errors.DataLoss,
}


def _channel(settings: Settings, service: str) -> grpc.aio.Channel:
    return aio_channel(settings, service)


def translate(exc: grpc.aio.AioRpcError, service: str) -> errors.FlywheelError:
    """The domain error for a failed call to `service` (see the module docstring)."""
    code, details = exc.code(), exc.details() or ""
    cls = _CALLER_ERRORS.get(code)
    if cls is not None:
        return cls(details or f"{service}: {code.name}")
    return Unavailable(f"{service}: {code.name}: {details}")


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
                raise translate(exc, "registry") from exc
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
            raise translate(exc, "registry") from exc
    return resp.version


async def _unary(settings: Settings, service: str, call: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
    """`call` on a fresh channel to `service`, its gRPC errors turned back into domain errors."""
    async with _channel(settings, service) as ch:
        try:
            return await call(ch)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, service) from exc


async def rollback(settings: Settings, request: registry_pb2.RollbackRequest) -> registry_pb2.RollbackResponse:
    return await _unary(settings, "registry", lambda ch: registry_pb2_grpc.RegistryServiceStub(ch).Rollback(
        request, timeout=10
    ))  # fmt: skip


async def set_canary(settings: Settings, request: serving_pb2.SetCanaryRequest) -> serving_pb2.Deployment:
    stub = serving_pb2_grpc.ServingAdminStub
    return (await _unary(settings, "serving", lambda ch: stub(ch).SetCanary(request, timeout=10))).deployment


async def set_shadow(settings: Settings, request: serving_pb2.SetShadowRequest) -> serving_pb2.Deployment:
    stub = serving_pb2_grpc.ServingAdminStub
    return (await _unary(settings, "serving", lambda ch: stub(ch).SetShadow(request, timeout=10))).deployment


async def clear_traffic(settings: Settings, request: serving_pb2.ClearTrafficRequest) -> serving_pb2.Deployment:
    stub = serving_pb2_grpc.ServingAdminStub
    return (await _unary(settings, "serving", lambda ch: stub(ch).ClearTraffic(request, timeout=10))).deployment


async def deployment(settings: Settings, model: str) -> serving_pb2.Deployment:
    request = serving_pb2.GetDeploymentRequest(model_name=model)
    stub = serving_pb2_grpc.ServingAdminStub
    return (await _unary(settings, "serving", lambda ch: stub(ch).GetDeployment(request, timeout=10))).deployment


async def version_slots(settings: Settings, model: str, version: int, role: int) -> dict[str, tuple[int, int]]:
    """(requests, server-side failures) of each serving slot holding `version` in `role`, from every
    replica's last heartbeat, keyed by replica and load time (a slot counts from its load, and may
    have served in another role before: a canary's slot becomes production's)."""
    out = {}
    for replica in (await deployment(settings, model)).replicas:
        for slot in replica.slots:
            if slot.role == role and slot.model.version == version:
                key = f"{replica.replica}/{replica.pid}/{slot.loaded_at.seconds}.{slot.loaded_at.nanos:09d}"
                out[key] = (slot.stats.request_count, slot.stats.error_count)
    return out


async def shadow_comparison(
    settings: Settings, request: monitoring_pb2.GetShadowComparisonRequest
) -> monitoring_pb2.ShadowComparison:
    stub = monitoring_pb2_grpc.MonitoringServiceStub
    response = await _unary(settings, "monitoring", lambda ch: stub(ch).GetShadowComparison(request, timeout=30))
    return response.comparison


async def canary_report(
    settings: Settings, request: monitoring_pb2.GetCanaryReportRequest
) -> monitoring_pb2.CanaryReport:
    stub = monitoring_pb2_grpc.MonitoringServiceStub
    return (await _unary(settings, "monitoring", lambda ch: stub(ch).GetCanaryReport(request, timeout=30))).report


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
            raise translate(exc, "registry") from exc
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
            raise translate(exc, "registry") from exc
    return resp.decision


async def register_model(
    settings: Settings, header: registry_pb2.RegisterModelHeader, artifact: bytes, *, timeout_s: float = 60
) -> registry_pb2.ModelVersion:
    """Registers a version (a header, then the artifact in chunks); idempotent on header.idempotency_key."""

    def requests() -> Iterator[registry_pb2.RegisterModelRequest]:
        yield registry_pb2.RegisterModelRequest(header=header)
        for i in range(0, len(artifact), CHUNK):
            yield registry_pb2.RegisterModelRequest(chunk=artifact[i : i + CHUNK])

    async with _channel(settings, "registry") as ch:
        try:
            resp = await registry_pb2_grpc.RegistryServiceStub(ch).RegisterModel(requests(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "registry") from exc
    return resp.version


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
            raise translate(exc, "ingestion") from exc
    return pa.concat_tables(tables).slice(0, limit) if tables else pa.table({})


async def dataset_version(settings: Settings, dataset: common_pb2.DatasetRef) -> ingestion_pb2.DatasetVersion:
    async with _channel(settings, "ingestion") as ch:
        try:
            resp = await ingestion_pb2_grpc.IngestionServiceStub(ch).GetDatasetVersion(
                ingestion_pb2.GetDatasetVersionRequest(dataset=dataset.name, version=dataset.version), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "ingestion") from exc
    return resp.version


async def dataset(settings: Settings, name: str) -> ingestion_pb2.Dataset:
    async with _channel(settings, "ingestion") as ch:
        try:
            resp = await ingestion_pb2_grpc.IngestionServiceStub(ch).GetDataset(
                ingestion_pb2.GetDatasetRequest(name=name), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "ingestion") from exc
    return resp.dataset


async def drift_alert(
    settings: Settings,
    model: str,
    alert_id: str,
    kind: common_pb2.DriftKind.ValueType = common_pb2.DRIFT_KIND_UNSPECIFIED,
    since: datetime | None = None,
) -> monitoring_pb2.Alert | None:
    """Monitoring's alert `alert_id` on `model` (None: monitoring raised no such alert), looked for
    newest first among the model's alerts of `kind` created at or after `since`."""
    request = monitoring_pb2.ListAlertsRequest(model_name=model, kind=kind, page_size=100)
    if since is not None:
        request.since.FromDatetime(since)
    async with _channel(settings, "monitoring") as ch:
        stub = monitoring_pb2_grpc.MonitoringServiceStub(ch)
        while True:
            try:
                resp = await stub.ListAlerts(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                raise translate(exc, "monitoring") from exc
            for alert in resp.alerts:
                if alert.alert_id == alert_id:
                    return alert
            if not resp.next_page_token:
                return None
            request.page_token = resp.next_page_token
