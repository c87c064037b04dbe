"""ONNX Runtime sessions: provider choice (decided once per process), the capped memory every
session's inference allocates from, and a thin model wrapper."""

from __future__ import annotations

import functools
import re
import statistics
import threading
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import _pybind_state as ort_c
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from flywheel.datatypes import NUMPY_DTYPES
from flywheel.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, StartupError
from flywheel.logging import get_logger
from flywheel.v1 import common_pb2
from services.serving.deadlines import NO_LIMIT, RunDeadlines
from services.serving.tensors import output_too_large

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
_ARENA_SAME_AS_REQUESTED = 1  # arena_extend_strategy: grow by what is asked, never by doubling past the cap
_SHRINK_CPU_ARENA = ("memory.enable_memory_arena_shrinkage", "cpu:0")
# How ONNX Runtime words a failed allocation: its arena's refusal, or the C++ runtime's.
_OUT_OF_MEMORY = re.compile(r"available memory of \d+ is smaller than requested|failed to allocate|bad_alloc|"
                            r"bad allocation|out of memory", re.IGNORECASE)  # fmt: skip
_FAILED_NODE = re.compile(r"while running (\w{1,64}) node")
STRING_OUTPUT_BYTES = 64  # what one string element of an output is counted as, before its text is read
_CPU_DEVICE = ort_c.OrtDevice(ort_c.OrtDevice.cpu(), ort_c.OrtDevice.default_memory(), 0)


class ModelLoadError(FailedPrecondition):
    """The model file itself cannot be served (ONNX Runtime refuses it, or its trial load failed):
    loading it again gives the same answer, unlike a registry that cannot be reached."""


class _OutOfMemory(Exception):
    """A run failed to allocate (the arena's cap, or the system)."""


