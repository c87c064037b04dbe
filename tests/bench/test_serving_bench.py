"""Serving latency and throughput: Flywheel vs raw ONNX Runtime, MLServer and `mlflow models serve`.

One small model, one run: a scikit-learn LogisticRegression (20 features, 2 classes) exported to ONNX
by the training service's own packaging (skl2onnx, no ZipMap). Every request is one row, on 127.0.0.1.
- raw ONNX Runtime: InferenceSession.run in this process, the floor every server is compared with;
- MLServer (SeldonIO's OIP server, tests/bench/mlserver_peer.py, its own venv): the same fitted pipeline
  saved with joblib for mlserver-sklearn, over gRPC OIP with the same tritonclient load generator (unary;
  each request asks for `predict` and `predict_proba`): its defaults, in-process inference, one worker
  per core, and one worker per core with adaptive batching (MLSERVER_CONFIGS);
- MLflow: `mlflow models serve --env-manager local` with the same fitted pipeline (mlflow.sklearn) and
  MLflow's defaults (uvicorn, 1 worker), JSON {"inputs": ...} over keep-alive HTTP connections;
- Flywheel: `flywheel up` (tests/e2e/stack.py), the ONNX bytes registered through the registry and
  aliased `production`, called with tritonclient's gRPC clients; five stacks: one serving process with
  serving's dynamic batching defaults, the same with one worker process per core sharing the port
  (FLYWHEEL_SERVING_WORKERS, its default), and one process with FLYWHEEL_SERVING_MAX_BATCH_SIZE=1
  (batching off), all with FLYWHEEL_AUTH_MODE=off (no credentials: the baseline); then one process,
  batching on, with authentication (as
  deployed: a `predictor` token per client, minted through TokenService and sent on every call, which
  serving validates with its cache of validated tokens), and the same over TLS (`flywheel up --tls`:
  a local CA and server certificate made with `cryptography`; tritonclient with ssl=True and the CA as
  root_certificates); each with unary ModelInfer and with ModelStreamInfer (one bidirectional stream
  per client, as perf_analyzer --streaming does; its token is checked once, when the stream opens);
- the gRPC floor (oip_floor_server.py): the same protocol on a bare grpc.aio server answering a
  prebuilt response, no model at all: the most any Python gRPC server can do here.
Each is measured as p50/p99 latency at 1 client (sequential calls) and requests/s at 64 concurrent
clients (closed loop over a fixed duration, after a warm-up). Load generators run in this process, on
the same CPUs as the servers (FLYWHEEL_BENCH_PIN=1 splits them); the CPU time each server's processes
and this process used per request is printed too, and from it which resource ran out at 64 clients
(every CPU busy, one server process at one core, or neither: the clients' round trips bound it).
Goals, printed and not asserted (machines vary): Flywheel p50 within 1 ms of raw ORT and below MLServer's,
>= 2x the best MLServer configuration's and >= 5x MLflow's requests/s at 64 clients, batching on >= 3x
batching off at 64 clients, and the token check costing under 5% of requests/s at 64 clients (auth / no
auth >= 0.95); TLS / plaintext (both with tokens) is printed as measured. Failed requests or wrong
answers do fail the test. MLflow comes from tests/bench/requirements.txt (`make bench` installs it),
MLServer from requirements-mlserver.txt.
A second test, the heavy model (an MLP with HEAVY_HIDDEN layers: a run has a real fixed cost), measures
Flywheel batching on vs off (goal >= 2x) and Flywheel vs MLServer with adaptive batching (goal >= 1.5x).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from tritonclient.utils import InferenceServerException

from flywheel.auth.authenticator import Authenticator
from flywheel.auth.guard import Guard
from flywheel.auth.principal import Principal
from flywheel.config import Settings
from flywheel.grpc.channels import OWN_CONNECTION
from flywheel.stack.procs import free_port
from flywheel.stack.up import read_state
from flywheel.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    serving_pb2,
    serving_pb2_grpc,
)
from flywheel.workers import usable_cpus
from services.serving.runtime import execution_providers
from services.training import packaging
from tests.bench.mlserver_peer import (
    PREDICT,
    PREDICT_PROBA,
    MLServerConfig,
    MLServerPeer,
    mlserver_python,
    mlserver_version,
)
from tests.e2e.stack import UpProcess

_BENCH_DEP = "bench-only dependency: `make bench` installs tests/bench/requirements.txt"
mlflow = pytest.importorskip("mlflow", reason=_BENCH_DEP)
mlflow_sklearn = pytest.importorskip("mlflow.sklearn", reason=_BENCH_DEP)

N_FEATURES = 20
CLASS_LABELS = ["0", "1"]
MODEL = "bench_logreg"
CLIENTS = 64
LATENCY_S = 3.0  # 1-client latency: sequential calls for this long ...
LATENCY_MAX_CALLS = 3_000  # ... or this many, whichever comes first
LOAD_S = 5.0  # requests/s at CLIENTS: closed loop for this long
LOAD_MAX_CALLS_PER_CLIENT = 20_000
WARMUP_S = 1.0
SERVER_START_S = 120.0
MODEL_READY_S = 60.0
GOAL_P50_OVERHEAD_MS = 1.0
GOAL_VS_MLFLOW = 5.0
GOAL_VS_MLSERVER = 2.0  # unary req/s at CLIENTS, Flywheel / the best MLServer configuration
GOAL_BATCHING = 3.0
GOAL_AUTH_COST = 0.05  # the token check may cost at most this fraction of requests/s at CLIENTS
# Each load-generating client on a connection of its own, as separate client processes would be
# (flywheel.grpc.channels.OWN_CONNECTION): otherwise they share one, and a server with worker
# processes behind one port (Flywheel's SO_REUSEPORT workers) sees one client.
SERVING_WORKERS = usable_cpus()  # the workers row: FLYWHEEL_SERVING_WORKERS' default, one per core
ROUNDS = 3  # stacks compared with each other are measured in turns, this many times; the median counts
MAX_BATCH_ENV = "FLYWHEEL_SERVING_MAX_BATCH_SIZE"
WORKERS_ENV = "FLYWHEEL_SERVING_WORKERS"
SPIN_ENV = "FLYWHEEL_SERVING_ORT_SPINNING"
BIN = Path(sys.executable).parent
HEAVY_HIDDEN = (512, 512, 512)  # the heavy model's hidden layers
GOAL_HEAVY_BATCHING = 2.0  # heavy model: Flywheel batching on / off, req/s at CLIENTS
GOAL_HEAVY_VS_MLSERVER = 1.5  # heavy model: Flywheel (batching on) / MLServer with adaptive batching
# FLYWHEEL_BENCH_PIN=1: the load generators (this process) on the first CPU and every server's process
# tree on the others (taskset's split), so neither side takes the other's cores.
PIN = os.environ.get("FLYWHEEL_BENCH_PIN") == "1"
_CPUS = sorted(os.sched_getaffinity(0))  # before any pinning: this process's own affinity changes with it


@dataclass
class Measurement:
    calls: int
    errors: int
    elapsed_s: float
    latencies_ms: np.ndarray
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else float("nan")


@dataclass
class Result:
    name: str
    latency: Measurement | None = None  # 1 client
    load: Measurement | None = None  # CLIENTS clients
    notes: list[str] = field(default_factory=list)
    error: str = ""
    server_cpu_us: float | None = None  # server process CPU time per request under load
    client_cpu_us: float | None = None  # this process's (the load generator's) CPU time per request under load
    machine_cores: float | None = None  # cores the whole machine kept busy under load (every process)


class CpuMeter:
    """CPU time (user + system) used by some processes (with their children, unless `children` is
    False) between start() and per_request()."""

    def __init__(self, pids: list[int], children: bool = True) -> None:
        self._procs = [psutil.Process(pid) for pid in pids]
        self._children = children
        self._start = 0.0

    def _total(self) -> float:
        total = 0.0
        for proc in self._procs:
            for p in [proc, *(proc.children(recursive=True) if self._children else [])]:
                try:
                    times = p.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
        return total

    def start(self) -> None:
        self._start = self._total()

    def per_request_us(self, m: Measurement) -> float:
        return (self._total() - self._start) / max(1, m.calls) * 1e6


class MachineMeter:
    """Cores the whole machine kept busy (every process: the rest of a stack, PostgreSQL, the broker,
    other tenants) between start() and cores()."""

    def __init__(self) -> None:
        self._busy, self._wall = 0.0, 0.0

    @staticmethod
    def _busy_s() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def start(self) -> None:
        self._busy, self._wall = self._busy_s(), time.monotonic()

    def cores(self) -> float:
        return (self._busy_s() - self._busy) / max(1e-9, time.monotonic() - self._wall)


def _pin(server_pids: list[int]) -> None:
    """With PIN: this process's threads on CPU 0, the servers' processes (with their children and
    threads; new threads inherit) on the other CPUs. Without PIN: nothing."""
    cpus = _CPUS
    if not PIN or len(cpus) < 2:
        return

    def place(procs: list[psutil.Process], where: set[int]) -> None:
        for proc in procs:
            try:
                for thread in proc.threads():
                    os.sched_setaffinity(thread.id, where)
            except (psutil.Error, OSError):
                pass  # a process or thread that ended meanwhile

    place([psutil.Process()], {cpus[0]})
    for pid in server_pids:
        root = psutil.Process(pid)
        place([root, *root.children(recursive=True)], set(cpus[1:]))


def _unpin() -> None:
    """This process's threads back on all its CPUs: in-process timings (BLAS starts a thread per CPU it
    saw at import) are not taken squeezed onto one CPU by an earlier test's _pin."""
    if PIN:
        for thread in psutil.Process().threads():
            try:
                os.sched_setaffinity(thread.id, _CPUS)
            except OSError:
                pass


def _load_generator_meter() -> CpuMeter:
    """This process alone: the load generators run here (the servers it started are its children)."""
    return CpuMeter([os.getpid()], children=False)


@dataclass
class Target:
    """How the load generators reach an OIP server: its address, TLS (verified against the CA file
    `root_certificates`), and the bearer tokens clients send (client k sends tokens[k]; none: no
    authorization header)."""

    url: str
    root_certificates: str | None = None
    tokens: list[str] = field(default_factory=list)
    admin_headers: dict[str, str] | None = None  # for what a predictor may not call (statistics)
    model: str = MODEL
    outputs: tuple[str, ...] = ()  # outputs every request asks for by name; none: the server's default

    def requested_outputs(self) -> list[tgrpc.InferRequestedOutput] | None:
        return [tgrpc.InferRequestedOutput(name) for name in self.outputs] or None

    def headers(self, k: int) -> dict[str, str] | None:
        return {"authorization": f"Bearer {self.tokens[k % len(self.tokens)]}"} if self.tokens else None

    def client(self) -> tgrpc.InferenceServerClient:
        return tgrpc.InferenceServerClient(
            self.url,
            ssl=self.root_certificates is not None,
            root_certificates=self.root_certificates,
            channel_args=[OWN_CONNECTION],
        )

    def aio_client(self) -> tgrpc_aio.InferenceServerClient:
        return tgrpc_aio.InferenceServerClient(
            self.url,
            ssl=self.root_certificates is not None,
            root_certificates=self.root_certificates,
            channel_args=[OWN_CONNECTION],
        )


# ---------------------------------------------------------------------------------------------- model


@dataclass
class BenchModel:
    pipeline: Pipeline
    onnx_bytes: bytes
    X: np.ndarray  # float32 rows to send
    accuracy: float


def _fit(estimator: BaseEstimator) -> BenchModel:
    """`estimator` fitted on 3,000 seeded rows, exported to ONNX; the 1,000 held-out rows are what clients send."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(4_000, N_FEATURES)).astype(np.float32)
    y = (X @ np.linspace(1.0, -1.0, N_FEATURES) + rng.normal(scale=0.5, size=len(X)) > 0).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a bench model, not a tuned one
        pipeline = Pipeline([("model", estimator)]).fit(X[:3_000], y[:3_000])
    accuracy = float((pipeline.predict(X[3_000:]) == y[3_000:]).mean())
    return BenchModel(pipeline, packaging.export_onnx(pipeline, N_FEATURES), X[3_000:], accuracy)


@pytest.fixture(scope="module")
def model() -> BenchModel:
    return _fit(LogisticRegression(max_iter=500))


@pytest.fixture(scope="module")
def heavy_model() -> BenchModel:
    """A model run with a real cost per call: an MLP whose weights (HEAVY_HIDDEN) are read once per run,
    whether the run has one row or a batch of them."""
    return _fit(MLPClassifier(hidden_layer_sizes=HEAVY_HIDDEN, max_iter=20, random_state=7))


# ------------------------------------------------------------------------------------ load generators


def _threads(
    make_call: Callable[[], Callable[[int], None]], clients: int, duration_s: float, max_calls: int
) -> Measurement:
    """Closed loop: `clients` threads, each calling its own `make_call()` (given a row index) until the deadline."""
    start_line = threading.Barrier(clients + 1)
    per_thread: list[tuple[list[float], int, str, float]] = [([], 0, "", 0.0)] * clients

    calls = [make_call() for _ in range(clients)]  # here, so a failing one raises in the caller

    def worker(i: int) -> None:
        call = calls[i]
        latencies: list[float] = []
        errors, first = 0, ""
        start_line.wait()
        deadline = time.perf_counter() + duration_s
        n = 0
        while n < max_calls:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            try:
                call(i * max_calls + n)
                latencies.append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:
                errors += 1
                first = first or f"{type(exc).__name__}: {exc}"
            n += 1
        per_thread[i] = (latencies, errors, first, time.perf_counter())

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return _merge(per_thread, start)


def _merge(per_client: list[tuple[list[float], int, str, float]], start: float) -> Measurement:
    latencies = np.asarray([x for lat, *_ in per_client for x in lat], dtype=np.float64)
    errors = sum(e for _, e, _, _ in per_client)
    first = next((f for _, _, f, _ in per_client if f), "")
    elapsed = max(end for *_, end in per_client) - start
    return Measurement(int(latencies.size), errors, elapsed, latencies, first)


def _latency_and_load(
    make_call: Callable[[], Callable[[int], None]], result: Result, server_pids: list[int] | None = None
) -> None:
    """1-client latency, then load at CLIENTS threads; the servers' CPU per request when pids are given."""
    _pin(server_pids or [])
    _threads(make_call, 1, WARMUP_S, LATENCY_MAX_CALLS)
    result.latency = _threads(make_call, 1, LATENCY_S, LATENCY_MAX_CALLS)
    _threads(make_call, CLIENTS, WARMUP_S, LOAD_MAX_CALLS_PER_CLIENT)
    cpu, client_cpu, machine = CpuMeter(server_pids or []), _load_generator_meter(), MachineMeter()
    cpu.start()
    client_cpu.start()
    machine.start()
    result.load = _threads(make_call, CLIENTS, LOAD_S, LOAD_MAX_CALLS_PER_CLIENT)
    result.machine_cores = machine.cores()
    result.client_cpu_us = client_cpu.per_request_us(result.load)
    if server_pids:
        result.server_cpu_us = cpu.per_request_us(result.load)


