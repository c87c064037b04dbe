"""gRPC surface of serving: the Open Inference Protocol (KServe v2) on the servicer base that
tritonclient ships, so tritonclient and KServe clients work unchanged, and ServingAdmin."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import replace
from typing import Any, TypeAlias

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

import flywheel
from flywheel import clients
from flywheel.app import ServiceContext
from flywheel.errors import FlywheelError, InvalidArgument
from flywheel.grpc import GrpcServer, status_for
from flywheel.grpc.context import actor
from flywheel.logging import get_logger
from flywheel.paging import decode_token, next_token, page_size
from flywheel.v1 import serving_pb2, serving_pb2_grpc
from services.serving import traffic_rules as rules
from services.serving.models import ModelManager, Slot, feature_rows
from services.serving.prediction_log import PredictionLogger
from services.serving.runtime_state import ServingRuntime
from services.serving.shadow import ShadowMirror
from services.serving.stats import add_counters, sibling_slots
from services.serving.tensors import decode_inputs, encode_outputs
from services.serving.traffic_store import ReplicaRow, split_proto, stored_proto
from services.serving.traffic_sync import TrafficSync

log = get_logger(__name__)
S = serving_pb2
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
PLATFORM = "onnxruntime_onnx"
CONFIG_TYPES = {
    "BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16, "UINT32": mc.TYPE_UINT32,
    "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8, "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64, "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64,
    "BYTES": mc.TYPE_STRING,
}  # fmt: skip


# tritonclient ships no type information, so its servicer base (and its messages) are Any here.
class InferenceService(oip_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        ctx: ServiceContext,
        server: GrpcServer,
        manager: ModelManager,
        logger: PredictionLogger,
        traffic: TrafficSync,
    ) -> None:
        self._ctx = ctx
        self._server = server
        self._manager = manager
        self._logger = logger
        self._traffic = traffic
        self._stale_after_s = rules.stale_after_s(ctx.settings.serving_reconcile_s)
        self.shadow = ShadowMirror(self._spawn, ctx.settings.serving_shadow_max_inflight)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Owned by the service: cancelled and awaited at stop. A constant name keeps this cheap.
        self._ctx.tasks.spawn(coro, name="shadow inference")

    async def ServerLive(self, request: oip.ServerLiveRequest, context: Context) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: oip.ServerReadyRequest, context: Context) -> oip.ServerReadyResponse:
        # Ready means the same as health SERVING: dependencies answer and production models are loaded.
        return oip.ServerReadyResponse(ready=self._server.serving)

    async def ServerMetadata(self, request: oip.ServerMetadataRequest, context: Context) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name="flywheel-serving", version=flywheel.__version__, extensions=[])

    async def ModelReady(self, request: oip.ModelReadyRequest, context: Context) -> oip.ModelReadyResponse:
        try:
            slot, _ = await self._manager.resolve(request.name, request.version)
        except FlywheelError:
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=slot.state == S.SLOT_STATE_READY)

    async def ModelMetadata(self, request: oip.ModelMetadataRequest, context: Context) -> oip.ModelMetadataResponse:
        slot, _ = await self._manager.resolve(request.name, request.version)
        dep = self._manager.deployments.get(request.name)
        versions = sorted({str(s.version) for s in dep.slots()} if dep else {str(slot.version)})
        return oip.ModelMetadataResponse(
            name=request.name,
            versions=versions,
            platform=PLATFORM,
            inputs=[oip.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
                    for t in slot.model.inputs],
            outputs=[oip.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in slot.model.outputs],
        )  # fmt: skip

    async def ModelConfig(self, request: oip.ModelConfigRequest, context: Context) -> oip.ModelConfigResponse:
        slot, _ = await self._manager.resolve(request.name, request.version)
        batch = slot.batching.max_batch_size  # the version's own, when its tags set one
        config = mc.ModelConfig(name=request.name, platform=PLATFORM, backend="onnxruntime", max_batch_size=batch)
        for kind, tensors in (("input", slot.model.inputs), ("output", slot.model.outputs)):
            for t in tensors:
                dims = list(t.shape[1:]) if batch > 0 and t.shape else list(t.shape)
                entry = (mc.ModelInput if kind == "input" else mc.ModelOutput)(
                    name=t.name, data_type=CONFIG_TYPES.get(t.datatype, mc.TYPE_INVALID), dims=dims or [1]
                )
                getattr(config, kind).append(entry)
        if batch > 1:
            config.dynamic_batching.max_queue_delay_microseconds = slot.batching.max_queue_delay_us
        return oip.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: oip.ModelStatisticsRequest, context: Context
    ) -> oip.ModelStatisticsResponse:
        # A worker of a pool answers for the whole pool: its own counts, live, plus every other
        # worker's as of that worker's last heartbeat (at most serving_reconcile_s old).
        out = oip.ModelStatisticsResponse()
        me = self._traffic.store.replica
        for dep in self._manager.deployments.values():
            if request.name and dep.name != request.name:
                continue
            rows = [(r.replica, r.age_s, r.slots) for r in self._traffic.replica_rows(dep.name)]
            others = list(sibling_slots(me, rows, self._stale_after_s))
            for slot in dep.slots():
                if request.version and str(slot.version) != request.version:
                    continue
                stats = slot.stats.to_proto(dep.name, str(slot.version))
                for other in others:
                    if other.model.version == slot.version and other.role == slot.role:
                        add_counters(stats, other.stats)
                out.model_stats.append(stats)
        return out

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        return oip.RepositoryIndexResponse(
            models=[
                oip.RepositoryIndexResponse.ModelIndex(
                    name=dep.name,
                    version=str(dep.production.version) if dep.production else "",
                    state="READY" if dep.production else "UNAVAILABLE",
                    reason=dep.failure.error if dep.failure and not dep.production else "",
                )
                for dep in self._manager.deployments.values()
                if dep.production is not None or not request.ready
            ]
        )

    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: Context
    ) -> oip.RepositoryModelLoadResponse:
        mv = await clients.model_version(self._ctx.settings, request.model_name, alias="production")
        await self._manager.promote(request.model_name, mv.ref.version)
        return oip.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: Context
    ) -> oip.RepositoryModelUnloadResponse:
        await self._manager.unload(request.model_name)
        return oip.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request: oip.ModelInferRequest, context: Context) -> oip.ModelInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[oip.ModelInferRequest], context: Context
    ) -> AsyncIterator[oip.ModelStreamInferResponse]:
        # Errors travel in the stream (as Triton does), so one bad request does not end it.
        async for request in request_iterator:
            try:
                yield oip.ModelStreamInferResponse(infer_response=await self._infer(request))
            except Exception as exc:
                code, message = status_for(exc)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("stream infer failed")
                yield oip.ModelStreamInferResponse(
                    error_message=f"{code.name}: {message}", infer_response=oip.ModelInferResponse(id=request.id)
                )

    async def _infer(self, request: oip.ModelInferRequest) -> oip.ModelInferResponse:
        started = time.perf_counter_ns()
        slot, shadow = await self._manager.resolve(request.model_name, request.model_version)
        limit = self._ctx.settings.grpc_max_message_mb << 20
        try:
            feeds = decode_inputs(request, slot.model.inputs, limit)
            requested = [o.name for o in request.outputs]
            outputs, timing = await slot.infer(feeds)
            tensors, raw = encode_outputs(outputs, requested, limit)
        except Exception:
            slot.record_failure(time.perf_counter_ns() - started)
            raise
        total = time.perf_counter_ns() - started
        slot.record_success(total, timing, rows=len(next(iter(feeds.values()))))
        request_id = request.id
        if shadow is not None:
            request_id = request_id or str(uuid.uuid4())  # both logged answers share it
            self.shadow.offer(shadow.name, shadow.version, functools.partial(self._shadow, shadow, request_id, feeds))
        self._log(slot, request_id, feeds, outputs, total / 1e6)
        return oip.ModelInferResponse(
            model_name=request.model_name,
            model_version=str(slot.version),
            id=request.id,
            outputs=tensors,
            raw_output_contents=raw,
        )

    async def _shadow(self, slot: Slot, request_id: str, feeds: dict[str, np.ndarray]) -> None:
        started = time.perf_counter_ns()
        try:
            outputs, timing = await slot.infer(feeds)
        except Exception as exc:  # a failing shadow never affects the caller
            slot.record_failure(time.perf_counter_ns() - started)
            log.warning("shadow inference failed", model=slot.name, version=slot.version, error=repr(exc))
            return
        total = time.perf_counter_ns() - started
        slot.record_success(total, timing, rows=len(next(iter(feeds.values()))))
        self._log(slot, request_id, feeds, outputs, total / 1e6)

    def _log(
        self,
        slot: Slot,
        request_id: str,
        feeds: Mapping[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        latency_ms: float,
    ) -> None:
        if not self._logger.sampled():
            return
        self._logger.log(
            model=slot.name,
            version=slot.version,
            request_id=request_id,
            features=slot.feature_names,
            inputs=feature_rows(feeds),
            outputs=outputs,
            class_labels=slot.class_labels,
            latency_ms=latency_ms,
            role=slot.role,
        )


class ServingAdmin(serving_pb2_grpc.ServingAdminServicer):
    """Deployments as this replica serves them, with the stored traffic policy and every replica's
    view of it; traffic changes go to the store (any replica) and are applied here at once."""

    def __init__(self, state: ServingRuntime, reconcile_s: float) -> None:
        self._manager = state.manager
        self._logger = state.logger
        self._sync = state.traffic
        self._stale_after = rules.stale_after_s(reconcile_s)

    async def _protos(self, names: list[str]) -> list[serving_pb2.Deployment]:
        """This replica's deployments with the stored policy and every replica's view, from what the
        traffic sync last read (at most a second old): reading never waits on the database."""
        out = [
            self._manager.to_proto(self._manager.deployment(n), self._logger.sample_rate, self._logger.dropped)
            for n in names
        ]
        for dep in out:
            dep.replica = self._sync.store.replica
            stored = self._sync.stored(dep.model_name)
            if stored is not None:
                dep.traffic.CopyFrom(stored_proto(stored))
            policy = stored or rules.StoredPolicy(dep.model_name)
            for row in self._sync.replica_rows(dep.model_name):
                if row.replica == dep.replica:  # this replica: what it applies now, not at its last heartbeat
                    local = self._manager.deployment(dep.model_name).view()
                    view = self._replica_view(replace(row, view=local, slots=b""), policy)
                    view.slots.extend(dep.slots)
                else:
                    view = self._replica_view(row, policy)
                dep.replicas.append(view)
        return out

    def _replica_view(self, row: ReplicaRow, stored: rules.StoredPolicy) -> serving_pb2.ReplicaView:
        state, detail = rules.replica_state(row.view, stored, row.age_s, self._stale_after)
        view = S.ReplicaView.FromString(row.slots) if row.slots else S.ReplicaView()
        view.replica, view.pid, view.state, view.detail = row.replica, row.pid, state, detail
        view.started_at.FromDatetime(row.started_at)
        view.heartbeat_time.FromDatetime(row.heartbeat_at)
        if row.view is not None:
            view.traffic.CopyFrom(split_proto(stored.model, row.view.policy, row.view.generation))
            view.production_version, view.error = row.view.production_version, row.view.error
        return view

    async def _proto(self, name: str) -> serving_pb2.Deployment:
        return (await self._protos([name]))[0]

    async def ListDeployments(self, request: S.ListDeploymentsRequest, context: Context) -> S.ListDeploymentsResponse:
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        names = sorted(self._manager.deployments)[offset : offset + size]
        return S.ListDeploymentsResponse(
            deployments=await self._protos(names), next_page_token=next_token(offset, size, len(names))
        )

    async def GetDeployment(self, request: S.GetDeploymentRequest, context: Context) -> S.GetDeploymentResponse:
        return S.GetDeploymentResponse(deployment=await self._proto(request.model_name))

    async def _set(
        self, name: str, version: int, mode: rules.Mode, percent: float, who: str, reason: str
    ) -> serving_pb2.Deployment:
        policy = rules.requested(mode, version, percent)
        reason, who = rules.check_reason(reason), rules.check_actor(who)
        # Loaded before it is stored: a version that cannot be served fails the call and stores nothing.
        slot = await self._manager.load_challenger(name, version, mode, percent)
        try:
            stored = await self._sync.store.change(name, policy, who, reason)
        except BaseException:
            dep = self._manager.deployments.get(name)
            if dep is None or slot is not dep.challenger:
                await slot.retire()
            raise
        await self._sync.apply(stored, preloaded=slot)
        await self._sync.heartbeat()
        return await self._proto(name)

    async def SetCanary(self, request: S.SetCanaryRequest, context: Context) -> S.SetCanaryResponse:
        dep = await self._set(
            request.model_name, request.challenger_version, S.TRAFFIC_MODE_CANARY, request.percent,
            actor(context, request.actor), request.reason,
        )  # fmt: skip
        return S.SetCanaryResponse(deployment=dep)

    async def SetShadow(self, request: S.SetShadowRequest, context: Context) -> S.SetShadowResponse:
        dep = await self._set(
            request.model_name, request.challenger_version, S.TRAFFIC_MODE_SHADOW, request.percent or 100.0,
            actor(context, request.actor), request.reason,
        )  # fmt: skip
        return S.SetShadowResponse(deployment=dep)

    async def ClearTraffic(self, request: S.ClearTrafficRequest, context: Context) -> S.ClearTrafficResponse:
        reason, who = rules.check_reason(request.reason), rules.check_actor(actor(context, request.actor))
        self._manager.deployment(request.model_name)  # NotFound for a model this replica does not serve
        stored = await self._sync.store.change(request.model_name, rules.PRODUCTION_ONLY, who, reason)
        await self._sync.apply(stored)
        await self._sync.heartbeat()
        return S.ClearTrafficResponse(deployment=await self._proto(request.model_name))

    async def ListTrafficChanges(
        self, request: S.ListTrafficChangesRequest, context: Context
    ) -> S.ListTrafficChangesResponse:
        if not request.model_name:
            raise InvalidArgument("required", field="model_name")
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        changes = await self._sync.store.history(request.model_name, size, offset)
        return S.ListTrafficChangesResponse(changes=changes, next_page_token=next_token(offset, size, len(changes)))


def register(server: GrpcServer, ctx: ServiceContext, state: ServingRuntime) -> list[str]:
    manager, logger = state.manager, state.logger
    if not ctx.settings.trace_inference:  # as in Triton, a span per prediction is opt-in
        infer = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
        server.untrace(f"/{infer}/ModelInfer", f"/{infer}/ModelStreamInfer")
    inference = InferenceService(ctx, server, manager, logger, state.traffic)
    server.add_servicer(oip_grpc.add_GRPCInferenceServiceServicer_to_server, inference)
    admin = ServingAdmin(state, ctx.settings.serving_reconcile_s)
    server.add_servicer(serving_pb2_grpc.add_ServingAdminServicer_to_server, admin)
    return [
        oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        serving_pb2.DESCRIPTOR.services_by_name["ServingAdmin"].full_name,
    ]
