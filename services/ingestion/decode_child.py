"""Decodes one uploaded Arrow IPC stream or Parquet file, in a child process of ingestion.

    python -m services.ingestion.decode_child     (then the path of a job file on stdin)

The child imports what it needs and then waits for its job, so ingestion can start it before an
upload arrives (decode_guard.py). The job file is JSON: {"input", "output", "format", "names",
"limits", "budget_bytes"}. The child caps its own address space (RLIMIT_AS) at what it holds then
plus `budget_bytes`, reads "input" with tables.decode_untrusted and writes the text columns to
"output" as an Arrow IPC file. A few kilobytes of compressed input can decode to gigabytes, and a
batch is decoded whole before it can be counted against the limits: here that allocation fails
(MemoryError) or ends this process, never ingestion's.

It prints one JSON line: {"ok": true, "rows": N}, or {"ok": false, "kind": K, ...} with K one of
"refused" (a FlywheelError: "error", "field", "message"), "memory", "unreadable" ("error": the
exception's type name only, as its text could quote the input) or "output".

Only the standard library is imported up front: the process asks to die with ingestion before
the slow imports (pyarrow) start.
"""

from __future__ import annotations

import ctypes
import json
import resource
import signal
import sys
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
# How failed allocations read when a reader wraps them (a thread that cannot get its stack included).
_OUT_OF_MEMORY = ("bad_alloc", "failed to allocate", "cannot allocate memory", "out of memory", "launch worker thread")


def die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _vm_size() -> int:
    """This process's address space in bytes (VmSize)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def confine(budget_bytes: int) -> None:
    """No core dumps, and at most `budget_bytes` of address space beyond what is mapped now."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cap = _vm_size() + budget_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(words in text for words in _OUT_OF_MEMORY)


def decode(job: dict[str, Any]) -> dict[str, Any]:
    """Runs one job (after confine); the outcome to print."""
    import pyarrow as pa

    from flywheel.errors import FlywheelError
    from services.ingestion.tables import ReadLimits, decode_untrusted

    try:
        limits = ReadLimits(**job["limits"])
        table = decode_untrusted(pa.memory_map(job["input"]), int(job["format"]), list(job["names"]), limits)
    except FlywheelError as exc:
        message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        return {"ok": False, "kind": "refused", "error": type(exc).__name__, "field": exc.field, "message": message}
    except Exception as exc:  # whatever else the file makes the reader raise, the file is unreadable
        if out_of_memory(exc) or isinstance(exc, pa.ArrowCapacityError):
            return {"ok": False, "kind": "memory"}
        return {"ok": False, "kind": "unreadable", "error": type(exc).__name__}
    try:
        with pa.OSFile(job["output"], "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    except MemoryError:
        return {"ok": False, "kind": "memory"}
    except OSError as exc:
        return {"ok": False, "kind": "output", "error": exc.strerror or type(exc).__name__}
    return {"ok": True, "rows": table.num_rows}


def main() -> int:
    die_with_parent()
    import pyarrow as pa

    import services.ingestion.tables  # noqa: F401  # imported before the job arrives: that is the point

    pa.set_cpu_count(1)  # one decoding thread: more would only reserve address space (stacks, heaps)
    pa.set_io_thread_count(1)
    job_file = sys.stdin.readline().strip()
    if not job_file:  # ingestion stopped, or closed the pipe, before giving a job
        return 0
    job = json.loads(Path(job_file).read_text())
    confine(int(job["budget_bytes"]))
    outcome = decode(job)
    sys.stdout.write(json.dumps(outcome) + "\n")
    sys.stdout.flush()
    return 0 if outcome["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
