"""Serving under hostile and broken input: model files whose load would blow memory (trial load in a
capped child process), production versions that cannot load (reported, never stopping the others),
pins by `model_version` (staging-checked, a bounded LRU), the bounded batch queue, shadow mirroring
and prediction-log flushes; and at inference: the capped memory arena, graphs whose memory or cost a
request could drive (graph_check), outputs too large for a response, and shapes too large for a request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import onnx
import psutil
import pytest
import structlog
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from tritonclient.grpc import service_pb2 as oip

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, StartupError, Unavailable
from flywheel.grpc import GrpcServer
from flywheel.grpc.errors import status_for
from flywheel.stack.procs import free_port
from flywheel.tasks import TaskSet
from flywheel.v1 import common_pb2, events_pb2, registry_pb2, serving_pb2
from services.registry.model_check import validate_onnx
from services.serving import graph_check, handlers, runtime, staging
from services.serving import metrics as serving_metrics
from services.serving.batching import DynamicBatcher
from services.serving.deadlines import RunDeadlines, RunTimedOut
from services.serving.definition import DEFINITION
from services.serving.load_failures import RETRY_BASE_S
from services.serving.load_guard import LoadGuard
from services.serving.models import PRODUCTION, ModelManager
from services.serving.pins import pin_refusal
from services.serving.prediction_log import PredictionLogger
from services.serving.runtime import InferenceMemory, ModelLoadError, OnnxModel
from services.serving.service import InferenceService
from services.serving.shadow import ShadowMirror
from services.serving.tensors import decode_inputs, encode_outputs

R = registry_pb2
N_FEATURES = 4
MB = 1 << 20

# -- hostile and test models ----------------------------------------------------------------------


def folding_bomb(branches: int = 8, elems: int = (1 << 28) - 1024) -> bytes:
    """A few hundred bytes of valid ONNX (it passes onnx.checker and the registry's validation) whose
    session creation makes ONNX Runtime allocate about `branches` x `elems` x 4 bytes: each branch is
    a ConstantOfShape just under ONNX Runtime's 1 GiB folding limit, sliced to one value, and every
    one of them is folded at session creation. Eight branches: about 9 GB of peak memory."""
    nodes, previous = [], "x"
    for i in range(branches):
        value = helper.make_tensor("v", TensorProto.FLOAT, [1], [float(i + 1)])
        nodes += [
            helper.make_node("ConstantOfShape", ["shape"], [f"c{i}"], value=value),
            helper.make_node("Slice", [f"c{i}", "start", "end"], [f"s{i}"]),
            helper.make_node("Add", [previous, f"s{i}"], [f"a{i}"]),
        ]
        previous = f"a{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.array([elems], np.int64), "shape"),
            numpy_helper.from_array(np.array([0], np.int64), "start"),
            numpy_helper.from_array(np.array([1], np.int64), "end"),
        ],
    )
    return _serialized(graph)


def slow_model(scale: float) -> bytes:
    """y = x, computed after a Loop of max(x) * scale empty iterations (about 1 s per million):
    cheap on the zeros a load runs, as slow as a caller asks on real input."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc", "one"], ["acc_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
        initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Mul", ["m", "scale"], ["k"]),
            helper.make_node("Cast", ["k"], ["trips"], to=TensorProto.INT64),
            helper.make_node("Loop", ["trips", "true", "zero"], ["acc_final"], body=body),
            helper.make_node("Mul", ["acc_final", "zero"], ["nothing"]),
            helper.make_node("Add", ["x", "nothing"], ["y"]),
        ],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.array(scale, np.float32), "scale"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    return _serialized(graph)


