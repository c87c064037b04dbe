"""ONNX Runtime sessions: provider choice (decided once per process) and a thin model wrapper."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from flywheel.datatypes import NUMPY_DTYPES
from flywheel.errors import FailedPrecondition, InvalidArgument
from flywheel.logging import get_logger
from flywheel.v1 import common_pb2

log = get_logger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PREFERENCES = ("auto", "cuda", "cpu")

# ONNX Runtime's type strings -> KServe v2 datatypes.
_ORT_DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_ORT_DEFAULT_LOG_SEVERITY = 2  # warning: ONNX Runtime's own default


class ModelLoadError(FailedPrecondition):
    """The model file itself cannot be served (ONNX Runtime refuses it, or its trial load failed):
    loading it again gives the same answer, unlike a registry that cannot be reached."""


@functools.cache
def execution_providers(preference: str = "auto") -> list[str]:
    """Providers to give every session, decided once per process (and per preference).

    "auto": CUDA when a CUDA session really works, else CPU. "cuda": the same, but a machine without
    a usable CUDA logs one loud error and serves on CPU. "cpu": CPU only. CUDA is never handed to a
    session unless it works, since ONNX Runtime would then log errors on every session it creates.
    """
    choice = preference.strip().lower()
    if choice not in PREFERENCES:
        raise ValueError(f"execution provider preference must be one of {PREFERENCES}, got {preference!r}")
    if choice == "cpu":
        return [CPU]
    if _cuda_usable():
        return [CUDA, CPU]
    if choice == "cuda":
        log.error(
            "cuda_unavailable",
            message="CUDA execution was asked for but no usable CUDA provider exists; serving on CPU",
            available_providers=ort.get_available_providers(),
        )
    return [CPU]


@functools.cache
def _cuda_usable() -> bool:
    """True when a trivial session on the CUDA provider can be created and run."""
    if CUDA not in ort.get_available_providers():
        return False
    # The probe's failure is expected on CPU machines: keep ONNX Runtime quiet while it runs.
    ort.set_default_logger_severity(4)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(_identity_model(), sess_options=options, providers=[CUDA])
        if session.get_providers()[0] != CUDA:
            return False
        session.run(None, {"x": np.zeros(1, dtype=np.float32)})
        return True
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_LOG_SEVERITY)


def _identity_model() -> bytes:
    from onnx import TensorProto, helper  # only the probe needs onnx

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "cuda_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any ONNX Runtime this code supports
    return model.SerializeToString()


class OnnxModel:
    """One ONNX Runtime session; `run` is safe to call from several threads at once."""

    def __init__(
        self,
        onnx_bytes: bytes,
        *,
        providers: list[str],
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        if inter_op_threads > 1:  # inter-op threads only matter in parallel execution mode
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        try:
            self._session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from exc
        self._inputs = tuple(_spec(arg, "input") for arg in self._session.get_inputs())
        self._outputs = tuple(_spec(arg, "output") for arg in self._session.get_outputs())
        self._output_names = [spec.name for spec in self._outputs]

    @property
    def inputs(self) -> tuple[common_pb2.TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[common_pb2.TensorSpec, ...]:
        return self._outputs

    @property
    def provider(self) -> str:
        """The provider the session actually got (ONNX Runtime may fall back)."""
        return self._session.get_providers()[0]

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Outputs by name, in the model's output order unless `output_names` picks some."""
        names = list(output_names) if output_names else self._output_names
        try:
            results = self._session.run(names, feeds)
        except OrtInvalidArgument as exc:
            # Inputs that passed protocol validation but not the graph's own checks.
            raise InvalidArgument(f"ONNX Runtime rejected the inputs: {exc}", field="inputs") from exc
        return dict(zip(names, results, strict=True))

    def warm_up(self) -> None:
        """One run on a batch of zeros, so the first real request does not pay for lazy set-up."""
        self.run({spec.name: _zeros(spec) for spec in self._inputs})

    def batch_cost_us(self, rows: int, repeats: int = 7, enough_us: float = float("inf")) -> float:
        """Median microseconds to run `rows` rows of zeros (after warm_up); a run slower than
        `enough_us` ends the timing early with its own time (a costly model need not run 7 times)."""
        feeds = {spec.name: _zeros(spec, rows) for spec in self._inputs}
        times = []
        for _ in range(repeats):
            started = time.perf_counter_ns()
            self.run(feeds)
            times.append((time.perf_counter_ns() - started) / 1e3)
            if times[-1] > enough_us:
                return times[-1]
        return statistics.median(times)

    def signature(self) -> common_pb2.ModelSignature:
        return common_pb2.ModelSignature(inputs=self._inputs, outputs=self._outputs)


def _spec(arg: ort.NodeArg, kind: str) -> common_pb2.TensorSpec:
    datatype = _ORT_DATATYPES.get(arg.type)
    if datatype is None:
        # e.g. skl2onnx's ZipMap output (a sequence of maps): not a tensor the protocol can carry.
        raise ModelLoadError(
            f"model {kind} {arg.name[:128]!r} has type {arg.type[:64]}, not a tensor; "
            "export classifiers with zipmap disabled"
        )
    # Symbolic ("N", "batch") and unknown (None) dimensions are dynamic.
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return common_pb2.TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def _first_line(exc: BaseException, chars: int = 300) -> str:
    """ONNX Runtime's messages can quote a hostile model's node names at any length: one line, capped."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:chars]


def _zeros(spec: common_pb2.TensorSpec, rows: int = 1) -> np.ndarray:
    # Dynamic dimensions get 1, except a dynamic batch dimension, which gets `rows`.
    shape = tuple((rows if i == 0 else 1) if d < 0 else d for i, d in enumerate(spec.shape))
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
