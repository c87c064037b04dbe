"""Serving against hostile and broken input, every service a real process (`flywheel up`): a model
file whose load would take gigabytes fails its staging check in a capped child process; pins by
`model_version` only load versions that passed staging, into a bounded LRU; a full batch queue
answers RESOURCE_EXHAUSTED at once; a slow shadow is mirrored a bounded number of calls at a time;
a production version that cannot load is reported and never keeps serving or its other models
down, not even across a restart. At inference: a request asking a model for more memory than the
inference cap, or for an output larger than a response, answers RESOURCE_EXHAUSTED while serving's
memory stays put; a graph that could repeat request strings fails staging; a model whose cost
follows its input never runs on the event loop, so its slow requests hold up no other model; a run
past the time limit is stopped and answers DEADLINE_EXCEEDED. Each test asserts the answer, that
serving's process is the same one, and that a good input right after is served."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import psutil
import pyarrow as pa
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from tritonclient.grpc import service_pb2 as oip
from tritonclient.grpc import service_pb2_grpc as oip_grpc

from flywheel import evaluation
from flywheel.v1 import common_pb2, ingestion_pb2, registry_pb2, serving_pb2
from services.serving.batching_policy import INLINE_MAX_US
from tests.polling import wait_until
from tests.unit.test_serving_hostile import folding_bomb, greedy_model, slow_model, string_repeater

from .clients import Clients, ingest_requests, make_csv, schema
from .stack import UpProcess

R = registry_pb2
S = serving_pb2
CREDIT, SLOW, DATASET = "credit", "slowpoke", "hostile"
GREEDY, SPINNER, REPEATER = "greedy", "spinner", "repeater"
FEATURES = ["f0", "f1", "f2", "f3"]
LOAD_MEMORY_MB = 1536
INFER_MEMORY_MB = 256
MESSAGE_MB = 64  # grpc_max_message_mb's default
QUEUE_MAX = 4
SLOW_X = 2_000_000.0  # Loop iterations a slow request asks for: about 1.5 s of one core
# Well above SLOW_X's runs on a loaded machine (CI saw two concurrent ones starved past 6 s: less than
# a quarter of a core each), short enough for one test to wait out.
INFER_TIMEOUT_S = 12.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Tight serving bounds, so each one is reached with a handful of calls."""
    env = {
        "FLYWHEEL_SERVING_LOAD_MEMORY_MB": str(LOAD_MEMORY_MB),
        "FLYWHEEL_SERVING_QUEUE_MAX": str(QUEUE_MAX),
        "FLYWHEEL_SERVING_SHADOW_MAX_INFLIGHT": "1",
        "FLYWHEEL_SERVING_PINNED_MAX": "1",
        "FLYWHEEL_SERVING_INFER_MEMORY_MB": str(INFER_MEMORY_MB),
        "FLYWHEEL_SERVING_INFER_TIMEOUT_S": str(INFER_TIMEOUT_S),
    }
    up = UpProcess(tmp_path_factory.mktemp("hostile_serving") / "home", env=env)
    up.start()
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def oip_stub(stack):
    channel = stack.channel("serving")
    yield oip_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


# -- helpers --------------------------------------------------------------------------------------


def serving_process(stack: UpProcess) -> psutil.Process:
    """The process running `python -m services.serving` (not its trial-load children)."""
    found = [p for p in stack.descendants() if (p.info["cmdline"] or [])[-2:] == ["-m", "services.serving"]]
    assert len(found) == 1, [p.info["cmdline"] for p in found]
    return found[0]


def peak_rss_mb(process: psutil.Process) -> float:
    return _status_mb(process, "VmHWM:")


def rss_mb(process: psutil.Process) -> float:
    return _status_mb(process, "VmRSS:")


def _status_mb(process: psutil.Process, key: str) -> float:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key}")


def infer_request(model: str, x: np.ndarray, version: str = "", input_name: str = "X") -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    return request


def slow_request(value: float) -> oip.ModelInferRequest:
    return infer_request(SLOW, np.full((1, 1), value, np.float32), input_name="x")


def refused(call: object) -> grpc.RpcError:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