def greedy_model() -> bytes:
    """Allocates what its input asks for, after a trial load on zeros that allocates nothing: for a row
    [n, trips, chunk] (x is [batch, any width]), y = n ones (ConstantOfShape), after a Loop of `trips`
    iterations that each grow a carried tensor by `chunk` floats (Concat). [[3, 0, 0]] -> [1, 1, 1];
    [[3e9, 0, 0]] asks for 12 GB at once; [[1, 100, 16e6]] for 64 MB more on every iteration."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("ConstantOfShape", ["chunk"], ["piece"], value=_float_value(1.0)),
            helper.make_node("Concat", ["state_in", "piece"], ["state_out"], axis=0),
        ],
        "grow",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [None]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [None]),
        ],
    )
    nodes = [*_column_value(0, "n"), *_column_value(1, "trips_1d"), *_column_value(2, "chunk")]
    nodes += [
        helper.make_node("Squeeze", ["trips_1d"], ["trips"]),
        helper.make_node("Loop", ["trips", "true", "empty"], ["grown"], body=body),
        helper.make_node("ReduceSum", ["grown"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("ConstantOfShape", ["n"], ["ones"], value=_float_value(1.0)),
        helper.make_node("Add", ["ones", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "greedy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        initializer=[
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.zeros(0, np.float32), "empty"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one_dim"),
            numpy_helper.from_array(np.array([0, 0, 0, 3], np.int64), "pads"),
            *(numpy_helper.from_array(np.array([k], np.int64), f"column{k}") for k in range(3)),
        ],
    )
    return _serialized(graph)


def _column_value(k: int, out: str) -> list[onnx.NodeProto]:
    """`out` = [int64(max(x[:, k]))], a one-element shape (x padded with zero columns: any width will do)."""
    return [
        helper.make_node("Pad", ["x", "pads"], [f"{out}_padded"]),
        helper.make_node("Gather", [f"{out}_padded", f"column{k}"], [f"{out}_col"], axis=1),
        helper.make_node("ReduceMax", [f"{out}_col"], [f"{out}_max"], keepdims=0),
        helper.make_node("Cast", [f"{out}_max"], [f"{out}_int"], to=TensorProto.INT64),
        helper.make_node("Reshape", [f"{out}_int", "one_dim"], [out]),
    ]


def _float_value(v: float) -> onnx.TensorProto:
    return helper.make_tensor("value", TensorProto.FLOAT, [1], [v])


def string_repeater() -> bytes:
    """Repeats its string input as often as its number input says (Tile): the arena would hold 32 bytes
    per copy, the text of every copy would be on the heap."""
    graph = helper.make_graph(
        [*_column_value(0, "times"), helper.make_node("Tile", ["s", "times"], ["repeated"])],
        "repeater",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("s", TensorProto.STRING, [None]),
        ],
        [helper.make_tensor_value_info("repeated", TensorProto.STRING, [None])],
        initializer=[
            numpy_helper.from_array(np.array([1], np.int64), "one_dim"),
            numpy_helper.from_array(np.array([0, 0, 0, 3], np.int64), "pads"),
            numpy_helper.from_array(np.array([0], np.int64), "column0"),
        ],
    )
    return _serialized(graph)


def _serialized(graph: onnx.GraphProto, opset: int = 17) -> bytes:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def lr_onnx() -> bytes:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, N_FEATURES)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    return to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}).SerializeToString()


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# -- the trial load -------------------------------------------------------------------------------


async def test_a_normal_model_passes_its_trial_load_quickly(tmp_path, lr_onnx):
    path = tmp_path / "lr.onnx"
    path.write_bytes(lr_onnx)
    result = await LoadGuard(memory_mb=1024, timeout_s=60).check(path, rows=32)
    assert 0 < result.wall_s < 10 and 0 < result.peak_rss_mb < 1024


async def test_a_model_whose_folding_needs_gigabytes_fails_in_the_child_not_here(tmp_path):
    bomb = folding_bomb(branches=6, elems=(1 << 26) - 1024)  # about 1.5 GB at session creation
    assert len(bomb) < 2048 and validate_onnx(bomb)  # the registry accepts it: it is valid ONNX
    path = tmp_path / "bomb.onnx"
    path.write_bytes(bomb)
    before = _peak_rss_mb()
    with pytest.raises(ModelLoadError, match=r"needs more than 768 MB of memory \(serving_load_memory_mb\)"):
        await LoadGuard(memory_mb=768, timeout_s=60).check(path, rows=1)
    assert _peak_rss_mb() - before < 100  # none of it was allocated in this process
    assert psutil.Process().children() == []


async def test_a_load_over_the_timeout_is_killed(tmp_path, lr_onnx):
    path = tmp_path / "lr.onnx"
    path.write_bytes(lr_onnx)
    with pytest.raises(ModelLoadError, match=r"longer than 0.01 s \(serving_load_timeout_s\)"):
        await LoadGuard(memory_mb=1024, timeout_s=0.01).check(path, rows=1)
    assert psutil.Process().children() == []  # the child was killed and reaped


async def test_a_file_onnx_runtime_refuses_and_a_model_that_fails_on_zeros(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model" * 10)
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load the model"):
        await LoadGuard(1024, 60).check(garbage, rows=1)

    graph = helper.make_graph(  # reshaping 4 values per row into 3 fails on every batch
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "bad_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(np.array([-1, 3], np.int64), "shape")],
    )
    reshape = tmp_path / "reshape.onnx"
    reshape.write_bytes(_serialized(graph))
    with pytest.raises(ModelLoadError, match="fails on a batch of zeros"):
        await LoadGuard(1024, 60).check(reshape, rows=1)


def test_a_child_killed_or_crashed_is_named():
    guard = LoadGuard(memory_mb=512, timeout_s=5)
    assert "killed (SIGKILL)" in guard._reason(-9, {}) and "stopped (SIGXCPU)" in guard._reason(-24, {})
    assert "crashed (SIGSEGV)" in guard._reason(-11, {}) and "512 MB" in guard._reason(-11, {})
    assert guard._reason(1, {}) == "the trial load exited with status 1"


# -- the model manager ----------------------------------------------------------------------------


class _Registry:
    """The registry calls serving makes: versions (with promotion state), artifacts, production list."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], tuple[bytes, R.PromotionState.ValueType, list[str]]] = {}
        self.downloads = 0

    def add(self, name: str, version: int, data: bytes, state: int = R.PROMOTION_STATE_NOT_PROMOTED,
            aliases: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.versions[(name, version)] = (data, state, list(aliases))  # type: ignore[assignment]

    async def model_version(self, settings, name, version=0, alias=""):
        if (name, version) not in self.versions:
            raise NotFound(f"no {name} v{version}")
        data, state, aliases = self.versions[(name, version)]
        mv = R.ModelVersion(
            ref=common_pb2.ModelRef(name=name, version=version),
            checksum=hashlib.sha256(data).hexdigest(),
            aliases=aliases,
            signature=common_pb2.ModelSignature(feature_names=[f"f{i}" for i in range(N_FEATURES)]),
        )
        mv.promotion.state = state
        return mv

    async def download(self, settings, name, version):
        self.downloads += 1
        data = self.versions[(name, version)][0]
        return data, hashlib.sha256(data).hexdigest()

    async def production_models(self, settings):
        return [
            R.Model(name=name, aliases={"production": version})
            for (name, version), (_, _, aliases) in self.versions.items()
            if "production" in aliases
        ]


@pytest.fixture
def registry(monkeypatch) -> _Registry:
    fake = _Registry()
    monkeypatch.setattr(clients, "model_version", fake.model_version)
    monkeypatch.setattr(clients, "download", fake.download)
    monkeypatch.setattr(clients, "production_models", fake.production_models)
    return fake


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = dict(home=tmp_path, serving_inline_max_us=0, serving_executor_threads=2,
                                   serving_load_memory_mb=768, serving_load_timeout_s=60)  # fmt: skip
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


BOMB = folding_bomb(branches=6, elems=(1 << 26) - 1024)  # 1.5 GB: over the 768 MB these tests allow


async def test_a_hostile_candidate_fails_its_loads_check(tmp_path, registry):
    registry.add("m", 2, BOMB, R.PROMOTION_STATE_PENDING_CHECKS)
    manager = ModelManager(_settings(tmp_path))
    try:
        event = events_pb2.ModelRegistered(model=common_pb2.ModelRef(name="m", version=2))
        report = await staging.run_checks(manager, manager._settings, event)
    finally:
        await manager.close()
    assert not report.passed
    (loads,) = report.checks
    assert loads.name == "loads" and not loads.passed
    assert "needs more than 768 MB of memory (serving_load_memory_mb)" in loads.detail
    assert manager.deployments.get("m") is None or not manager.deployments["m"].staging


async def test_a_production_version_that_fails_to_load_is_shown_and_the_old_one_keeps_answering(
    tmp_path, registry, lr_onnx
):
    registry.add("m", 1, lr_onnx)
    registry.add("m", 2, BOMB)
    registry.add("m", 3, lr_onnx)
    manager = ModelManager(_settings(tmp_path), TaskSet())
    try:
        await manager.promote("m", 1)
        with pytest.raises(ModelLoadError):
            await manager.promote("m", 2)
        slot, _ = await manager.resolve("m", "")
        assert slot.version == 1  # still answering
        shown = manager.to_proto(manager.deployment("m"), 1.0, 0)
        failed = [s for s in shown.slots if s.state == serving_pb2.SLOT_STATE_FAILED]
        assert [(s.model.version, s.role) for s in failed] == [(2, PRODUCTION)]
        assert "serving_load_memory_mb" in failed[0].error
        failure = manager.failure("m")
        assert failure is not None and failure.permanent and failure.retry_in_s() == RETRY_BASE_S
        assert not failure.due(2) and failure.due(3)  # the same file waits; another version does not
        await manager.promote("m", 3)
        assert manager.failure("m") is None and manager.production("m").version == 3  # type: ignore[union-attr]
    finally:
        await manager.close()


async def test_reconcile_loads_models_one_by_one_and_a_bad_one_waits_out_its_backoff(
    tmp_path, registry, lr_onnx, monkeypatch
):
    registry.add("a", 1, lr_onnx, aliases=("production",))
    registry.add("bad", 4, BOMB, aliases=("production",))
    registry.add("c", 2, lr_onnx, aliases=("production",))
    manager = ModelManager(_settings(tmp_path))
    monkeypatch.setattr(handlers, "runtime", lambda ctx: SimpleNamespace(manager=manager))
    ctx = SimpleNamespace(settings=manager._settings)
    trials: list[str] = []
    check = manager.guard.check

    async def counted(path, rows, *, model="", version=0):
        trials.append(model)
        return await check(path, rows, model=model, version=version)

    monkeypatch.setattr(manager.guard, "check", counted)
    try:
        with structlog.testing.capture_logs() as logs:
            await handlers.reconcile(ctx)  # what start-up runs: it returns, with the others loaded
        assert sorted(trials) == ["a", "bad", "c"]
        assert manager.production("a") is not None and manager.production("c") is not None
        assert manager.production("bad") is None and manager.failure("bad").version == 4  # type: ignore[union-attr]
        errors = [e for e in logs if e["event"] == "reconcile: production version failed to load"]
        assert [(e["model"], e["version"], e["retry_in_s"]) for e in errors] == [("bad", 4, RETRY_BASE_S)]
        with pytest.raises(FailedPrecondition, match="production version 4 failed to load"):
            await manager.resolve("bad", "")

        await handlers.reconcile_once(ctx)  # the next pass: nothing to do, the bad file is not tried again
        assert len(trials) == 3
    finally:
        await manager.close()


def test_pin_refusal_follows_the_registrys_staging_verdict():
    def mv(state: int, aliases: tuple[str, ...] = (), archived: bool = False) -> R.ModelVersion:
        out = R.ModelVersion(aliases=aliases, archived=archived)
        out.promotion.state = state  # type: ignore[assignment]
        return out

    for ok in (R.PROMOTION_STATE_NOT_PROMOTED, R.PROMOTION_STATE_PENDING_APPROVAL, R.PROMOTION_STATE_PROMOTED):
        assert pin_refusal(mv(ok)) == ""
    assert pin_refusal(mv(R.PROMOTION_STATE_CHECKS_FAILED, ("production",))) == ""  # production, however it got there
    assert "CHECKS_FAILED" in pin_refusal(mv(R.PROMOTION_STATE_CHECKS_FAILED))
    assert "PENDING_CHECKS" in pin_refusal(mv(R.PROMOTION_STATE_PENDING_CHECKS))
    assert pin_refusal(mv(R.PROMOTION_STATE_REJECTED)) == "was rejected"
    assert pin_refusal(mv(R.PROMOTION_STATE_NOT_PROMOTED, archived=True)) == "is archived"


async def test_only_versions_that_passed_staging_can_be_pinned(tmp_path, registry, lr_onnx):
    registry.add("m", 1, lr_onnx, R.PROMOTION_STATE_PROMOTED, ("production",))
    registry.add("m", 2, lr_onnx, R.PROMOTION_STATE_CHECKS_FAILED)
    registry.add("m", 3, lr_onnx, R.PROMOTION_STATE_PENDING_CHECKS)
    registry.add("m", 4, lr_onnx, R.PROMOTION_STATE_NOT_PROMOTED)
    manager = ModelManager(_settings(tmp_path))
    try:
        await manager.promote("m", 1)
        for refused in ("2", "3"):
            with pytest.raises(FailedPrecondition, match=r"model_version: .* cannot be pinned: it has not passed"):
                await manager.resolve("m", refused)
        with pytest.raises(NotFound, match="no version 9"):
            await manager.resolve("m", "9")
        assert registry.downloads == 1  # nothing refused was downloaded, let alone loaded
        slot, _ = await manager.resolve("m", "4")
        assert slot.version == 4 and (await manager.resolve("m", "4"))[0] is slot
    finally:
        await manager.close()


async def test_pins_are_a_bounded_lru_and_an_evicted_one_retires_after_its_calls(tmp_path, registry, lr_onnx):
    for v in (5, 6, 7):
        registry.add("m", v, lr_onnx)
    tasks = TaskSet()
    manager = ModelManager(_settings(tmp_path, serving_pinned_max=2), tasks)
    x = {"X": np.ones((1, N_FEATURES), np.float32)}
    try:
        await manager.resolve("m", "5")
        six, _ = await manager.resolve("m", "6")
        await manager.resolve("m", "5")  # 5 used last: 6 is the least recently used
        six.inflight += 1  # a call still running on 6
        six._idle.clear()
        await manager.resolve("m", "7")
        assert [s.version for s in manager.pinned()] == [5, 7]
        await asyncio.sleep(0)  # the retirement starts ...
        assert six.state == serving_pb2.SLOT_STATE_DRAINING
        await six.batcher.infer(x)  # ... but does not close the slot while its call runs
        six.inflight -= 1
        six._idle.set()
        await tasks.join(timeout_s=5)
        with pytest.raises(Unavailable, match="being unloaded"):
            await six.batcher.infer(x)
        again, _ = await manager.resolve("m", "6")  # loaded afresh when asked for again
        assert again is not six and [s.version for s in manager.pinned()] == [7, 6]
    finally:
        await tasks.close()
        await manager.close()


async def test_pinning_can_be_turned_off(tmp_path, registry, lr_onnx):
    registry.add("m", 4, lr_onnx)
    manager = ModelManager(_settings(tmp_path, serving_pinned_max=0))
    try:
        with pytest.raises(FailedPrecondition, match="turned off"):
            await manager.resolve("m", "4")
    finally:
        await manager.close()


async def test_a_retirement_that_fails_is_logged_and_counted(tmp_path, registry, lr_onnx):
    registry.add("m", 1, lr_onnx)
    manager = ModelManager(_settings(tmp_path))
    try:
        slot = await manager.load("m", 1, PRODUCTION)

        async def broken() -> None:
            raise OSError("cannot close")

        slot.batcher.close = broken  # type: ignore[method-assign]
        manager._retiring[id(slot)] = slot
        with structlog.testing.capture_logs() as logs:
            await manager._retire(slot)  # does not raise
        assert manager._retiring == {}
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["retiring a model version failed"]
    finally:
        await manager.close()


# -- the batcher's queue --------------------------------------------------------------------------


class _Gate:
    """A run function that blocks until opened, and says when a run has started."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Event()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.started.set()
        self.open.wait(10)
        return {"y": feeds["x"] * 2}


async def _wait_for(event: threading.Event) -> None:
    deadline = time.monotonic() + 5
    while not event.is_set():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("max_batch_size", [8, 1], ids=["coalescing", "alone"])
async def test_a_full_queue_refuses_at_once_and_the_accepted_requests_all_run(max_batch_size):
    gate = _Gate()
    one_thread = concurrent.futures.ThreadPoolExecutor(1)
    batcher = DynamicBatcher(gate.run, max_batch_size=max_batch_size, max_queue_delay_us=0, max_inflight=1,
                             max_queue_size=3, executor=one_thread)  # fmt: skip
    x = {"x": np.ones((1, 2), np.float32)}
    try:
        running = asyncio.ensure_future(batcher.infer(x))
        await _wait_for(gate.started)  # one request holds the only worker
        waiting = [asyncio.ensure_future(batcher.infer(x)) for _ in range(3)]
        await asyncio.sleep(0.01)
        assert batcher.waiting == 3
        started = time.perf_counter()
        with pytest.raises(ResourceExhausted, match="inference queue is full \\(3 requests waiting\\)"):
            await batcher.infer(x)
        assert time.perf_counter() - started < 0.5  # refused at once, not after the queue moved
        gate.open.set()
        for outputs, _ in await asyncio.gather(running, *waiting):
            np.testing.assert_array_equal(outputs["y"], x["x"] * 2)
        assert batcher.waiting == 0
        await batcher.infer(x)  # room again
    finally:
        gate.open.set()
        await batcher.close()
        one_thread.shutdown()


async def test_callers_that_gave_up_free_their_place_in_a_full_queue():
    gate = _Gate()
    batcher = DynamicBatcher(gate.run, max_batch_size=8, max_queue_delay_us=0, max_inflight=1, max_queue_size=2)
    x = {"x": np.ones((1, 2), np.float32)}
    try:
        running = asyncio.ensure_future(batcher.infer(x))
        await _wait_for(gate.started)
        waiting = [asyncio.ensure_future(batcher.infer(x)) for _ in range(2)]
        await asyncio.sleep(0.01)
        for w in waiting:
            w.cancel()
        await asyncio.sleep(0.01)
        later = asyncio.ensure_future(batcher.infer(x))  # admitted: the cancelled ones held no place
        gate.open.set()
        await asyncio.gather(running, later)
    finally:
        gate.open.set()
        await batcher.close()


# -- shadow mirroring -----------------------------------------------------------------------------


async def test_shadow_mirroring_is_bounded_and_skips_are_counted():
    tasks = TaskSet()
    mirror = ShadowMirror(lambda coro: tasks.spawn(coro, name="shadow inference"), max_inflight=1)
    release = asyncio.Event()
    ran: list[int] = []

    async def slow_shadow() -> None:
        await release.wait()
        ran.append(1)

    try:
        with structlog.testing.capture_logs() as logs:
            assert mirror.offer("m", 2, slow_shadow)
            assert not mirror.offer("m", 2, slow_shadow) and not mirror.offer("m", 2, slow_shadow)
        assert (mirror.inflight, mirror.skipped) == (1, 2)
        warned = [e for e in logs if e["event"] == "shadow mirroring skipped"]
        assert len(warned) == 1 and warned[0]["max_inflight"] == 1  # rate-limited, not one per request
        release.set()
        await tasks.join(timeout_s=5)
        assert ran == [1] and mirror.inflight == 0
        assert mirror.offer("m", 2, slow_shadow)  # room again
        await tasks.join(timeout_s=5)
    finally:
        await tasks.close()


async def test_a_stopping_service_mirrors_nothing():
    tasks = TaskSet()
    await tasks.close()
    mirror = ShadowMirror(lambda coro: tasks.spawn(coro, name="shadow inference"), max_inflight=4)

    async def shadow() -> None:
        raise AssertionError("never runs")

    assert not mirror.offer("m", 2, shadow) and mirror.inflight == 0


# -- the prediction logger's flush ----------------------------------------------------------------


class _PickyProducer:
    """Refuses (at send, as aiokafka does for a record over its size limit) events of one model."""

    def __init__(self, refuse: str) -> None:
        self.refuse = refuse
        self.sent: list[events_pb2.PredictionsLogged] = []

    async def send(self, topic, value, *, key, headers):
        event = events_pb2.PredictionsLogged.FromString(value)
        if event.model.name == self.refuse:
            raise ValueError("message too large")
        self.sent.append(event)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _log(logger: PredictionLogger, model: str, rows: int, outputs: dict[str, np.ndarray] | None = None) -> None:
    logger.log(model=model, version=1, request_id="r", features=("f0",), inputs=np.ones((rows, 1), np.float32),
               outputs=outputs or {"y": np.ones((rows,), np.float32)}, class_labels=(), latency_ms=1.0,
               role=PRODUCTION)  # fmt: skip


async def test_an_event_the_broker_refuses_or_that_cannot_be_encoded_is_dropped_alone():
    producer = _PickyProducer(refuse="big")
    logger = PredictionLogger(producer, 1.0, 100, 0.5)  # type: ignore[arg-type]
    _log(logger, "big", 3)
    _log(logger, "ok", 2)
    _log(logger, "odd", 4, {"y": np.array([object()] * 4, dtype=object)})  # no tensor form
    _log(logger, "ok2", 1)
    with structlog.testing.capture_logs() as logs:
        await logger.flush()
    assert sorted(e.model.name for e in producer.sent) == ["ok", "ok2"]
    assert (logger.published, logger.dropped) == (3, 7)
    dropped = [(e["stage"], e["rows"]) for e in logs if e["event"] == "prediction log: records dropped"]
    assert sorted(dropped) == [("encode", 4), ("publish", 3)]


# -- what a graph lets a request do (read at load, in the trial-load child) -----------------------


def _graph(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return onnx.load_from_string(_serialized(graph, opset))


def _tensor(name: str, kind: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, kind, shape)


def _scan_loop(trips: onnx.TensorProto | None) -> onnx.ModelProto:
    """A Loop that emits a (possibly empty) tensor per iteration: ONNX Runtime keeps every one of them."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["none"], ["each"])],
        "body",
        [_tensor("i", TensorProto.INT64, []), _tensor("cond_in", TensorProto.BOOL, [])],
        [_tensor("cond_out", TensorProto.BOOL, []), _tensor("each", TensorProto.FLOAT, [0])],
        initializer=[numpy_helper.from_array(np.zeros(0, np.float32), "none")],
    )
    nodes = [] if trips else [helper.make_node("Cast", ["k"], ["trips"], to=TensorProto.INT64)]
    nodes += [helper.make_node("Loop", ["trips", "true"], ["all"], body=body)]
    return _graph(
        nodes,
        [_tensor("k", TensorProto.FLOAT, [])],
        [_tensor("all", TensorProto.FLOAT, [None, 0])],
        [numpy_helper.from_array(np.array(True), "true"), *([trips] if trips else [])],
    )


