"""The guard in front of every model load: a trial load in a child process, under a memory limit
and a timeout, before serving creates the ONNX Runtime session in its own process.

A model file is untrusted input. ONNX Runtime folds constants and initialises the graph when the
session is created, so a tiny, valid graph (ConstantOfShape or Expand to a huge shape, feeding an
op that gets folded) can make it allocate gigabytes; in serving's process that would take down
every model with it. The child (services/serving/trial_load.py) does the same session creation and
one run of a full batch of zeros with its address space capped at `serving_load_memory_mb`; a
model that fails there (out of memory, killed, over `serving_load_timeout_s`, refused by ONNX
Runtime) raises ModelLoadError, which staging reports as a failed `loads` check. A model that
passes is loaded in-process knowing its load fits the limit.

The child also reads the graph first (services/serving/graph_check.py): a graph that would let a
request allocate memory outside serving's inference cap is refused with the reason, and the ops that
make its cost depend on the request's values come back with the result (such a model never runs
on the event loop).

The child runs on ONNX Runtime's CPU provider whatever serving uses: GPU memory is not bounded by
an address-space limit, and constant folding runs on the CPU in either case.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import Settings
from flywheel.errors import Unavailable
from flywheel.logging import get_logger
from services.serving.runtime import ModelLoadError

log = get_logger(__name__)
TRIAL_SCRIPT = Path(__file__).with_name("trial_load.py")
MAX_OUTPUT_BYTES = 64 * 1024  # what is read of the child's stdout and stderr, each; the rest is discarded
CONCURRENT_TRIALS = 2  # pinned loads of many models at once still start at most this many children


@dataclass(frozen=True, slots=True)
class TrialResult:
    seconds: float  # the child's own time: imports, session, one batch
    peak_rss_mb: float  # the child's peak resident memory
    wall_s: float  # as serving saw it, process start included
    dynamic_ops: tuple[str, ...] = ()  # ops whose cost follows the request's values (graph_check.DATA_DEPENDENT)


class LoadGuard:
    def __init__(self, memory_mb: int, timeout_s: float, concurrency: int = CONCURRENT_TRIALS) -> None:
        self.memory_mb = memory_mb
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max(1, concurrency))

    @classmethod
    def from_settings(cls, settings: Settings) -> LoadGuard:
        return cls(settings.serving_load_memory_mb, settings.serving_load_timeout_s)

    async def check(self, path: Path, rows: int, *, model: str = "", version: int = 0) -> TrialResult:
        """Trial-loads the ONNX file at `path` and runs `rows` rows of zeros through it; raises
        ModelLoadError (the model's fault) or Unavailable (no child could be started)."""
        async with self._slots:
            started = time.monotonic()
            try:
                result = await self._trial(path, rows)
            except ModelLoadError as exc:
                log.error("model trial load failed", model=model, version=version, error=str(exc),
                          seconds=round(time.monotonic() - started, 3))  # fmt: skip
                raise
        log.info("model trial load passed", model=model, version=version, seconds=round(result.wall_s, 3),
                 child_peak_rss_mb=result.peak_rss_mb, dynamic_ops=list(result.dynamic_ops))  # fmt: skip
        return result

    async def _trial(self, path: Path, rows: int) -> TrialResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        cpu_s = math.ceil(self.timeout_s) + 1  # a backstop in the child should serving itself die meanwhile
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", str(TRIAL_SCRIPT), str(path), str(rows), str(self.memory_mb), str(cpu_s),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise Unavailable(f"cannot start a trial load of the model: {exc.strerror or exc}") from exc
        try:
            assert proc.stdout is not None and proc.stderr is not None
            out, _err, code = await asyncio.wait_for(
                asyncio.gather(_read_capped(proc.stdout), _read_capped(proc.stderr), proc.wait()), self.timeout_s
            )
        except TimeoutError:
            raise ModelLoadError(
                f"loading the model took longer than {self.timeout_s:g} s (serving_load_timeout_s)"
            ) from None
        finally:
            if proc.returncode is None:  # timed out, or the load was cancelled: the child goes too
                proc.kill()
                await proc.wait()
        outcome = _outcome(out)
        if code == 0 and outcome.get("ok") is True:
            ops = outcome.get("dynamic_ops")
            dynamic = tuple(str(op) for op in ops) if isinstance(ops, list) else ()
            return TrialResult(
                _number(outcome, "seconds"), _number(outcome, "peak_rss_mb"), loop.time() - started, dynamic
            )
        raise ModelLoadError(self._reason(code, outcome))

    def _reason(self, code: int, outcome: dict[str, object]) -> str:
        kind, message = outcome.get("kind"), str(outcome.get("message", ""))
        memory = f"more than {self.memory_mb} MB of memory (serving_load_memory_mb)"
        if kind == "memory":
            return f"loading the model needs {memory}"
        if kind == "graph":
            if outcome.get("refused") is True:
                return f"serving does not load this model: {message}"
            return f"serving cannot read the model's graph: {message}"
        if kind == "load":
            return f"ONNX Runtime cannot load the model: {message}"
        if kind == "run":
            return f"the model fails on a batch of zeros: {message}"
        if code < 0:
            name = _signal_name(-code)
            if -code == signal.SIGXCPU:
                return f"the trial load was stopped ({name}): more CPU time than serving_load_timeout_s allows"
            if -code == signal.SIGKILL:
                return f"the trial load was killed ({name}): out of CPU time, or the machine out of memory"
            return f"the trial load crashed ({name}); loading the model may need {memory}"
        return f"the trial load exited with status {code}"


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    """Everything the child writes is read (so it never blocks on a full pipe); the first
    MAX_OUTPUT_BYTES are kept."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < MAX_OUTPUT_BYTES:
            kept += chunk[: MAX_OUTPUT_BYTES - len(kept)]
    return bytes(kept)


def _outcome(out: bytes) -> dict[str, object]:
    for line in reversed(out.decode(errors="replace").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _number(outcome: dict[str, object], key: str) -> float:
    value = outcome.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
