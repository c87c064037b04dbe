"""A service's background tasks are owned: kept alive while they run, failures logged as they
happen, and cancelled and awaited when the service stops."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from flywheel.tasks import TaskSet


async def test_close_cancels_and_awaits_running_tasks():
    tasks = TaskSet()
    ended: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(name)

    tasks.spawn(forever("a"), name="a")
    tasks.spawn(forever("b"), name="b")
    await asyncio.sleep(0)
    assert len(tasks) == 2
    await tasks.close()
    assert sorted(ended) == ["a", "b"] and len(tasks) == 0


async def test_finished_tasks_are_dropped_and_failures_logged():
    tasks = TaskSet()

    async def boom() -> None:
        raise RuntimeError("retire failed")

    with structlog.testing.capture_logs() as logs:
        task = tasks.spawn(boom(), name="retire m v1")
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert len(tasks) == 0
    assert any(e["event"] == "background task failed" and e["task"] == "retire m v1" for e in logs)


async def test_a_closed_set_refuses_new_tasks_without_leaking_the_coroutine():
    tasks = TaskSet()
    await tasks.close()

    async def work() -> None:
        return None

    coro = work()
    with pytest.raises(RuntimeError, match="closed"):
        tasks.spawn(coro, name="late")
    assert coro.cr_frame is None  # closed, so no "never awaited" warning


async def test_join_waits_for_tasks_to_finish_by_themselves():
    tasks = TaskSet()
    done = asyncio.Event()

    async def quick() -> None:
        await asyncio.sleep(0.01)
        done.set()

    tasks.spawn(quick(), name="quick")
    await tasks.join(timeout_s=5)
    assert done.is_set()