# ------------------------------------------------------------------------------------ raw ONNX Runtime


def bench_raw_ort(model: BenchModel) -> Result:
    result = Result("raw ONNX Runtime, in-process")
    # The providers serving's default ("auto") picks: CUDA when a CUDA session really works, else CPU.
    session = ort.InferenceSession(model.onnx_bytes, providers=execution_providers("auto"))
    result.notes.append(f"provider {session.get_providers()[0]}")
    rows = [model.X[i : i + 1] for i in range(len(model.X))]

    def make_call() -> Callable[[int], None]:
        def call(i: int) -> None:
            session.run(None, {packaging.INPUT_NAME: rows[i % len(rows)]})

        return call

    _latency_and_load(make_call, result)
    return result


# --------------------------------------------------------------------------------------------- MLflow


class MlflowServer:
    """`mlflow models serve` as a subprocess in its own process group (it starts uvicorn as a child)."""

    def __init__(self, model_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        # uvicorn is found on PATH; MLFLOW_MODELS_WORKERS unset, so MLflow's default of 1 worker applies.
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_MODELS_WORKERS"}
        env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        cmd = [str(BIN / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager", "local"]
        cmd += ["-p", str(self.port), "--host", "127.0.0.1"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow models serve exited {self.proc.returncode}:\n{self._tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/ping")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"mlflow models serve not ready after {timeout_s}s:\n{self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _post(conn: http.client.HTTPConnection, body: bytes) -> list:
    conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
    return json.loads(data)["predictions"]


def bench_mlflow(model: BenchModel, work: Path) -> Result:
    result = Result("mlflow models serve")
    model_dir = work / "mlflow-model"
    mlflow_sklearn.save_model(
        model.pipeline,
        str(model_dir),
        signature=mlflow.models.infer_signature(model.X, model.pipeline.predict(model.X)),
        serialization_format=mlflow_sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,  # skops (the default) is another dep
        pip_requirements=[],  # skip requirement inference (a subprocess); --env-manager local ignores them
    )
    server = MlflowServer(model_dir, work / "mlflow.log")
    try:
        server.wait_ready(SERVER_START_S)
        result.notes.append(f"MLflow {mlflow.__version__} defaults: uvicorn, 1 worker")
        bodies = [json.dumps({"inputs": model.X[i : i + 1].tolist()}).encode() for i in range(len(model.X))]

        # Same answers as the pipeline itself, before timing anything.
        check = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        got = _post(check, json.dumps({"inputs": model.X[:64].tolist()}).encode())
        assert np.array_equal(np.asarray(got), model.pipeline.predict(model.X[:64])), "MLflow answered differently"

        def make_call() -> Callable[[int], None]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

            def call(i: int) -> None:
                _post(conn, bodies[i % len(bodies)])

            return call

        _latency_and_load(make_call, result, [server.proc.pid])
    finally:
        server.stop()
    return result


# ------------------------------------------------------------------------------------------- Flywheel


def _register_requests(model: BenchModel) -> Iterator[registry_pb2.RegisterModelRequest]:
    signature = packaging.signature_from_onnx(
        model.onnx_bytes, [f"f{i}" for i in range(N_FEATURES)], CLASS_LABELS
    )  # input FP32 [-1, 20]; outputs label INT64 [-1], probabilities FP32 [-1, 2]
    yield registry_pb2.RegisterModelRequest(
        header=registry_pb2.RegisterModelHeader(
            model_name=MODEL,
            description="serving bench",
            task=common_pb2.TASK_CLASSIFICATION,
            signature=signature,
            metrics=[common_pb2.Metric(name="accuracy", value=model.accuracy, split=common_pb2.SPLIT_TEST)],
            format="onnx",
            sha256=hashlib.sha256(model.onnx_bytes).hexdigest(),
            actor="bench",
        )
    )
    for i in range(0, len(model.onnx_bytes), 1 << 20):
        yield registry_pb2.RegisterModelRequest(chunk=model.onnx_bytes[i : i + (1 << 20)])


def _deploy(stack: UpProcess, model: BenchModel, target: Target) -> None:
    """Registers the ONNX model, aliases it `production` and waits until serving reports it ready
    (as the admin `flywheel up` minted: its credentials file holds the token and, with TLS, the CA)."""
    with stack.channel("registry") as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        version = registry.RegisterModel(_register_requests(model), timeout=60).version.ref.version
        # Serving's staging checks answer first (they fail here: no dataset lineage, which is fine). Waiting
        # for them keeps their work out of the measurements and means serving's consumers have joined, so
        # the model.promoted that SetAlias emits is not missed by a swap consumer still starting up.
        request = registry_pb2.GetModelVersionRequest(name=MODEL, version=version)
        deadline = time.monotonic() + MODEL_READY_S
        while time.monotonic() < deadline:
            state = registry.GetModelVersion(request, timeout=10).version.promotion.state
            if state != registry_pb2.PROMOTION_STATE_PENDING_CHECKS:
                break
            time.sleep(0.3)
        registry.SetAlias(
            registry_pb2.SetAliasRequest(
                name=MODEL, alias="production", version=version, actor="bench", reason="serving bench"
            ),
            timeout=30,
        )
    # Every worker of the pool swaps on its own: ready means each one's heartbeat shows the version.
    workers = int(stack.env.get(WORKERS_ENV, "1"))
    client = target.client()
    try:
        deadline = time.monotonic() + MODEL_READY_S
        last = ""
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready(MODEL, headers=target.admin_headers) and (
                    workers == 1 or _every_worker_serves(stack, version, workers)
                ):
                    return
                last = "is_model_ready: False, or not on every worker"
            except InferenceServerException as exc:
                last = f"is_model_ready: {exc}"
            time.sleep(0.3)
    finally:
        client.close()
    log = stack.home / "log" / "serving.log"
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no serving.log)"
    raise AssertionError(f"{MODEL} not ready in Flywheel serving after {MODEL_READY_S}s ({last}):\n{tail}")


def _every_worker_serves(stack: UpProcess, version: int, workers: int) -> bool:
    with stack.channel("serving") as channel:
        dep = (
            serving_pb2_grpc.ServingAdminStub(channel)
            .GetDeployment(serving_pb2.GetDeploymentRequest(model_name=MODEL), timeout=10)
            .deployment
        )
    return len(dep.replicas) == workers and all(r.production_version == version for r in dep.replicas)


def _infer_input(rows: np.ndarray) -> list[tgrpc.InferInput]:
    inp = tgrpc.InferInput(packaging.INPUT_NAME, list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return [inp]


async def _aio_load(
    target: Target, inputs: list[list[tgrpc.InferInput]], clients: int, duration_s: float
) -> Measurement:
    """Closed loop: `clients` coroutines sharing one tritonclient.grpc.aio client (one HTTP/2 channel),
    each sending its own token (when the target has tokens) on every call."""
    async with target.aio_client() as client:
        outputs = target.requested_outputs()

        async def worker(k: int) -> tuple[list[float], int, str, float]:
            headers = target.headers(k)
            latencies: list[float] = []
            errors, first = 0, ""
            deadline = time.perf_counter() + duration_s
            for n in range(LOAD_MAX_CALLS_PER_CLIENT):
                t0 = time.perf_counter()
                if t0 >= deadline:
                    break
                try:
                    await client.infer(
                        target.model,
                        inputs[(k * LOAD_MAX_CALLS_PER_CLIENT + n) % len(inputs)],
                        outputs=outputs,
                        headers=headers,
                    )
                    latencies.append((time.perf_counter() - t0) * 1e3)
                except InferenceServerException as exc:
                    errors += 1
                    first = first or str(exc)
            return latencies, errors, first, time.perf_counter()

        start = time.perf_counter()
        per_client = await asyncio.gather(*(worker(k) for k in range(clients)))
    return _merge(list(per_client), start)


async def _aio_stream_load(
    target: Target, inputs: list[list[tgrpc.InferInput]], clients: int, duration_s: float
) -> Measurement:
    """Closed loop over ModelStreamInfer: each client holds one stream (opened with its own token, when
    the target has tokens) and sends its next request when the previous answer arrives
    (tritonclient.grpc.aio's stream_infer)."""
    async with target.aio_client() as client:

        async def worker(k: int) -> tuple[list[float], int, str, float]:
            latencies: list[float] = []
            errors, first = 0, ""
            outbox: asyncio.Queue[dict | None] = asyncio.Queue()

            async def requests() -> AsyncIterator[dict]:
                while (item := await outbox.get()) is not None:
                    yield item

            def send(n: int) -> float:
                row = inputs[(k * LOAD_MAX_CALLS_PER_CLIENT + n) % len(inputs)]
                outbox.put_nowait({"model_name": target.model, "inputs": row})
                return time.perf_counter()

            deadline = time.perf_counter() + duration_s
            n, t0 = 0, send(0)
            async for _result, error in client.stream_infer(requests(), headers=target.headers(k)):
                if error is None:
                    latencies.append((time.perf_counter() - t0) * 1e3)
                else:
                    errors += 1
                    first = first or str(error)
                n += 1
                if time.perf_counter() >= deadline or n >= LOAD_MAX_CALLS_PER_CLIENT:
                    outbox.put_nowait(None)
                    break
                t0 = send(n)
            return latencies, errors, first, time.perf_counter()

        start = time.perf_counter()
        per_client = await asyncio.gather(*(worker(k) for k in range(clients)))
    return _merge(list(per_client), start)


def _measure(
    target: Target,
    model: BenchModel,
    result: Result,
    streamed: Result | None,
    pids: list[int],
    pin_pids: list[int] | None = None,
) -> None:
    """1-client latency, then unary (and, given a `streamed` row, streaming) load at CLIENTS, on a
    server already answering; `pids`: the server processes whose CPU is counted; `pin_pids` (default:
    `pids`) the process trees that go on the servers' CPUs with PIN."""
    _pin(pids if pin_pids is None else pin_pids)
    inputs = [_infer_input(model.X[i : i + 1]) for i in range(len(model.X))]
    headers, outputs = target.headers(0), target.requested_outputs()
    with target.client() as client:

        def make_call() -> Callable[[int], None]:
            def call(i: int) -> None:
                client.infer(target.model, inputs[i % len(inputs)], outputs=outputs, headers=headers)

            return call

        _threads(make_call, 1, WARMUP_S, LATENCY_MAX_CALLS)
        result.latency = _threads(make_call, 1, LATENCY_S, LATENCY_MAX_CALLS)
    cpu, client_cpu, machine = CpuMeter(pids), _load_generator_meter(), MachineMeter()
    loads = [(result, _aio_load)] + ([(streamed, _aio_stream_load)] if streamed is not None else [])
    for row, load in loads:
        asyncio.run(load(target, inputs, CLIENTS, WARMUP_S))
        cpu.start()
        client_cpu.start()
        machine.start()
        row.load = asyncio.run(load(target, inputs, CLIENTS, LOAD_S))
        row.machine_cores = machine.cores()
        row.server_cpu_us = cpu.per_request_us(row.load)
        row.client_cpu_us = client_cpu.per_request_us(row.load)
    if streamed is not None:
        streamed.latency = result.latency  # streaming changes nothing for one client calling in sequence


def bench_floor(model: BenchModel, work: Path, result: Result, streamed: Result) -> None:
    port = free_port()
    with (work / "floor.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.oip_floor_server", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with tgrpc.InferenceServerClient(url) as client:
                    if client.is_server_ready():
                        break
            except InferenceServerException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"floor server did not start: {(work / 'floor.log').read_text()[-2000:]}")
            time.sleep(0.2)
        _measure(Target(url), model, result, streamed, [proc.pid])
    finally:
        proc.terminate()
        proc.wait(10)


# -------------------------------------------------------------------------------------------- MLServer

# The same batching limits as Flywheel's defaults (FLYWHEEL_SERVING_MAX_BATCH_SIZE=32,
# FLYWHEEL_SERVING_MAX_QUEUE_DELAY_US=500), so the batching rows wait and group alike.
MLSERVER_BATCHING = {"max_batch_size": 32, "max_batch_time": 0.0005}
# Tuned for throughput as MLServer's docs say: one parallel inference worker per core; and its access log
# (on by default: `debug`) off, as Flywheel keeps none.
_WORKERS = os.cpu_count() or 1
MLSERVER_THROUGHPUT = {"parallel_workers": _WORKERS, "debug": False}
# parallel_workers=0 runs the model in the server's own process: no hop to a worker process, so its
# quickest at one client.
MLSERVER_INLINE = {"parallel_workers": 0, "debug": False}
MLSERVER_CONFIGS = {
    "mlserver": MLServerConfig("MLServer, defaults, unary"),
    "mlserver_inline": MLServerConfig("MLServer, inference in-process, no log, unary", MLSERVER_INLINE),
    "mlserver_workers": MLServerConfig(f"MLServer, {_WORKERS} workers, no log, unary", MLSERVER_THROUGHPUT),
    "mlserver_batch": MLServerConfig(
        f"MLServer, {_WORKERS} workers + adaptive batching, unary", MLSERVER_THROUGHPUT, MLSERVER_BATCHING
    ),
}


def _check_concurrent(
    target: Target, rows: np.ndarray, want: tuple[np.ndarray, np.ndarray], outputs: tuple[str, str], atol: float
) -> None:
    """One single-row call per row, all at once (so a batching server groups them): each must get its
    own row's answer (`want`: labels, probabilities; `outputs`: their names), so a batch split back
    wrongly fails here."""
    clients = len(rows)
    (want_label, want_proba), (label, proba) = want, outputs

    async def run() -> list[tgrpc.InferResult]:
        async with target.aio_client() as client:
            return list(
                await asyncio.gather(
                    *(
                        client.infer(
                            target.model,
                            _infer_input(rows[k : k + 1]),
                            outputs=target.requested_outputs(),
                            headers=target.headers(k),
                        )
                        for k in range(clients)
                    )
                )
            )

    for k, got in enumerate(asyncio.run(run())):
        assert np.array_equal(got.as_numpy(label).ravel(), want_label[k : k + 1]), f"{target.url}: row {k}'s label"
        assert np.allclose(got.as_numpy(proba), want_proba[k : k + 1], atol=atol), (
            f"{target.url}: row {k}'s probabilities"
        )


def bench_mlserver(model: BenchModel, work: Path, config: MLServerConfig, result: Result) -> None:
    """MLServer (its own venv) serving the fitted pipeline, saved with joblib, through mlserver-sklearn.
    Every request asks for both `predict` and `predict_proba`, the label and probabilities Flywheel's
    ONNX model answers with (mlserver-sklearn runs predict and predict_proba for them)."""
    python = mlserver_python()
    peer = MLServerPeer(python, model.pipeline, MODEL, config, work)
    try:
        peer.wait_ready(SERVER_START_S)
        target = Target(peer.url, outputs=(PREDICT, PREDICT_PROBA))
        with target.client() as client:  # a 16-row request, then 64 single rows at once
            got = client.infer(MODEL, _infer_input(model.X[:16]), outputs=target.requested_outputs())
            assert np.array_equal(got.as_numpy(PREDICT).ravel(), model.pipeline.predict(model.X[:16])), (
                "MLServer labels differ"
            )
            proba = model.pipeline.predict_proba(model.X[:16])
            assert np.allclose(got.as_numpy(PREDICT_PROBA), proba, atol=1e-6), "MLServer probabilities differ"
        rows = model.X[:CLIENTS]
        want = model.pipeline.predict(rows), model.pipeline.predict_proba(rows)
        _check_concurrent(target, rows, want, (PREDICT, PREDICT_PROBA), 1e-6)
        settings = {**config.settings, **config.model_settings}
        result.notes.append(
            f"MLServer {mlserver_version(python)}, {json.dumps(settings) if settings else 'its defaults'}"
        )
        _measure(target, model, result, None, [peer.proc.pid])
    finally:
        peer.stop()


@dataclass(frozen=True)
class FlywheelSetup:
    """One `flywheel up` of the bench: its environment, its arguments, and whether clients authenticate."""

    name: str
    env: dict[str, str]
    up_args: tuple[str, ...] = ()
    auth: bool = False


def _predictor_tokens(stack: UpProcess, n: int) -> list[str]:
    """`n` predictor tokens, one per load-generating client, minted by the admin through TokenService."""
    with stack.channel("registry") as channel:
        tokens = auth_pb2_grpc.TokenServiceStub(channel)
        return [
            tokens.CreateToken(
                auth_pb2.CreateTokenRequest(name=f"bench-client-{k}", role="predictor"), timeout=30
            ).secret
            for k in range(n)
        ]


@dataclass
class RunningFlywheel:
    """A started stack with the bench model in production, and how the load generators reach it."""

    stack: UpProcess
    target: Target
    pids: list[int]


def start_flywheel(model: BenchModel, work: Path, setup: FlywheelSetup) -> RunningFlywheel:
    """`flywheel up` as `setup` says, the model deployed, and its answers checked against ONNX Runtime."""
    stack = UpProcess(work / setup.name, *setup.up_args)
    # Batching on = serving's defaults and auth as the setup says, whatever this shell has set.
    for key in ("FLYWHEEL_SERVING_MAX_BATCH_SIZE", "FLYWHEEL_SERVING_MAX_QUEUE_DELAY_US", "FLYWHEEL_AUTH_MODE"):
        stack.env.pop(key, None)
    stack.env.update(setup.env)
    try:
        stack.start(SERVER_START_S)
        creds = stack.credentials
        target = Target(
            stack.address("serving"),
            root_certificates=str(creds.tls_ca_file) if creds.tls and creds.tls_ca_file else None,
            admin_headers=stack.headers if setup.auth else None,
        )
        _deploy(stack, model, target)
        if setup.auth:
            target.tokens = _predictor_tokens(stack, CLIENTS)

        # Same answers as ONNX Runtime in-process, before timing anything.
        session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
        want_label, want_proba = session.run(None, {packaging.INPUT_NAME: model.X[:16]})
        with target.client() as client:
            got = client.infer(MODEL, _infer_input(model.X[:16]), headers=target.headers(0))
            assert np.array_equal(got.as_numpy("label"), want_label), "Flywheel labels differ from ONNX Runtime's"
            assert np.allclose(got.as_numpy("probabilities"), want_proba, atol=1e-5), "Flywheel probabilities differ"
        rows = model.X[:CLIENTS]
        _check_concurrent(
            target, rows, session.run(None, {packaging.INPUT_NAME: rows}), ("label", "probabilities"), 1e-5
        )
        with target.client() as client:
            if setup.auth:  # the check is real: without a token, no answer
                with pytest.raises(InferenceServerException) as refused:
                    client.infer(MODEL, _infer_input(model.X[:1]))
                assert "UNAUTHENTICATED" in str(refused.value.status()), refused.value
        state = read_state(stack.home)
        assert state is not None, "flywheel up wrote no stack.json"
        return RunningFlywheel(stack, target, [state["services"]["serving"]["pid"]])
    except BaseException:
        stop_flywheel(stack)
        raise


def stop_flywheel(stack: UpProcess) -> None:
    if stack.proc is not None and stack.proc.poll() is None:
        try:
            stack.interrupt(60)
        except subprocess.TimeoutExpired:
            pass
    stack.kill_all()


def _median_round(rounds: list[Result], into: Result) -> None:
    """The median round's load (by requests/s) and latency (by p50) into `into`, with the spread."""
    rps = sorted(rounds, key=lambda r: r.load.rps if r.load else 0.0)
    p50 = sorted(rounds, key=lambda r: r.latency.pct(50) if r.latency else 0.0)
    mid = len(rounds) // 2
    into.load, into.server_cpu_us, into.latency = rps[mid].load, rps[mid].server_cpu_us, p50[mid].latency
    into.client_cpu_us, into.machine_cores = rps[mid].client_cpu_us, rps[mid].machine_cores
    if len(rounds) > 1:
        low, high = (r.load.rps if r.load else 0.0 for r in (rps[0], rps[-1]))
        into.notes.append(f"median of {len(rounds)} rounds, req/s {low:,.0f}-{high:,.0f}")


def bench_flywheel(
    model: BenchModel,
    work: Path,
    group: list[tuple[Result, Result, FlywheelSetup]],
    rounds: int,
    failed: Callable[[Result, Result, BaseException], None],
) -> None:
    """Starts every stack of `group` (rows: unary, streaming), then measures them in turns, `rounds`
    times, so that what the machine does meanwhile (other processes, caches, clocks) falls on all of
    them alike; each row gets its median round. A stack that fails to start is reported through `failed`
    and the others go on."""
    running: list[tuple[Result, Result, RunningFlywheel]] = []
    try:
        for unary, streamed, setup in group:
            try:
                running.append((unary, streamed, start_flywheel(model, work, setup)))
            except Exception as exc:
                failed(unary, streamed, exc)
        samples: list[list[tuple[Result, Result]]] = [[] for _ in running]
        for _ in range(rounds):
            for taken, (unary, streamed, fly) in zip(samples, running, strict=True):
                u, st = Result(unary.name), Result(streamed.name)
                _measure(fly.target, model, u, st, fly.pids, [fly.stack.proc.pid] if fly.stack.proc else None)
                taken.append((u, st))
        errors = []
        for taken, (unary, streamed, fly) in zip(samples, running, strict=True):
            for row, results in ((unary, [u for u, _ in taken]), (streamed, [st for _, st in taken])):
                _median_round(results, row)
                errors += [f"{row.name}: {m.errors} failed requests, first: {m.first_error}"
                           for r in results for m in (r.latency, r.load) if m is not None and m.errors]  # fmt: skip
            with fly.target.client() as client:
                stats = client.get_inference_statistics(MODEL, headers=fly.target.admin_headers).model_stats[0]
            rows_per_run = stats.inference_count / max(1, stats.execution_count)
            if fly.target.tokens:
                unary.notes.append(f"{len(fly.target.tokens)} predictor tokens, one per client")
            for r in (unary, streamed):
                r.notes.append(f"{rows_per_run:.1f} rows per model run, over the whole run")
        assert not errors, "\n".join(errors)
    finally:
        for _, _, fly in running:
            stop_flywheel(fly.stack)


class _KnownToken(Authenticator):
    """Validates any token as a predictor's, without a database: its cache then answers every call,
    as serving's does for a token it validated in the last auth_cache_s."""

    async def _verify(self, credential: str) -> Principal:
        return Principal("bench-client", frozenset({"predictor"}), "token")


def guard_check_us(calls: int = 100_000) -> float:
    """What serving's Guard.check costs per ModelInfer with a cached token, in process (µs): the part
    of the auth rows' difference that is the check itself, free of the noise between stacks."""
    guard = Guard("required")
    guard.authenticator = _KnownToken(Settings(), None)
    metadata = (("user-agent", "grpc-python-asyncio"), ("authorization", "Bearer fwk_0123456789abcdef_" + "s" * 43))
    method = "/inference.GRPCInferenceService/ModelInfer"

    async def run() -> float:
        await guard.check(method, metadata)  # validates once; the rest are cache hits
        start = time.perf_counter()
        for _ in range(calls):
            await guard.check(method, metadata)
        return (time.perf_counter() - start) / calls * 1e6

    return asyncio.run(run())


# -------------------------------------------------------------------------------------------- report


def _row(r: Result) -> str:
    if r.latency is None or r.load is None:
        return f"  {r.name:<46} not measured: {r.error or 'no result'}"
    line = f"  {r.name:<46} {r.latency.pct(50):8.3f} {r.latency.pct(99):8.3f} {r.load.rps:11,.0f}"
    line += f" {r.load.pct(50):9.3f} {r.load.pct(99):9.3f}"
    line += f" {r.server_cpu_us:10,.0f}" if r.server_cpu_us is not None else f" {'-':>10}"
    line += f" {r.client_cpu_us:10,.0f}" if r.client_cpu_us is not None else f" {'-':>10}"
    return line + (f"   ({'; '.join(r.notes)})" if r.notes else "")


def _ok(r: Result) -> bool:
    return r.latency is not None and r.load is not None


def _ratio(a: Result, b: Result) -> float | None:
    return a.load.rps / b.load.rps if _ok(a) and _ok(b) and a.load and b.load else None


def _measured(label: str, value: float | None) -> str:
    return f"  {label}: {'not measured' if value is None else f'{value:.3f}'}"


def _goal(label: str, value: float | None, fmt: str, goal: str, met: Callable[[float], bool]) -> str:
    if value is None:
        return f"  {label}: not measured (goal {goal}: not met)"
    return f"  {label}: {value:{fmt}} (goal {goal}: {'met' if met(value) else 'NOT met'})"


def _ran_out(rows: dict[str, Result]) -> list[str]:
    """Per row at CLIENTS clients: the cores kept busy by the server's processes and the load generator
    (CPU µs per request x requests/s) and by everything else on the machine (for Flywheel: the rest of
    the stack, e.g. monitoring, the broker and PostgreSQL taking the logged predictions), and what that
    says ran out."""
    lines = [
        f"  what ran out at {CLIENTS} clients (cores busy: server + load generator + everything else,"
        f" of {len(_CPUS)} CPUs):"
    ]
    for r in rows.values():
        if r.load is None or r.server_cpu_us is None or r.client_cpu_us is None or r.machine_cores is None:
            continue
        server, client = r.server_cpu_us * r.load.rps / 1e6, r.client_cpu_us * r.load.rps / 1e6
        rest = max(0.0, r.machine_cores - server - client)
        busy = r.machine_cores / len(_CPUS)
        if busy >= 0.8:  # the rest is lost to switching between the processes that share the cores
            verdict = f"CPU: the machine's cores ({busy:.0%} busy)"
        elif 0.85 <= server <= 1.15 and "workers" not in r.name:
            verdict = "one core: the server process is GIL-bound"
        elif client >= 0.85:
            verdict = "the load generator's core (its event loop is GIL-bound)"
        else:
            verdict = "no CPU: bound by round trips (latency x clients)"
        lines.append(f"    {r.name:<46} {server:4.2f} + {client:4.2f} + {rest:4.2f} -> {verdict}")
    return lines


def _cost(ratio: float | None) -> float | None:
    return None if ratio is None else 1.0 - ratio


def _table(model: str, rows: dict[str, Result]) -> list[str]:
    return [
        f"\nserving bench: {model}; 1-row requests; {os.cpu_count()} CPUs; load generators in this process"
        + (" pinned to CPU 0, servers to the others (FLYWHEEL_BENCH_PIN=1)" if PIN else ""),
        f"  latency: 1 client, {LATENCY_S:.0f} s (at most {LATENCY_MAX_CALLS:,} calls);"
        f" throughput: {CLIENTS} clients, {LOAD_S:.0f} s; {WARMUP_S:.0f} s warm-up before each;"
        f" server / client µs: CPU time per request at {CLIENTS} clients of the server's processes / of this"
        " process (the load generator; for raw ORT, everything)",
        f"  {'':<46} {'p50 ms':>8} {'p99 ms':>8} {f'req/s @{CLIENTS}':>11} {f'p50@{CLIENTS}':>9} {f'p99@{CLIENTS}':>9}"
        f" {'server µs':>10} {'client µs':>10}",
        *(_row(r) for r in rows.values()),
    ]


def _report(rows: dict[str, Result], check_us: float | None = None) -> str:
    ort_r, mlflow_r, on, off = rows["ort"], rows["mlflow"], rows["on"], rows["off"]
    on_s, off_s, floor = rows["on_stream"], rows["off_stream"], rows["floor"]
    auth, auth_s, tls, tls_s = rows["auth"], rows["auth_stream"], rows["tls"], rows["tls_stream"]
    auth_goal = f"< {GOAL_AUTH_COST:.0%}"
    overhead = on.latency.pct(50) - ort_r.latency.pct(50) if on.latency and ort_r.latency else None
    vs = f">= {GOAL_VS_MLFLOW}x"
    peers = [rows[k] for k in MLSERVER_CONFIGS if _ok(rows[k])]
    best = max(peers, key=lambda r: r.load.rps if r.load else 0.0, default=rows["mlserver"])
    quickest = min(peers, key=lambda r: r.latency.pct(50) if r.latency else 0.0, default=rows["mlserver"])
    workers, workers_s = rows["workers"], rows["workers_stream"]
    # The platform as deployed (prediction logging on), one process or workers, whichever did more.
    fly = max((r for r in (on, workers) if _ok(r)), key=lambda r: r.load.rps if r.load else 0.0, default=on)
    p50s = (
        (on.latency.pct(50), quickest.latency.pct(50))
        if _ok(on) and _ok(quickest) and on.latency and quickest.latency
        else None
    )
    lines = [
        *_table(f"LogisticRegression, {N_FEATURES} features, {len(CLASS_LABELS)} classes", rows),
        _goal(
            "p50 overhead, Flywheel (batching on) - raw ORT",
            overhead,
            ".3f",
            f"< {GOAL_P50_OVERHEAD_MS} ms",
            lambda v: v < GOAL_P50_OVERHEAD_MS,
        ),
        *(
            _goal(f"req/s @{CLIENTS}, {label} / MLflow", _ratio(r, mlflow_r), ".2f", vs, lambda v: v >= GOAL_VS_MLFLOW)
            for label, r in (("Flywheel unary", on), ("Flywheel streaming", on_s), ("gRPC floor, unary", floor))
        ),
        _goal(
            f"req/s @{CLIENTS}, best Flywheel unary ({fly.name}) / best MLServer ({best.name})",
            _ratio(fly, best),
            ".2f",
            f">= {GOAL_VS_MLSERVER}x",
            lambda v: v >= GOAL_VS_MLSERVER,
        ),
        _measured(f"req/s @{CLIENTS}, Flywheel 1 process unary / best MLServer", _ratio(on, best)),
        _measured(f"req/s @{CLIENTS}, Flywheel {SERVING_WORKERS} workers / 1 process, unary", _ratio(workers, on)),
        _measured(
            f"req/s @{CLIENTS}, Flywheel {SERVING_WORKERS} workers / 1 process, streaming", _ratio(workers_s, on_s)
        ),
        *(
            _measured(f"req/s @{CLIENTS}, Flywheel {label}", _ratio(rows[a], rows[b]))
            for label, a, b in (
                ("prediction log off / on, 1 process, unary", "nolog", "on"),
                (f"{SERVING_WORKERS} workers / 1 process, log off, unary", "nolog_workers", "nolog"),
                (f"{SERVING_WORKERS} workers / 1 process, log off, streaming", "nolog_workers_stream", "nolog_stream"),
            )
        ),
        _measured(f"req/s @{CLIENTS}, Flywheel streaming / best MLServer (unary)", _ratio(on_s, best)),
        _measured(f"req/s @{CLIENTS}, gRPC floor unary / best MLServer", _ratio(floor, best)),
        (
            f"  p50 at 1 client, Flywheel (batching on) vs quickest MLServer ({quickest.name}):"
            f" {p50s[0]:.3f} vs {p50s[1]:.3f} ms (goal lower: {'met' if p50s[0] < p50s[1] else 'NOT met'})"
            if p50s
            else "  p50 at 1 client, Flywheel vs MLServer: not measured (goal lower: not met)"
        ),
        _goal(
            f"req/s @{CLIENTS}, Flywheel batching on / off, unary",
            _ratio(on, off),
            ".2f",
            f">= {GOAL_BATCHING}x",
            lambda v: v >= GOAL_BATCHING,
        ),
        _goal(
            f"req/s @{CLIENTS}, Flywheel batching on / off, streaming",
            _ratio(on_s, off_s),
            ".2f",
            f">= {GOAL_BATCHING}x",
            lambda v: v >= GOAL_BATCHING,
        ),
        *(
            _measured(f"req/s @{CLIENTS}, Flywheel {label}", _ratio(a, b))
            for label, a, b in (
                ("auth / no auth, unary", auth, on),
                ("auth / no auth, streaming", auth_s, on_s),
                ("TLS / plaintext (both with auth), unary", tls, auth),
                ("TLS / plaintext (both with auth), streaming", tls_s, auth_s),
            )
        ),
        _goal(
            f"token check cost @{CLIENTS}, 1 - auth / no auth, unary",
            _cost(_ratio(auth, on)),
            ".1%",
            auth_goal,
            lambda v: v < GOAL_AUTH_COST,
        ),
        _goal(
            f"token check cost @{CLIENTS}, 1 - auth / no auth, streaming",
            _cost(_ratio(auth_s, on_s)),
            ".1%",
            auth_goal,
            lambda v: v < GOAL_AUTH_COST,
        ),
    ]
    lines += _ran_out(rows)
    if check_us is not None:
        share = f" = {check_us / on.server_cpu_us:.2%} of" if on.server_cpu_us else ", vs"
        lines.append(
            f"  token check in process (Guard.check, cached token): {check_us:.2f} µs per call{share} Flywheel's"
            " server CPU per request (batching on, no auth)"
        )
    return "\n".join(lines)


@pytest.mark.timeout(1800)
def test_serving_latency_and_throughput(model: BenchModel) -> None:
    rows = {
        "ort": Result("raw ONNX Runtime, in-process"),
        "mlflow": Result("mlflow models serve"),
        **{key: Result(config.label) for key, config in MLSERVER_CONFIGS.items()},
        "floor": Result("gRPC floor: prebuilt answer, unary"),
        "floor_stream": Result("gRPC floor: prebuilt answer, streaming"),
        "on": Result("Flywheel, 1 process, batching on, unary"),
        "on_stream": Result("Flywheel, 1 process, batching on, streaming"),
        "workers": Result(f"Flywheel, {SERVING_WORKERS} workers, batching on, unary"),
        "workers_stream": Result(f"Flywheel, {SERVING_WORKERS} workers, batching on, stream"),
        "auth": Result("Flywheel, batching on, auth (token), unary"),
        "auth_stream": Result("Flywheel, batching on, auth (token), stream"),
        "tls": Result("Flywheel, batching on, auth + TLS, unary"),
        "tls_stream": Result("Flywheel, batching on, auth + TLS, stream"),
        "off": Result("Flywheel, batching off (MAX_BATCH=1), unary"),
        "off_stream": Result("Flywheel, batching off (MAX_BATCH=1), stream"),
        "nolog": Result("Flywheel, 1 process, prediction log off, unary"),
        "nolog_stream": Result("Flywheel, 1 process, prediction log off, stream"),
        "nolog_workers": Result(f"Flywheel, {SERVING_WORKERS} workers, prediction log off, unary"),
        "nolog_workers_stream": Result(f"Flywheel, {SERVING_WORKERS} workers, prediction log off, stream"),
    }
    no_auth = {"FLYWHEEL_AUTH_MODE": "off"}
    auth = {"FLYWHEEL_AUTH_MODE": "required"}
    # Compared with each other, so measured in turns: no auth (the baseline), workers, auth, auth over TLS.
    workers = {**no_auth, WORKERS_ENV: str(SERVING_WORKERS)}
    compared = [
        (rows["on"], rows["on_stream"], FlywheelSetup("flywheel-batching-on", no_auth)),
        (rows["workers"], rows["workers_stream"], FlywheelSetup("flywheel-workers", workers)),
        (rows["auth"], rows["auth_stream"], FlywheelSetup("flywheel-auth", auth, auth=True)),
        (rows["tls"], rows["tls_stream"], FlywheelSetup("flywheel-tls", auth, ("--tls",), auth=True)),
    ]
    # What the rest of the stack costs per request (monitoring, the broker and PostgreSQL taking the
    # logged predictions), and what workers do with the cores that frees: measured in turns.
    no_log = {**no_auth, "FLYWHEEL_SERVING_LOG_SAMPLE_RATE": "0"}
    log_off = [
        (rows["nolog"], rows["nolog_stream"], FlywheelSetup("flywheel-log-off", no_log)),
        (
            rows["nolog_workers"],
            rows["nolog_workers_stream"],
            FlywheelSetup("flywheel-log-off-workers", {**no_log, WORKERS_ENV: str(SERVING_WORKERS)}),
        ),
    ]
    batching_off = [
        (rows["off"], rows["off_stream"], FlywheelSetup("flywheel-batching-off", {**no_auth, MAX_BATCH_ENV: "1"}))
    ]
    failures: list[str] = []

    def failed(unary: Result, streamed: Result, exc: BaseException) -> None:
        for r in (unary, streamed):
            r.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        failures.append(f"{unary.name}: {exc}")

    def attempt(names: tuple[str, ...], fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:
            for name in names:
                rows[name].error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            failures.append(f"{rows[names[0]].name}: {exc}")

    check_us: float | None = None
    with tempfile.TemporaryDirectory(prefix="flywheel-serving-bench-") as tmp:
        work = Path(tmp)
        try:
            rows["ort"] = bench_raw_ort(model)
            check_us = guard_check_us()
            attempt(("mlflow",), lambda: rows.__setitem__("mlflow", bench_mlflow(model, work)))
            for key, config in MLSERVER_CONFIGS.items():
                row_work = work / key
                row_work.mkdir()
                attempt((key,), lambda: bench_mlserver(model, row_work, config, rows[key]))  # noqa: B023 (called at once)
            attempt(("floor", "floor_stream"), lambda: bench_floor(model, work, rows["floor"], rows["floor_stream"]))
            names = tuple(k for k in rows if k.startswith(("on", "workers", "auth", "tls")))
            attempt(names, lambda: bench_flywheel(model, work, compared, ROUNDS, failed))
            if rows["on"].error or rows["on"].load is None:  # the same model would fail the same way
                rows["off"].error = rows["off_stream"].error = "skipped: the batching-on run failed"
            else:
                attempt(("off", "off_stream"), lambda: bench_flywheel(model, work, batching_off, 1, failed))
                names = ("nolog", "nolog_stream", "nolog_workers", "nolog_workers_stream")
                attempt(names, lambda: bench_flywheel(model, work, log_off, ROUNDS, failed))
        finally:
            print(_report(rows, check_us))
    for r in rows.values():
        for m in (r.latency, r.load):
            if m is not None and m.errors:
                failures.append(f"{r.name}: {m.errors} failed requests, first: {m.first_error}")
    assert not failures, "\n\n".join(failures)


def _run_cost_us(run: Callable[[np.ndarray], object], X: np.ndarray, rows: int, calls: int = 200) -> float:
    """µs one in-process call of `run` takes on `rows` rows (median of `calls`)."""
    batch = X[:rows]
    run(batch)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def _heavy_report(rows: dict[str, Result], costs: list[str]) -> str:
    on, off, on_s, off_s = rows["on"], rows["off"], rows["on_stream"], rows["off_stream"]
    peers = [rows[k] for k in MLSERVER_CONFIGS if _ok(rows[k])]
    best = max(peers, key=lambda r: r.load.rps if r.load else 0.0, default=rows["mlserver_batch"])
    layers = "x".join(str(n) for n in HEAVY_HIDDEN)
    return "\n".join(
        [
            *_table(f"heavy model: MLPClassifier, hidden layers {layers}, {N_FEATURES} features", rows),
            *(f"  {line}" for line in costs),
            _goal(
                f"heavy model, req/s @{CLIENTS}, Flywheel batching on / off, unary",
                _ratio(on, off),
                ".2f",
                f">= {GOAL_HEAVY_BATCHING}x",
                lambda v: v >= GOAL_HEAVY_BATCHING,
            ),
            _measured(f"heavy model, req/s @{CLIENTS}, Flywheel batching on / off, streaming", _ratio(on_s, off_s)),
            _measured(
                f"heavy model, req/s @{CLIENTS}, Flywheel ORT spinning off (serving's default) / on, unary",
                _ratio(on, rows["spin"]),
            ),
            _goal(
                f"heavy model, req/s @{CLIENTS}, Flywheel unary (batching on) / MLServer with adaptive batching",
                _ratio(on, rows["mlserver_batch"]),
                ".2f",
                f">= {GOAL_HEAVY_VS_MLSERVER}x",
                lambda v: v >= GOAL_HEAVY_VS_MLSERVER,
            ),
            _measured(f"heavy model, req/s @{CLIENTS}, Flywheel unary / best MLServer ({best.name})", _ratio(on, best)),
            *_ran_out(rows),
        ]
    )


@pytest.mark.timeout(1800)
def test_serving_heavy_model_batching(heavy_model: BenchModel) -> None:
    """Batching where a model run has a real fixed cost: the heavy MLP through Flywheel with batching on
    and off (measured in turns) and through MLServer, with and without its adaptive batching."""
    model = heavy_model
    _unpin()
    rows = {
        "ort": Result("raw ONNX Runtime, in-process"),
        "on": Result("Flywheel, 1 process, batching on, unary"),
        "on_stream": Result("Flywheel, 1 process, batching on, streaming"),
        "off": Result("Flywheel, 1 process, batching off, unary"),
        "off_stream": Result("Flywheel, 1 process, batching off, stream"),
        "spin": Result("Flywheel, batching on, ORT threads spinning, unary"),
        "spin_stream": Result("Flywheel, batching on, ORT threads spinning, stream"),
        **{key: Result(config.label) for key, config in MLSERVER_CONFIGS.items()},
    }
    session = ort.InferenceSession(model.onnx_bytes, providers=execution_providers("auto"))
    batch = int(Settings().serving_max_batch_size)
    ort_1, ort_b = (
        _run_cost_us(lambda x: session.run(None, {packaging.INPUT_NAME: x}), model.X, n) for n in (1, batch)
    )
    skl_1, skl_b = (_run_cost_us(model.pipeline.predict_proba, model.X, n) for n in (1, batch))
    costs = [
        f"one model run in process, 1 row / {batch} rows: ONNX Runtime {ort_1:,.0f} / {ort_b:,.0f} µs"
        f" ({ort_b / batch:,.1f} µs per row batched); scikit-learn predict_proba {skl_1:,.0f} / {skl_b:,.0f} µs",
        f"test accuracy {model.accuracy:.3f}",
    ]
    no_auth = {"FLYWHEEL_AUTH_MODE": "off"}
    group = [
        (rows["on"], rows["on_stream"], FlywheelSetup("heavy-batching-on", no_auth)),
        (rows["off"], rows["off_stream"], FlywheelSetup("heavy-batching-off", {**no_auth, MAX_BATCH_ENV: "1"})),
        # ONNX Runtime's default: its pool threads spin between runs (serving turns that off).
        (rows["spin"], rows["spin_stream"], FlywheelSetup("heavy-spinning", {**no_auth, SPIN_ENV: "1"})),
    ]
    failures: list[str] = []

    def failed(unary: Result, streamed: Result, exc: BaseException) -> None:
        for r in (unary, streamed):
            r.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        failures.append(f"{unary.name}: {exc}")

    with tempfile.TemporaryDirectory(prefix="flywheel-serving-heavy-") as tmp:
        work = Path(tmp)
        try:
            rows["ort"] = bench_raw_ort(model)
            for key, config in MLSERVER_CONFIGS.items():
                (work / key).mkdir()
                try:
                    bench_mlserver(model, work / key, config, rows[key])
                except Exception as exc:
                    rows[key].error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    failures.append(f"{rows[key].name}: {exc}")
            bench_flywheel(model, work, group, ROUNDS, failed)
        finally:
            print(_heavy_report(rows, costs))
    for r in rows.values():
        for m in (r.latency, r.load):
            if m is not None and m.errors:
                failures.append(f"{r.name}: {m.errors} failed requests, first: {m.first_error}")
    assert not failures, "\n\n".join(failures)