def _strings(node: onnx.NodeProto, *initializers: onnx.TensorProto, opset: int = 17) -> onnx.ModelProto:
    """One node over a request string vector `s` and a request number vector `k`, making string `out`."""
    return _graph(
        [node],
        [_tensor("s", TensorProto.STRING, [None]), _tensor("k", TensorProto.INT64, [None])],
        [_tensor("out", TensorProto.STRING, [None])],
        initializers,
        opset,
    )


def _const_strings(name: str, values: list[str]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=object), name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _string_label_classifier(label: str) -> onnx.ModelProto:
    x = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    clf = LogisticRegression().fit(x, np.where(x[:, 0] > 0, label, "other"))
    return to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})


GRAPH_CASES = {
    # name: (model, refusal excerpt or "" for none, dynamic ops)
    "linear model": (lambda lr: onnx.load_from_string(lr), "", []),
    "input-sized tensors": (lambda lr: onnx.load_from_string(greedy_model()), "", ["ConstantOfShape", "Loop"]),
    "a slow Loop": (lambda lr: onnx.load_from_string(slow_model(1.0)), "", ["Loop"]),
    "folded at load": (lambda lr: onnx.load_from_string(folding_bomb(branches=1, elems=8)), "", []),
    "Loop keeping a value per request-chosen iteration": (
        lambda lr: _scan_loop(None), "(Loop) keeps a value for every iteration", ["Loop"]),
    "Loop keeping a value per constant iteration": (
        lambda lr: _scan_loop(numpy_helper.from_array(np.array(10, np.int64), "trips")), "", ["Loop"]),
    "request strings repeated": (
        lambda lr: _strings(helper.make_node("Tile", ["s", "k"], ["out"])), "(Tile) could repeat or join", ["Tile"]),
    "request strings joined": (
        lambda lr: _strings(helper.make_node("Concat", ["s", "s"], ["out"], axis=0)), "(Concat) could repeat", []),
    "request strings picked by request indices": (
        lambda lr: _strings(helper.make_node("Gather", ["s", "k"], ["out"])), "(Gather) could repeat", []),
    "request string columns picked at constant indices": (
        lambda lr: _strings(helper.make_node("Gather", ["s", "cols"], ["out"]), _ints("cols", [2, 0])), "", []),
    "request strings picked twice at constant indices": (
        lambda lr: _strings(helper.make_node("Gather", ["s", "cols"], ["out"]), _ints("cols", [0, 0])),
        "(Gather) could repeat", []),
    "constant labels picked by request indices": (
        lambda lr: _strings(helper.make_node("Gather", ["labels", "k"], ["out"]), _const_strings("labels", ["a", "b"])),
        "", []),
    "long constant labels repeated": (
        lambda lr: _strings(helper.make_node("Expand", ["labels", "k"], ["out"]), _const_strings("labels", ["x" * 65])),
        "copies a string of 65 bytes", ["Expand"]),
    "request strings normalised": (
        lambda lr: _strings(helper.make_node("StringNormalizer", ["s"], ["out"], case_change_action="LOWER")), "", []),
    "numbers cast to strings": (
        lambda lr: _strings(helper.make_node("Cast", ["k"], ["out"], to=TensorProto.STRING)), "", []),
    "request strings split into a sequence": (
        lambda lr: _graph(
            [helper.make_node("SplitToSequence", ["s"], ["pieces"], keepdims=0),
             helper.make_node("ConcatFromSequence", ["pieces"], ["out"], axis=0, new_axis=1)],
            [_tensor("s", TensorProto.STRING, [None])], [_tensor("out", TensorProto.STRING, [None])],
        ),
        "(SplitToSequence) makes one tensor per piece", ["SplitToSequence"]),
    "string class labels": (lambda lr: _string_label_classifier("positive"), "", []),
    "long string class labels": (
        lambda lr: _string_label_classifier("p" * 100), "(LinearClassifier) copies a string of 100 bytes", []),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_the_graph_check_flags_input_dependent_cost_and_refuses_memory_the_arena_cannot_see(case, lr_onnx):
    build, refusal, dynamic = GRAPH_CASES[case]
    facts = graph_check.analyse(build(lr_onnx))
    if refusal:
        assert refusal in facts.refusal
    else:
        assert facts.refusal == ""
    if not refusal or dynamic:
        assert facts.dynamic_ops == dynamic


async def test_a_graph_serving_cannot_bound_fails_its_trial_load_with_the_reason(tmp_path):
    path = tmp_path / "repeater.onnx"
    path.write_bytes(string_repeater())
    with pytest.raises(ModelLoadError, match=r"serving does not load this model: node .* \(Tile\) could repeat"):
        await LoadGuard(1024, 60).check(path, rows=1)
    path.write_bytes(greedy_model())  # loads: its memory is the arena's to bound
    assert (await LoadGuard(1024, 60).check(path, rows=1)).dynamic_ops == ("ConstantOfShape", "Loop")


# -- inference memory and output size -------------------------------------------------------------


class _PeakRss:
    """This process's largest resident size while the block runs, sampled every 2 ms."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._done = threading.Event()

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak_mb = max(self.peak_mb, psutil.Process().memory_info().rss / MB)
            self._done.wait(0.002)

    def __enter__(self) -> _PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def _row(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array([values], np.float32)}


def test_a_request_past_the_inference_memory_cap_fails_alone_and_the_memory_is_given_back():
    cap_mb = 256
    model = OnnxModel(greedy_model(), providers=["CPUExecutionProvider"], memory=InferenceMemory(cap_mb))
    np.testing.assert_array_equal(model.run(_row(3, 0, 0))["y"], [1, 1, 1])
    before_mb = psutil.Process().memory_info().rss / MB
    with _PeakRss() as peak:
        for hostile in (_row(3e9, 0, 0), _row(1, 100, 16e6)):  # 12 GB at once; 64 MB more per Loop iteration
            with pytest.raises(ResourceExhausted, match=rf"more than the {cap_mb} MB .*serving_infer_memory_mb"):
                model.run(hostile)
    assert peak.peak_mb - before_mb < cap_mb + 64
    # What the refused requests allocated went back to the system, and a request that needs half the cap fits.
    assert psutil.Process().memory_info().rss / MB - before_mb < 32
    assert model.run(_row(2, 2, 8e6))["y"].tolist() == [1, 1]
    assert psutil.Process().memory_info().rss / MB - before_mb < cap_mb + 64  # kept for reuse, within the cap


def test_outputs_larger_than_a_response_are_refused_before_they_are_copied():
    model = OnnxModel(greedy_model(), providers=["CPUExecutionProvider"], memory=InferenceMemory(256),
                      max_output_bytes=1 * MB)  # fmt: skip
    with pytest.raises(ResourceExhausted, match=r"would take 3.8 MiB, more than the 1.0 MiB a response may carry"):
        model.run(_row(1e6, 0, 0))
    assert len(model.run_many(_row(1e6, 0, 0), requests=4)["y"]) == 1_000_000  # four responses' worth


def test_a_model_failing_on_a_request_answers_invalid_argument_without_quoting_it():
    model = OnnxModel(greedy_model(), providers=["CPUExecutionProvider"], memory=InferenceMemory(256))
    with pytest.raises(InvalidArgument, match="failed on these inputs in a ConstantOfShape node") as info:
        model.run(_row(-12345, 0, 0))
    assert "12345" not in str(info.value)


async def test_one_request_at_fault_fails_alone_in_a_coalesced_batch():
    calls: list[int] = []

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(feeds["x"]))
        if (feeds["x"] < 0).any():
            raise ResourceExhausted("too much")
        return {"y": feeds["x"] * 2}

    batcher = DynamicBatcher(run, max_batch_size=8, max_queue_delay_us=0, inline_max_rows=8)  # coalesces on the loop
    try:
        results = await asyncio.gather(
            *(batcher.infer({"x": np.full((1, 1), v, np.float32)}) for v in (1, -1, 3)), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert isinstance(results[1], ResourceExhausted)
    assert [r[0]["y"].tolist() for r in (results[0], results[2])] == [[[2.0]], [[6.0]]]  # type: ignore[index]
    assert calls == [3, 1, 1, 1]  # the batch, then each request on its own


def test_shapes_that_describe_more_than_a_message_are_refused_before_anything_is_allocated():
    spec = [common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, -1])]

    def request(shape: list[int]) -> oip.ModelInferRequest:
        out = oip.ModelInferRequest(model_name="m")
        out.inputs.add(name="x", datatype="FP32", shape=shape)
        out.raw_input_contents.append(b"")
        return out

    with pytest.raises(ResourceExhausted, match="describes more data than a request may carry") as info:
        decode_inputs(request([10**12, 0]), spec, max_bytes=64 * MB)  # no bytes, 10**12 rows
    assert info.value.field == "inputs[0].shape"
    assert decode_inputs(request([1000, 0]), spec, max_bytes=64 * MB)["x"].shape == (1000, 0)
    big = {"y": np.zeros(300_000, np.float32), "s": np.array([b"x" * 1000] * 100, dtype=object)}
    with pytest.raises(ResourceExhausted, match="a response may carry"):
        encode_outputs(big, ["y"], max_bytes=1 * MB)
    with pytest.raises(ResourceExhausted, match="a response may carry"):  # strings: measured as encoded
        encode_outputs(big, ["s"], max_bytes=64 * 1024 + 50_000)
    assert len(encode_outputs(big, ["s"], max_bytes=1 * MB)[1][0]) == 100 * 1004


async def test_models_whose_cost_follows_the_request_never_run_on_the_event_loop(tmp_path, registry, lr_onnx):
    dynamic_dims = _graph([helper.make_node("Identity", ["x"], ["y"])], [_tensor("x", TensorProto.FLOAT, [None, None])],
                          [_tensor("y", TensorProto.FLOAT, [None, None])]).SerializeToString()  # fmt: skip
    for version, data in enumerate((lr_onnx, slow_model(1.0), greedy_model(), dynamic_dims), start=1):
        registry.add("m", version, data)
    manager = ModelManager(_settings(tmp_path, serving_inline_max_us=10_000))  # any of them is cheap enough on zeros
    try:
        with structlog.testing.capture_logs() as logs:
            slots = [await manager.load("m", v, PRODUCTION) for v in (1, 2, 3, 4)]
        assert [s.batcher.inline_max_rows > 0 for s in slots] == [True, False, False, False]
        reasons = [e["off_loop_reason"] for e in logs if e["event"] == "model loaded"]
        assert reasons == [
            None,
            "its cost follows the request's values (Loop)",
            "its cost follows the request's values (ConstantOfShape, Loop)",
            "input 'x' has a dynamic dimension besides the batch",
        ]
        for slot in slots:
            await slot.retire()
    finally:
        await manager.close()


def test_string_inputs_reach_the_model_as_text_and_bytes_that_are_not_text_are_refused():
    echo = _graph([helper.make_node("Identity", ["s"], ["t"])], [_tensor("s", TensorProto.STRING, [None])],
                  [_tensor("t", TensorProto.STRING, [None])]).SerializeToString()  # fmt: skip
    model = OnnxModel(echo, providers=["CPUExecutionProvider"], memory=InferenceMemory(256))
    sent = np.empty(2, dtype=object)
    sent[:] = [b"caf\xc3\xa9", b"b"]  # what decode_inputs makes of BYTES
    assert model.run({"s": sent})["t"].tolist() == ["café", "b"]  # not "b'caf\\xc3\\xa9'"
    sent[:] = [b"\xff", b"b"]
    with pytest.raises(InvalidArgument, match="input 's' has BYTES that are not UTF-8 text"):
        model.run({"s": sent})


# -- time limits, request versions, the execution provider ----------------------------------------


def _spin(value: float) -> dict[str, np.ndarray]:
    """A row for slow_model(1.0): a Loop of `value` iterations (about 1 s per million)."""
    return {"x": np.full((1, 1), value, np.float32)}


def test_a_run_past_the_time_limit_is_stopped_and_the_next_one_runs():
    deadlines = RunDeadlines(0.3)
    model = OnnxModel(slow_model(1.0), providers=["CPUExecutionProvider"], memory=InferenceMemory(256),
                      deadlines=deadlines)  # fmt: skip
    try:
        started = time.monotonic()
        with pytest.raises(RunTimedOut, match=r"longer than the 0.3 s a request may take .*serving_infer_timeout_s"):
            model.run(_spin(1e10))  # hours of Loop
        assert 0.3 <= time.monotonic() - started < 1.5
        assert model.run(_spin(1e4))["y"].tolist() == [[1e4]]  # the same session, under the limit
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # runs on two threads stop on their own deadlines
            stuck = [pool.submit(model.run, _spin(1e10)) for _ in range(2)]
            for future in stuck:
                assert isinstance(future.exception(timeout=5), RunTimedOut)
    finally:
        deadlines.close()
    unlimited = OnnxModel(slow_model(1.0), providers=["CPUExecutionProvider"])  # 0: no limit, no watchdog
    assert unlimited.run(_spin(1e4))["y"].tolist() == [[1e4]]


async def test_a_timed_out_request_fails_alone_in_a_coalesced_batch():
    deadlines = RunDeadlines(0.3)
    model = OnnxModel(slow_model(1.0), providers=["CPUExecutionProvider"], deadlines=deadlines)
    batcher = DynamicBatcher(model.run, max_batch_size=8, max_queue_delay_us=0, inline_max_rows=8)  # coalesces
    try:
        results = await asyncio.gather(*(batcher.infer(_spin(v)) for v in (1.0, 1e10, 3.0)), return_exceptions=True)
    finally:
        await batcher.close()
        deadlines.close()
    assert isinstance(results[1], RunTimedOut)
    assert [r[0]["y"].tolist() for r in (results[0], results[2])] == [[[1.0]], [[3.0]]]  # type: ignore[index]


async def test_a_candidate_that_runs_past_the_time_limit_on_its_checks_fails_them(tmp_path, registry, monkeypatch):
    registry.add("m", 1, slow_model(1.0), R.PROMOTION_STATE_PENDING_CHECKS)
    manager = ModelManager(_settings(tmp_path, serving_infer_timeout_s=0.3))

    async def slow_rows(report, slot, *_: object) -> None:  # test rows whose values ask for hours of Loop
        await asyncio.to_thread(slot.model.run, _spin(1e10))

    monkeypatch.setattr(staging, "_sample_checks", slow_rows)
    try:
        event = events_pb2.ModelRegistered(model=common_pb2.ModelRef(name="m", version=1))
        report = await staging.run_checks(manager, manager._settings, event)  # a verdict, not an exception
    finally:
        await manager.close()
    assert not report.passed
    failed = [c for c in report.checks if not c.passed]
    assert [c.name for c in failed] == ["runs_in_time"] and "serving_infer_timeout_s" in failed[0].detail


def _slow_on_zeros(trips: int) -> bytes:
    """y = x after a Loop of a constant `trips` iterations: as slow on the zeros a load runs as on anything."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["acc"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [])],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "true", "zero"], ["acc_final"], body=body),
         helper.make_node("Mul", ["acc_final", "zero"], ["nothing"]),
         helper.make_node("Add", ["x", "nothing"], ["y"])],
        "slow_on_zeros",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(np.array(trips, np.int64), "trips"),
                     numpy_helper.from_array(np.array(True), "true"),
                     numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )  # fmt: skip
    return _serialized(graph)


