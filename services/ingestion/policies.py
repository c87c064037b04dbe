"""Each dataset's micro-batch policy, as the records consumer needs it: synchronously, per key.

The consumer asks for a key's policy every time it decides whether a batch is due, and that call
cannot wait for the database. The first ask for a key starts a lookup and answers the defaults
until it lands (milliseconds: the consumer asks again within its next poll); then the dataset's own
policy applies, from its first batch after a start on. Policies are refreshed from every batch the
handler writes (it reads the dataset anyway) and looked up again after `refresh_s`. Keys come from
producers, so memory is bounded: at most `max_entries` datasets known, as many unknown keys
remembered (asked again after `retry_s`), `max_lookups` lookups at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from flywheel.logging import get_logger
from flywheel.v1 import ingestion_pb2
from services.ingestion import datasets

log = get_logger(__name__)
Policy = tuple[int, float]  # (max_rows, max_wait_s)
DEFAULT: Policy = (datasets.DEFAULT_MAX_ROWS, datasets.DEFAULT_MAX_WAIT_S)


class MicroBatchPolicies:
    def __init__(
        self,
        lookup: Callable[[str], Awaitable[ingestion_pb2.Dataset | None]],
        *,
        max_entries: int = 10_000,
        max_lookups: int = 16,
        refresh_s: float = 60.0,
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup  # the dataset, or None when there is no such dataset
        self._max_entries = max_entries
        self._max_lookups = max_lookups
        self._refresh_s = refresh_s
        self._retry_s = retry_s
        self._clock = clock
        self._known: OrderedDict[str, tuple[Policy, float]] = OrderedDict()  # policy, when read
        self._unknown: OrderedDict[str, float] = OrderedDict()  # when found missing (or the lookup failed)
        self._lookups: dict[str, asyncio.Task[None]] = {}

    def __call__(self, key: str) -> Policy:
        """The key's policy if known (a stale one triggers a refresh), else the defaults for now."""
        now = self._clock()
        known = self._known.get(key)
        if known is not None:
            self._known.move_to_end(key)
            policy, read_at = known
            if now - read_at >= self._refresh_s:
                self._start(key)
            return policy
        missing_since = self._unknown.get(key)
        if missing_since is None or now - missing_since >= self._retry_s:
            self._start(key)
        return DEFAULT

    def remember(self, key: str, ds: ingestion_pb2.Dataset) -> None:
        """The policy of a dataset just read (the handler reads it for every batch)."""
        self._unknown.pop(key, None)
        self._known[key] = (datasets.micro_batch(ds), self._clock())
        self._known.move_to_end(key)
        while len(self._known) > self._max_entries:
            self._known.popitem(last=False)

    def _forget(self, key: str) -> None:
        self._known.pop(key, None)
        self._unknown[key] = self._clock()
        self._unknown.move_to_end(key)
        while len(self._unknown) > self._max_entries:
            self._unknown.popitem(last=False)

    def _start(self, key: str) -> None:
        if key in self._lookups or len(self._lookups) >= self._max_lookups:
            return  # asked again on the consumer's next poll
        self._lookups[key] = asyncio.get_running_loop().create_task(self._look_up(key))

    async def _look_up(self, key: str) -> None:
        try:
            ds = await self._lookup(key)
        except Exception as exc:  # the database away: defaults meanwhile, asked again after retry_s
            log.warning("micro-batch policy lookup failed", error=type(exc).__name__)
            known = self._known.get(key)
            if known is None:
                self._forget(key)
            else:  # keep the policy; refresh again after retry_s, not on every ask
                self._known[key] = (known[0], self._clock() - self._refresh_s + self._retry_s)
        else:
            if ds is None:
                self._forget(key)
            else:
                self.remember(key, ds)
        finally:
            self._lookups.pop(key, None)
