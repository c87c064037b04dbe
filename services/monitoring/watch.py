"""Wakes open WatchAlerts streams when an alert commits.

One LISTEN connection per process, shared by every stream, instead of each stream polling the
database: a notification on ALERTS_CHANNEL sets the current `asyncio.Event` (and replaces it), so
every stream waiting on it re-reads the alerts newer than the last one it sent. The listener starts
with the first stream, reconnects with backoff when its connection is lost, and wakes every stream
after each (re)connect; streams also re-read every FALLBACK_POLL_S, in case a notification was
missed while it was reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from flywheel.logging import get_logger
from flywheel.retry import Backoff
from flywheel.tasks import TaskSet
from flywheel.telemetry import untraced
from services.monitoring.alerts import ALERTS_CHANNEL

log = get_logger(__name__)
FALLBACK_POLL_S = 5.0  # also how often the listener checks that its connection still answers


class AlertFeed:
    def __init__(self, pool: asyncpg.Pool, tasks: TaskSet, backoff: Backoff) -> None:
        self._pool = pool
        self._tasks = tasks
        self._backoff = backoff
        self._changed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    def changed(self) -> asyncio.Event:
        """The event the next notification sets. Take it before reading, then wait on it: an alert
        committed during the read has set it already, so nothing falls in between."""
        if self._listener is None or self._listener.done():
            self._listener = self._tasks.spawn(self._listen(), name="monitoring alert listener")
        return self._changed

    @staticmethod
    async def wait(changed: asyncio.Event, timeout_s: float = FALLBACK_POLL_S) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_s)

    def _wake(self, *_: object) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
            except Exception as exc:  # the listener must outlive any database trouble
                log.warning("alert listener: connection failed, will reconnect", error=repr(exc))
            await self._backoff.wait()

    async def _listen_once(self) -> None:
        async with self._pool.acquire() as conn:
            lost = asyncio.Event()

            def on_lost(_conn: object) -> None:
                lost.set()

            try:
                conn.add_termination_listener(on_lost)
                await conn.add_listener(ALERTS_CHANNEL, self._wake)
                self._backoff.reset()
                self._wake()  # alerts committed while nobody listened
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), FALLBACK_POLL_S)
                    if not lost.is_set():
                        await self._check(conn)
            finally:
                # A lost connection is back in the pool already (its proxy refuses calls); a live one
                # goes back without our callbacks. Cleanup trouble must not hide why we are leaving.
                with contextlib.suppress(Exception):
                    conn.remove_termination_listener(on_lost)
                    await conn.remove_listener(ALERTS_CHANNEL, self._wake)
        log.warning("alert listener: connection lost, will reconnect")

    @staticmethod
    async def _check(conn: asyncpg.Connection) -> None:
        """A connection that died without closing (no RST) never reports it: ask it something."""
        try:
            with untraced():
                await asyncio.wait_for(conn.fetchval("SELECT 1"), FALLBACK_POLL_S)
        except BaseException:
            conn.terminate()  # released closed: the pool replaces it
            raise