def log_lines(stack: UpProcess, event: str) -> list[dict]:
    path = stack.home / "log" / "serving.log"
    found = []
    for raw in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == event:
            found.append(line)
    return found


def deployment(api: Clients, model: str) -> S.Deployment:
    return api.serving.GetDeployment(S.GetDeploymentRequest(model_name=model)).deployment


def register(api: Clients, model: str, data: bytes, signature: common_pb2.ModelSignature, **header: object) -> int:
    head = R.RegisterModelHeader(
        model_name=model, task=common_pb2.TASK_CLASSIFICATION, signature=signature, format="onnx",
        sha256=hashlib.sha256(data).hexdigest(), **header,
    )  # fmt: skip
    requests = iter([R.RegisterModelRequest(header=head), R.RegisterModelRequest(chunk=data)])
    return api.registry.RegisterModel(requests).version.ref.version


def decided(api: Clients, model: str, version: int) -> R.ModelVersion:
    def done() -> R.ModelVersion | None:
        mv = api.registry.GetModelVersion(R.GetModelVersionRequest(name=model, version=version)).version
        return mv if mv.promotion.state != R.PROMOTION_STATE_PENDING_CHECKS else None

    return wait_until(done, 120, f"a promotion decision for {model} v{version}")


def wait_served(oip_stub, request: oip.ModelInferRequest, version: int) -> None:
    def served() -> bool:
        try:
            return oip_stub.ModelInfer(request, timeout=10).model_version == str(version)
        except grpc.RpcError:
            return False

    wait_until(served, 60, f"serving to answer {request.model_name} with v{version}", 0.1)


def set_production(api: Clients, model: str, version: int) -> None:
    api.registry.SetAlias(R.SetAliasRequest(name=model, alias="production", version=version, reason="test"))


# -- the models -----------------------------------------------------------------------------------


@dataclass
class Credit:
    dataset: common_pb2.DatasetRef
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    production: int

    def lr(self, features: list[str]) -> tuple[bytes, list[common_pb2.Metric]]:
        """A logistic regression on `features` and its metrics on the test split, as staging re-measures them."""
        mask = np.array([f in features for f in FEATURES], dtype=np.float32)
        (x, y), (xt, yt) = self.train, self.test
        clf = LogisticRegression().fit(x * mask, y)
        onnx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
        data = onnx.SerializeToString()
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        label, proba = session.run(None, {"X": xt * mask})
        return data, list(evaluation.classification_metrics(yt, label, proba, ["0", "1"]).metrics)

    def register_lr(self, api: Clients, features: list[str]) -> int:
        data, metrics = self.lr(features)
        return register(api, CREDIT, data, LR_SIGNATURE, metrics=metrics,
                        lineage=common_pb2.Lineage(dataset=self.dataset, run_id="hostile-test"))  # fmt: skip


LR_SIGNATURE = common_pb2.ModelSignature(
    inputs=[common_pb2.TensorSpec(name="X", datatype="FP32", shape=[-1, 4])],
    outputs=[
        common_pb2.TensorSpec(name="label", datatype="INT64", shape=[-1]),
        common_pb2.TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
    ],
    feature_names=FEATURES,
    class_labels=["0", "1"],
)
ONE_COLUMN = common_pb2.ModelSignature(
    inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 1])],
    outputs=[common_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1, 1])],
    feature_names=["x"],
)


@pytest.fixture(scope="module")
def credit(api, oip_stub) -> Credit:
    """CREDIT: a dataset, and a logistic regression in production (v1)."""
    api.ingestion.CreateDataset(
        ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name=DATASET, schema=schema()))
    )
    ref = api.ingestion.IngestDataset(ingest_requests(DATASET, make_csv(3_000, seed=12))).version.ref

    def split(which: int) -> tuple[np.ndarray, np.ndarray]:
        parts = api.ingestion.ReadDatasetVersion(
            ingestion_pb2.ReadDatasetVersionRequest(dataset=DATASET, version=ref.version, split=which)
        )
        table = pa.concat_tables(pa.ipc.open_stream(io.BytesIO(p.data)).read_all() for p in parts)
        return np.column_stack([table[f].to_numpy() for f in FEATURES]).astype(np.float32), table["label"].to_numpy()

    credit = Credit(ref, split(common_pb2.SPLIT_TRAIN), split(common_pb2.SPLIT_TEST), 0)
    credit.production = credit.register_lr(api, FEATURES)
    assert decided(api, CREDIT, credit.production).promotion.state == R.PROMOTION_STATE_PROMOTED
    wait_served(oip_stub, infer_request(CREDIT, credit.test[0][:2]), credit.production)
    return credit


