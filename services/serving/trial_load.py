"""A model's trial load, run as a script in a child process before serving loads it in its own.

    python -P trial_load.py MODEL_PATH ROWS MEMORY_MB CPU_S

Model files come from outside: a few hundred bytes of valid ONNX can make ONNX Runtime allocate
gigabytes while it folds constants at session creation, or on the first run. Here that happens
under an address-space limit (RLIMIT_AS = MEMORY_MB) and a CPU-time limit, so the worst a model
can do is end this process. It creates the session as serving would (CPU provider, every graph
optimisation) and runs one batch of ROWS rows of zeros, then reads the graph (graph_check.py: what
a request could make it do at inference that serving could not limit), and prints one JSON line:
{"ok": true, "seconds": ..., "peak_rss_mb": ..., "dynamic_ops": [...]} or
{"ok": false, "kind": "memory" | "load" | "run" | "graph", "message": ...}.

It imports only the standard library, numpy, onnx and onnxruntime, and graph_check.py by its path
(nothing else of Flywheel), so it starts in about half a second; `-P` keeps this directory's modules
off sys.path.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

# ONNX Runtime's tensor types -> numpy dtypes (string tensors get empty strings).
_DTYPES = {
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(string)": "object",
}
_OUT_OF_MEMORY = ("bad_alloc", "failed to allocate", "cannot allocate memory", "out of memory")
MESSAGE_CHARS = 300


def limit(memory_mb: int, cpu_s: int) -> None:
    """Caps this process: address space, CPU seconds (SIGXCPU, then SIGKILL), and no core dump."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        cap = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if cpu_s > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))


def out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(words in text for words in _OUT_OF_MEMORY)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:MESSAGE_CHARS]


def zero_feeds(np: Any, inputs: list[Any], rows: int) -> dict[str, Any] | None:
    """A batch of zeros for every input (dynamic batch dimension = rows, other dynamic ones = 1);
    None when an input is not a tensor (serving refuses such a model itself, with its reason)."""
    feeds = {}
    for arg in inputs:
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            return None
        dims = list(arg.shape or [])
        shape = tuple(d if isinstance(d, int) and d >= 0 else (rows if i == 0 else 1) for i, d in enumerate(dims))
        feeds[arg.name] = np.full(shape, "", dtype=object) if dtype == "object" else np.zeros(shape, dtype=dtype)
    return feeds


def graph_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("graph_check", Path(__file__).with_name("graph_check.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["graph_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def read_graph(path: str) -> dict[str, Any]:
    """The graph's facts: {"refusal": ..., "dynamic_ops": [...]}."""
    import onnx

    facts = graph_check().analyse(onnx.load(path, load_external_data=False))
    return {"refusal": facts.refusal, "dynamic_ops": facts.dynamic_ops}


def trial(path: str, rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    stage = "load"
    try:
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # folding is single-threaded anyway; threads only cost address space
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the outcome goes to stdout
        session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        stage = "run"
        feeds = zero_feeds(np, session.get_inputs(), rows)
        if feeds is not None:
            session.run(None, feeds)
        del session, feeds  # freed before the graph is parsed: the two never hold a large model at once
        stage = "graph"
        facts = read_graph(path)
    except BaseException as exc:  # MemoryError included: whatever the model does ends here
        return {"ok": False, "kind": "memory" if out_of_memory(exc) else stage, "message": first_line(exc)}
    if facts["refusal"]:
        return {"ok": False, "kind": "graph", "message": facts["refusal"], "refused": True}
    return {
        "ok": True,
        "seconds": round(time.perf_counter() - started, 4),
        "peak_rss_mb": peak_rss_mb(),
        "dynamic_ops": facts["dynamic_ops"],
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the parent's over exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def main(argv: list[str]) -> int:
    path, rows, memory_mb, cpu_s = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    limit(memory_mb, cpu_s)
    outcome = trial(path, max(1, rows))
    sys.stdout.write(json.dumps(outcome) + "\n")
    sys.stdout.flush()
    return 0 if outcome["ok"] else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
