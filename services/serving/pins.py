"""Versions a request pins with `model_version`: which ones may be, and the bounded set held loaded.

A pin loads a version that is not production, canary or shadow here. Each one is a whole ONNX
Runtime session, so the set is a least-recently-used cache of `serving_pinned_max` slots, and only
a version that passed serving's staging checks (or holds `production` in the registry) may be
pinned: a version that failed them, or was rejected or archived, is never loaded on a caller's word.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from flywheel.v1 import registry_pb2

R = registry_pb2
T = TypeVar("T")
Key = tuple[str, int]

# States a version reaches only after passing staging checks (the margin and approval come later).
PASSED_STAGING = frozenset(
    {R.PROMOTION_STATE_PENDING_APPROVAL, R.PROMOTION_STATE_PROMOTED, R.PROMOTION_STATE_NOT_PROMOTED}
)


def pin_refusal(mv: registry_pb2.ModelVersion) -> str:
    """Why the registry's version `mv` may not be pinned; "" when it may."""
    if "production" in mv.aliases:
        return ""
    if mv.archived:
        return "is archived"
    state = mv.promotion.state
    if state == R.PROMOTION_STATE_REJECTED:
        return "was rejected"
    if state not in PASSED_STAGING:
        return f"has not passed staging checks (the registry has it {R.PromotionState.Name(state)})"
    return ""


class PinnedLru(Generic[T]):
    """At most `capacity` entries; `put` returns what it pushed out, oldest use first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._items: OrderedDict[Key, T] = OrderedDict()

    def get(self, key: Key) -> T | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Key, item: T) -> list[T]:
        self._items[key] = item
        self._items.move_to_end(key)
        evicted = []
        while len(self._items) > self.capacity:
            _, old = self._items.popitem(last=False)
            evicted.append(old)
        return evicted

    def pop_model(self, name: str) -> list[T]:
        keys = [k for k in self._items if k[0] == name]
        return [self._items.pop(k) for k in keys]

    def values(self) -> list[T]:
        return list(self._items.values())

    def pop_all(self) -> list[T]:
        items = list(self._items.values())
        self._items.clear()
        return items

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