@pytest.fixture(scope="module")
def bomb(api, credit) -> R.ModelVersion:
    """A CREDIT version whose file (under 2 KB of valid ONNX) needs about 9 GB to load."""
    data = folding_bomb()
    version = register(api, CREDIT, data, ONE_COLUMN, lineage=common_pb2.Lineage(dataset=credit.dataset))
    return decided(api, CREDIT, version)


@pytest.fixture(scope="module")
def passed(api, credit, bomb) -> list[int]:
    """Two CREDIT versions that passed staging but are not production (registered after the bomb)."""
    versions = [credit.register_lr(api, FEATURES), credit.register_lr(api, ["f0", "f1"])]
    for v in versions:
        mv = decided(api, CREDIT, v)
        assert mv.staging.passed and mv.promotion.state == R.PROMOTION_STATE_NOT_PROMOTED, mv.promotion
    return versions


@pytest.fixture(scope="module")
def slowpoke(api, oip_stub) -> int:
    """SLOW v1 in production: as slow as its input asks (a Loop), cheap on the zeros a load runs.
    Its batches never run on the event loop (tag), so they queue in the batcher as a costly model's do."""
    version = register(api, SLOW, slow_model(1.0), ONE_COLUMN, tags={INLINE_MAX_US: "0"})
    decided(api, SLOW, version)  # no dataset lineage, so its checks fail: production by hand
    set_production(api, SLOW, version)
    wait_served(oip_stub, slow_request(0), version)
    return version


ANY_WIDTH = common_pb2.ModelSignature(
    inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, -1])],
    outputs=[common_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1])],
)
REPEATER_SIGNATURE = common_pb2.ModelSignature(
    inputs=[
        common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 1]),
        common_pb2.TensorSpec(name="s", datatype="BYTES", shape=[-1]),
    ],
    outputs=[common_pb2.TensorSpec(name="repeated", datatype="BYTES", shape=[-1])],
)


def in_production(api: Clients, oip_stub, model: str, data: bytes, signature: common_pb2.ModelSignature,
                  probe: oip.ModelInferRequest) -> int:  # fmt: skip
    """Registers `data` as `model`, makes it production by hand (no lineage: its checks fail) and waits
    until serving answers `probe` with it."""
    version = register(api, model, data, signature)
    decided(api, model, version)
    set_production(api, model, version)
    wait_served(oip_stub, probe, version)
    return version


@pytest.fixture(scope="module")
def greedy(api, oip_stub) -> int:
    """GREEDY in production: allocates what its input asks for (unit test module: greedy_model)."""
    return in_production(api, oip_stub, GREEDY, greedy_model(), ANY_WIDTH, greedy_request(3, 0, 0))


@pytest.fixture(scope="module")
def spinner(api, oip_stub) -> int:
    """SPINNER in production: a Loop as slow as its input asks, cheap on the zeros timed at load, and
    no tag keeping it off the event loop (unlike SLOW)."""
    return in_production(api, oip_stub, SPINNER, slow_model(1.0), ONE_COLUMN, spin_request(0.0))


def greedy_request(*row: float) -> oip.ModelInferRequest:
    return infer_request(GREEDY, np.array([row], np.float32), input_name="x")


def spin_request(value: float) -> oip.ModelInferRequest:
    return infer_request(SPINNER, np.full((1, 1), value, np.float32), input_name="x")


# -- 1. model files are untrusted at load ---------------------------------------------------------


