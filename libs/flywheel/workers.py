"""N worker processes of one service on one port.

A service whose definition allows workers (serving: `serving_workers`) runs, when more than one is
asked for, as a small parent process that starts N copies of the same command, each told its index
in FLYWHEEL_WORKER_INDEX. Each worker is a whole service process (own event loop, database pool,
consumers, ONNX Runtime sessions) whose gRPC server binds the shared port with SO_REUSEPORT, so the
kernel spreads new connections over the workers; nothing proxies a byte.

The parent only supervises: a worker that exits is started again after a backoff while the others
keep the port open, so a client that retries (gRPC's retry policy on UNAVAILABLE) sees no refused
connection. SIGTERM/SIGINT reach every worker, which drains as a single process would. If the parent
dies, its workers get SIGTERM (PR_SET_PDEATHSIG) and drain: nothing is left behind.

Why processes and not threads: a unary ModelInfer is bound by Python's GIL at about one core; only
separate interpreters use the other cores.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from flywheel.logging import get_logger
from flywheel.stack.procs import die_with_parent

log = get_logger(__name__)

WORKER_INDEX_ENV = "FLYWHEEL_WORKER_INDEX"
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))
# A worker that ran at least this long counts as having started well: its restart backoff resets.
_HEALTHY_AFTER_S = 30.0
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.5, 30.0


def usable_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's
    `cpus`, a pod's CPU limit), rounded up."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota() -> float | None:
    """The cgroup's CPU quota in cores (v2 `cpu.max`, else v1 CFS), None when unlimited or unknown."""
    try:
        quota, period = _CGROUP_V2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q, p = (int(path.read_text().strip()) for path in _CGROUP_V1)
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def worker_count(setting: int) -> int:
    """`setting` workers, or one per usable core for 0."""
    return setting if setting > 0 else usable_cpus()


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff_s: float = _BACKOFF_MIN_S
    restart_at: float = 0.0
    starts: int = 0
    ever_healthy: bool = False
    last_exit: int | None = None  # the code of its last exit; None while it never exited


class WorkerPool:
    """Starts `count` copies of `command` and keeps them running until SIGTERM/SIGINT."""

    def __init__(self, count: int, command: list[str], stop_timeout_s: float) -> None:
        self.command = command
        self.stop_timeout_s = stop_timeout_s
        self.workers = [_Worker(i) for i in range(count)]
        self._stopping = False

    def run(self) -> int:
        """Blocks; 0 after a clean stop, 2 when no worker could ever start (port taken, bad
        settings: the same answer a single process gives, so supervisors report it)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for w in self.workers:
            self._start(w)
        log.info("worker pool started", workers=len(self.workers), pids=[w.proc.pid for w in self.workers if w.proc])
        while not self._stopping:
            now = time.monotonic()
            for w in self.workers:
                self._check(w, now)
            if all(not w.ever_healthy and w.last_exit == 2 for w in self.workers):
                log.error("no worker could start; giving up", starts=[w.starts for w in self.workers])
                self._stop_all()
                return 2
            time.sleep(0.1)
        self._stop_all()
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, w: _Worker) -> None:
        env = {**os.environ, WORKER_INDEX_ENV: str(w.index)}
        w.proc = subprocess.Popen(self.command, env=env, preexec_fn=die_with_parent)
        w.started_at = time.monotonic()
        w.starts += 1

    def _check(self, w: _Worker, now: float) -> None:
        if w.proc is None:
            if now >= w.restart_at:
                self._start(w)
                log.info("worker replaced", worker=w.index, pid=w.proc.pid if w.proc else None, starts=w.starts)
            return
        if now - w.started_at >= _HEALTHY_AFTER_S:
            w.ever_healthy, w.backoff_s = True, _BACKOFF_MIN_S
        code = w.proc.poll()
        if code is None:
            return
        w.last_exit, w.proc = code, None
        w.restart_at = now + w.backoff_s
        log.warning("worker exited", worker=w.index, code=code, restart_in_s=w.backoff_s)
        w.backoff_s = min(_BACKOFF_MAX_S, w.backoff_s * 2)

    def _stop_all(self) -> None:
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for p in live:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.info("worker pool stopped")


def run_pool(count: int, stop_timeout_s: float) -> int:
    """Runs this very command line `count` times as workers (see the module docstring)."""
    return WorkerPool(count, [sys.executable, *sys.orig_argv[1:]], stop_timeout_s).run()
