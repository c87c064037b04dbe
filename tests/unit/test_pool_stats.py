"""ModelStatistics of a worker pool: a worker adds the other live workers' counters (from their
heartbeats) to its own; lone processes and stale or foreign replicas are left out."""

from __future__ import annotations

from flywheel.v1 import common_pb2, serving_pb2
from services.serving.stats import ModelStats, add_counters, pool_prefix, sibling_slots, slot_counters


def heartbeat_view(version: int, stats: ModelStats) -> bytes:
    slot = serving_pb2.ModelSlot(model=common_pb2.ModelRef(name="m", version=version))
    slot_counters(stats, slot.stats)
    return serving_pb2.ReplicaView(slots=[slot]).SerializeToString()


def worker_stats(successes: int, failures: int, rows: int) -> ModelStats:
    stats = ModelStats()
    for _ in range(successes):
        stats.record_success(1_000, 100, 600, rows=rows, batch_rows=rows)
    for _ in range(failures):
        stats.record_failure(5_000)
    return stats


def test_pool_prefix_names_the_pool_of_a_worker_only() -> None:
    assert pool_prefix("vm:50054/w3") == "vm:50054/w"
    assert pool_prefix("vm:50054") is None


def test_a_worker_adds_its_live_siblings_and_nobody_else() -> None:
    mine, sibling, stale, other_port = (worker_stats(s, f, 2) for s, f in ((3, 1), (5, 2), (7, 0), (11, 0)))
    rows = [
        ("vm:50054/w0", 0.0, heartbeat_view(1, mine)),  # itself: counted live, not from its heartbeat
        ("vm:50054/w1", 2.0, heartbeat_view(1, sibling)),
        ("vm:50054/w2", 99.0, heartbeat_view(1, stale)),  # no heartbeat within the bound
        ("vm:50154/w1", 1.0, heartbeat_view(1, other_port)),  # another pool (replica)
        ("vm:50054/w3", 1.0, b""),  # serves nothing of this model
    ]
    others = list(sibling_slots("vm:50054/w0", rows, stale_after_s=15.0))
    assert len(others) == 1
    total = mine.to_proto("m", "1")
    add_counters(total, others[0].stats)
    assert total.inference_count == (3 + 5) * 2 and total.execution_count == 3 + 5
    assert total.inference_stats.success.count == 8 and total.inference_stats.success.ns == 8 * 1_000
    assert total.inference_stats.queue.ns == 8 * 100 and total.inference_stats.compute_infer.ns == 8 * 600
    assert total.inference_stats.fail.count == 3 and total.inference_stats.fail.ns == 3 * 5_000
    assert list(sibling_slots("vm:50054", rows, stale_after_s=15.0)) == [], "a lone process adds nothing"