def test_a_model_file_whose_load_would_take_gigabytes_fails_staging_and_serving_lives(stack, api, bomb, passed):
    pid = serving_process(stack).pid  # (the bomb was registered and checked before `passed`)
    assert bomb.promotion.state == R.PROMOTION_STATE_CHECKS_FAILED
    loads = {c.name: c for c in bomb.staging.checks}["loads"]
    assert not loads.passed
    assert f"needs more than {LOAD_MEMORY_MB} MB of memory (serving_load_memory_mb)" in loads.detail
    process = serving_process(stack)
    assert process.pid == pid
    # The gigabytes were never asked for in serving's own process: its peak is its usual size.
    assert peak_rss_mb(process) < LOAD_MEMORY_MB
    failed = [e for e in log_lines(stack, "model trial load failed") if e.get("version") == bomb.ref.version]
    assert failed and "serving_load_memory_mb" in failed[0]["error"]
    # The good versions registered right after it were checked and passed (the `passed` fixture).
    assert len(passed) == 2


# -- 3. pins --------------------------------------------------------------------------------------


def test_only_versions_that_passed_staging_can_be_pinned_and_pins_are_bounded(stack, oip_stub, credit, bomb, passed):
    pid = serving_process(stack).pid
    x = credit.test[0][:3]

    exc = refused(lambda: oip_stub.ModelInfer(infer_request(CREDIT, x, str(bomb.ref.version))))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be pinned: it has not passed staging checks" in exc.details()
    assert refused(lambda: oip_stub.ModelInfer(infer_request(CREDIT, x, "999"))).code() == grpc.StatusCode.NOT_FOUND
    for hostile in ("9223372036854775808", "5" * 144, "0", "v1"):  # past int64 once answered INTERNAL
        exc = refused(lambda hostile=hostile: oip_stub.ModelInfer(infer_request(CREDIT, x, hostile)))
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and (exc.details() or "").startswith("model_version: ")
    assert serving_process(stack).pid == pid

    first, second = passed
    assert oip_stub.ModelInfer(infer_request(CREDIT, x, str(first))).model_version == str(first)
    # FLYWHEEL_SERVING_PINNED_MAX=1: pinning another version unloads the first ...
    assert oip_stub.ModelInfer(infer_request(CREDIT, x, str(second))).model_version == str(second)
    evicted = [e["version"] for e in log_lines(stack, "pinned version unloaded to make room") if e["model"] == CREDIT]
    assert evicted == [first]
    # ... which loads again when asked for, and production is untouched.
    assert oip_stub.ModelInfer(infer_request(CREDIT, x, str(first))).model_version == str(first)
    assert oip_stub.ModelInfer(infer_request(CREDIT, x)).model_version == str(credit.production)
    assert serving_process(stack).pid == pid


# -- 4. bounded queue and shadow ------------------------------------------------------------------


