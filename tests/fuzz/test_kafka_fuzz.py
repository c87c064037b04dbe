"""Property-based fuzzing of the topics outside producers write to (flywheel.ingest.records,
flywheel.feedback, flywheel.predictions.logged): generated JSON and protobuf records, almost valid
or plain garbage, with generated keys and headers, produced by a plain aiokafka producer to the
real stack. Afterwards: every consumer got to the end of every topic (nothing hangs), every
record was either processed or dead-lettered with a reason, no service crashed or restarted, and
good records are still processed.

Budget: budget.RECORDS_PER_TOPIC records per topic (FLYWHEEL_FUZZ_EXAMPLES under `make fuzz`),
plus a few fixed edge cases per topic that every run sends."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import given, seed

from flywheel.bus.serde import CONTENT_JSON, CONTENT_PROTOBUF, decode, new_meta
from flywheel.bus.topics import EVENT_TYPES, Topics
from flywheel.v1 import common_pb2, events_pb2, ingestion_pb2
from tests.e2e.clients import Clients
from tests.e2e.stack import UpProcess
from tests.polling import wait_until

from . import budget
from .bus_state import CONSUMERS, Consumer, DeadLetter, dead_letters, end_offsets, inbox_ids, positions
from .records import TOPICS, Record, RecordStrategies
from .survival import Checkpoint
from .world import COLORS, FEATURES, LOOSE, STRICT, World, answers

# Consumption of the fuzzed records: a deadline that grows with their number, and a shorter one
# for a consumer whose position stopped moving (a hung consumer is reported, not waited out).
CONSUME_TIMEOUT_S = 60 + 3 * budget.RECORDS_PER_TOPIC / 10
STALL_S = 20
pytestmark = pytest.mark.timeout(300 + 2 * CONSUME_TIMEOUT_S)


@dataclass
class Produced:
    """Every record produced, by (topic, partition, offset)."""

    records: dict[tuple[str, int, int], Record] = field(default_factory=dict)
    seconds: float = 0.0

    def on(self, topic: str) -> dict[tuple[int, int], Record]:
        return {(p, o): r for (t, p, o), r in self.records.items() if t == topic}


class Producer:
    """A plain aiokafka producer, as an outside producer would use, on its own event loop. Records
    up to 8 MiB (the embedded broker takes far more; the stack's producers republish up to 64 MiB)."""

    def __init__(self, bootstrap: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._producer = self._loop.run_until_complete(self._start(bootstrap))
        self._pending: list[tuple[str, Record, asyncio.Future]] = []

    @staticmethod
    async def _start(bootstrap: str) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 << 20, linger_ms=2)
        await producer.start()
        return producer

    def send(self, topic: str, record: Record) -> None:
        future = self._loop.run_until_complete(
            self._producer.send(topic, record.value, key=record.key, headers=list(record.headers))
        )
        self._pending.append((topic, record, future))

    def flush(self, into: Produced) -> None:
        for topic, record, future in self._pending:
            meta = self._loop.run_until_complete(future)
            into.records[(topic, meta.partition, meta.offset)] = record
        self._pending = []

    def close(self) -> None:
        self._loop.run_until_complete(self._producer.stop())
        self._loop.close()


def edge_records(world: World) -> dict[str, list[Record]]:
    """Sent on every run, whatever the budget: the inputs issue 12 was filed for."""
    json_h = (("content-type", CONTENT_JSON.encode()),)
    proto_h = (("content-type", CONTENT_PROTOBUF.encode()),)
    row = {"id": 7, **{f: 0.5 for f in FEATURES}, "flag": True, "label": 1}
    surrogate_row = json.dumps({"rows": [{**row, "color": "\ud800"}]}).encode()  # a lone surrogate, escaped
    feedback = events_pb2.Feedback(meta=new_meta("fuzz"), model_name=world.model, request_id=world.request_ids[0])
    feedback.label.number_value = 1
    feedback.features.update({**row, "color": "red"})
    predictions = events_pb2.PredictionsLogged(meta=new_meta("fuzz"))
    predictions.model.name, predictions.model.version = world.model, world.model_version
    for i in range(25):  # past the window size: a window closes over non-numeric outputs
        r = predictions.records.add(request_id=f"edge-{i}", row_index=0)
        r.inputs.update({f: 0.1 * i for f in FEATURES})
        r.outputs.update({"label": "not a number", "probabilities": ["x", None]})
        r.occurred_at.GetCurrentTime()
    garbage_2mb = b"\xff" * (2 << 20)
    bad_trace = (("traceparent", b"\xff\xfe"), ("tracestate", b"\xc3\x28"))
    return {
        Topics.INGEST_RECORDS: [
            # The record issue 12 was filed for: a categorical value that cannot be encoded as UTF-8.
            Record("edge-surrogate", STRICT.encode(), surrogate_row, json_h),
            Record("edge-surrogate", LOOSE.encode(), surrogate_row, json_h),
            Record("edge-surrogate-no-header", STRICT.encode(), surrogate_row, ()),
            Record("edge-2mib", STRICT.encode(), garbage_2mb, json_h),
            Record("edge-bad-trace", STRICT.encode(), json.dumps(row | {"id": 8}).encode(), json_h + bad_trace),
            Record("edge-no-key", None, json.dumps(row).encode(), json_h),
            Record(
                "edge-nan", STRICT.encode(), b'{"rows": [{"id": 9, "f0": NaN, "f1": Infinity, "label": 1}]}', json_h
            ),
        ],
        Topics.FEEDBACK: [
            Record("edge-feedback-surrogate", world.model.encode(), _feedback_json(world, "\ud800"), json_h),
            Record("edge-feedback", world.model.encode(), feedback.SerializeToString(), proto_h + bad_trace),
            Record("edge-2mib", world.model.encode(), garbage_2mb, proto_h),
            Record("edge-null-value", world.model.encode(), None, proto_h),
        ],
        Topics.PREDICTIONS_LOGGED: [
            Record("edge-non-numeric-outputs", world.model.encode(), predictions.SerializeToString(), proto_h),
            Record("edge-bad-trace", world.model.encode(), predictions.SerializeToString(), proto_h + bad_trace),
            Record("edge-2mib", world.model.encode(), garbage_2mb, proto_h),
        ],
    }


def _feedback_json(world: World, color: str) -> bytes:
    event = {
        "modelName": world.model,
        "requestId": world.request_ids[1],
        "label": 1,
        "features": {"id": 11, **{f: 0.5 for f in FEATURES}, "color": color, "flag": False},
    }
    return json.dumps(event).encode()


def _fuzz_topic(producer: Producer, strategies: RecordStrategies, topic: str) -> None:
    @budget.fuzz_settings(budget.RECORDS_PER_TOPIC)
    @given(record=strategies.for_topic(topic))
    def send(record: Record) -> None:
        producer.send(topic, record)

    if budget.SEED is not None:
        send = seed(budget.SEED ^ zlib.crc32(topic.encode()))(send)
    send()


def produce(stack: UpProcess, world: World) -> Produced:
    produced = Produced()
    producer = Producer(stack.bootstrap)
    strategies = RecordStrategies(world)
    started = time.monotonic()
    try:
        for topic, records in edge_records(world).items():
            for record in records:
                producer.send(topic, record)
        producer.flush(produced)
        for topic in TOPICS:
            _fuzz_topic(producer, strategies, topic)
            producer.flush(produced)
    finally:
        producer.close()
    produced.seconds = time.monotonic() - started
    return produced


@dataclass
class Outcome:
    produced: Produced
    behind: dict[Consumer, dict[int, tuple[int, int]]]  # consumer -> partition -> (position, end)
    waited_s: float


def _lagging(stack: UpProcess) -> dict[Consumer, dict[int, tuple[int, int]]]:
    async def read() -> dict[Consumer, dict[int, tuple[int, int]]]:
        behind: dict[Consumer, dict[int, tuple[int, int]]] = {}
        ends = {t: await end_offsets(stack.bootstrap, t) for t in TOPICS}
        for consumer in CONSUMERS:
            at = await positions(stack.bootstrap, stack.dsn, consumer)
            lag = {p: (at.get(p, 0), end) for p, end in ends[consumer.topic].items() if at.get(p, 0) < end}
            if lag:
                behind[consumer] = lag
        return behind

    return asyncio.run(read())


@pytest.fixture(scope="module")
def fuzzed(stack: UpProcess, world: World, started: Checkpoint) -> Iterator[tuple[Outcome, Checkpoint]]:
    """Produces the fuzz and waits until every consumer is at the end of every topic, or has
    stalled, or the deadline passed."""
    checkpoint = Checkpoint.now(stack)
    produced = produce(stack, world)
    t0 = time.monotonic()
    last_change, last = time.monotonic(), None
    while True:
        behind = _lagging(stack)
        if not behind:
            break
        if behind != last:
            last_change, last = time.monotonic(), behind
        if time.monotonic() - t0 > CONSUME_TIMEOUT_S or time.monotonic() - last_change > STALL_S:
            break
        time.sleep(0.5)
    yield Outcome(produced, behind, time.monotonic() - t0), checkpoint


def test_every_consumer_reaches_the_end_of_every_topic(fuzzed):
    outcome, _ = fuzzed
    per_topic = Counter(topic for topic, _, _ in outcome.produced.records)
    print(
        f"\nfuzz: {len(outcome.produced.records)} records produced ({dict(per_topic)})"
        f" in {outcome.produced.seconds:.1f}s,"
        f" consumed in {outcome.waited_s:.1f}s ({budget.reproduce_hint()})"
    )
    stuck = []
    for consumer, lag in outcome.behind.items():
        for partition, (position, end) in sorted(lag.items()):
            record = outcome.produced.records.get((consumer.topic, partition, position))
            what = record.describe() if record else "(a record this test did not produce)"
            stuck.append(
                f"{consumer.name} on {consumer.topic}[{partition}] at {position} of {end}; next record: {what}"
            )
    assert not stuck, "consumers hung or fell behind on fuzzed records:\n" + "\n".join(stuck)


def _all_dead_letters(stack: UpProcess) -> tuple[dict[str, list[DeadLetter]], list[str]]:
    async def read() -> tuple[dict[str, list[DeadLetter]], list[str]]:
        found: dict[str, list[DeadLetter]] = {}
        unexplained: list[str] = []
        for topic in TOPICS:
            found[topic], bad = await dead_letters(stack.bootstrap, stack.dsn, topic)
            unexplained += bad
        return found, unexplained

    return asyncio.run(read())


def test_every_dead_letter_carries_a_reason(stack, fuzzed):
    found, unexplained = _all_dead_letters(stack)
    reasons = Counter((d.consumer, d.topic, d.error_type, d.where) for letters in found.values() for d in letters)
    example = {(d.consumer, d.topic, d.error_type, d.where): d.error_message for ds in found.values() for d in ds}
    print("\ndead letters by consumer, topic, error type (where), with one message:")
    for k, n in reasons.most_common():
        print(f"  {n:5d} {k}: {example[k][:160]!r}")
    assert sum(len(d) for d in found.values()) > 0, "the fuzz dead-lettered nothing: did it reach the consumers?"
    assert not unexplained, "dead letters without error.type / error.message:\n" + "\n".join(unexplained[:20])


def _event_ids(topic: str, partition: int, offset: int, record: Record) -> list[str]:
    """The ids a per-event consumer may have recorded this record under in its inbox."""
    ids = [f"{topic}:{partition}:{offset}"]
    try:
        event = decode(EVENT_TYPES[topic], record.value, list(record.headers))
        if event.meta.event_id:
            ids.append(event.meta.event_id)
    except Exception:
        pass  # undecodable: it can only have been dead-lettered
    return ids


def test_every_record_is_processed_or_dead_lettered(stack, fuzzed):
    """For the per-event consumer (monitoring): each record is in its inbox (handled, or a duplicate
    of one handled) or among its dead letters. Batch consumers commit whole batches: their
    end-of-topic positions and dead-letter reasons are the properties above."""
    outcome, _ = fuzzed
    found, _ = _all_dead_letters(stack)
    unaccounted = []
    for consumer in (c for c in CONSUMERS if not c.batch):
        parked = {(d.partition, d.offset) for d in found[consumer.topic] if d.consumer == consumer.name}
        candidates = {
            key: _event_ids(consumer.topic, *key, record)
            for key, record in outcome.produced.on(consumer.topic).items()
            if key not in parked
        }
        handled = asyncio.run(inbox_ids(stack.dsn, consumer.schema, consumer.name))
        missing = [key for key, ids in sorted(candidates.items()) if not handled.intersection(ids)]
        print(
            f"\n{consumer.name} on {consumer.topic}: {len(outcome.produced.on(consumer.topic)) - len(candidates)}"
            " dead-lettered,"
            f" {len(candidates) - len(missing)} handled, {len(missing)} unaccounted"
        )
        for partition, offset in missing:
            record = outcome.produced.records[(consumer.topic, partition, offset)]
            unaccounted.append(f"{consumer.name} {consumer.topic}[{partition}]@{offset}: {record.describe(300)}")
    assert not unaccounted, f"{len(unaccounted)} records neither handled (inbox) nor dead-lettered:\n" + "\n".join(
        unaccounted[:15]
    )


def test_no_service_crashed_or_restarted(fuzzed):
    _, checkpoint = fuzzed
    problems = checkpoint.problems()
    assert not problems, "the Kafka fuzz crashed or restarted services:\n" + "\n\n".join(problems[:10])


def _latest_version(api: Clients, dataset: str) -> int:
    return api.ingestion.GetDataset(ingestion_pb2.GetDatasetRequest(name=dataset)).dataset.latest_version


def test_good_records_are_still_processed(stack, api, world, fuzzed):
    """After the fuzz: a valid ingest record becomes a dataset version, valid feedback with features
    reaches the dataset that takes the model's feedback, and a valid PredictionsLogged is stored."""
    strict_before, loose_before = _latest_version(api, STRICT), _latest_version(api, LOOSE)
    request_id = f"good-{uuid.uuid4().hex[:8]}"
    producer = Producer(stack.bootstrap)
    produced = Produced()
    row = {"id": 10**6, **{f: 0.25 for f in FEATURES}, "color": COLORS[0], "flag": True, "label": 0}
    json_h = (("content-type", CONTENT_JSON.encode()),)
    producer.send(Topics.INGEST_RECORDS, Record("good", STRICT.encode(), json.dumps({"rows": [row]}).encode(), json_h))
    predictions = events_pb2.PredictionsLogged(
        meta=new_meta("fuzz"), model=common_pb2.ModelRef(name=world.model, version=world.model_version)
    )
    r = predictions.records.add(request_id=request_id, row_index=0)
    r.inputs.update({f: 0.25 for f in FEATURES})
    r.outputs.update({"label": 1.0})
    r.occurred_at.GetCurrentTime()
    proto_h = (("content-type", CONTENT_PROTOBUF.encode()),)
    producer.send(
        Topics.PREDICTIONS_LOGGED, Record("good", world.model.encode(), predictions.SerializeToString(), proto_h)
    )
    feedback = events_pb2.Feedback(meta=new_meta("fuzz"), model_name=world.model, request_id=request_id)
    feedback.label.number_value = 1
    feedback.features.update({**row, "id": 10**6 + 1})
    producer.send(Topics.FEEDBACK, Record("good", world.model.encode(), feedback.SerializeToString(), proto_h))
    producer.flush(produced)
    producer.close()

    wait_until(
        lambda: _latest_version(api, STRICT) >= strict_before + 2,
        60,
        f"two new versions of {STRICT} (record, feedback)",
    )
    assert _latest_version(api, LOOSE) > loose_before, f"{LOOSE} got no version from the good feedback"

    async def stored() -> bool:
        conn = await asyncpg.connect(stack.dsn)
        try:
            return bool(
                await conn.fetchval("SELECT count(*) FROM monitoring.predictions WHERE request_id = $1", request_id)
            )
        finally:
            await conn.close()

    wait_until(lambda: asyncio.run(stored()), 60, "monitoring to store the good PredictionsLogged")


def test_no_service_restarted_and_good_calls_still_answer(stack: UpProcess, api: Clients, started: Checkpoint):
    """The directory's last test (files run in name order: test_grpc_fuzz, then this one): after the
    whole fuzz, the services run with the PIDs they started with, their logs show no crash, and the
    calls a user makes first still answer."""
    problems = started.problems()
    assert not problems, "services crashed or restarted during the fuzz:\n" + "\n\n".join(problems[:10])
    failures = answers(stack, api)
    assert not failures, "good calls fail after the fuzz:\n" + "\n".join(failures)
