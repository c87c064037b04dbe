"""A time limit on every model run: one watchdog thread sets ONNX Runtime's RunOptions.terminate on
a run that passes it, and the run stops at its next node or Loop iteration with an error.

A model that passed its trial load can still take as long as a request's values ask (a Loop whose
trip count is an input): without a limit, such a request holds an executor thread for good. Each
run gets its own RunOptions (about 0.3 us), so a terminate set late can never reach another run.
"""

from __future__ import annotations

import threading
import time

import onnxruntime as ort

from flywheel.errors import DeadlineExceeded


class RunTimedOut(DeadlineExceeded):
    """A model run passed the time limit and was stopped (DEADLINE_EXCEEDED)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            f"the model ran longer than the {timeout_s:g} s a request may take and was stopped "
            "(serving_infer_timeout_s); send fewer rows or values that ask for less work"
        )


class Run:
    """One run under the watchdog: pass `options` to ONNX Runtime, then `RunDeadlines.finish` it."""

    __slots__ = ("deadline", "expired", "options")

    def __init__(self, deadline: float, log_severity: int) -> None:
        self.deadline = deadline
        self.expired = False
        self.options = ort.RunOptions()
        self.options.log_severity_level = log_severity


class RunDeadlines:
    """Stops runs longer than `timeout_s` (0: never). Safe to use from any thread.

    The watchdog thread starts with the first run and sleeps until the earliest deadline of the runs
    in flight (or `timeout_s` when none is: a run started meanwhile has a later deadline), so a run
    is stopped at its deadline, not at a polling interval. Starting and finishing a run costs a dict
    insert and a pop.
    """

    def __init__(self, timeout_s: float, *, log_severity: int = 4) -> None:
        self.timeout_s = max(0.0, timeout_s)
        self._log_severity = log_severity  # runs log nothing: a failure goes back to its caller
        self._live: dict[int, Run] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._unlimited = Run(float("inf"), log_severity)  # shared when there is no limit: never terminated

    def start(self) -> Run:
        if not self.timeout_s:
            return self._unlimited
        run = Run(time.monotonic() + self.timeout_s, self._log_severity)
        if self._thread is None:
            self._start_watchdog()
        self._live[id(run)] = run
        return run

    def finish(self, run: Run) -> None:
        self._live.pop(id(run), None)

    def error(self) -> RunTimedOut:
        return RunTimedOut(self.timeout_s)

    def close(self) -> None:
        """Stops the watchdog (runs still in flight then run without a limit)."""
        self._closed = True
        self._wake.set()

    def _start_watchdog(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name="ort-deadlines", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while not self._closed:
            now = time.monotonic()
            wake_at = now + self.timeout_s
            for run in list(self._live.values()):  # a copy: runs start and finish on other threads meanwhile
                if run.deadline <= now:
                    run.expired = True
                    run.options.terminate = True
                    self._live.pop(id(run), None)
                else:
                    wake_at = min(wake_at, run.deadline)
            self._wake.wait(wake_at - now)


NO_LIMIT = RunDeadlines(0.0)
