"""Serving's inference core: tensor codec, ONNX Runtime wrapper, dynamic batcher, per-model batching,
model manager, statistics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import structlog
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from tritonclient.grpc import service_pb2 as oip
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from flywheel import clients
from flywheel.config import Settings
from flywheel.errors import FailedPrecondition, InvalidArgument, Unavailable
from flywheel.tasks import TaskSet
from flywheel.v1 import common_pb2, registry_pb2, serving_pb2
from services.serving import runtime
from services.serving.batching import DynamicBatcher
from services.serving.batching_policy import (
    INLINE_MAX_US,
    MAX_BATCH_SIZE,
    MAX_QUEUE_DELAY_US,
    BatchingPolicy,
    policy_for,
)
from services.serving.models import PRODUCTION, ModelManager
from services.serving.runtime import OnnxModel, execution_providers
from services.serving.stats import ModelStats
from services.serving.tensors import (
    NUMPY_DTYPES,
    batch_size,
    decode_inputs,
    encode_outputs,
    to_contents,
)

N_FEATURES = 4


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(200, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return X, y


@pytest.fixture(scope="module")
def classifier_onnx(data) -> bytes:
    X, y = data
    model = LogisticRegression().fit(X, y)
    return to_onnx(model, X[:1], options={id(model): {"zipmap": False}}).SerializeToString()


@pytest.fixture(scope="module")
def regressor_onnx(data) -> bytes:
    X, y = data
    model = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(X, X[:, 0] * 2 + y)
    return to_onnx(model, X[:1]).SerializeToString()


@pytest.fixture(scope="module")
def classifier(classifier_onnx) -> OnnxModel:
    return OnnxModel(classifier_onnx, providers=execution_providers())


def _spec(name: str, datatype: str, shape: list[int]) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=name, datatype=datatype, shape=shape)


def _raw_request(**arrays: tuple[str, np.ndarray]) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="m")
    for name, (datatype, array) in arrays.items():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        payload = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        request.raw_input_contents.append(payload)
    return request


# -- runtime ------------------------------------------------------------------------------------


def test_providers_are_cpu_without_a_gpu():
    assert execution_providers() == ["CPUExecutionProvider"]
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="preference"):
        execution_providers("tpu")


def test_auto_without_a_gpu_falls_back_to_cpu_and_says_so_once(monkeypatch):
    # An explicit `cuda` without one stops serving at start (tests/unit/test_serving_hostile.py).
    monkeypatch.setattr(runtime, "_cuda_usable", lambda: False)
    execution_providers.cache_clear()
    try:
        with structlog.testing.capture_logs() as logs:
            assert execution_providers("auto") == ["CPUExecutionProvider"]
            assert execution_providers("auto") == ["CPUExecutionProvider"]
    finally:
        execution_providers.cache_clear()
    assert [entry["event"] for entry in logs if entry["event"] == "cuda_unavailable"] == ["cuda_unavailable"]


def test_classifier_matches_onnxruntime(classifier_onnx, classifier, data):
    X, _ = data
    reference = ort.InferenceSession(classifier_onnx, providers=["CPUExecutionProvider"])
    name = reference.get_inputs()[0].name
    expected = reference.run(None, {name: X})
    got = classifier.run({name: X})
    assert list(got) == ["label", "probabilities"]
    np.testing.assert_array_equal(got["label"], expected[0])
    np.testing.assert_array_equal(got["probabilities"], expected[1])
    assert list(classifier.run({name: X}, ["probabilities"])) == ["probabilities"]
    assert classifier.provider == "CPUExecutionProvider"


def test_classifier_specs_and_signature(classifier):
    (inp,) = classifier.inputs
    assert (inp.name, inp.datatype, list(inp.shape)) == ("X", "FP32", [-1, N_FEATURES])
    assert [(o.name, o.datatype, list(o.shape)) for o in classifier.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 2]),
    ]
    signature = classifier.signature()
    assert list(signature.inputs) == list(classifier.inputs)
    assert list(signature.outputs) == list(classifier.outputs)
    classifier.warm_up()


def test_regressor_matches_onnxruntime(regressor_onnx, data):
    X, _ = data
    model = OnnxModel(regressor_onnx, providers=["CPUExecutionProvider"], intra_op_threads=1, inter_op_threads=1)
    model.warm_up()
    assert [(o.name, o.datatype, list(o.shape)) for o in model.outputs] == [("variable", "FP32", [-1, 1])]
    # Same thread count: tree ensembles sum in a thread-dependent order.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    reference = ort.InferenceSession(regressor_onnx, sess_options=options, providers=["CPUExecutionProvider"])
    (expected,) = reference.run(None, {"X": X})
    np.testing.assert_array_equal(model.run({"X": X})["variable"], expected)


def test_bad_model_bytes_and_bad_inputs(classifier):
    with pytest.raises(FailedPrecondition, match="cannot load"):
        OnnxModel(b"not a model", providers=["CPUExecutionProvider"])
    with pytest.raises(InvalidArgument):
        classifier.run({"X": np.zeros((2, 3), dtype=np.float32)})


def test_zipmap_output_is_refused(data):
    X, y = data
    model = LogisticRegression().fit(X, y)
    with pytest.raises(FailedPrecondition, match="zipmap"):
        OnnxModel(to_onnx(model, X[:1]).SerializeToString(), providers=["CPUExecutionProvider"])


# -- tensors: decoding --------------------------------------------------------------------------

SPECS = [_spec("x", "FP32", [-1, 3]), _spec("ids", "INT64", [-1])]


def _valid_raw() -> oip.ModelInferRequest:
    return _raw_request(
        x=("FP32", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ids=("INT64", np.array([5, 6], dtype=np.int64)),
    )


def _valid_typed() -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(range(6))
    request.inputs.add(name="ids", datatype="INT64", shape=[2]).contents.int64_contents.extend([5, 6])
    return request


def test_raw_and_typed_decode_to_the_same_arrays():
    raw, typed = decode_inputs(_valid_raw(), SPECS), decode_inputs(_valid_typed(), SPECS)
    assert list(raw) == list(typed) == ["x", "ids"]
    for name in raw:
        assert raw[name].dtype == typed[name].dtype
        np.testing.assert_array_equal(raw[name], typed[name])
    assert raw["x"].shape == (2, 3)


@pytest.mark.parametrize(
    "datatype, values",
    [
        ("BOOL", [True, False, True, True]),
        ("UINT8", [0, 1, 2, 255]),
        ("UINT16", [0, 1, 2, 65535]),
        ("UINT32", [0, 1, 2, 2**32 - 1]),
        ("UINT64", [0, 1, 2, 2**64 - 1]),
        ("INT8", [-128, 0, 1, 127]),
        ("INT16", [-(2**15), 0, 1, 2**15 - 1]),
        ("INT32", [-(2**31), 0, 1, 2**31 - 1]),
        ("INT64", [-(2**63), 0, 1, 2**63 - 1]),
        ("FP32", [0.5, -1.25, 3.0, 1e30]),
        ("FP64", [0.5, -1.25, 3.0, 1e300]),
        ("BYTES", [b"a", b"", b"\x00\xff", "é".encode()]),
    ],
)
def test_every_datatype_decodes_alike_from_raw_and_typed(datatype, values):
    array = np.array(values, dtype=NUMPY_DTYPES[datatype]).reshape(2, 2)
    spec = [_spec("t", datatype, [-1, 2])]
    raw = decode_inputs(_raw_request(t=(datatype, array)), spec)["t"]
    typed_request = oip.ModelInferRequest()
    typed_request.inputs.add(name="t", datatype=datatype, shape=[2, 2]).contents.CopyFrom(to_contents(array))
    typed = decode_inputs(typed_request, spec)["t"]
    assert raw.dtype == typed.dtype == NUMPY_DTYPES[datatype]
    assert raw.tolist() == typed.tolist() == array.tolist()


def test_fp16_decodes_from_raw_only():
    array = np.array([[1.5, -2.0]], dtype=np.float16)
    spec = [_spec("h", "FP16", [-1, 2])]
    np.testing.assert_array_equal(decode_inputs(_raw_request(h=("FP16", array)), spec)["h"], array)
    request = oip.ModelInferRequest()
    request.inputs.add(name="h", datatype="FP16", shape=[1, 2]).contents.fp32_contents.extend([1.5, -2.0])
    with pytest.raises(InvalidArgument) as info:
        decode_inputs(request, spec)
    assert info.value.field == "inputs[0].contents"


def _mutate(base, change) -> oip.ModelInferRequest:
    request = base()
    change(request)
    return request


def _set_shape(tensor, shape: list[int]) -> None:
    del tensor.shape[:]
    tensor.shape.extend(shape)


BAD_REQUESTS = {
    "unknown input": (
        lambda r: setattr(r.inputs[1], "name", "idz"),
        "inputs[1].name",
        ["unknown input 'idz'", "'x', 'ids'"],
    ),
    "missing input": (lambda r: (r.inputs.pop(), r.raw_input_contents.pop()), "inputs", ["missing", "'ids'"]),
    "duplicate input": (lambda r: setattr(r.inputs[1], "name", "x"), "inputs[1].name", ["more than once"]),
    "datatype mismatch": (
        lambda r: setattr(r.inputs[0], "datatype", "FP64"),
        "inputs[0].datatype",
        ["FP32", "got FP64"],
    ),
    "rank mismatch": (lambda r: _set_shape(r.inputs[0], [6]), "inputs[0].shape", ["rank 2", "[6]"]),
    "fixed dimension mismatch": (
        lambda r: _set_shape(r.inputs[0], [3, 2]),
        "inputs[0].shape",
        ["dimension 1 must be 3"],
    ),
    "negative dimension": (lambda r: _set_shape(r.inputs[0], [-1, 3]), "inputs[0].shape", ["negative"]),
    "raw byte length": (
        lambda r: _set_shape(r.inputs[0], [3, 3]),
        "raw_input_contents[0]",
        ["needs 36 bytes", "got 24"],
    ),
    "raw and typed": (
        lambda r: r.inputs[0].contents.fp32_contents.extend([1.0] * 6),
        "inputs[0].contents",
        ["one or the other"],
    ),
    "raw count": (lambda r: r.raw_input_contents.pop(), "raw_input_contents", ["1 raw_input_contents for 2 inputs"]),
}

BAD_TYPED_REQUESTS = {
    "element count": (
        lambda r: r.inputs[0].contents.fp32_contents.pop(),
        "inputs[0].contents",
        ["5 values", "needs 6"],
    ),
    "wrong contents field": (
        lambda r: r.inputs[1].contents.int_contents.extend([1, 2]),
        "inputs[1].contents",
        ["int64_contents", "got int_contents"],
    ),
    "no values": (lambda r: r.inputs[1].contents.ClearField("int64_contents"), "inputs[1].contents", ["0 values"]),
}


@pytest.mark.parametrize(
    "base, change, field, words",
    [(_valid_raw, *case) for case in BAD_REQUESTS.values()]
    + [(_valid_typed, *case) for case in BAD_TYPED_REQUESTS.values()],
    ids=[*BAD_REQUESTS, *BAD_TYPED_REQUESTS],
)
def test_bad_requests_name_the_field_and_problem(base, change, field, words):
    with pytest.raises(InvalidArgument) as info:
        decode_inputs(_mutate(base, change), SPECS)
    assert info.value.field == field
    for word in words:
        assert word in str(info.value)


def test_out_of_range_narrow_ints_and_bad_bytes_are_rejected():
    request = oip.ModelInferRequest()
    request.inputs.add(name="t", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(InvalidArgument, match="range"):
        decode_inputs(request, [_spec("t", "INT8", [-1])])
    spec = [_spec("s", "BYTES", [-1])]
    truncated = _raw_request(s=("BYTES", np.array([b"abc"], dtype=object)))
    truncated.raw_input_contents[0] = truncated.raw_input_contents[0][:-1]
    with pytest.raises(InvalidArgument, match="truncated") as info:
        decode_inputs(truncated, spec)
    assert info.value.field == "raw_input_contents[0]"
    too_many = _raw_request(s=("BYTES", np.array([b"a", b"b"], dtype=object)))
    _set_shape(too_many.inputs[0], [1])
    with pytest.raises(InvalidArgument, match="2 BYTES elements"):
        decode_inputs(too_many, spec)


def test_batch_size():
    assert batch_size({"a": np.zeros((3, 2)), "b": np.zeros(3)}) == 3
    for feeds in ({}, {"a": np.zeros(())}, {"a": np.zeros((3, 2)), "b": np.zeros(2)}):
        with pytest.raises(InvalidArgument) as info:
            batch_size(feeds)
        assert info.value.field == "inputs"


# -- tensors: encoding --------------------------------------------------------------------------


def _as_numpy(tensor, raw: bytes) -> np.ndarray:
    # What tritonclient's InferResult.as_numpy does with raw_output_contents.
    if tensor.datatype == "BYTES":
        return deserialize_bytes_tensor(raw).reshape(tensor.shape)
    return np.frombuffer(raw, dtype=NUMPY_DTYPES[tensor.datatype]).reshape(tensor.shape)


def test_encode_round_trips_through_raw_bytes():
    outputs = {
        "label": np.array([1, 0, 2], dtype=np.int64),
        "probabilities": np.arange(6, dtype=np.float32).reshape(3, 2),
        "names": np.array(["cat", "dög", "x"], dtype=object),
        "flags": np.array([True, False, True]),
        "halves": np.array([0.5, 1, 2], dtype=np.float16),
    }
    tensors, raw = encode_outputs(outputs, [])
    assert [t.name for t in tensors] == list(outputs)
    assert [t.datatype for t in tensors] == ["INT64", "FP32", "BYTES", "BOOL", "FP16"]
    assert [list(t.shape) for t in tensors] == [[3], [3, 2], [3], [3], [3]]
    decoded = {t.name: _as_numpy(t, r) for t, r in zip(tensors, raw, strict=True)}
    for name in ("label", "probabilities", "flags", "halves"):
        np.testing.assert_array_equal(decoded[name], outputs[name])
    assert decoded["names"].tolist() == [b"cat", "dög".encode(), b"x"]
    # Raw output bytes decode as raw input bytes: the same wire format both ways.
    request = oip.ModelInferRequest(inputs=[oip.ModelInferRequest.InferInputTensor(**_fields(t)) for t in tensors])
    request.raw_input_contents.extend(raw)
    specs = [_spec(t.name, t.datatype, list(t.shape)) for t in tensors]
    again = decode_inputs(request, specs)
    assert again["names"].tolist() == decoded["names"].tolist()
    np.testing.assert_array_equal(again["probabilities"], outputs["probabilities"])


def _fields(tensor) -> dict:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def test_encode_requested_outputs_only_and_unknown_output():
    outputs = {"label": np.zeros(2, dtype=np.int64), "probabilities": np.zeros((2, 2), dtype=np.float32)}
    tensors, raw = encode_outputs(outputs, ["probabilities"])
    assert [t.name for t in tensors] == ["probabilities"] and len(raw) == 1
    with pytest.raises(InvalidArgument, match="unknown output 'proba'") as info:
        encode_outputs(outputs, ["label", "proba"])
    assert info.value.field == "outputs[1].name"


# -- batching -----------------------------------------------------------------------------------


def _rows(n: int, start: int) -> dict[str, np.ndarray]:
    return {"X": (np.arange(n * N_FEATURES, dtype=np.float32).reshape(n, N_FEATURES) + start) / 10}


async def test_concurrent_callers_get_exactly_their_rows(classifier):
    batcher = DynamicBatcher(classifier.run, max_batch_size=32, max_queue_delay_us=5000)
    requests = [_rows(1 + i % 3, i * 10) for i in range(50)]
    try:
        results = await asyncio.gather(*(batcher.infer(feeds) for feeds in requests))
    finally:
        await batcher.close()
    for feeds, (outputs, timing) in zip(requests, results, strict=True):
        expected = classifier.run(feeds)
        assert list(outputs) == list(expected)
        for name in expected:
            np.testing.assert_array_equal(outputs[name], expected[name])
        assert timing.batch_rows <= 32 and timing.queue_ns >= 0 and timing.compute_ns > 0
    assert batcher.requests_run == 50
    assert batcher.batches_run < 50
    assert max(timing.batch_rows for _, timing in results) > 3


async def test_oversized_request_runs_alone_and_is_not_split():
    calls: list[int] = []

    def run(feeds):
        calls.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    batcher = DynamicBatcher(run, max_batch_size=4, max_queue_delay_us=20000)
    big, small = {"x": np.arange(10.0)}, {"x": np.arange(2.0)}
    (big_out, big_timing), (small_out, _) = await asyncio.gather(batcher.infer(big), batcher.infer(small))
    await batcher.close()
    np.testing.assert_array_equal(big_out["y"], big["x"] * 2)
    np.testing.assert_array_equal(small_out["y"], small["x"] * 2)
    assert big_timing.batch_rows == 10
    assert sorted(calls) == [2, 10]


async def test_shapes_that_differ_beyond_dim_0_are_not_coalesced():
    calls: list[tuple[int, ...]] = []

    def run(feeds):
        calls.append(feeds["x"].shape)
        return {"y": feeds["x"].sum(axis=1)}

    def slow_run(feeds):
        if feeds["x"].shape[1] == 7:
            time.sleep(0.05)  # keeps the model busy so the others queue up behind it
        return run(feeds)

    batcher = DynamicBatcher(slow_run, max_batch_size=16, max_queue_delay_us=20000, max_inflight=1)
    busy = asyncio.ensure_future(batcher.infer({"x": np.ones((1, 7))}))
    await asyncio.sleep(0.01)
    narrow = [{"x": np.ones((1, 2))} for _ in range(3)]
    wide = [{"x": np.ones((1, 5))} for _ in range(2)]
    results = await asyncio.gather(*(batcher.infer(f) for f in [*narrow, *wide]))
    await busy
    await batcher.close()
    assert [out["y"].tolist() for out, _ in results] == [[2.0]] * 3 + [[5.0]] * 2
    assert calls[0] == (1, 7) and sorted(calls[1:]) == [(2, 5), (3, 2)]


async def test_batch_size_one_runs_each_request_alone():
    threads: set[str] = set()
    sizes: list[int] = []

    def run(feeds):
        threads.add(threading.current_thread().name)
        sizes.append(len(feeds["x"]))
        return {"y": feeds["x"] + 1}

    batcher = DynamicBatcher(run, max_batch_size=1, max_queue_delay_us=1000)
    results = await asyncio.gather(*(batcher.infer({"x": np.full(2, i)}) for i in range(10)))
    await batcher.close()
    assert [out["y"].tolist() for out, _ in results] == [[i + 1, i + 1] for i in range(10)]
    assert sizes == [2] * 10
    assert batcher.batches_run == batcher.requests_run == 10
    assert threading.main_thread().name not in threads


async def test_cheap_model_coalesces_on_the_event_loop():
    """inline_max_rows: requests arriving in one loop iteration form a batch run on the loop thread."""
    calls: list[tuple[int, str]] = []

    def run(feeds):
        calls.append((len(feeds["x"]), threading.current_thread().name))
        return {"y": feeds["x"] * 2}

    batcher = DynamicBatcher(run, max_batch_size=8, max_queue_delay_us=50_000, inline_max_rows=8)
    requests = [{"x": np.full((1 + i % 2, 1), float(i))} for i in range(12)]  # 18 rows
    results = await asyncio.gather(*(batcher.infer(f) for f in requests))
    for feeds, (out, timing) in zip(requests, results, strict=True):
        np.testing.assert_array_equal(out["y"], feeds["x"] * 2)
        assert timing.batch_rows <= 8
    assert {thread for _, thread in calls} == {threading.current_thread().name}
    assert sum(rows for rows, _ in calls) == 18 and max(rows for rows, _ in calls) == 8
    assert batcher.requests_run == 12 and batcher.batches_run == len(calls) <= 4

    # Larger than what was timed as cheap: to the executor, never on the loop.
    big, _ = await batcher.infer({"x": np.ones((9, 1))})
    assert calls[-1] == (9, calls[-1][1]) and calls[-1][1] != threading.current_thread().name
    np.testing.assert_array_equal(big["y"], np.full((9, 1), 2.0))
    await batcher.close()
    with pytest.raises(Unavailable):
        await batcher.infer({"x": np.ones((1, 1))})


async def test_cheap_model_without_batching_runs_each_request_on_the_loop():
    threads: list[str] = []

    def run(feeds):
        threads.append(threading.current_thread().name)
        if feeds["x"][0] < 0:
            raise InvalidArgument("negative", field="x")
        return {"y": feeds["x"] + 1}

    batcher = DynamicBatcher(run, max_batch_size=1, max_queue_delay_us=0, inline_max_rows=1)
    results = await asyncio.gather(*(batcher.infer({"x": np.full(1, i)}) for i in range(5)))
    assert [out["y"].tolist() for out, _ in results] == [[i + 1] for i in range(5)]
    with pytest.raises(InvalidArgument):
        await batcher.infer({"x": np.full(1, -1)})
    assert set(threads) == {threading.current_thread().name} and batcher.batches_run == 6
    await batcher.close()


async def test_inline_batch_failure_reaches_each_caller():
    def run(feeds):
        raise FailedPrecondition("model broke")

    batcher = DynamicBatcher(run, max_batch_size=4, max_queue_delay_us=0, inline_max_rows=4)
    results = await asyncio.gather(*(batcher.infer({"x": np.ones(1)}) for _ in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [FailedPrecondition] * 3
    await batcher.close()


def test_batch_cost_is_timed_on_a_full_batch(classifier, monkeypatch):
    assert 0 < classifier.batch_cost_us(32) < 50_000
    runs = []
    monkeypatch.setattr(classifier, "run", lambda feeds: runs.append(len(feeds["X"])))
    assert classifier.batch_cost_us(32, enough_us=0.0) > 0  # any run is "slow enough": timing stops
    assert runs == [32]


async def test_run_exception_reaches_every_caller_of_the_batch():
    def run(feeds):
        time.sleep(0.05)
        raise RuntimeError("boom")

    batcher = DynamicBatcher(run, max_batch_size=8, max_queue_delay_us=20000, max_inflight=1)
    first = asyncio.ensure_future(batcher.infer({"x": np.ones(1)}))
    await asyncio.sleep(0.01)  # the first batch is computing: the next four queue into one batch
    results = await asyncio.gather(*(batcher.infer({"x": np.ones(1)}) for _ in range(4)), return_exceptions=True)
    first_result = (await asyncio.gather(first, return_exceptions=True))[0]
    assert isinstance(first_result, RuntimeError)
    await batcher.close()
    assert batcher.batches_run == 2
    assert all(isinstance(r, RuntimeError) and str(r) == "boom" for r in results)


async def test_close_fails_queued_callers_and_later_calls():
    started = threading.Event()
    release = threading.Event()

    def run(feeds):
        started.set()
        release.wait(5)
        return {"y": feeds["x"]}

    batcher = DynamicBatcher(run, max_batch_size=2, max_queue_delay_us=0, max_inflight=1)
    first = asyncio.ensure_future(batcher.infer({"x": np.ones((2, 1))}))
    await asyncio.to_thread(started.wait, 5)
    queued = asyncio.ensure_future(batcher.infer({"x": np.ones((2, 1))}))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.01)
    release.set()
    await closing
    assert (await first)[0]["y"].shape == (2, 1)  # the running batch finished
    with pytest.raises(Unavailable):
        await queued
    with pytest.raises(Unavailable):
        await batcher.infer({"x": np.ones((1, 1))})


async def test_batchers_sharing_an_executor_take_turns():
    def run(feeds):
        time.sleep(0.001)
        return feeds

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    busy = DynamicBatcher(run, max_batch_size=2, max_queue_delay_us=0, executor=executor, max_inflight=1)
    other = DynamicBatcher(run, max_batch_size=2, max_queue_delay_us=0, executor=executor)
    done = asyncio.Event()

    async def hammer() -> None:  # eight callers keep the busy model's queue from ever emptying
        deadline = time.monotonic() + 5
        while not done.is_set() and time.monotonic() < deadline:
            await busy.infer({"x": np.ones(1)})

    callers = [asyncio.ensure_future(hammer()) for _ in range(8)]
    await asyncio.sleep(0.02)
    started = time.monotonic()
    await other.infer({"x": np.ones(1)})
    waited = time.monotonic() - started
    done.set()
    await asyncio.gather(*callers)
    await busy.close()
    await other.close()
    executor.shutdown()
    assert waited < 1.0


async def test_an_idle_model_runs_a_lone_request_at_once():
    # Waiting for company only pays while a batch is computing; an idle model answers straight away.
    batcher = DynamicBatcher(lambda feeds: feeds, max_batch_size=8, max_queue_delay_us=200_000)
    start = time.perf_counter()
    _, timing = await batcher.infer({"x": np.ones(1)})
    elapsed = time.perf_counter() - start
    await batcher.close()
    assert elapsed < 0.1 and timing.queue_ns < 100_000_000


# -- per-model batching ---------------------------------------------------------------------------

SERVER = BatchingPolicy(max_batch_size=32, max_queue_delay_us=500, inline_max_us=100)


def test_batching_policy_defaults_to_the_server_settings():
    settings = Settings(serving_max_batch_size=16, serving_max_queue_delay_us=250, serving_inline_max_us=0)
    server = BatchingPolicy.from_settings(settings)
    assert server == BatchingPolicy(max_batch_size=16, max_queue_delay_us=250, inline_max_us=0)
    assert policy_for({"team": "fraud"}, server) == (server, [])


def test_version_tags_override_the_server_batching():
    tags = {MAX_BATCH_SIZE: "128", MAX_QUEUE_DELAY_US: " 2000 ", INLINE_MAX_US: "0"}
    policy, rejected = policy_for(tags, SERVER)
    assert policy == BatchingPolicy(max_batch_size=128, max_queue_delay_us=2000, inline_max_us=0)
    assert rejected == []
    off, _ = policy_for({MAX_BATCH_SIZE: "1"}, SERVER)  # 1 turns coalescing off for this model only
    assert not off.coalescing and off.max_queue_delay_us == 500 and SERVER.coalescing


@pytest.mark.parametrize(
    ("tag", "value", "reason"),
    [
        (MAX_BATCH_SIZE, "lots", "whole number"),
        (MAX_BATCH_SIZE, "8.5", "whole number"),
        (MAX_BATCH_SIZE, "", "whole number"),
        (MAX_BATCH_SIZE, "0", "between 1 and 4096"),
        (MAX_BATCH_SIZE, "100000", "between 1 and 4096"),
        (MAX_QUEUE_DELAY_US, "-5", "between 0 and 1000000"),
        (MAX_QUEUE_DELAY_US, "60000000", "between 0 and 1000000"),
        (INLINE_MAX_US, "1e3", "whole number"),
        (INLINE_MAX_US, "50000", "between 0 and 10000"),
        ("flywheel.serving/max_batch", "64", "not a serving tag"),
    ],
)
def test_invalid_batching_tags_fall_back_to_the_server_value(tag, value, reason):
    policy, rejected = policy_for({tag: value, MAX_QUEUE_DELAY_US: "900"} if tag != MAX_QUEUE_DELAY_US
                                  else {tag: value}, SERVER)  # fmt: skip
    assert [(r.tag, r.value) for r in rejected] == [(tag, value)] and reason in rejected[0].reason
    expected_delay = 500 if tag == MAX_QUEUE_DELAY_US else 900  # the other, valid tag still applies
    assert policy == BatchingPolicy(max_batch_size=32, max_queue_delay_us=expected_delay, inline_max_us=100)


# -- model manager ------------------------------------------------------------------------------


class _Registry:
    """Stands in for the registry calls the manager makes: version metadata and artifact download."""

    def __init__(self, onnx: bytes, tags: dict[str, dict[str, str]] | None = None) -> None:
        self.onnx = onnx
        self.tags = tags or {}
        self.downloads = 0

    async def model_version(self, settings, name, version=0, alias=""):
        return registry_pb2.ModelVersion(
            ref=common_pb2.ModelRef(name=name, version=version),
            checksum=hashlib.sha256(self.onnx).hexdigest(),
            signature=common_pb2.ModelSignature(feature_names=[f"f{i}" for i in range(N_FEATURES)]),
            tags=self.tags.get(f"{name}:{version}", {}),
        )

    async def download(self, settings, name, version):
        self.downloads += 1
        return self.onnx, hashlib.sha256(self.onnx).hexdigest()


@pytest.fixture
def registry(monkeypatch, classifier_onnx) -> _Registry:
    fake = _Registry(classifier_onnx)
    monkeypatch.setattr(clients, "model_version", fake.model_version)
    monkeypatch.setattr(clients, "download", fake.download)
    return fake


def _settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, serving_max_batch_size=32, serving_max_queue_delay_us=500,
                    serving_inline_max_us=0, serving_executor_threads=2)  # fmt: skip


async def test_a_versions_tags_set_its_batching_and_a_bad_tag_is_logged(tmp_path, registry, data):
    registry.tags = {
        "fraud:1": {MAX_BATCH_SIZE: "4", MAX_QUEUE_DELAY_US: "1500"},
        "churn:1": {MAX_BATCH_SIZE: "-3"},
    }
    manager = ModelManager(_settings(tmp_path))
    try:
        with structlog.testing.capture_logs() as logs:
            fraud = await manager.promote("fraud", 1)
            churn = await manager.promote("churn", 1)
        assert (fraud.batcher.max_batch_size, fraud.batching.max_queue_delay_us) == (4, 1500)
        assert churn.batcher.max_batch_size == 32  # the server's value
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert [(w["model"], w["tag"], w["value"]) for w in warnings] == [("churn", MAX_BATCH_SIZE, "-3")]
        assert "between 1 and 4096" in warnings[0]["reason"]
        shown = manager.to_proto(manager.deployment("fraud"), 1.0, 0).batching
        assert (shown.enabled, shown.max_batch_size, shown.max_queue_delay_us) == (True, 4, 1500)
        outputs, timing = await fraud.infer({"X": data[0][:3]})
        assert outputs["label"].shape == (3,) and timing.batch_rows <= 4
    finally:
        await manager.close()


async def test_the_cache_is_checked_and_a_corrupt_copy_downloaded_again(tmp_path, registry):
    manager = ModelManager(_settings(tmp_path))
    try:
        await manager.stage("m", 1)
        await manager.stage("m", 1)  # read back from the cache
        assert registry.downloads == 1
        (cached,) = (tmp_path / "serving-cache").glob("*.onnx")
        cached.write_bytes(b"not the model")
        await manager.stage("m", 1)
        assert registry.downloads == 2 and cached.read_bytes() == registry.onnx
    finally:
        await manager.close()


async def test_a_swapped_out_version_retires_through_the_task_set(tmp_path, registry):
    tasks = TaskSet()
    manager = ModelManager(_settings(tmp_path), tasks)
    try:
        old = await manager.promote("m", 1)
        new = await manager.promote("m", 2)
        assert new.role == PRODUCTION and manager.production("m") is new
        await tasks.join(timeout_s=5)
        assert len(tasks) == 0 and old.state == serving_pb2.SLOT_STATE_DRAINING
        with pytest.raises(Unavailable, match="being unloaded"):  # its session is released
            await old.infer({"X": np.ones((1, N_FEATURES), np.float32)})
    finally:
        await tasks.close()
        await manager.close()


async def test_close_releases_a_version_whose_retirement_was_cancelled(tmp_path, registry):
    tasks = TaskSet()
    manager = ModelManager(_settings(tmp_path), tasks)
    old = await manager.promote("m", 1)
    old.inflight += 1  # a call that never finishes keeps it draining
    old._idle.clear()
    await manager.promote("m", 2)
    await asyncio.sleep(0)
    assert len(tasks) == 1
    await tasks.close()  # the service stops: the retirement is cancelled ...
    await manager.close()  # ... and the shutdown hook still frees the session
    assert manager.deployments == {}
    with pytest.raises(Unavailable, match="being unloaded"):  # closed, not just left without threads
        await old.batcher.infer({"X": np.ones((1, N_FEATURES), np.float32)})


# -- stats --------------------------------------------------------------------------------------


def test_model_stats_to_proto():
    stats = ModelStats()
    assert stats.latency_percentiles() == (0.0, 0.0)
    # A batch of 3 rows shared by two requests counts as one execution.
    stats.record_success(total_ns=2_000_000, queue_ns=500_000, compute_ns=1_000_000, rows=1, batch_rows=3)
    stats.record_success(total_ns=4_000_000, queue_ns=700_000, compute_ns=1_000_000, rows=2, batch_rows=3)
    stats.record_success(total_ns=3_000_000, queue_ns=100_000, compute_ns=2_000_000, rows=5)
    stats.record_failure(total_ns=9_000)
    proto = stats.to_proto("iris", "3")
    assert (proto.name, proto.version) == ("iris", "3")
    assert proto.inference_count == 8
    assert proto.execution_count == 2
    assert proto.last_inference > 1_600_000_000_000
    inference = proto.inference_stats
    assert (inference.success.count, inference.success.ns) == (3, 9_000_000)
    assert (inference.fail.count, inference.fail.ns) == (1, 9_000)
    assert (inference.queue.count, inference.queue.ns) == (3, 1_300_000)
    assert (inference.compute_infer.count, inference.compute_infer.ns) == (3, 4_000_000)
    p50, p99 = stats.latency_percentiles()
    assert p50 == pytest.approx(3.0) and 3.9 < p99 <= 4.0


def test_model_stats_reservoir_is_bounded_and_thread_safe():
    stats = ModelStats(reservoir_size=100)

    def hammer():
        for _ in range(1000):
            stats.record_success(total_ns=1_000_000, queue_ns=0, compute_ns=0, rows=1)

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert stats.to_proto("m", "1").inference_stats.success.count == 4000
    assert stats.latency_percentiles() == (1.0, 1.0)
