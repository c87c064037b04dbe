"""How one model version is batched: the server-wide settings, overridden by the version's tags.

A registry tag on the model version sets a value for that model alone:

    flywheel.serving/max_batch_size      rows per batch, 1 turns coalescing off   (1 .. 4096)
    flywheel.serving/max_queue_delay_us  longest a request waits for a fuller batch (0 .. 1_000_000)
    flywheel.serving/inline_max_us       a full batch this cheap runs on the event loop; 0: never (0 .. 10_000)

A tag that is not a whole number in its range is ignored, with a reason the caller logs, and the
server's value is used: tags can change after a version is promoted, and a typo must not keep a
production model from loading on the next restart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from flywheel.config import Settings

PREFIX = "flywheel.serving/"
MAX_BATCH_SIZE = PREFIX + "max_batch_size"
MAX_QUEUE_DELAY_US = PREFIX + "max_queue_delay_us"
INLINE_MAX_US = PREFIX + "inline_max_us"

# tag -> (field, lowest, highest). The caps keep one tag from stalling the process: a huge batch
# or delay holds requests back, and a long inline run blocks the event loop for every model.
LIMITS: dict[str, tuple[str, int, int]] = {
    MAX_BATCH_SIZE: ("max_batch_size", 1, 4096),
    MAX_QUEUE_DELAY_US: ("max_queue_delay_us", 0, 1_000_000),
    INLINE_MAX_US: ("inline_max_us", 0, 10_000),
}
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    max_batch_size: int  # <= 1: each request runs alone
    max_queue_delay_us: int
    inline_max_us: int  # 0: batches never run on the event loop

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchingPolicy:
        return cls(
            max_batch_size=settings.serving_max_batch_size,
            max_queue_delay_us=settings.serving_max_queue_delay_us,
            inline_max_us=settings.serving_inline_max_us,
        )

    @property
    def coalescing(self) -> bool:
        return self.max_batch_size > 1


@dataclass(frozen=True, slots=True)
class RejectedTag:
    tag: str
    value: str
    reason: str


def policy_for(tags: Mapping[str, str], default: BatchingPolicy) -> tuple[BatchingPolicy, list[RejectedTag]]:
    """`default` with every valid batching tag applied, and the tags that were not (with why)."""
    changes: dict[str, int] = {}
    rejected: list[RejectedTag] = []
    for tag, (field, low, high) in LIMITS.items():
        raw = tags.get(tag)
        if raw is None:
            continue
        text = raw.strip()
        if not _INTEGER.fullmatch(text):
            rejected.append(RejectedTag(tag, raw, "not a whole number"))
            continue
        value = int(text)
        if not low <= value <= high:
            rejected.append(RejectedTag(tag, raw, f"must be between {low} and {high}"))
            continue
        changes[field] = value
    rejected += [
        RejectedTag(t, tags[t], "not a serving tag this version knows")
        for t in tags
        if t.startswith(PREFIX) and t not in LIMITS
    ]
    return replace(default, **changes), rejected