class InferenceMemory:
    """The memory ONNX Runtime may allocate for inference in this process, all sessions together.

    A model that passed its trial load can still size a tensor from a request's values (ConstantOfShape,
    Expand, Tile, Range or Resize fed by an input, a Loop whose trip count is an input) and ask for any
    amount on one request. With `memory_mb` > 0 every session takes its CPU tensors from one arena
    registered with ONNX Runtime's environment and capped at `memory_mb`: an allocation past the cap
    fails that run (ResourceExhausted), nothing else. What the arena does not see (string text, a
    Loop's per-iteration bookkeeping) is refused at load by graph_check.

    The arena keeps what it allocated for reuse (up to the cap); its free regions are released to the
    system when a run fails for want of memory (`release`), after which the run is tried once more: a
    request that failed only because earlier requests left the arena fragmented then succeeds. A
    request refused in the end (memory, or an output too large to send) releases what it left behind.

    Registration is process-wide: a second InferenceMemory replaces the first for sessions created
    after it (tests create several); sessions keep the arena they were created with.
    """

    def __init__(self, memory_mb: int) -> None:
        self.memory_mb = max(0, memory_mb)
        self._shrinker: ort.InferenceSession | None = None
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry(*_SHRINK_CPU_ARENA)
        self._lock = threading.Lock()
        if self.memory_mb:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            config = ort.OrtArenaCfg(
                {"max_mem": self.memory_mb << 20, "arena_extend_strategy": _ARENA_SAME_AS_REQUESTED}
            )
            ort.create_and_register_allocator(info, config)
            # Any session on the shared arena can shrink it: a trivial one does, after a failed run.
            self._shrinker = ort.InferenceSession(_identity_model(), sess_options=self.options(), providers=[CPU])

    def options(self) -> ort.SessionOptions:
        """Session options whose CPU allocations come from the capped arena (when there is a cap)."""
        options = ort.SessionOptions()
        if self.memory_mb:
            options.add_session_config_entry("session.use_env_allocators", "1")
        return options

    def provider_options(self, providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
        """`providers`, with CUDA's own arena capped too (per session: CUDA memory is not shared)."""
        if not self.memory_mb:
            return list(providers)
        cuda = {"gpu_mem_limit": str(self.memory_mb << 20), "arena_extend_strategy": "kSameAsRequested"}
        return [(p, cuda) if p == CUDA else p for p in providers]

    def release(self) -> None:
        """Returns the arena's free regions to the system (only wholly free ones: runs in flight keep theirs)."""
        if self._shrinker is None:
            return
        with self._lock:  # one shrink at a time; concurrent failures need only one
            self._shrinker.run(None, {"x": np.zeros(1, dtype=np.float32)}, self._shrink)

    def exhausted(self) -> ResourceExhausted:
        if not self.memory_mb:
            return ResourceExhausted("the request needs more memory than the server has for inference")
        return ResourceExhausted(
            f"the request needs more than the {self.memory_mb} MB serving may allocate for inference "
            "(serving_infer_memory_mb, all models together); send fewer rows or smaller values"
        )


NO_CAP = InferenceMemory(0)


@functools.cache
def execution_providers(preference: str = "auto") -> list[str]:
    """Providers to give every session, decided once per process (and per preference).

    "auto": CUDA when a CUDA session really works, else CPU (logged). "cuda": CUDA, and a machine
    without a usable CUDA is a StartupError (serving exits 2 saying so: asking for a GPU and getting
    the CPU would go unnoticed until latencies did). "cpu": CPU only. CUDA is never handed to a
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
        built = "a CUDA session failed to start" if CUDA in ort.get_available_providers() else (
            "this ONNX Runtime has no CUDA provider")  # fmt: skip
        raise StartupError(
            f"FLYWHEEL_SERVING_PROVIDER=cuda but no usable GPU: {built}; "
            "fix the GPU or its drivers, or set FLYWHEEL_SERVING_PROVIDER=auto (falls back to CPU) or cpu"
        )
    log.info("cuda_unavailable", message="no usable CUDA provider; serving on CPU")
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
    """One ONNX Runtime session; `run` is safe to call from several threads at once.

    Runs allocate from `memory` (the capped arena shared by serving's sessions) and are stopped by
    `deadlines` when they take too long (RunTimedOut). Outputs come back as ONNX Runtime values, are
    measured, and are copied out of the arena only when they total at most `max_output_bytes`: an
    output that could not be sent anyway is refused (ResourceExhausted) before it is ever copied.
    Runs log nothing themselves: a failure goes back to its caller, and hostile requests must not
    flood stderr.
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        *,
        providers: list[str],
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        spinning: bool = False,
        memory: InferenceMemory = NO_CAP,
        max_output_bytes: int = 0,
        deadlines: RunDeadlines = NO_LIMIT,
    ) -> None:
        options = memory.options()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        if inter_op_threads > 1:  # inter-op threads only matter in parallel execution mode
            options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        if not spinning:
            # ONNX Runtime's pool threads spin after each run, waiting for the next: cheap for one
            # model run back to back, but a server's runs arrive between requests, so the spinning
            # burns the cores the event loop (and other workers) need.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                onnx_bytes, sess_options=options, providers=memory.provider_options(providers)
            )
        except Exception as exc:
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from exc
        self._memory = memory
        self._deadlines = deadlines
        self.max_output_bytes = max_output_bytes  # 0: no limit
        self._inputs = tuple(_spec(arg, "input") for arg in self._session.get_inputs())
        self._outputs = tuple(_spec(arg, "output") for arg in self._session.get_outputs())
        self._output_names = [spec.name for spec in self._outputs]
        # What an output's arena size (32 bytes per string element) is scaled by to count its text too.
        self._size_scale = {s.name: STRING_OUTPUT_BYTES // 32 if s.datatype == "BYTES" else 1 for s in self._outputs}
        # String inputs cannot become ONNX Runtime values from numpy: those models take the copying path.
        self._by_value = all(spec.datatype != "BYTES" for spec in self._inputs)

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

    def run(
        self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None, *, requests: int = 1
    ) -> dict[str, np.ndarray]:
        """Outputs by name, in the model's output order unless `output_names` picks some; `requests`:
        how many requests the feeds hold (their outputs may take `max_output_bytes` each).

        Raises InvalidArgument when the model fails on these inputs, ResourceExhausted when they need
        more than the inference memory cap (after one more try with the arena's free memory released)
        or make larger outputs than the requests may carry, RunTimedOut when the run passed the time limit."""
        names = list(output_names) if output_names else self._output_names
        limit = self.max_output_bytes * max(1, requests)
        try:
            results = self._run(names, feeds, limit)
        except _OutOfMemory:
            self._memory.release()  # earlier runs may have left the arena fragmented: release, try once more
            try:
                results = self._run(names, feeds, limit)
            except _OutOfMemory:
                self._memory.release()  # what this request's tries left in the arena goes back too
                raise self._memory.exhausted() from None
        if isinstance(results, int):
            self._memory.release()
            raise output_too_large(results, limit)
        return dict(zip(names, results, strict=True))

    def run_many(self, feeds: dict[str, np.ndarray], requests: int) -> dict[str, np.ndarray]:
        """`run` for a coalesced batch of `requests` requests (the batcher's run_many)."""
        return self.run(feeds, requests=requests)

    def _run(self, names: list[str], feeds: dict[str, np.ndarray], limit: int) -> list[np.ndarray] | int:
        """The outputs, or their size in bytes when it is over `limit` (nothing of them is kept then).
        Raises _OutOfMemory, RunTimedOut, or InvalidArgument when a kernel failed on these inputs."""
        run = self._deadlines.start()
        try:
            if not self._by_value:
                results = list(self._session.run(names, _texts(feeds), run.options))
                size = sum(_nbytes(r) for r in results)
                return size if limit and size > limit else results
            # The binding under InferenceSession.run_with_ort_values, without that wrapper's per-call checks
            # (they cost ~25 us; the inputs here are validated already): outputs stay in the arena until measured.
            values = self._session._sess.run_with_ort_values(
                {name: ort_c.OrtValue.ortvalue_from_numpy(_contiguous(a), _CPU_DEVICE) for name, a in feeds.items()},
                names,
                run.options,
            )
        except Exception as exc:
            if run.expired:  # stopped by the watchdog (whatever ONNX Runtime says, it is the terminate flag)
                raise self._deadlines.error() from None
            if isinstance(exc, MemoryError) or _OUT_OF_MEMORY.search(str(exc)):
                raise _OutOfMemory from None
            if isinstance(exc, OrtFail | OrtInvalidArgument):  # a kernel failed on, or refused, these inputs
                raise _failure(exc) from None
            raise
        finally:
            self._deadlines.finish(run)
        count = len(values)  # (indexing the vector is cheap; iterating it wraps every value)
        size = sum(values[i].tensor_size_in_bytes() * self._size_scale.get(names[i], 1) for i in range(count))
        if limit and size > limit:
            return size
        return [np.array(values[i].numpy()) for i in range(count)]  # copied: the arena holds only runs in flight

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


def _texts(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """String inputs as str: ONNX strings are UTF-8 text, and ONNX Runtime would turn a bytes element
    into its repr ("b'...'"). Raises InvalidArgument naming an input whose bytes are not UTF-8."""
    out = {}
    for name, array in feeds.items():
        if array.dtype == object:
            try:
                texts = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1)]
            except UnicodeDecodeError:
                raise InvalidArgument(f"input {name!r} has BYTES that are not UTF-8 text", field="inputs") from None
            array = np.array(texts, dtype=object).reshape(array.shape)
        out[name] = array
    return out


def _contiguous(array: np.ndarray) -> np.ndarray:
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)


def _nbytes(array: np.ndarray) -> int:
    if array.dtype == object:
        return array.size * STRING_OUTPUT_BYTES
    return int(array.nbytes)


def _failure(exc: BaseException) -> InvalidArgument:
    """A run that failed on these inputs. ONNX Runtime's messages can quote the inputs' values and the
    model's names: only its verdict on input validation, or the failing op's type, is passed on."""
    if isinstance(exc, OrtInvalidArgument):
        return InvalidArgument(f"ONNX Runtime rejected the inputs: {_first_line(exc)}", field="inputs")
    node = _FAILED_NODE.search(str(exc))
    where = f" in a {node.group(1)} node" if node else ""
    return InvalidArgument(f"the model failed on these inputs{where} (ONNX Runtime: {type(exc).__name__})",
                           field="inputs")  # fmt: skip


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
