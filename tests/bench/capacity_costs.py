"""Per-unit costs for the capacity model in docs/scaling.md: `.venv/bin/python tests/bench/capacity_costs.py`.

Not a pytest test (nothing is asserted; machines vary), and named so that `pytest tests/bench` (make
bench) does not collect it. It prints what one unit of work costs, as CPU time (user + system, robust
to other processes sharing the machine) and as wall time, so the doc's arithmetic can cite measured
numbers. CPU time is `time.process_time()` for work done in this process (all of its threads) and
psutil's cpu_times() for other processes (a service and its children, PostgreSQL's backends, the
broker); a process's idle CPU, measured just before, is subtracted.

In this process (no stack):
- ONNX Runtime's own run of the demo model (LogisticRegression, 20 features, skl2onnx), 1 and 32 rows;
- serving's prediction-log encoding (PredictionLogger -> PredictionsLogged events) and the event size;
- monitoring's check of a 500-row predictions.logged event (logged.stored_rows);
- closing one drift window: decoding the stored rows and judging them (evaluator._judge_drift, what
  close_drift_window runs off the event loop), 500 rows (the default window), 1,000 and 6,000 rows
  (one model's minute at 100 requests/s) x 20 features;
- ingestion, a 1,000-row micro-batch of JSON rows made into a version (rows_to_table + prepare_version)
  on top of parents of 0, 100,000 and 500,000 rows (an appended version re-reads and rewrites its parent).
Against a real `flywheel up` (tests/e2e/stack.py), everything as deployed, authentication on:
- serving CPU per ModelInfer (tritonclient): 1 row sequential, 1 row at 32 and 64 concurrent unary
  calls, 1 row over 64 ModelStreamInfer streams, 32 rows at 8 concurrent calls; what the same traffic
  then cost monitoring, PostgreSQL and the broker per logged row (every request is logged:
  serving_log_sample_rate defaults to 1.0), and the bytes a stored prediction row takes in PostgreSQL;
- against its PostgreSQL: an inbox INSERT + COMMIT (every per-event consumer's fixed cost), monitoring's
  whole per-event transaction for a 500-row and a 10-row predictions.logged event (records.record_predictions),
  and the same 500-row event when it fills a window (so the transaction also closes it);
- serving's resident memory per additional production model (10 more models loaded), then 64 unary
  clients spread over the 11 models (what dynamic batching can merge shrinks with the spread).
`--no-stack` skips the stack part, `--stack-only` the in-process part; `--stack-env KEY=VALUE` adds to
the stack's environment (e.g. FLYWHEEL_SERVING_LOG_SAMPLE_RATE=0 to see serving without logging).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import numpy as np
import onnxruntime as ort
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import structlog
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2, monitoring_pb2, registry_pb2
from services.ingestion import tables
from services.ingestion.handlers import decode_rows
from services.ingestion.pipeline import prepare_version
from services.ingestion.profile import build_profile, profile_to_json
from services.ingestion.versioning import SPLIT_COLUMN, TRAIN
from services.monitoring import evaluator
from services.monitoring import policy as policies
from services.monitoring.logged import stored_rows
from services.serving.prediction_log import PredictionLogger
from services.training import packaging

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 20
NAMES = [f"f{i}" for i in range(N_FEATURES)]
CLASS_LABELS = ["0", "1"]
MODEL = "capacity_logreg"


# ------------------------------------------------------------------------------------------ reporting


@dataclass
class Row:
    what: str
    unit: str
    cpu_us: float  # CPU per unit, microseconds
    wall_us: float  # wall time per unit, microseconds
    n: int
    note: str = ""


ROWS: list[Row] = []


def report(row: Row) -> None:
    ROWS.append(row)
    wall = f"{row.wall_us:>12,.1f}" if row.wall_us == row.wall_us else f"{'-':>12}"
    print(f"  {row.what:<62} {row.cpu_us:>12,.1f} {wall}  per {row.unit:<14} n={row.n:<6} {row.note}", flush=True)


def section(title: str) -> None:
    print(f"\n{title}\n  {'':<62} {'CPU us':>12} {'wall us':>12}", flush=True)


def timed(fn: Callable[[], Any], n: int, warmup: int = 0) -> tuple[float, float]:
    """(CPU us, wall us) per call of fn, over n calls after `warmup` untimed ones; this process only."""
    for _ in range(warmup):
        fn()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6


def machine() -> None:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()
    print(f"machine: nproc={os.cpu_count()} cpu='{model}' memory={mem:.0f} GiB python={platform.python_version()}")
    print(f"  onnxruntime {ort.__version__}, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


# ------------------------------------------------------------------------------------------ the model


@dataclass
class DemoModel:
    onnx_bytes: bytes
    X: np.ndarray  # float32 rows
    accuracy: float


def demo_model() -> DemoModel:
    """The serving bench's model: LogisticRegression on 20 features, exported by training's packaging."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(4_000, N_FEATURES)).astype(np.float32)
    y = (X @ np.linspace(1.0, -1.0, N_FEATURES) + rng.normal(scale=0.5, size=len(X)) > 0).astype(np.int64)
    pipeline = Pipeline([("model", LogisticRegression(max_iter=500))]).fit(X[:3_000], y[:3_000])
    accuracy = float((pipeline.predict(X[3_000:]) == y[3_000:]).mean())
    return DemoModel(packaging.export_onnx(pipeline, N_FEATURES), X, accuracy)


