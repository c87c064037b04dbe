"""Background tasks a service owns: started through one `TaskSet`, awaited when the service stops.

A bare `loop.create_task()` whose result nobody keeps can be garbage-collected mid-run, and its
exception is only reported when it is; a TaskSet keeps a reference, logs a failure as it happens and
cancels and awaits what is left at shutdown, so nothing outlives the service's resources.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from flywheel.logging import get_logger

log = get_logger(__name__)


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"task set closed; not starting {name}")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=task.get_name(), error=repr(task.exception()))

    def __len__(self) -> int:
        return len(self._tasks)

    async def join(self, timeout_s: float | None = None) -> None:
        """Wait for the running tasks to finish by themselves (up to `timeout_s`)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    async def close(self) -> None:
        """Refuse new tasks, cancel the running ones and wait for them to end."""
        self._closed = True
        tasks = set(self._tasks)
        for t in tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
