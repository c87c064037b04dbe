"""What runs inside the training process pool's worker process (kept import-light)."""

from __future__ import annotations

import resource
from typing import Any

from flywheel.stack.procs import die_with_parent
from services.training.trainer import TrainJob, TrainResult, train

_progress: Any = None


def init_worker(progress: Any, memory_mb: int = 0) -> None:
    """Pool initializer: inherit the progress queue, die with the service process, cap its memory."""
    global _progress
    die_with_parent()
    _progress = progress
    limit_memory(memory_mb)


def limit_memory(memory_mb: int) -> None:
    """Caps this process's address space (RLIMIT_AS) at `memory_mb` MiB (0: no cap). An allocation past
    it fails with MemoryError, which fails the run, where it would otherwise exhaust the host's memory
    and have the kernel kill whatever it picks. Allocators that reserve address space ahead (Arrow's
    mimalloc, glibc's per-thread arenas) fall back to smaller reservations under the cap."""
    if memory_mb <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_mb * 2**20
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def run_job(job: TrainJob) -> TrainResult:
    return train(job, _progress)