def ort_costs(model: DemoModel) -> None:
    section("ONNX Runtime in-process (CPUExecutionProvider, default threads)")
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    one, batch = model.X[:1], model.X[:32]
    cpu, wall = timed(lambda: session.run(None, {packaging.INPUT_NAME: one}), 20_000, warmup=500)
    report(Row("session.run, 1 row", "run", cpu, wall, 20_000))
    cpu, wall = timed(lambda: session.run(None, {packaging.INPUT_NAME: batch}), 5_000, warmup=200)
    report(Row("session.run, 32 rows", "run", cpu, wall, 5_000, f"= {cpu / 32:.2f} us CPU per row"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # no spinning pool threads: the run's own cost
    single = ort.InferenceSession(model.onnx_bytes, options, providers=["CPUExecutionProvider"])
    cpu, wall = timed(lambda: single.run(None, {packaging.INPUT_NAME: one}), 20_000, warmup=500)
    report(Row("session.run, 1 row, intra_op_num_threads=1", "run", cpu, wall, 20_000))
    cpu, wall = timed(lambda: single.run(None, {packaging.INPUT_NAME: batch}), 5_000, warmup=200)
    report(Row("session.run, 32 rows, intra_op_num_threads=1", "run", cpu, wall, 5_000, f"= {cpu / 32:.2f} per row"))


# ------------------------------------------------------------------------------- prediction logging


class _FakeProducer:
    """Takes what PredictionLogger publishes, acknowledges it at once, and keeps the bytes."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: Any) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def logged_events(model: DemoModel, rows_per_event: int, events: int, rows_per_request: int = 1) -> list[bytes]:
    """Serving's own encoding: `events` PredictionsLogged events of `rows_per_event` rows each."""
    producer = _FakeProducer()
    logger = PredictionLogger(producer, 1.0, 10**9, 0.5)  # type: ignore[arg-type]
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])

    async def fill() -> None:
        for e in range(events):
            for r in range(rows_per_event // rows_per_request):
                i = (e * rows_per_event + r * rows_per_request) % (len(model.X) - rows_per_request)
                x = model.X[i : i + rows_per_request]
                label, proba = session.run(None, {packaging.INPUT_NAME: x})
                logger.log(
                    model=MODEL, version=1, request_id=f"req-{e}-{r}", features=NAMES, inputs=x,
                    outputs={"label": label, "probabilities": proba}, class_labels=CLASS_LABELS,
                    latency_ms=0.4, role=common_pb2.SERVING_ROLE_PRODUCTION,
                )  # fmt: skip
            await logger.flush()

    asyncio.run(fill())
    return producer.sent


def logging_costs(model: DemoModel) -> list[bytes]:
    section("prediction logging (serving encodes, monitoring checks), in-process")
    producer = _FakeProducer()
    logger = PredictionLogger(producer, 1.0, 10**9, 0.5)  # type: ignore[arg-type]
    x = model.X[:1]
    outputs: dict[str, np.ndarray] = {"label": np.zeros(1, np.int64), "probabilities": np.full((1, 2), 0.5, np.float32)}

    async def one_flush() -> None:
        for r in range(500):
            logger.log(
                model=MODEL, version=1, request_id=f"req-{r}", features=NAMES, inputs=x, outputs=outputs,
                class_labels=CLASS_LABELS, latency_ms=0.4, role=common_pb2.SERVING_ROLE_PRODUCTION,
            )  # fmt: skip
        await logger.flush()

    cpu, wall = timed(lambda: asyncio.run(one_flush()), 40, warmup=3)
    report(Row("serving: log 500 one-row requests + encode 1 event", "row", cpu / 500, wall / 500, 40 * 500))
    big = logged_events(model, 500, 20)
    small = logged_events(model, 10, 50)
    print(
        f"  event size on flywheel.predictions.logged: 500 rows = {np.mean([len(b) for b in big]):,.0f} bytes"
        f" ({np.mean([len(b) for b in big]) / 500:.0f} B/row); 10 rows = {np.mean([len(b) for b in small]):,.0f} bytes"
    )
    decoded = [events_pb2.PredictionsLogged.FromString(b) for b in big]
    k = iter(range(10**9))
    cpu, wall = timed(lambda: stored_rows(decoded[next(k) % len(decoded)]), 40, warmup=3)
    report(Row("monitoring: stored_rows(500-row event) (check + JSON)", "event", cpu, wall, 40, f"{cpu / 500:.1f}/row"))
    return big


# ---------------------------------------------------------------------------------- drift windows


def reference(model: DemoModel) -> tuple[common_pb2.Schema, dict[str, Any]]:
    """The training data's schema and profile (ingestion's build_profile on 100,000 rows)."""
    fields = [common_pb2.Field(name=n, type=common_pb2.FIELD_TYPE_FLOAT) for n in NAMES]
    fields.append(common_pb2.Field(name="label", type=common_pb2.FIELD_TYPE_CATEGORICAL, allowed_values=CLASS_LABELS))
    schema = common_pb2.Schema(fields=fields, label_field="label")
    rng = np.random.default_rng(11)
    cols: dict[str, Any] = {n: rng.normal(size=100_000) for n in NAMES}
    cols["label"] = pa.array(np.asarray(CLASS_LABELS, dtype=object)[rng.integers(0, 2, 100_000)])
    cols[SPLIT_COLUMN] = pa.array([TRAIN] * 100_000)
    return schema, build_profile(pa.table(cols), schema)


def window_costs(model: DemoModel, events: list[bytes]) -> None:
    section("monitoring: closing one drift window (decode stored rows + evaluate_window), in-process")
    schema, profile = reference(model)
    profile_json = profile_to_json(profile).decode()
    # The model_refs row close_drift_window hands over (jsonb as text); no calibration: drift alone.
    ref = {
        "model": MODEL, "version": 1, "profile": profile_json, "task": common_pb2.TASK_CLASSIFICATION,
        "class_labels": CLASS_LABELS, "recorded": "{}", "calibration": None,
    }  # fmt: skip
    stored = [r for b in events for r in stored_rows(events_pb2.PredictionsLogged.FromString(b))]
    assert len(stored) >= 6_000, "logging_costs makes 20 events of 500 rows"
    # What asyncpg hands close_drift_window: jsonb columns as text.
    records = [{"inputs": r.inputs, "outputs": r.outputs, "latency_ms": r.latency_ms, "at": r.at} for r in stored]
    policy = policies.effective(None, MODEL)
    for size in (500, 1_000, 6_000):  # 6,000: one model's minute at 100 requests/s
        rows = records[:size]
        cpu, wall = timed(
            lambda rows=rows: evaluator._judge_drift(  # type: ignore[misc]
                rows, ref, schema, policy
            ),
            20,
            warmup=2,
        )
        report(Row(f"_judge_drift, {size:,} rows x {N_FEATURES} features", "window", cpu, wall, 20,
                   f"{cpu / size:.1f} us/row"))  # fmt: skip


# -------------------------------------------------------------------------------------- ingestion


def _ingest_schema() -> common_pb2.Schema:
    fields = [common_pb2.Field(name="id", type=common_pb2.FIELD_TYPE_INT, min=0)]
    fields += [common_pb2.Field(name=n, type=common_pb2.FIELD_TYPE_FLOAT, nullable=True) for n in NAMES]
    fields.append(common_pb2.Field(name="label", type=common_pb2.FIELD_TYPE_CATEGORICAL, allowed_values=CLASS_LABELS))
    return common_pb2.Schema(fields=fields, key_field="id", label_field="label", train_fraction=0.8)


def _columns(start: int, rows: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    cols: dict[str, Any] = {"id": np.arange(start, start + rows, dtype=np.int64)}
    for n in NAMES:
        cols[n] = np.round(rng.normal(size=rows), 6)
    cols["label"] = np.asarray(CLASS_LABELS, dtype=object)[rng.integers(0, 2, rows)]
    return cols


def ingestion_costs() -> None:
    section("ingestion: one 1,000-row micro-batch (JSON rows from Kafka) made into an appended version, in-process")
    schema = _ingest_schema()
    cols = _columns(10_000_000, 1_000, 5)
    batch = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in cols.items()} for i in range(1_000)]
    records = [
        SimpleNamespace(key=b"ds", headers=[], value=json.dumps(row).encode(), topic="t", partition=0, offset=i)
        for i, row in enumerate(batch)
    ]
    cpu, wall = timed(lambda: [decode_rows(r) for r in records], 20, warmup=2)
    report(Row("decode 1,000 one-row JSON records (decode_rows)", "1,000 rows", cpu, wall, 20))
    for parent_rows in (0, 100_000, 500_000):
        parent_bytes = None
        if parent_rows:
            sink = io.BytesIO()
            pacsv.write_csv(pa.table(_columns(0, parent_rows, 6)), sink)
            raw_parent = tables.read_csv(sink.getvalue(), schema)
            parent_bytes = prepare_version(
                raw_parent, schema, ingestion_pb2.INVALID_ROW_POLICY_REJECT, None, 0
            ).parquet  # fmt: skip

        def one(parent_bytes: bytes | None = parent_bytes) -> None:
            parent = tables.read_parquet(parent_bytes) if parent_bytes else None  # the writer reads the parent
            raw = tables.rows_to_table(batch, schema)
            prepare_version(raw, schema, ingestion_pb2.INVALID_ROW_POLICY_REJECT, parent, common_pb2.WRITE_MODE_APPEND)

        n = 10 if parent_rows <= 100_000 else 3
        cpu, wall = timed(one, n, warmup=1)
        report(Row(f"read parent + rows_to_table + prepare_version, parent {parent_rows:,} rows", "1,000 rows",
                   cpu, wall, n, "(threads: CPU may exceed wall)"))  # fmt: skip


# ------------------------------------------------------------------------------------------ the stack


class Meter:
    """CPU seconds (user + system) of some processes and their children since start()."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.c0 = 0.0
        self.w0 = 0.0

    def total(self) -> float:
        total = 0.0
        for proc in self.procs:
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        return total

    def start(self) -> Meter:
        self.c0, self.w0 = self.total(), time.perf_counter()
        return self

    def used(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) since start()."""
        return self.total() - self.c0, time.perf_counter() - self.w0


def _register(stack: Any, name: str, model: DemoModel) -> None:
    """Registers the ONNX model as `name`, waits for its staging checks, aliases it production."""
    from flywheel.v1 import registry_pb2_grpc

    signature = packaging.signature_from_onnx(model.onnx_bytes, NAMES, CLASS_LABELS)

    def requests() -> Iterator[registry_pb2.RegisterModelRequest]:
        yield registry_pb2.RegisterModelRequest(
            header=registry_pb2.RegisterModelHeader(
                model_name=name, description="capacity costs", task=common_pb2.TASK_CLASSIFICATION,
                signature=signature, format="onnx", sha256=hashlib.sha256(model.onnx_bytes).hexdigest(),
                metrics=[common_pb2.Metric(name="accuracy", value=model.accuracy, split=common_pb2.SPLIT_TEST)],
            )
        )  # fmt: skip
        yield registry_pb2.RegisterModelRequest(chunk=model.onnx_bytes)

    with stack.channel("registry") as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        version = registry.RegisterModel(requests(), timeout=60).version.ref.version
        get = registry_pb2.GetModelVersionRequest(name=name, version=version)
        deadline = time.monotonic() + 60
        while registry.GetModelVersion(get, timeout=10).version.promotion.state == (
            registry_pb2.PROMOTION_STATE_PENDING_CHECKS
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: staging checks did not answer in 60 s")
            time.sleep(0.2)
        registry.SetAlias(
            registry_pb2.SetAliasRequest(name=name, alias="production", version=version, reason="capacity costs"),
            timeout=30,
        )


def _wait_ready(stack: Any, names: list[str], timeout_s: float = 90) -> None:
    client = stack.triton()
    deadline = time.monotonic() + timeout_s
    try:
        for name in names:
            while not client.is_model_ready(name, headers=stack.headers):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready in serving after {timeout_s} s")
                time.sleep(0.2)
    finally:
        client.close()


def _inputs(X: np.ndarray, rows: int, count: int) -> list[list[Any]]:
    import tritonclient.grpc as tgrpc

    out = []
    for k in range(count):
        i = (k * rows) % (len(X) - rows)
        inp = tgrpc.InferInput(packaging.INPUT_NAME, [rows, N_FEATURES], "FP32")
        inp.set_data_from_numpy(X[i : i + rows])
        out.append([inp])
    return out


async def _concurrent(
    stack: Any, inputs: list[list[Any]], clients: int, duration_s: float, models: tuple[str, ...] = (MODEL,)
) -> int:
    """Closed loop: `clients` coroutines on one tritonclient.grpc.aio client, client k calling
    models[k % len(models)]; returns the calls answered."""
    import tritonclient.grpc.aio as tgrpc_aio

    headers = stack.headers
    async with tgrpc_aio.InferenceServerClient(stack.address("serving")) as client:

        async def worker(k: int) -> int:
            done, n = 0, 0
            model = models[k % len(models)]
            deadline = time.perf_counter() + duration_s
            while time.perf_counter() < deadline:
                await client.infer(model, inputs[(k * 7919 + n) % len(inputs)], headers=headers)
                done, n = done + 1, n + 1
            return done

        return sum(await asyncio.gather(*(worker(k) for k in range(clients))))


async def _streaming(stack: Any, inputs: list[list[Any]], streams: int, duration_s: float) -> int:
    """Closed loop over ModelStreamInfer: one stream per client (its token checked once, when it opens),
    the next request sent when the previous answer arrives; returns the calls answered."""
    import tritonclient.grpc.aio as tgrpc_aio

    headers = stack.headers
    async with tgrpc_aio.InferenceServerClient(stack.address("serving")) as client:

        async def worker(k: int) -> int:
            outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

            async def requests() -> Any:
                while (item := await outbox.get()) is not None:
                    yield item

            def send(n: int) -> None:
                outbox.put_nowait({"model_name": MODEL, "inputs": inputs[(k * 7919 + n) % len(inputs)]})

            deadline = time.perf_counter() + duration_s
            n = 0
            send(0)
            async for _result, error in client.stream_infer(requests(), headers=headers):
                if error is not None:
                    raise RuntimeError(f"stream call failed: {error}")
                n += 1
                if time.perf_counter() >= deadline:
                    outbox.put_nowait(None)
                    break
                send(n)
            return n

        return sum(await asyncio.gather(*(worker(k) for k in range(streams))))


class Progress:
    """One connection that asks how far monitoring got: the highest predictions id (rows stored, as no
    insert rolls back here) and the predictions.logged events in its inbox. Cheap index lookups, so the
    polling adds next to nothing to PostgreSQL's CPU."""

    def __init__(self, runner: asyncio.Runner, dsn: str) -> None:
        self.runner = runner
        self.conn: asyncpg.Connection = runner.run(asyncpg.connect(dsn))

    def rows(self) -> int:
        return int(self.runner.run(self.conn.fetchval("SELECT coalesce(max(id), 0) FROM monitoring.predictions")))

    def events(self) -> int:
        return int(
            self.runner.run(
                self.conn.fetchval("SELECT count(*) FROM monitoring.inbox WHERE topic = 'flywheel.predictions.logged'")
            )
        )

    def wait_rows(self, rows: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while (have := self.rows()) < rows:
            if time.monotonic() > deadline:
                raise RuntimeError(f"monitoring stored {have} of {rows} logged rows after {timeout_s} s")
            time.sleep(0.25)


def serving_costs(
    stack: Any, model: DemoModel, pids: dict[str, list[int]], logging_on: bool, models: tuple[str, ...] = ()
) -> None:
    """Serving's CPU per request in several traffic shapes, and (when serving logs every request) what
    the logged rows then cost monitoring, PostgreSQL and the broker. With `models`, only the phase that
    spreads 1-row calls over those models runs (after memory_costs has deployed them)."""
    one_row = _inputs(model.X, 1, 1_000)
    batch32 = _inputs(model.X, 32, 100)
    client = stack.triton()
    runner = asyncio.Runner()
    progress = Progress(runner, stack.dsn)
    for k in range(300):  # warm-up
        client.infer(MODEL, one_row[k % len(one_row)], headers=stack.headers)
    sent = 300 + 32 * runner.run(_concurrent(stack, batch32, 8, 1.0))
    if logging_on:
        progress.wait_rows(sent)
    time.sleep(2.0)
    logged = progress.rows()
    meters = {name: Meter(p) for name, p in pids.items()}
    for m in meters.values():
        m.start()
    time.sleep(6.0)
    idle_rate = {name: (lambda used: used[0] / used[1])(m.used()) for name, m in meters.items()}
    print("  idle CPU (cores): " + ", ".join(f"{k} {v:.3f}" for k, v in idle_rate.items()))

    def sequential() -> int:
        for k in range(3_000):
            client.infer(MODEL, one_row[k % len(one_row)], headers=stack.headers)
        return 3_000

    phases: list[tuple[str, int, Callable[[], int]]] = [
        ("1 row, 1 client sequential", 1, sequential),
        ("1 row, 32 concurrent calls", 1, lambda: runner.run(_concurrent(stack, one_row, 32, 6.0))),
        ("1 row, 64 concurrent calls", 1, lambda: runner.run(_concurrent(stack, one_row, 64, 6.0))),
        ("1 row, 64 streams (ModelStreamInfer)", 1, lambda: runner.run(_streaming(stack, one_row, 64, 6.0))),
        ("32 rows, 8 concurrent calls", 32, lambda: runner.run(_concurrent(stack, batch32, 8, 6.0))),
    ]
    if models:  # the same 64 clients, spread over several models: less for the batcher to merge
        phases = [
            (f"1 row, 64 concurrent calls over {len(models)} models", 1,
             lambda: runner.run(_concurrent(stack, one_row, 64, 6.0, models))),
        ]  # fmt: skip
    for what, rows_per_call, drive in phases:
        events_before = progress.events()
        for m in meters.values():
            m.start()
        calls = drive()
        cpu, wall = meters["serving"].used()
        cpu -= idle_rate["serving"] * wall
        report(Row(f"serving CPU, {what}", "request", cpu / calls * 1e6, wall / calls * 1e6, calls,
                   f"{calls / wall:,.0f} req/s, {cpu / calls / rows_per_call * 1e6:.1f} us/row"))  # fmt: skip
        if not logging_on or models:  # with models: monitoring is still loading their references
            continue
        # What the same traffic cost downstream, once monitoring has stored every row it logged.
        rows = calls * rows_per_call
        logged += rows
        progress.wait_rows(logged)
        events = progress.events() - events_before
        for name in ("monitoring", "postgres", "broker"):
            cpu, wall = meters[name].used()
            cpu -= idle_rate[name] * wall
            note = f"{events:,} events, {rows / max(events, 1):.0f} rows/event, {wall:.0f} s to drain"
            report(Row(f"  {name} CPU per logged row", "row", cpu / rows * 1e6, float("nan"), rows, note))
    if logging_on and not models:
        size = runner.run(
            progress.conn.fetchrow(
                "SELECT pg_total_relation_size('monitoring.predictions') AS total,"
                " pg_relation_size('monitoring.predictions') AS heap, count(*) AS n FROM monitoring.predictions"
            )
        )
        assert size is not None
        print(f"  monitoring.predictions: {size['n']:,} rows, {size['total'] / size['n']:,.0f} bytes/row with"
              f" indexes and TOAST ({size['heap'] / size['n']:,.0f} heap)")  # fmt: skip
    client.close()
    runner.run(progress.conn.close())
    runner.close()


async def _backend_cpu(conn: asyncpg.Connection) -> Callable[[], float]:
    proc = psutil.Process(int(await conn.fetchval("SELECT pg_backend_pid()")))

    def cpu() -> float:
        t = proc.cpu_times()
        return t.user + t.system

    return cpu


def database_costs(dsn: str, model: DemoModel) -> None:
    """Encodes the events first: PredictionLogger needs an event loop of its own (asyncio.run)."""
    raw = {"big": logged_events(model, 500, 10), "small": logged_events(model, 10, 20),
           "windowed": logged_events(model, 500, 10)}  # fmt: skip
    asyncio.run(_database_costs(dsn, model, raw))


async def _database_costs(dsn: str, model: DemoModel, raw: dict[str, list[bytes]]) -> None:
    from services.monitoring.records import record_predictions

    section("PostgreSQL (the stack's: embedded, fsync=off, same host): per-event consumer transactions")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": "monitoring,public"})
    backend = await _backend_cpu(conn)
    counter = iter(range(10**9))

    async def run(fn: Callable[[], Any], n: int) -> tuple[float, float, float]:
        """(client CPU us, backend CPU us, wall us) per call."""
        for _ in range(max(1, n // 20)):
            await fn()
        c0, b0, w0 = time.process_time(), backend(), time.perf_counter()
        for _ in range(n):
            await fn()
        return tuple(x / n * 1e6 for x in (time.process_time() - c0, backend() - b0, time.perf_counter() - w0))  # type: ignore[return-value]

    async def inbox_only() -> None:
        async with conn.transaction():
            await conn.fetchval(
                "INSERT INTO inbox (consumer, event_id, topic) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
                " RETURNING true", "capacity-costs", f"e-{next(counter)}", "capacity",
            )  # fmt: skip

    client, server, wall = await run(inbox_only, 3_000)
    report(Row("inbox INSERT + COMMIT: client (this process)", "event", client, wall, 3_000))
    report(Row("inbox INSERT + COMMIT: PostgreSQL backend", "event", server, float("nan"), 3_000))

    async def event_transaction(events: list[events_pb2.PredictionsLogged]) -> Callable[[], Any]:
        async def one() -> None:
            async with conn.transaction():
                await conn.fetchval(
                    "INSERT INTO inbox (consumer, event_id, topic) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
                    " RETURNING true", "capacity-costs", f"e-{next(counter)}", "capacity",
                )  # fmt: skip
                await record_predictions(conn, events[next(counter) % len(events)])

        return one

    def as_model(raw: list[bytes], name: str) -> list[events_pb2.PredictionsLogged]:
        out = []
        for b in raw:
            e = events_pb2.PredictionsLogged.FromString(b)
            e.model.name = name
            out.append(e)
        return out

    big = as_model(raw["big"], "capacity_store_only")
    small = as_model(raw["small"], "capacity_store_only")
    for label, events, n in (("500-row", big, 30), ("10-row", small, 300)):
        client, server, wall = await run(await event_transaction(events), n)
        rows = len(events[0].columns.request_ids)
        report(Row(f"{label} predictions.logged, stored (no window): client", "event", client, wall, n,
                   f"{client / rows:.1f} CPU/{wall / rows:.1f} wall us per row"))  # fmt: skip
        report(Row(f"{label} predictions.logged, stored (no window): backend", "event", server, float("nan"), n,
                   f"{server / rows:.1f} us per row"))  # fmt: skip

    # A model with a reference: every 500-row event fills the default 500-row window, which closes in the
    # same transaction (decode, evaluate_window, UPDATE the rows, INSERT the window, alert bookkeeping).
    schema, profile = reference(model)
    await conn.execute(
        "INSERT INTO model_refs (model, version, dataset, dataset_version, profile, schema, task, class_labels,"
        " recorded) VALUES ($1, 1, 'capacity', 1, $2::jsonb, $3, $4, $5, '{}'::jsonb) ON CONFLICT (model) DO NOTHING",
        "capacity_windowed", profile_to_json(profile).decode(), schema.SerializeToString(),
        common_pb2.TASK_CLASSIFICATION, CLASS_LABELS,
    )  # fmt: skip
    windowed = as_model(raw["windowed"], "capacity_windowed")
    before = await conn.fetchval("SELECT count(*) FROM windows WHERE model = 'capacity_windowed'")
    client, server, wall = await run(await event_transaction(windowed), 20)
    closed = await conn.fetchval("SELECT count(*) FROM windows WHERE model = 'capacity_windowed'") - before
    report(Row("500-row event filling a 500-row window, closed: client", "event", client, wall, 20,
               f"{closed} windows closed (the warm-up's included)"))  # fmt: skip
    report(Row("500-row event filling a 500-row window, closed: backend", "event", server, float("nan"), 20))

    # One model's minute at 100 requests/s as many serving replicas log it: small events into a model with a
    # reference whose window closes every 6,000 rows. Each event also reads the policy and counts the open
    # window's rows (records._close_full_drift_windows), a count that grows with the window. Timed in two
    # parts: 560 events that close nothing (rows 300 -> 5,900 after a 30-event warm-up), then the 10 whose
    # last one fills the window and closes it in its transaction. (The window's duration is an hour so that
    # monitoring's ticker never closes this one by time.)
    await conn.execute(
        "INSERT INTO model_refs (model, version, dataset, dataset_version, profile, schema, task, class_labels,"
        " recorded) VALUES ($1, 1, 'capacity', 1, $2::jsonb, $3, $4, $5, '{}'::jsonb) ON CONFLICT (model) DO NOTHING",
        "capacity_minute", profile_to_json(profile).decode(), schema.SerializeToString(),
        common_pb2.TASK_CLASSIFICATION, CLASS_LABELS,
    )  # fmt: skip
    minute = monitoring_pb2.MonitoringPolicy(model_name="capacity_minute", enabled=True)
    minute.window.size_rows = 6_000
    minute.window.duration.FromSeconds(3_600)
    await conn.execute(
        "INSERT INTO policies (model, policy, updated_by) VALUES ($1, $2, 'capacity') ON CONFLICT (model) DO NOTHING",
        "capacity_minute", minute.SerializeToString(),
    )  # fmt: skip
    one_minute = await event_transaction(as_model(raw["small"], "capacity_minute"))
    for _ in range(30):
        await one_minute()
    c0, b0, w0 = time.process_time(), backend(), time.perf_counter()
    for _ in range(560):
        await one_minute()
    open_client, open_server, open_wall = (
        (time.process_time() - c0) / 560,
        (backend() - b0) / 560,
        (time.perf_counter() - w0) / 560,
    )
    report(Row("10-row event into an open 6,000-row window: client", "event", open_client * 1e6, open_wall * 1e6, 560,
               f"{open_client * 1e5:.1f} CPU/{open_wall * 1e5:.1f} wall us per row"))  # fmt: skip
    report(Row("10-row event into an open 6,000-row window: backend", "event", open_server * 1e6, float("nan"), 560,
               f"{open_server * 1e5:.1f} us per row"))  # fmt: skip
    before = await conn.fetchval("SELECT count(*) FROM windows WHERE model = 'capacity_minute'")
    c0, b0, w0 = time.process_time(), backend(), time.perf_counter()
    for _ in range(10):
        await one_minute()
    close_client = time.process_time() - c0 - 10 * open_client
    close_server = backend() - b0 - 10 * open_server
    close_wall = time.perf_counter() - w0 - 10 * open_wall
    closed = await conn.fetchval("SELECT count(*) FROM windows WHERE model = 'capacity_minute'") - before
    report(Row("closing that 6,000-row window (its event's extra): client", "window", close_client * 1e6,
               close_wall * 1e6, closed, f"{closed} window(s) closed"))  # fmt: skip
    report(Row("closing that 6,000-row window (its event's extra): backend", "window", close_server * 1e6,
               float("nan"), closed))  # fmt: skip
    await conn.close()


def memory_costs(stack: Any, model: DemoModel, serving_pid: int, extra: int = 10) -> tuple[str, ...]:
    section(f"serving memory per production model ({extra} more models registered and promoted)")
    proc = psutil.Process(serving_pid)
    before = proc.memory_full_info()
    names = [f"capacity_m{i}" for i in range(extra)]
    for name in names:
        _register(stack, name, model)
    _wait_ready(stack, names)
    time.sleep(2.0)
    after = proc.memory_full_info()
    print(
        f"  serving RSS {before.rss / 2**20:.0f} -> {after.rss / 2**20:.0f} MiB, USS {before.uss / 2**20:.0f} ->"
        f" {after.uss / 2**20:.0f} MiB: {(after.rss - before.rss) / extra / 2**20:.2f} MiB RSS per model"
        f" (ONNX file {len(model.onnx_bytes):,} bytes)"
    )
    return (MODEL, *names)


def stack_costs(model: DemoModel, extra_env: dict[str, str]) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # run as a script, `tests` is not importable otherwise
    from flywheel.stack.up import read_state
    from tests.e2e.stack import UpProcess

    with tempfile.TemporaryDirectory(prefix="capacity-") as work:
        stack = UpProcess(Path(work) / "home")
        for key in ("FLYWHEEL_SERVING_MAX_BATCH_SIZE", "FLYWHEEL_SERVING_MAX_QUEUE_DELAY_US", "FLYWHEEL_AUTH_MODE"):
            stack.env.pop(key, None)
        stack.env.update(extra_env)
        logging_on = float(extra_env.get("FLYWHEEL_SERVING_LOG_SAMPLE_RATE", "1")) == 1.0
        print(f"\nstarting flywheel up ... (environment added: {extra_env or 'none'})", flush=True)
        try:
            stack.start(180)  # inside: a start that fails half-way leaves processes for kill_all
            _register(stack, MODEL, model)
            _wait_ready(stack, [MODEL])
            state = read_state(stack.home)
            assert state is not None
            pids = {
                "serving": [state["services"]["serving"]["pid"]],
                "monitoring": [state["services"]["monitoring"]["pid"]],
                "postgres": [state["postgres"]["pid"]],
                "broker": [state["broker"]["pid"]],
            }
            rss = psutil.Process(pids["serving"][0]).memory_info().rss
            print(f"  serving RSS with one model loaded: {rss / 2**20:.0f} MiB")
            section(f"serving stack (flywheel up, {extra_env or 'defaults'}): ModelInfer via tritonclient")
            serving_costs(stack, model, pids, logging_on)
            if logging_on:
                database_costs(stack.dsn, model)
            models = memory_costs(stack, model, pids["serving"][0])
            section("serving, traffic spread over several production models")
            serving_costs(stack, model, pids, logging_on, models)
        finally:
            stack.kill_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--no-stack", action="store_true", help="in-process measurements only")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--stack-env", action="append", default=[], metavar="KEY=VALUE",
        help="added to the stack's environment, e.g. FLYWHEEL_SERVING_LOG_SAMPLE_RATE=0 (repeatable);"
        " with a log sample rate other than 1 the downstream and PostgreSQL rows are skipped",
    )  # fmt: skip
    parser.add_argument("--stack-only", action="store_true", help="skip the in-process measurements")
    args = parser.parse_args()
    # The library logs every window it closes at INFO; only warnings belong among the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    extra_env = dict(kv.split("=", 1) for kv in args.stack_env)
    machine()
    model = demo_model()
    if not args.stack_only:
        ort_costs(model)
        events = logging_costs(model)
        window_costs(model, events)
        ingestion_costs()
    if not args.no_stack:
        stack_costs(model, extra_env)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in ROWS], indent=1))
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
