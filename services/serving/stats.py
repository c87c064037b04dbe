"""Per-model-version inference statistics, in the shape of the protocol's ModelStatistics."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
from tritonclient.grpc import service_pb2 as oip

from flywheel.v1 import serving_pb2

RESERVOIR_SIZE = 2048


class ModelStats:
    """Counters and durations for one model version; safe to update from any thread.

    Each successful request passes its own rows and its batch's rows: a batch of n requests then
    adds up to exactly one execution (rows / batch_rows summed), with no link to the batcher needed.
    """

    def __init__(self, reservoir_size: int = RESERVOIR_SIZE) -> None:
        self._lock = threading.Lock()
        self._success_count = 0
        self._success_ns = 0
        self._queue_ns = 0
        self._compute_ns = 0
        self._fail_count = 0
        self._fail_ns = 0
        self._inference_count = 0
        self._executions = 0.0
        self._last_inference_ms = 0
        self._latencies_ns: deque[int] = deque(maxlen=reservoir_size)  # most recent successes

    def record_success(
        self, total_ns: int, queue_ns: int, compute_ns: int, *, rows: int, batch_rows: int | None = None
    ) -> None:
        with self._lock:
            self._success_count += 1
            self._success_ns += total_ns
            self._queue_ns += queue_ns
            self._compute_ns += compute_ns
            self._inference_count += rows
            self._executions += rows / batch_rows if batch_rows else 1.0
            self._last_inference_ms = time.time_ns() // 1_000_000
            self._latencies_ns.append(total_ns)

    def record_failure(self, total_ns: int) -> None:
        with self._lock:
            self._fail_count += 1
            self._fail_ns += total_ns
            self._last_inference_ms = time.time_ns() // 1_000_000

    @property
    def success_count(self) -> int:
        return self._success_count

    @property
    def fail_count(self) -> int:
        return self._fail_count

    def latency_percentiles(self) -> tuple[float, float]:
        """(p50, p99) in milliseconds over recent successful requests; (0.0, 0.0) before any."""
        with self._lock:
            samples = np.fromiter(self._latencies_ns, dtype=np.int64, count=len(self._latencies_ns))
        if samples.size == 0:
            return 0.0, 0.0
        p50, p99 = np.percentile(samples, [50, 99]) / 1e6
        return float(p50), float(p99)

    def to_proto(self, name: str, version: str) -> oip.ModelStatistics:
        with self._lock:
            success = self._success_count
            return oip.ModelStatistics(
                name=name,
                version=version,
                last_inference=self._last_inference_ms,
                inference_count=self._inference_count,
                execution_count=round(self._executions),
                inference_stats=oip.InferStatistics(
                    success=_duration(success, self._success_ns),
                    fail=_duration(self._fail_count, self._fail_ns),
                    queue=_duration(success, self._queue_ns),
                    compute_infer=_duration(success, self._compute_ns),
                ),
            )


def slot_counters(stats: ModelStats, into: serving_pb2.SlotStats) -> None:
    """Copies the protocol's counters into a slot's stats (what a heartbeat carries)."""
    p = stats.to_proto("", "")
    into.inference_count, into.execution_count = p.inference_count, p.execution_count
    into.success_ns, into.queue_ns = p.inference_stats.success.ns, p.inference_stats.queue.ns
    into.compute_infer_ns, into.fail_ns = p.inference_stats.compute_infer.ns, p.inference_stats.fail.ns
    into.last_inference_ms = p.last_inference
    into.success_count, into.fail_count = p.inference_stats.success.count, p.inference_stats.fail.count


def add_counters(into: oip.ModelStatistics, other: serving_pb2.SlotStats) -> None:
    """Adds another worker's counters (from its heartbeat) to `into`."""
    into.inference_count += other.inference_count
    into.execution_count += other.execution_count
    into.last_inference = max(into.last_inference, other.last_inference_ms)
    s, success = into.inference_stats, other.success_count
    for duration, count, ns in (
        (s.success, success, other.success_ns),
        (s.queue, success, other.queue_ns),
        (s.compute_infer, success, other.compute_infer_ns),
        (s.fail, other.fail_count, other.fail_ns),
    ):
        duration.count += count
        duration.ns += ns


def pool_prefix(replica: str) -> str | None:
    """ "host:port/w" for a worker "host:port/wN" of a pool; None for a lone process."""
    head, sep, _ = replica.rpartition("/w")
    return f"{head}/w" if sep else None


def sibling_slots(
    me: str, rows: Iterable[tuple[str, float, bytes]], stale_after_s: float
) -> Iterator[serving_pb2.ModelSlot]:
    """The slots the other live workers of `me`'s pool reported in their last heartbeat, from
    (replica, heartbeat age in s, serialised ReplicaView) rows; nothing for a lone process."""
    prefix = pool_prefix(me)
    if prefix is None:
        return
    for replica, age_s, view in rows:
        if replica != me and replica.startswith(prefix) and age_s <= stale_after_s and view:
            yield from serving_pb2.ReplicaView.FromString(view).slots


def _duration(count: int, ns: int) -> oip.StatisticDuration:
    return oip.StatisticDuration(count=count, ns=ns)
