"""The training worker: claims runs from the durable queue and executes them off the event loop.

A claim sets a lease that a heartbeat extends while the run trains in a process pool; a worker
that dies (SIGKILL, OOM) stops heart-beating, the lease lapses and any worker reclaims the run,
up to MAX_ATTEMPTS. Registration is idempotent on the run id, so a run retried after its model
was registered does not register a second version.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import queue
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from opentelemetry import propagate, trace

from flywheel.app import ServiceContext
from flywheel.errors import InvalidArgument
from flywheel.grpc import channel_options
from flywheel.logging import get_logger
from flywheel.telemetry import tracer, untraced
from flywheel.v1 import common_pb2, registry_pb2, registry_pb2_grpc, training_pb2
from services.training import child, store
from services.training.codeversion import code_version
from services.training.trainer import TrainingFailed, TrainJob, TrainResult, resolve_feature_fields

log = get_logger(__name__)
T = training_pb2
LEASE_S = 15
HEARTBEAT_S = 1.0
MAX_ATTEMPTS = 3
CHUNK = 1024 * 1024


class TrainingWorker:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._mp = multiprocessing.get_context("spawn")
        # One worker process trains one run at a time; its progress comes back on this queue.
        self._progress = self._mp.Queue()
        self._executor = self._new_executor()
        self._wake = asyncio.Event()

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn: forking a process that runs an event loop and gRPC threads is unsafe.
        return ProcessPoolExecutor(
            max_workers=1, mp_context=self._mp, initializer=child.init_worker, initargs=(self._progress,)
        )

    async def run(self) -> None:
        await asyncio.to_thread(code_version)  # warm the cache (runs git once)
        listener = await self._ctx.pool.acquire()
        await listener.add_listener(store.RUN_NOTIFY, lambda *_: self._wake.set())
        try:
            while True:
                row = await self._claim()
                if row is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 2.0)
                    continue
                await self._execute(row)
        finally:
            await self._ctx.pool.release(listener)
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _claim(self) -> asyncpg.Record | None:
        async with self._ctx.pool.acquire() as conn, conn.transaction():
            with untraced():
                run_id = await conn.fetchval(
                    "SELECT run_id FROM runs WHERE status = $1 OR (status = $2 AND lease_until < now())"
                    " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                    T.RUN_STATUS_QUEUED,
                    T.RUN_STATUS_RUNNING,
                )
            if run_id is None:
                return None
            return await conn.fetchrow(
                "UPDATE runs SET status = $2, stage = $3, attempt = attempt + 1, error = '',"
                f" lease_until = now() + interval '{LEASE_S} seconds', started_at = coalesce(started_at, now()),"
                " code_version = $4 WHERE run_id = $1 RETURNING *",
                run_id,
                T.RUN_STATUS_RUNNING,
                T.RUN_STAGE_LOADING_DATA,
                code_version(),
            )

    async def _execute(self, row: asyncpg.Record) -> None:
        run_id = row["run_id"]
        parent = propagate.extract(json.loads(row["trace_context"]))
        with tracer().start_as_current_span("training run", context=parent) as span:
            span.set_attribute("flywheel.run_id", run_id)
            span.set_attribute("flywheel.attempt", row["attempt"])
            if row["attempt"] > MAX_ATTEMPTS:
                await self._finish(run_id, T.RUN_STATUS_FAILED, row["stage"], f"gave up after {MAX_ATTEMPTS} attempts")
                return
            try:
                await self._train_and_register(row)
            except TrainingFailed as exc:
                span.set_status(trace.StatusCode.ERROR, exc.reason)
                await self._finish(run_id, T.RUN_STATUS_FAILED, exc.stage, exc.reason)
            except InvalidArgument as exc:  # the data does not fit the spec (missing column, bad label)
                span.set_status(trace.StatusCode.ERROR, str(exc))
                await self._finish(run_id, T.RUN_STATUS_FAILED, T.RUN_STAGE_LOADING_DATA, str(exc))
            except BrokenProcessPool:
                # The training process died under us: requeue (attempts are counted on claim).
                log.error("training process died; run requeued", run_id=run_id)
                self._executor = self._new_executor()
                await self._requeue(run_id)
            except Exception as exc:
                log.exception("run failed", run_id=run_id)
                span.record_exception(exc)
                await self._finish(run_id, T.RUN_STATUS_FAILED, T.RUN_STAGE_UNSPECIFIED, f"{type(exc).__name__}: {exc}")

    async def _train_and_register(self, row: asyncpg.Record) -> None:
        run_id = row["run_id"]
        async with self._ctx.pool.acquire() as conn:
            spec = await store.get_spec(conn, row["spec_name"], row["spec_version"])
        schema = common_pb2.Schema.FromString(row["schema"])
        async with self._data_file(row["data_uri"]) as data_path:
            job = TrainJob(
                run_id=run_id,
                spec=spec,
                data_path=str(data_path),
                label_field=schema.label_field,
                feature_fields=resolve_feature_fields(spec, schema),
                seed=row["seed"],
            )
            await self._drain(None, self._progress)  # anything left from a previous run
            beat = asyncio.create_task(self._heartbeat(run_id, self._progress))
            try:
                loop = asyncio.get_running_loop()
                result: TrainResult = await loop.run_in_executor(self._executor, child.run_job, job)
            finally:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
                await self._drain(run_id, self._progress)
        await self._set_stage(run_id, T.RUN_STAGE_REGISTERING)
        model = await self._register(row, spec, result)
        summary = training_pb2.Run(
            trials=result.trials,
            best_trial=result.best_trial,
            evaluation=result.evaluation,
            signature=result.signature,
            parity=result.parity,
        )
        summary.best_params.update(result.best_params)
        async with self._ctx.pool.acquire() as conn:
            await conn.execute(
                "UPDATE runs SET status = $2, stage = $3, result = $4, registered_name = $5, registered_version = $6,"
                " ended_at = now(), lease_until = NULL WHERE run_id = $1",
                run_id,
                T.RUN_STATUS_SUCCEEDED,
                T.RUN_STAGE_DONE,
                summary.SerializeToString(),
                model.name,
                model.version,
            )
        log.info("run succeeded", run_id=run_id, model=model.name, version=model.version)

    @contextlib.asynccontextmanager
    async def _data_file(self, data_uri: str) -> AsyncIterator[Path]:
        data = await self._ctx.artifacts.get_bytes(data_uri.removeprefix("sha256:"))
        tmp_dir = self._ctx.settings.home / "tmp"
        await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
        handle = await asyncio.to_thread(tempfile.NamedTemporaryFile, dir=tmp_dir, suffix=".parquet", delete=False)
        path = Path(handle.name)
        try:
            await asyncio.to_thread(handle.write, data)
            await asyncio.to_thread(handle.close)
            yield path
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _heartbeat(self, run_id: str, progress: Any) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self._drain(run_id, progress)
            async with self._ctx.pool.acquire() as conn:
                with untraced():
                    await conn.execute(
                        f"UPDATE runs SET lease_until = now() + interval '{LEASE_S} seconds' WHERE run_id = $1",
                        run_id,
                    )

    async def _drain(self, run_id: str | None, progress: Any) -> None:
        latest: dict[str, Any] | None = None
        while True:
            try:
                latest = await asyncio.to_thread(progress.get_nowait)
            except (queue.Empty, OSError, EOFError):
                break
        if latest is None or run_id is None:
            return
        stored = {k: v for k, v in latest.items() if k != "last_trial"}
        if latest.get("last_trial"):
            stored["last_trial"] = latest["last_trial"].hex()
        async with self._ctx.pool.acquire() as conn:
            with untraced():
                await conn.execute(
                    "UPDATE runs SET progress = $2::jsonb, stage = $3 WHERE run_id = $1",
                    run_id,
                    json.dumps(stored),
                    int(latest.get("stage", T.RUN_STAGE_SEARCHING)),
                )

    async def _register(
        self, row: asyncpg.Record, spec: training_pb2.TrainingSpec, result: TrainResult
    ) -> common_pb2.ModelRef:
        header = registry_pb2.RegisterModelHeader(
            model_name=spec.model_name,
            description=spec.description or f"trained by run {row['run_id']}",
            task=spec.task,
            signature=result.signature,
            metrics=result.evaluation.metrics,
            lineage=common_pb2.Lineage(
                dataset=common_pb2.DatasetRef(
                    name=row["dataset"], version=row["dataset_version"], content_hash=row["dataset_hash"]
                ),
                run_id=row["run_id"],
                spec_name=spec.name,
                spec_version=spec.version,
                code_version=code_version(),
                parent_dataset_versions=list(row["parent_versions"]),
                seed=row["seed"],
            ),
            tags={**dict(spec.tags), "trigger": T.RunTrigger.Name(row["trigger"])},
            format="onnx",
            sha256=hashlib.sha256(result.onnx).hexdigest(),
            idempotency_key=row["run_id"],
            actor="training",
        )
        header.params.update(json.loads(json.dumps(result.best_params, default=str)))
        if spec.HasField("promotion_policy"):
            header.promotion_policy.CopyFrom(spec.promotion_policy)

        def requests() -> Any:
            yield registry_pb2.RegisterModelRequest(header=header)
            for i in range(0, len(result.onnx), CHUNK):
                yield registry_pb2.RegisterModelRequest(chunk=result.onnx[i : i + CHUNK])

        settings = self._ctx.settings
        delay = 0.5
        for attempt in range(1, 8):
            try:
                async with grpc.aio.insecure_channel(
                    settings.addr_for("registry"), options=channel_options(settings)
                ) as channel:
                    resp = await registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(requests(), timeout=60)
                return resp.version.ref
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or attempt == 7:
                    reason = f"registry: {exc.code().name}: {exc.details()}"
                    raise TrainingFailed(T.RUN_STAGE_REGISTERING, reason) from exc
                log.warning("registry unavailable, retrying", attempt=attempt)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        raise AssertionError("unreachable")

    async def _set_stage(self, run_id: str, stage: int) -> None:
        async with self._ctx.pool.acquire() as conn:
            await conn.execute("UPDATE runs SET stage = $2 WHERE run_id = $1", run_id, stage)

    async def _finish(self, run_id: str, status: int, stage: int, error: str) -> None:
        async with self._ctx.pool.acquire() as conn:
            await conn.execute(
                "UPDATE runs SET status = $2, stage = $3, error = $4, ended_at = now(), lease_until = NULL"
                " WHERE run_id = $1",
                run_id,
                status,
                stage,
                error,
            )
        log.warning("run failed", run_id=run_id, error=error)

    async def _requeue(self, run_id: str) -> None:
        async with self._ctx.pool.acquire() as conn:
            await conn.execute(
                "UPDATE runs SET status = $2, stage = $3, lease_until = NULL WHERE run_id = $1",
                run_id,
                T.RUN_STATUS_QUEUED,
                T.RUN_STAGE_QUEUED,
            )