def test_a_full_batch_queue_answers_resource_exhausted_at_once(stack, api, oip_stub, slowpoke):
    pid = serving_process(stack).pid
    outcomes: dict[str, list[tuple[grpc.StatusCode, float, str]]] = {"slow": [], "fast": []}

    def call(kind: str, value: float) -> None:
        try:
            oip_stub.ModelInfer(slow_request(value), timeout=60)
            outcomes[kind].append((grpc.StatusCode.OK, time.monotonic(), ""))
        except grpc.RpcError as exc:
            outcomes[kind].append((exc.code(), time.monotonic(), exc.details() or ""))

    def inflight() -> int:
        return sum(
            s.inflight_requests for s in deployment(api, SLOW).slots if s.role == common_pb2.SERVING_ROLE_PRODUCTION
        )

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        slow = [pool.submit(call, "slow", SLOW_X)]
        wait_until(lambda: inflight() == 1, 10, "the first slow request to run", 0.01)
        slow.append(pool.submit(call, "slow", SLOW_X))  # both batch runners now busy for seconds
        wait_until(lambda: inflight() == 2, 10, "the second slow request to run", 0.01)
        burst = [pool.submit(call, "fast", 0.0) for _ in range(2 * QUEUE_MAX)]
        concurrent.futures.wait(slow + burst, timeout=120)

    slow_done = min(t for _, t, _ in outcomes["slow"])
    exhausted = [(t, d) for c, t, d in outcomes["fast"] if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    answered = [c for c, _, _ in outcomes["fast"] if c == grpc.StatusCode.OK]
    # Seen in CI with a 6 s limit (not reproduced alone): both slow runs starved past it. Say when and why.
    assert [c for c, _, _ in outcomes["slow"]] == [grpc.StatusCode.OK] * 2, (outcomes["slow"], started)
    assert len(exhausted) >= QUEUE_MAX and len(exhausted) + len(answered) == 2 * QUEUE_MAX
    assert all(t < slow_done for t, _ in exhausted)  # refused at once, not once the queue moved
    assert f"inference queue is full ({QUEUE_MAX} requests waiting)" in exhausted[0][1]
    assert serving_process(stack).pid == pid
    assert oip_stub.ModelInfer(slow_request(1.0)).model_version == str(slowpoke)


def test_a_slow_shadow_is_mirrored_a_bounded_number_of_calls_at_a_time(stack, api, oip_stub, slowpoke):
    fast = register(api, SLOW, slow_model(0.0), ONE_COLUMN, tags={INLINE_MAX_US: "0"})
    decided(api, SLOW, fast)
    set_production(api, SLOW, fast)
    wait_served(oip_stub, slow_request(0), fast)
    api.serving.SetShadow(S.SetShadowRequest(model_name=SLOW, challenger_version=slowpoke, percent=100))
    pid = serving_process(stack).pid

    def counts() -> tuple[int, int]:
        slots = {s.role: s.stats.request_count for s in deployment(api, SLOW).slots}
        return slots[common_pb2.SERVING_ROLE_PRODUCTION], slots[common_pb2.SERVING_ROLE_SHADOW]

    production_before, shadow_before = counts()
    # Production answers at once; the first mirror keeps the slow shadow busy for seconds, and
    # FLYWHEEL_SERVING_SHADOW_MAX_INFLIGHT=1 skips the mirrors of the calls that come meanwhile.
    for _ in range(6):
        assert oip_stub.ModelInfer(slow_request(SLOW_X), timeout=30).model_version == str(fast)
    skipped = log_lines(stack, "shadow mirroring skipped")
    assert skipped and skipped[0]["model"] == SLOW and skipped[0]["max_inflight"] == 1
    wait_until(lambda: counts()[1] == shadow_before + 1, 60, "the mirrored call to finish")
    # A call after it is mirrored again; had the skipped ones been queued they would run first.
    assert oip_stub.ModelInfer(slow_request(1.0)).model_version == str(fast)
    wait_until(lambda: counts()[1] >= shadow_before + 2, 60, "the next mirrored call")
    assert counts() == (production_before + 7, shadow_before + 2)
    assert serving_process(stack).pid == pid
    api.serving.ClearTraffic(S.ClearTrafficRequest(model_name=SLOW))


# -- 5. inference: memory, output size, shapes, the event loop (before 2., which restarts serving) --


def test_requests_past_the_inference_memory_cap_or_a_responses_size_are_refused_and_serving_lives(
    stack, oip_stub, credit, greedy
):
    process = serving_process(stack)
    rss_before, peak_before = rss_mb(process), peak_rss_mb(process)
    memory = f"more than the {INFER_MEMORY_MB} MB serving may allocate for inference (serving_infer_memory_mb"
    hostile = {
        "12 GB at once (ConstantOfShape)": (greedy_request(3e9, 0, 0), memory),
        "64 MB more per Loop iteration": (greedy_request(1, 100, 16e6), memory),
        "an 80 MB output": (greedy_request(2e7, 0, 0), f"more than the {MESSAGE_MB}.0 MiB a response may carry"),
    }
    for what, (request, message) in hostile.items():
        exc = refused(lambda request=request: oip_stub.ModelInfer(request, timeout=60))
        assert (exc.code(), what) == (grpc.StatusCode.RESOURCE_EXHAUSTED, what)
        assert message in (exc.details() or ""), (what, exc.details())
    empty = oip.ModelInferRequest(model_name=GREEDY)  # 10**12 rows of nothing: no bytes, all the rows
    empty.inputs.add(name="x", datatype="FP32", shape=[10**12, 0])
    empty.raw_input_contents.append(b"")
    exc = refused(lambda: oip_stub.ModelInfer(empty, timeout=10))
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "inputs[0].shape" in (exc.details() or "") and "describes more data than a request may carry" in (
        exc.details() or ""
    )

    assert process.pid == serving_process(stack).pid
    # Nothing near the 12 GB, the Loop's gigabytes or a copy of the output was ever resident, and what
    # the refused requests did allocate (within the cap) went back.
    assert peak_rss_mb(process) <= max(peak_before, rss_before + INFER_MEMORY_MB + 128)
    assert rss_mb(process) < rss_before + 64
    answer = oip_stub.ModelInfer(greedy_request(3, 0, 0), timeout=10)
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == [1.0, 1.0, 1.0]
    assert oip_stub.ModelInfer(infer_request(CREDIT, credit.test[0][:2])).model_version == str(credit.production)


def test_a_graph_that_could_repeat_request_strings_fails_its_staging_check(stack, api, oip_stub, credit):
    pid = serving_process(stack).pid
    version = register(api, REPEATER, string_repeater(), REPEATER_SIGNATURE)
    mv = decided(api, REPEATER, version)
    assert mv.promotion.state == R.PROMOTION_STATE_CHECKS_FAILED
    loads = {c.name: c for c in mv.staging.checks}["loads"]
    assert not loads.passed and "serving does not load this model" in loads.detail
    assert "(Tile) could repeat or join request strings" in loads.detail
    assert serving_process(stack).pid == pid
    assert oip_stub.ModelInfer(infer_request(CREDIT, credit.test[0][:2])).model_version == str(credit.production)


def test_a_model_whose_cost_follows_its_input_never_stalls_the_event_loop(stack, api, oip_stub, credit, spinner):
    pid = serving_process(stack).pid
    loaded = [e for e in log_lines(stack, "model loaded") if e["model"] == SPINNER and e["version"] == spinner]
    assert loaded and loaded[-1]["on_event_loop"] is False
    assert loaded[-1]["off_loop_reason"] == "its cost follows the request's values (Loop)"

    def inflight() -> int:
        return sum(s.inflight_requests for s in deployment(api, SPINNER).slots)

    x = infer_request(CREDIT, credit.test[0][:2])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(oip_stub.ModelInfer, spin_request(SLOW_X), timeout=60)  # about 1.5 s of one core
        wait_until(lambda: inflight() == 1, 10, "the slow request to run", 0.01)
        latencies = []
        for _ in range(5):  # answered while it runs: the event loop is free
            started = time.monotonic()
            assert oip_stub.ModelInfer(x, timeout=10).model_version == str(credit.production)
            latencies.append(time.monotonic() - started)
        assert not slow.done() and max(latencies) < 0.5, latencies
        assert slow.result().model_version == str(spinner)
    assert serving_process(stack).pid == pid
    assert oip_stub.ModelInfer(spin_request(1.0)).model_version == str(spinner)


def test_a_run_past_the_time_limit_is_stopped_and_answers_deadline_exceeded(stack, api, oip_stub, credit, spinner):
    pid = serving_process(stack).pid

    def slot() -> S.ModelSlot:
        return next(s for s in deployment(api, SPINNER).slots if s.role == common_pb2.SERVING_ROLE_PRODUCTION)

    errors_before = slot().stats.error_count
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        # 10**12 Loop iterations: days of one core, were the run not stopped.
        hung = pool.submit(refused, lambda: oip_stub.ModelInfer(spin_request(1e12), timeout=60))
        wait_until(lambda: slot().inflight_requests == 1, 10, "the endless request to run", 0.01)
        # Meanwhile other requests are answered as usual.
        assert oip_stub.ModelInfer(infer_request(CREDIT, credit.test[0][:2]), timeout=5).model_version == str(
            credit.production
        )
        exc = hung.result(timeout=60)
    elapsed = time.monotonic() - started
    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # serving's answer, not the client's 60 s deadline:
    assert f"the model ran longer than the {INFER_TIMEOUT_S:g} s a request may take" in (exc.details() or "")
    assert "serving_infer_timeout_s" in (exc.details() or "")
    assert INFER_TIMEOUT_S - 0.5 < elapsed < INFER_TIMEOUT_S + 5, elapsed
    assert serving_process(stack).pid == pid
    # The executor thread is free again: the same model answers a request that runs right after.
    assert oip_stub.ModelInfer(spin_request(1e5), timeout=5).model_version == str(spinner)
    assert slot().stats.error_count == errors_before + 1 and slot().inflight_requests == 0


# -- 2. a production version that cannot load -----------------------------------------------------


def test_a_production_version_that_cannot_load_never_takes_serving_or_other_models_down(
    stack, api, oip_stub, credit, bomb, slowpoke
):
    x = credit.test[0][:2]
    before = serving_process(stack)
    set_production(api, CREDIT, bomb.ref.version)  # by hand: the registry lets an admin do it

    def failed_slot() -> S.ModelSlot | None:
        slots = [s for s in deployment(api, CREDIT).slots if s.state == S.SLOT_STATE_FAILED]
        return slots[0] if slots else None

    slot = wait_until(failed_slot, 60, "the failed load to show in the deployment")
    assert slot.model.version == bomb.ref.version and "serving_load_memory_mb" in slot.error
    # The swap failed, so the version it would have replaced keeps answering.
    assert oip_stub.ModelInfer(infer_request(CREDIT, x)).model_version == str(credit.production)
    assert serving_process(stack).pid == before.pid

    # Serving restarts (killed here): its start-up loads models one by one, and the bad one is skipped.
    reported = len(log_lines(stack, "reconcile: production version failed to load"))
    before.kill()
    wait_until(lambda: _restarted(stack, before.pid), 120, "serving to restart and report ready")
    after = serving_process(stack)
    assert not oip_stub.ModelReady(oip.ModelReadyRequest(name=CREDIT)).ready
    exc = refused(lambda: oip_stub.ModelInfer(infer_request(CREDIT, x)))
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"production version {bomb.ref.version} failed to load" in exc.details()
    assert failed_slot() is not None and not [s for s in deployment(api, CREDIT).slots if s.state == S.SLOT_STATE_READY]
    status = stack.cli("deploy", "status", CREDIT, "--json")  # what an operator looks at
    shown = [s for s in json.loads(status.stdout)["deployment"]["slots"] if s["state"] == "SLOT_STATE_FAILED"]
    assert [int(s["model"]["version"]) for s in shown] == [bomb.ref.version]
    assert "serving_load_memory_mb" in shown[0]["error"]
    index = {m.name: m for m in oip_stub.RepositoryIndex(oip.RepositoryIndexRequest()).models}
    assert index[CREDIT].state == "UNAVAILABLE" and "serving_load_memory_mb" in index[CREDIT].reason
    assert oip_stub.ModelReady(oip.ModelReadyRequest(name=SLOW)).ready  # the other model is up
    assert oip_stub.ModelInfer(slow_request(1.0)).model_version != ""
    restart_reports = log_lines(stack, "reconcile: production version failed to load")[reported:]
    assert [(e["model"], e["version"]) for e in restart_reports] == [(CREDIT, bomb.ref.version)]

    # A good production version right after: served, and the failure is gone.
    set_production(api, CREDIT, credit.production)
    wait_served(oip_stub, infer_request(CREDIT, x), credit.production)
    assert oip_stub.ModelReady(oip.ModelReadyRequest(name=CREDIT)).ready and failed_slot() is None
    assert serving_process(stack).pid == after.pid


def _restarted(stack: UpProcess, old_pid: int) -> bool:
    try:
        process = serving_process(stack)
    except AssertionError:
        return False
    if process.pid == old_pid:
        return False
    channel = stack.channel("serving")
    try:
        return bool(oip_grpc.GRPCInferenceServiceStub(channel).ServerReady(oip.ServerReadyRequest(), timeout=5).ready)
    except grpc.RpcError:
        return False
    finally:
        channel.close()