async def test_a_model_slower_than_the_time_limit_on_zeros_fails_its_load(tmp_path, registry):
    registry.add("m", 1, _slow_on_zeros(2_000_000), R.PROMOTION_STATE_PENDING_CHECKS)  # about 1.5 s a run
    manager = ModelManager(_settings(tmp_path, serving_infer_timeout_s=0.2))  # the trial load may take 60 s
    try:
        with pytest.raises(ModelLoadError, match=r"zeros took longer than 0.2 s \(serving_infer_timeout_s\)"):
            await manager.load("m", 1, PRODUCTION)
    finally:
        await manager.close()


class _Context:
    """What InferenceService uses of a gRPC context: abort."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


async def test_a_timed_out_request_answers_deadline_exceeded_and_is_counted(tmp_path, registry, monkeypatch):
    registry.add("spin", 1, slow_model(1.0), R.PROMOTION_STATE_PROMOTED, ("production",))
    settings = _settings(tmp_path, serving_infer_timeout_s=0.3)
    manager = ModelManager(settings)
    recorded: list[tuple[float, dict[str, str]]] = []
    monkeypatch.setattr(serving_metrics.request_duration, "record", lambda v, attrs: recorded.append((v, attrs)))
    counts = serving_metrics.request_counts("spin", 1)
    ok_before, errors_before = counts.ok, counts.error
    service = InferenceService(SimpleNamespace(settings=settings, tasks=TaskSet()), None, manager,  # type: ignore[arg-type]
                               SimpleNamespace(sampled=lambda: False), None)  # fmt: skip

    def request(value: float) -> oip.ModelInferRequest:
        out = oip.ModelInferRequest(model_name="spin")
        out.inputs.add(name="x", datatype="FP32", shape=[1, 1])
        out.raw_input_contents.append(np.full((1, 1), value, np.float32).tobytes())
        return out

    async def stream() -> AsyncIterator[oip.ModelInferRequest]:
        yield request(1e10)
        yield request(2.0)

    try:
        await manager.promote("spin", 1)
        started = time.monotonic()
        with pytest.raises(RunTimedOut) as timed_out:
            await service.ModelInfer(request(1e10), _Context())
        assert time.monotonic() - started < 1.5
        code, details = status_for(timed_out.value)  # what every method's wrapper answers
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "serving_infer_timeout_s" in details
        answer = await service.ModelInfer(request(5.0), _Context())  # the executor thread is free again
        assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == [5.0]
        # In a stream the error travels as a message, and the stream goes on.
        timed_out, served = [m async for m in service.ModelStreamInfer(stream(), _Context())]
        assert timed_out.error_message.startswith("DEADLINE_EXCEEDED: the model ran longer than the 0.3 s")
        assert np.frombuffer(served.infer_response.raw_output_contents[0], np.float32).tolist() == [2.0]
        slot = manager.production("spin")
        assert slot is not None and (slot.stats.success_count, slot.stats.fail_count) == (2, 2)
    finally:
        await manager.close()
    # The exported metrics: the counts the counter reports, the durations the histogram records.
    assert (counts.ok - ok_before, counts.error - errors_before) == (2, 2)
    assert [a["outcome"] for _, a in recorded] == ["error", "ok", "error", "ok"]
    assert {(a["model"], a["version"]) for _, a in recorded} == {("spin", "1")}
    assert all(v >= 0.3 for v, a in recorded if a["outcome"] == "error")


HOSTILE_VERSIONS = ["9223372036854775808", "5" * 144, "2147483648", "0", "-1", "+5", " 5", "5_0", "1.5", "1e3",
                    "abc", "\u0665", "\x00"]  # fmt: skip


async def test_a_model_version_that_is_no_version_number_is_invalid_argument(tmp_path, registry, lr_onnx):
    registry.add("m", 1, lr_onnx, R.PROMOTION_STATE_PROMOTED, ("production",))
    manager = ModelManager(_settings(tmp_path))
    try:
        await manager.promote("m", 1)
        for version in HOSTILE_VERSIONS:  # past int64, past the registry's int4, not decimal digits
            with pytest.raises(InvalidArgument) as info:
                await manager.resolve("m", version)
            # The field and the rule, and nothing of what was sent.
            assert str(info.value) == "model_version: must be a version number: decimal digits, 1 to 2147483647"
            assert (await manager.resolve("m", "1"))[0].version == 1  # a good one right after
        with pytest.raises(NotFound, match="no version 2147483647"):  # the largest version there can be
            await manager.resolve("m", "2147483647")
    finally:
        await manager.close()


async def test_a_challenger_version_out_of_range_is_invalid_argument(tmp_path):
    manager = ModelManager(_settings(tmp_path))
    try:
        for version in (0, -1, 2**31, 2**63 - 1):
            with pytest.raises(InvalidArgument, match=r"^challenger_version: must be a version number"):
                await manager.load_challenger("m", version, serving_pb2.TRAFFIC_MODE_CANARY, 10.0)
    finally:
        await manager.close()


async def test_asking_for_cuda_without_a_usable_gpu_stops_serving_from_starting(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_cuda_usable", lambda: False)  # as on this machine, whatever machine runs it
    runtime.execution_providers.cache_clear()
    try:
        with pytest.raises(StartupError) as refused:
            ModelManager(_settings(tmp_path, serving_provider="cuda"))
        message = str(refused.value)
        assert len(message.splitlines()) == 1 and message.startswith("FLYWHEEL_SERVING_PROVIDER=cuda but no usable GPU")
        # Where serving builds it: registering its APIs, inside the start-up that exits 2 on a StartupError.
        settings = _settings(tmp_path, serving_provider="cuda")
        ctx = SimpleNamespace(settings=settings, tasks=TaskSet(), producer=None)
        with pytest.raises(StartupError):
            DEFINITION.register(GrpcServer(settings, free_port()), ctx)  # type: ignore[arg-type]
        with structlog.testing.capture_logs() as logs:
            assert runtime.execution_providers("auto") == ["CPUExecutionProvider"]  # auto falls back, with a log
        assert [e["event"] for e in logs] == ["cuda_unavailable"]
    finally:
        runtime.execution_providers.cache_clear()
