"""The one retry policy: exponential backoff from `retry_base_s`, doubling up to `retry_max_s`.

`Backoff` paces a loop that waits out a failing dependency (the relay, consumers, reconcilers);
`retry` calls something until it succeeds, retrying only the errors named retryable, so a caller's
mistake (InvalidArgument, NotFound) surfaces at once instead of being retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flywheel.config import Settings
from flywheel.errors import Unavailable
from flywheel.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Backoff:
    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self._next = base_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Backoff:
        return cls(settings.retry_base_s, settings.retry_max_s)

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self._next = self.base_s


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (Unavailable,),
    attempts: int | None = None,
) -> T:
    """`call()` until it returns; `retry_on` errors are logged and waited out, up to `attempts` calls
    (None: until cancelled). The last error, or any other, propagates."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except retry_on as exc:
            if attempts is not None and attempt >= attempts:
                raise
            log.warning("retrying", what=what, attempt=attempt, error=str(exc))
            await backoff.wait()
