"""The worker pool with real child processes: replaced when one dies, all stopped on SIGTERM, a pool
whose workers cannot start exits 2; and how many workers "one per core" means."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from flywheel import workers
from tests.polling import wait_until

# A worker that records its index and pid, then sleeps until terminated.
WORKER = textwrap.dedent(
    """
    import os, pathlib, sys, time
    out = pathlib.Path(sys.argv[1])
    (out / f"{os.environ['FLYWHEEL_WORKER_INDEX']}-{os.getpid()}").touch()
    time.sleep(600)
    """
)
POOL = textwrap.dedent(
    """
    import sys
    from flywheel.workers import WorkerPool
    sys.exit(WorkerPool(int(sys.argv[1]), sys.argv[2:], stop_timeout_s=5).run())
    """
)


def start_pool(count: int, *command: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", POOL, str(count), *command])


def started(out: Path) -> list[tuple[int, int]]:
    return sorted((int(i), int(pid)) for i, pid in (p.name.split("-") for p in out.iterdir()))


def test_a_dead_worker_is_replaced_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    pool = start_pool(3, sys.executable, "-c", WORKER, str(tmp_path))
    try:
        wait_until(lambda: len(started(tmp_path)) == 3, 30, "three workers")
        assert [i for i, _ in started(tmp_path)] == [0, 1, 2]
        victim = dict(started(tmp_path))[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(started(tmp_path)) == 4, 30, "worker 1 started again")
        assert [i for i, _ in started(tmp_path)].count(1) == 2, "the replacement has the dead worker's index"
        children = psutil.Process(pool.pid).children()
        assert len(children) == 3 and victim not in {c.pid for c in children}
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(30) == 0
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    finally:
        pool.kill()


def test_workers_die_with_a_killed_pool(tmp_path: Path) -> None:
    pool = start_pool(2, sys.executable, "-c", WORKER, str(tmp_path))
    try:
        wait_until(lambda: len(started(tmp_path)) == 2, 30, "two workers")
        children = psutil.Process(pool.pid).children()
        pool.kill()
        pool.wait(10)
        wait_until(lambda: not any(c.is_running() for c in children), 10, "the orphaned workers to stop")
    finally:
        pool.kill()


def test_a_pool_whose_workers_cannot_start_exits_2() -> None:
    pool = start_pool(2, sys.executable, "-c", "import sys; sys.exit(2)")
    try:
        assert pool.wait(30) == 2
    finally:
        pool.kill()


def test_one_worker_per_usable_core_capped_by_the_cgroup_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(workers, "_CGROUP_V2", cpu_max)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _pid: set(range(8)))
    cpu_max.write_text("max 100000\n")
    assert workers.usable_cpus() == 8 and workers.worker_count(0) == 8
    cpu_max.write_text("150000 100000\n")  # 1.5 cores: two workers, the second one part-time
    assert workers.usable_cpus() == 2
    cpu_max.write_text("20000 100000\n")
    assert workers.usable_cpus() == 1
    assert workers.worker_count(3) == 3, "an explicit count wins"


def test_a_worker_restarted_too_often_backs_off(tmp_path: Path) -> None:
    """A worker that keeps dying is started again after 0.5 s, 1 s, 2 s...: not in a tight loop."""
    flaky = f"import os, pathlib, time; pathlib.Path({str(tmp_path)!r}, str(time.monotonic())).touch(); os._exit(1)"
    pool = start_pool(1, sys.executable, "-c", flaky)
    try:
        time.sleep(4.5)
    finally:
        pool.kill()
        pool.wait(10)
    starts = sorted(float(p.name) for p in tmp_path.iterdir())
    assert 3 <= len(starts) <= 5, starts  # 0, ~0.5, ~1.5, ~3.5 (+ start-up time of each)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps
