"""The training worker: claims runs from the durable queue and executes them off the event loop.

A claim takes a lease on the run that a heartbeat renews while the run trains in a one-process
pool and registers its model (services/training/lease.py). A worker that dies (SIGKILL, OOM)
stops renewing, the lease lapses and any worker reclaims the run, up to `training_max_attempts`
claims. A worker whose lease is lost (its database was away for longer than the lease, or another
worker reclaimed the run) abandons the attempt without registering or finishing it. Registration
is idempotent on the run id, so a run retried after its model was registered does not register a
second version. See docs/architecture.md, 'Services and what each owns'.

Bounds: the training process's address space is capped at `training_memory_mb` (services/training/
child.py; a run past it fails "out of memory"), and a run still loading data or training
`training_run_timeout_s` after its first claim is stopped and failed. CancelRun reaches the worker
through the database (services/training/cancel.py). Either way the training process is killed and
replaced, and the worker goes on with the next run; one that cannot be handled at all is logged,
counted (flywheel.training.loop_errors) and skipped, never the end of the worker.

Backends (FLYWHEEL_TRAINING_BACKEND): `local` trains in the one-process pool above; `ray` dispatches
the run's search to a Ray cluster, one task per trial (services/training/dispatch.py, ray_trials.py).
Claims, the lease, cancellation, the timeout, progress and registration are the same for both: only
`_train` differs. A Ray task lost for good requeues the run, as a dead training process does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import multiprocessing
import queue
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from flywheel import clients
from flywheel.app import ServiceContext
from flywheel.config import Settings
from flywheel.errors import FlywheelError, InvalidArgument, StartupError, Unavailable
from flywheel.logging import get_logger
from flywheel.retry import Backoff, retry
from flywheel.telemetry import tracer, untraced
from flywheel.v1 import common_pb2, registry_pb2, training_pb2
from services.training import child, dispatch, metrics, store
from services.training.codeversion import code_version
from services.training.lease import Lease, LeaseLost, RunCancelled
from services.training.store import DB_ERRORS
from services.training.trainer import (
    OUT_OF_MEMORY,
    Reporter,
    TrainingFailed,
    TrainJob,
    TrainResult,
    resolve_feature_fields,
)

log = get_logger(__name__)
T = training_pb2
REGISTER_ATTEMPTS = 7
IDLE_POLL_S = 2.0  # a claim attempt this often even without a notification (one may be missed)
BACKENDS = ("local", "ray")


def backend(settings: Settings) -> str:
    """The training backend the settings name; StartupError for one this service cannot use, so a typo
    stops the service at start instead of failing every run."""
    name = settings.training_backend.strip().lower()
    if name not in BACKENDS:
        raise StartupError(
            f"FLYWHEEL_TRAINING_BACKEND={settings.training_backend!r} is not a training backend: one of {BACKENDS}"
        )
    if name == "ray":
        if settings.training_ray_trial_cpus < 0 or settings.training_ray_trial_memory_mb < 0:
            raise StartupError(
                "FLYWHEEL_TRAINING_RAY_TRIAL_CPUS and FLYWHEEL_TRAINING_RAY_TRIAL_MEMORY_MB must not be negative"
            )
        try:
            from services.training import ray_trials  # noqa: F401  (ray is an optional dependency)
        except ImportError as exc:
            raise StartupError(
                f"FLYWHEEL_TRAINING_BACKEND=ray needs Ray: install the `ray` extra (pip install 'flywheel[ray]'): {exc}"
            ) from exc
    return name


class RunTimedOut(Exception):
    """The run was still loading data or training when its timeout came."""


class TrainingWorker:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._settings = ctx.settings
        self._mp = multiprocessing.get_context("spawn")
        # One worker process trains one run at a time; its progress comes back on this queue.
        self._progress: Any = self._mp.Queue()
        self._executor = self._new_executor()
        self._wake = asyncio.Event()
        self._backend = backend(self._settings)

    def _new_executor(self) -> ProcessPoolExecutor:
        # spawn: forking a process that runs an event loop and gRPC threads is unsafe.
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._mp,
            initializer=child.init_worker,
            initargs=(self._progress, self._settings.training_memory_mb),
        )

    def _pool_processes(self) -> list[Any]:
        # The pool has no public way to stop a job that is running; its process table is the only handle.
        return list((self._executor._processes or {}).values())

    def _restart_pool(self) -> None:
        """A new training process and progress queue; the old process is killed if it still runs."""
        for process in self._pool_processes():
            process.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)
        # A process killed while writing progress may leave the old queue's lock held: start afresh.
        self._progress = self._mp.Queue()
        self._executor = self._new_executor()

    async def run(self) -> None:
        await asyncio.to_thread(code_version)  # warm the cache (runs git once)
        listener: asyncpg.Connection | None = None
        errors = Backoff.from_settings(self._settings)
        try:
            while True:
                try:
                    if listener is None or not _alive(listener):  # a dropped connection stops notifications
                        listener = await self._listen(listener)
                    if self._backend == "ray":
                        await self._join_ray()
                    # Cleared before the claim: a run queued while claiming wakes the wait below at once.
                    self._wake.clear()
                    claimed = await retry(
                        self._claim,
                        backoff=Backoff.from_settings(self._settings),
                        what="claim a run",
                        retry_on=DB_ERRORS,
                    )
                    if claimed is None:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
                        continue
                    await self._execute(*claimed)
                except Exception:
                    # One run the worker cannot handle must not end it: log, count, back off, go on. A run
                    # left RUNNING is reclaimed when its lease lapses (and fails after its attempts).
                    log.exception("training worker: a run could not be handled; carrying on")
                    metrics.loop_errors.add(1, {"loop": "worker"})
                    await errors.wait()
                    continue
                errors.reset()
        finally:
            if listener is not None:
                await self._unlisten(listener)
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _listen(self, old: asyncpg.Connection | None) -> asyncpg.Connection:
        if old is not None:
            await self._unlisten(old)

        async def subscribe() -> asyncpg.Connection:
            conn = await self._ctx.pool.acquire()
            try:
                await conn.add_listener(store.RUN_NOTIFY, self._on_notify)
            except BaseException:
                await self._ctx.pool.release(conn)
                raise
            return conn

        backoff = Backoff.from_settings(self._settings)
        return await retry(subscribe, backoff=backoff, what="listen for queued runs", retry_on=DB_ERRORS)

    async def _unlisten(self, conn: asyncpg.Connection) -> None:
        if _alive(conn):
            with contextlib.suppress(*DB_ERRORS):
                await conn.remove_listener(store.RUN_NOTIFY, self._on_notify)
        await self._ctx.pool.release(conn)

    async def _claim(self) -> tuple[asyncpg.Record, Lease] | None:
        sent_at = time.monotonic()
        async with self._ctx.pool.acquire() as conn, conn.transaction():
            with untraced():
                found = await conn.fetchrow(
                    "SELECT run_id, error, cancel_requested_at IS NOT NULL AS cancelling FROM runs"
                    " WHERE status = $1 OR (status = $2 AND lease_until < now())"
                    " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                    T.RUN_STATUS_QUEUED,
                    T.RUN_STATUS_RUNNING,
                )
            if found is None:
                return None
            run_id = found["run_id"]
            if found["cancelling"]:
                # Cancelled while running on a worker that is gone (its lease lapsed): nothing trains it.
                await conn.execute(f"UPDATE runs SET {store.CANCELLED} WHERE run_id = $1", run_id)
                log.info("run cancelled (its worker had stopped)", run_id=run_id)
                metrics.runs_stopped.add(1, {"reason": "cancelled"})
                self._wake.set()  # claim again at once
                return None
            row = await conn.fetchrow(
                "UPDATE runs SET status = $2, stage = $3, attempt = attempt + 1, error = '',"
                " lease_until = now() + make_interval(secs => $4), started_at = coalesce(started_at, now()),"
                " code_version = $5 WHERE run_id = $1"
                " RETURNING *, extract(epoch FROM now() - started_at)::float8 AS elapsed_s, $6::text AS previous_error",
                run_id,
                T.RUN_STATUS_RUNNING,
                T.RUN_STAGE_LOADING_DATA,
                self._settings.training_lease_s,
                code_version(),
                found["error"],
            )
        return row, Lease(self._ctx.pool, self._settings, run_id, row["attempt"], sent_at)

    async def _execute(self, row: asyncpg.Record, lease: Lease) -> None:
        run_id = row["run_id"]
        with tracer().start_as_current_span("training run", context=_parent(row)) as span:
            span.set_attribute("flywheel.run_id", run_id)
            span.set_attribute("flywheel.attempt", lease.attempt)
            try:
                async with lease.kept(functools.partial(self._drain, lease)):
                    summary, model = await lease.hold(self._attempt(row, lease))
            except LeaseLost:
                span.set_status(trace.StatusCode.ERROR, f"lease lost: {lease.lost_reason}")
                return  # not ours any more: whoever claims it next records its outcome
            except RunCancelled:
                span.set_status(trace.StatusCode.ERROR, "cancelled")
                metrics.runs_stopped.add(1, {"reason": "cancelled"})
                if await lease.update(store.CANCELLED):
                    log.info("run cancelled", run_id=run_id)
                return
            except RunTimedOut as exc:
                span.set_status(trace.StatusCode.ERROR, str(exc))
                metrics.runs_stopped.add(1, {"reason": "timeout"})
                await self._fail(lease, None, str(exc))
                return
            except TrainingFailed as exc:
                span.set_status(trace.StatusCode.ERROR, exc.reason)
                if exc.reason.startswith(OUT_OF_MEMORY):
                    metrics.runs_stopped.add(1, {"reason": "memory"})
                await self._fail(lease, exc.stage, exc.reason)
                return
            except InvalidArgument as exc:  # the data does not fit the spec (missing column, bad label)
                span.set_status(trace.StatusCode.ERROR, str(exc))
                await self._fail(lease, T.RUN_STAGE_LOADING_DATA, str(exc))
                return
            except dispatch.WorkerLost as exc:
                # A Ray task the run cannot do without was lost for good, or the cluster is out of reach:
                # requeued like a dead training process (the next claim counts as an attempt).
                log.error("the run's Ray task was lost; run requeued", run_id=run_id, reason=str(exc))
                await lease.update(
                    "status = $3, stage = $4, lease_until = NULL, error = $5",
                    T.RUN_STATUS_QUEUED,
                    T.RUN_STAGE_QUEUED,
                    str(exc),
                )
                return
            except BrokenProcessPool:
                # The training process died under us: requeue (attempts are counted on claim), saying how
                # it died, which the run's error shows if its last attempt goes the same way.
                died = f"the training process died ({_exit(self._pool_processes())})"
                log.error("training process died; run requeued", run_id=run_id, reason=died)
                self._restart_pool()
                await lease.update(
                    "status = $3, stage = $4, lease_until = NULL, error = $5",
                    T.RUN_STATUS_QUEUED,
                    T.RUN_STAGE_QUEUED,
                    died,
                )
                return
            except Exception as exc:
                log.exception("run failed", run_id=run_id)
                span.record_exception(exc)
                await self._fail(lease, T.RUN_STAGE_UNSPECIFIED, f"{type(exc).__name__}: {exc}")
                return
            if await lease.update(
                "status = $3, stage = $4, result = $5, registered_name = $6, registered_version = $7,"
                " ended_at = now(), lease_until = NULL",
                T.RUN_STATUS_SUCCEEDED,
                T.RUN_STAGE_DONE,
                summary.SerializeToString(),
                model.name,
                model.version,
            ):
                log.info("run succeeded", run_id=run_id, model=model.name, version=model.version)
                metrics.runs_finished.add(1, {"outcome": "succeeded"})

    async def _attempt(self, row: asyncpg.Record, lease: Lease) -> tuple[training_pb2.Run, common_pb2.ModelRef]:
        """Trains and registers; returns the run's summary and the registered model. Runs under the lease."""
        max_attempts = self._settings.training_max_attempts
        if lease.attempt > max_attempts:
            last = f"; the last: {row['previous_error']}" if row["previous_error"] else ""
            raise TrainingFailed(row["stage"], f"gave up after {max_attempts} attempts{last}")
        timeout_s = self._settings.training_run_timeout_s  # 0 or less: no timeout
        remaining_s = timeout_s - row["elapsed_s"] if timeout_s > 0 else None
        if remaining_s is not None and remaining_s <= 0:  # claimed again after its time ran out elsewhere
            raise RunTimedOut(_timed_out(timeout_s))

        async def get_spec() -> training_pb2.TrainingSpec:
            async with self._ctx.pool.acquire() as conn:
                return await store.get_spec(conn, row["spec_name"], row["spec_version"])

        backoff = Backoff.from_settings(self._settings)
        spec = await retry(get_spec, backoff=backoff, what=f"read the spec of run {lease.run_id}", retry_on=DB_ERRORS)
        schema = common_pb2.Schema.FromString(row["schema"])
        # The timeout covers reading the data and training, never a registration under way (stopping
        # that could leave a model registered for a run recorded as failed).
        deadline = asyncio.timeout(remaining_s)
        try:
            async with deadline, self._data_file(row["data_uri"]) as data_path:
                job = TrainJob(
                    run_id=lease.run_id,
                    spec=spec,
                    data_path=str(data_path),
                    label_field=schema.label_field,
                    feature_fields=resolve_feature_fields(spec, schema),
                    seed=row["seed"],
                )
                result = await self._train(job)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise RunTimedOut(_timed_out(timeout_s)) from None
        await self._drain(lease)
        # Owning the run, and no cancellation asked for, are checked here, just before the model is
        # registered: past this point CancelRun refuses the run.
        await lease.advance(T.RUN_STAGE_REGISTERING)
        model = await self._register(row, spec, result)
        summary = training_pb2.Run(
            trials=result.trials,
            best_trial=result.best_trial,
            evaluation=result.evaluation,
            signature=result.signature,
            parity=result.parity,
        )
        summary.best_params.update(result.best_params)
        return summary, model.ref

    async def _train(self, job: TrainJob) -> TrainResult:
        await self._drain(None)  # anything left from a previous run
        if self._backend == "ray":
            return await self._train_on_ray(job)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, child.run_job, job)
        except asyncio.CancelledError:
            # The lease was lost or the service is stopping: the training process must stop too.
            self._restart_pool()
            raise

    async def _join_ray(self) -> None:
        """Joins the Ray cluster before a run is claimed (at once once joined): a cluster that cannot be
        reached delays runs, with backoff, instead of using up their attempts."""
        from services.training import ray_trials  # only with this backend: ray is optional

        backoff = Backoff.from_settings(self._settings)
        while True:
            try:
                await ray_trials.connect(self._settings)
                return
            except dispatch.WorkerLost as exc:
                log.warning("the Ray cluster cannot be reached; no run is claimed until it can", error=str(exc))
                await backoff.wait()

    async def _train_on_ray(self, job: TrainJob) -> TrainResult:
        """The search as Ray tasks; progress goes onto the same queue the local training process uses, so
        `_drain` records it the same way. Cancelling this (CancelRun, the lease lost, the timeout, the
        service stopping) cancels the run's tasks on the cluster."""
        from services.training import ray_trials  # only with this backend: ray is optional

        cluster = await ray_trials.connect(self._settings)
        data = await asyncio.to_thread(Path(job.data_path).read_bytes)
        return await dispatch.run_search(cluster, job, data, Reporter(self._progress))

    @contextlib.asynccontextmanager
    async def _data_file(self, data_uri: str) -> AsyncIterator[Path]:
        data = await self._ctx.artifacts.get_bytes(data_uri.removeprefix("sha256:"))
        path = await asyncio.to_thread(_spill, self._ctx.settings.home / "tmp", data)
        try:
            yield path
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def _drain(self, lease: Lease | None) -> None:
        """Stores the latest progress the training process reported (best-effort: errors are logged)."""
        progress = self._progress
        latest: dict[str, Any] | None = None
        while True:
            try:
                latest = await asyncio.to_thread(progress.get_nowait)
            except (queue.Empty, OSError, EOFError, ValueError):
                break
        if latest is None or lease is None:
            return
        stored = {k: v for k, v in latest.items() if k != "last_trial"}
        if latest.get("last_trial"):
            stored["last_trial"] = latest["last_trial"].hex()
        try:
            async with self._ctx.pool.acquire() as conn:
                with untraced():
                    # Never back from registering: CancelRun reads that stage as too late to cancel.
                    await conn.execute(
                        "UPDATE runs SET progress = $3::jsonb, stage = $4 WHERE run_id = $1 AND attempt = $2"
                        f" AND stage < {T.RUN_STAGE_REGISTERING}",
                        lease.run_id,
                        lease.attempt,
                        json.dumps(stored),
                        int(latest.get("stage", T.RUN_STAGE_SEARCHING)),
                    )
        except DB_ERRORS as exc:
            log.warning("progress not recorded", run_id=lease.run_id, error=f"{type(exc).__name__}: {exc}")

    async def _register(
        self, row: asyncpg.Record, spec: training_pb2.TrainingSpec, result: TrainResult
    ) -> registry_pb2.ModelVersion:
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
        if result.calibration:
            # Content-addressed, so a retried run stores the same object; monitoring reads it by this URI.
            sha, _ = await self._ctx.artifacts.put_bytes(result.calibration)
            header.calibration_uri = self._ctx.artifacts.uri(sha)
        if spec.HasField("promotion_policy"):
            header.promotion_policy.CopyFrom(spec.promotion_policy)
        settings = self._settings
        try:
            return await retry(
                lambda: clients.register_model(settings, header, result.onnx),
                backoff=Backoff.from_settings(settings),
                what=f"register the model of run {row['run_id']}",
                retry_on=(Unavailable,),
                attempts=REGISTER_ATTEMPTS,
            )
        except Unavailable as exc:  # still unreachable after the last attempt
            raise TrainingFailed(T.RUN_STAGE_REGISTERING, str(exc)) from exc
        except FlywheelError as exc:  # the registry refused the model: retrying cannot help
            raise TrainingFailed(T.RUN_STAGE_REGISTERING, f"registry: {type(exc).__name__}: {exc}") from exc

    async def _fail(self, lease: Lease, stage: training_pb2.RunStage.ValueType | None, error: str) -> None:
        """Ends the run FAILED at `stage` (None: the stage it reached) with `error` as its reason."""
        if await lease.update(
            "status = $3, stage = coalesce($4, stage), error = $5, ended_at = now(), lease_until = NULL",
            T.RUN_STATUS_FAILED,
            stage,
            error,
        ):
            log.warning("run failed", run_id=lease.run_id, error=error)
            metrics.runs_finished.add(1, {"outcome": "failed"})


def _parent(row: asyncpg.Record) -> Context | None:
    """The trace the run continues: whatever queued it, when its stored context is one."""
    try:
        carrier = json.loads(row["trace_context"])
    except (TypeError, ValueError):
        return None
    return propagate.extract(carrier) if isinstance(carrier, dict) else None


def _timed_out(timeout_s: float) -> str:
    return f"timed out: stopped after {timeout_s:g} s (FLYWHEEL_TRAINING_RUN_TIMEOUT_S)"


def _exit(processes: list[Any]) -> str:
    codes = [p.exitcode for p in processes if p.exitcode is not None]
    if not codes:
        return "exit status unknown"
    code = codes[0]
    if code < 0:
        return f"killed by signal {-code}; a process over its memory limit can end this way"
    return f"exit code {code}"


def _alive(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # the server closed it and the pool took it back: the proxy is detached
        return False


def _spill(tmp_dir: Path, data: bytes) -> Path:
    """The dataset's bytes in a new file the training process can read (blocking IO: run in a thread)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".parquet", delete=False) as handle:
        handle.write(data)
    return Path(handle.name)
