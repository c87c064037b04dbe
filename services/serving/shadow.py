"""Shadow mirroring, bounded: at most `max_inflight` mirrored calls run at once (setting
serving_shadow_max_inflight). A request that arrives while that many are in flight is answered by
production as usual and not mirrored; the skip is counted (a metric, `skipped`, and a warning at
most every LOG_EVERY_S), so a slow or stuck shadow version cannot grow serving's memory.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from flywheel.logging import get_logger
from services.serving import metrics

log = get_logger(__name__)
LOG_EVERY_S = 10.0


Spawn = Callable[[Coroutine[Any, Any, None]], object]


class ShadowMirror:
    """`spawn` starts a coroutine as a task the service owns (TaskSet.spawn, cancelled and awaited at stop)."""

    def __init__(self, spawn: Spawn, max_inflight: int) -> None:
        self._spawn = spawn
        self.max_inflight = max(0, max_inflight)
        self.inflight = 0
        self.skipped = 0
        self._logged_at = float("-inf")

    def offer(self, model: str, version: int, mirror: Callable[[], Awaitable[None]]) -> bool:
        """Starts `mirror()` as an owned task when there is room; False (counted) when not."""
        if self.inflight >= self.max_inflight:
            self._skip(model, version)
            return False
        self.inflight += 1
        try:
            self._spawn(self._run(mirror))
        except RuntimeError:  # the service is stopping
            self.inflight -= 1
            return False
        return True

    async def _run(self, mirror: Callable[[], Awaitable[None]]) -> None:
        try:
            await mirror()
        finally:
            self.inflight -= 1

    def _skip(self, model: str, version: int) -> None:
        self.skipped += 1
        metrics.shadow_skipped.add(1, {"model": model})
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("shadow mirroring skipped", model=model, version=version, in_flight=self.inflight,
                        max_inflight=self.max_inflight, skipped_total=self.skipped)  # fmt: skip
