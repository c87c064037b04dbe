"""gRPC surface of the training service: versioned specs, runs, comparison, live progress."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf import struct_pb2

from flywheel.app import ServiceContext
from flywheel.errors import InvalidArgument
from flywheel.grpc import GrpcServer
from flywheel.grpc.context import actor
from flywheel.logging import get_logger
from flywheel.paging import decode_token, next_token, page_size
from flywheel.pbutil import timestamp
from flywheel.v1 import training_pb2, training_pb2_grpc
from services.training import cancel, ingestion_client, store
from services.training.queue import enqueue_run
from services.training.spec_validation import validate_spec
from services.training.trainer import resolve_feature_fields

T = training_pb2
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
WATCH_POLL_S = 0.3
LOWER_IS_BETTER = {"mae", "rmse", "mse", "log_loss"}
MAX_REQUEST_ID_CHARS = 256
MAX_COMPARED_RUNS = 100  # each is read from the database: a bounded number per call
MAX_COMPARED_METRICS = 1_000
# How long CancelRun waits for a running run's worker to stop it (it notices at its next renewal).
CANCEL_WAIT_S = 10.0
CANCEL_POLL_S = 0.1
log = get_logger(__name__)


class TrainingService(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._pool = ctx.pool

    async def CreateSpec(self, request: T.CreateSpecRequest, context: Context) -> T.CreateSpecResponse:
        # sklearn checks every search-space value: seconds of CPU for a large space, so not on the loop
        spec = await asyncio.to_thread(_checked_spec, request.spec)
        dataset = await ingestion_client.get_dataset(self._ctx.settings, spec.dataset)
        if not dataset.schema.label_field:
            raise InvalidArgument(f"dataset {spec.dataset!r} has no label field to train on", field="spec.dataset")
        resolve_feature_fields(spec, dataset.schema)  # unknown or categorical features fail here, not in a run
        spec.ClearField("create_time")
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"spec:{spec.name}")
            spec.version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM specs WHERE name = $1", spec.name
            )
            await conn.execute(
                "INSERT INTO specs (name, version, spec, dataset, model_name) VALUES ($1, $2, $3, $4, $5)",
                spec.name,
                spec.version,
                spec.SerializeToString(),
                spec.dataset,
                spec.model_name,
            )
            return T.CreateSpecResponse(spec=await store.get_spec(conn, spec.name, spec.version))

    async def GetSpec(self, request: T.GetSpecRequest, context: Context) -> T.GetSpecResponse:
        async with self._pool.acquire() as conn:
            return T.GetSpecResponse(spec=await store.get_spec(conn, request.name, request.version))

    async def ListSpecs(self, request: T.ListSpecsRequest, context: Context) -> T.ListSpecsResponse:
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        latest_only = (
            "" if request.all_versions else "AND version = (SELECT max(version) FROM specs s2 WHERE s2.name = s.name)"
        )
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT spec, created_at FROM specs s WHERE ($1 = '' OR dataset = $1) AND ($2 = '' OR model_name = $2)"
                f" {latest_only} ORDER BY name, version DESC LIMIT $3 OFFSET $4",
                request.dataset,
                request.model_name,
                size,
                offset,
            )
        return T.ListSpecsResponse(
            specs=[store.to_spec(r) for r in rows], next_page_token=next_token(offset, size, len(rows))
        )

    async def StartRun(self, request: T.StartRunRequest, context: Context) -> T.StartRunResponse:
        if len(request.request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgument(f"at most {MAX_REQUEST_ID_CHARS} characters", field="request_id")
        async with self._pool.acquire() as conn:
            spec = await store.get_spec(conn, request.spec_name, request.spec_version)
        data = await ingestion_client.get_data_version(self._ctx.settings, spec.dataset, request.dataset_version)
        async with self._pool.acquire() as conn, conn.transaction():
            run_id, created = await enqueue_run(
                conn,
                spec,
                data,
                trigger=T.RUN_TRIGGER_MANUAL,
                request_id=request.request_id,
                seed=request.seed if request.HasField("seed") else None,
            )
            return T.StartRunResponse(run=store.to_run(await store.get_run(conn, run_id)), created=created)

    async def GetRun(self, request: T.GetRunRequest, context: Context) -> T.GetRunResponse:
        async with self._pool.acquire() as conn:
            return T.GetRunResponse(run=store.to_run(await store.get_run(conn, request.run_id)))

    async def ListRuns(self, request: T.ListRunsRequest, context: Context) -> T.ListRunsResponse:
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {store.RUN_COLUMNS} FROM runs WHERE ($1 = '' OR spec_name = $1)"
                " AND ($2 = '' OR spec_name IN (SELECT name FROM specs WHERE model_name = $2))"
                " AND ($3 = '' OR dataset = $3) AND ($4 = 0 OR status = $4)"
                " ORDER BY created_at DESC LIMIT $5 OFFSET $6",
                request.spec_name,
                request.model_name,
                request.dataset,
                request.status,
                size,
                offset,
            )
        return T.ListRunsResponse(
            runs=[store.to_run(r) for r in rows], next_page_token=next_token(offset, size, len(rows))
        )

    async def CompareRuns(self, request: T.CompareRunsRequest, context: Context) -> T.CompareRunsResponse:
        if len(request.run_ids) < 2:
            raise InvalidArgument("compare needs at least two runs", field="run_ids")
        if len(request.run_ids) > MAX_COMPARED_RUNS:
            raise InvalidArgument(f"at most {MAX_COMPARED_RUNS} runs", field="run_ids")
        if len(request.metrics) > MAX_COMPARED_METRICS:
            raise InvalidArgument(f"at most {MAX_COMPARED_METRICS} metrics", field="metrics")
        async with self._pool.acquire() as conn:
            runs = [store.to_run(await store.get_run(conn, rid)) for rid in request.run_ids]
        metric_values = [{m.name: m.value for m in r.evaluation.metrics if not m.class_label} for r in runs]
        names = list(request.metrics) or sorted({n for mv in metric_values for n in mv})
        params = [dict(r.best_params.items()) for r in runs]
        return T.CompareRunsResponse(
            runs=runs,
            metrics=[_row(n, [mv.get(n) for mv in metric_values], lower_better=n in LOWER_IS_BETTER) for n in names],
            params=[_row(n, [p.get(n) for p in params]) for n in sorted({k for p in params for k in p})],
        )

    async def WatchRun(self, request: T.WatchRunRequest, context: Context) -> AsyncIterator[T.WatchRunResponse]:
        last: T.RunProgress | None = None
        while True:
            async with self._pool.acquire() as conn:
                row = await store.get_run(conn, request.run_id)
            progress = store.to_progress(row)
            if progress != last:
                last = T.RunProgress()
                last.CopyFrom(progress)
                yield T.WatchRunResponse(progress=progress)
            if row["status"] in store.TERMINAL:
                return
            await asyncio.sleep(WATCH_POLL_S)

    async def CancelRun(self, request: T.CancelRunRequest, context: Context) -> T.CancelRunResponse:
        reason = request.reason.strip()
        who = actor(context, request.actor)
        cancel.check_request(reason, who)
        async with self._pool.acquire() as conn, conn.transaction():
            running = await cancel.request_cancel(conn, request.run_id, who, reason)
        log.info("run cancellation asked for", run_id=request.run_id, actor=who, running=running)
        # A running run ends when its worker, on whichever replica, notices: wait a little for that, so
        # the caller usually sees it CANCELLED; otherwise it is returned RUNNING with cancelled_by set.
        remaining = context.time_remaining()
        wait_s = CANCEL_WAIT_S if remaining is None else min(CANCEL_WAIT_S, remaining - 0.5)
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            async with self._pool.acquire() as conn:
                row = await store.get_run(conn, request.run_id)
            if not running or row["status"] in store.TERMINAL or asyncio.get_running_loop().time() >= deadline:
                return T.CancelRunResponse(run=store.to_run(row))
            await asyncio.sleep(CANCEL_POLL_S)

    async def ListTriggerDecisions(
        self, request: T.ListTriggerDecisionsRequest, context: Context
    ) -> T.ListTriggerDecisionsResponse:
        size, offset = page_size(request.page_size), decode_token(request.page_token)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM trigger_decisions WHERE ($1 = '' OR spec_name = $1) AND ($2 = '' OR model_name = $2)"
                " ORDER BY id DESC LIMIT $3 OFFSET $4",
                request.spec_name,
                request.model_name,
                size,
                offset,
            )
        decisions = [
            T.TriggerDecision(
                id=str(r["id"]), time=timestamp(r["at"]), spec_name=r["spec_name"], model_name=r["model_name"],
                trigger=r["trigger"], event_id=r["event_id"], decision=r["decision"], reason=r["reason"],
                run_id=r["run_id"],
            )
            for r in rows
        ]  # fmt: skip
        return T.ListTriggerDecisionsResponse(decisions=decisions, next_page_token=next_token(offset, size, len(rows)))


def _checked_spec(requested: T.TrainingSpec) -> T.TrainingSpec:
    """A validated copy of the requested spec; InvalidArgument names the field at fault."""
    spec = T.TrainingSpec()
    spec.CopyFrom(requested)
    # The names are not echoed: they are the caller's, of any length.
    if not NAME.fullmatch(spec.name):
        raise InvalidArgument("not a valid spec name ([a-z0-9][a-z0-9_.-]{0,127})", field="spec.name")
    if not NAME.fullmatch(spec.model_name):
        raise InvalidArgument("not a valid model name ([a-z0-9][a-z0-9_.-]{0,127})", field="spec.model_name")
    validate_spec(spec, field_prefix="spec.")
    return spec


def _row(name: str, values: list[object], *, lower_better: bool = False) -> T.ComparisonRow:
    row = T.ComparisonRow(name=name, best_index=-1)
    for v in values:
        value = struct_pb2.Value()
        if v is None:
            value.null_value = struct_pb2.NULL_VALUE
        elif isinstance(v, bool):
            value.bool_value = v
        elif isinstance(v, int | float):
            value.number_value = float(v)
        else:
            value.string_value = str(v)
        row.values.append(value)
    present = [v for v in values if v is not None]
    row.differs = len({repr(v) for v in values}) > 1
    numeric = [(i, float(v)) for i, v in enumerate(values) if isinstance(v, int | float) and not isinstance(v, bool)]
    if numeric and len(present) > 1:
        pick = min if lower_better else max
        row.best_index = pick(numeric, key=lambda iv: iv[1])[0]
    return row


def register(server: GrpcServer, ctx: ServiceContext) -> list[str]:
    server.add_servicer(training_pb2_grpc.add_TrainingServiceServicer_to_server, TrainingService(ctx))
    return [training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name]
