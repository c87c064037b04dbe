"""Prediction logging: serving's column form and the row view consumers read, for both event forms."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
import pytest
from google.protobuf.struct_pb2 import Struct

from flywheel.errors import InvalidArgument
from flywheel.predictions import logged_rows
from flywheel.v1 import common_pb2, events_pb2
from services.serving import prediction_log
from services.serving.prediction_log import PredictionLogger

PRODUCTION, SHADOW = common_pb2.SERVING_ROLE_PRODUCTION, common_pb2.SERVING_ROLE_SHADOW
FEATURES = ("f0", "f1", "f2")


def _logger(sample_rate: float, capacity: int, producer: object = None, flush_s: float = 0.5) -> PredictionLogger:
    return PredictionLogger(producer, sample_rate, capacity, flush_s)  # type: ignore[arg-type]


def _log(logger: PredictionLogger, version: int, request_id: str, inputs: np.ndarray, role: int = PRODUCTION) -> None:
    rows = len(inputs)
    logger.log(
        model="m",
        version=version,
        request_id=request_id,
        features=FEATURES,
        inputs=inputs,
        outputs={
            "label": np.arange(rows, dtype=np.int64) % 2,
            "probabilities": np.tile(np.array([[0.25, 0.75]], dtype=np.float32), (rows, 1)),
        },
        class_labels=("no", "yes"),
        latency_ms=1.5,
        role=role,
    )


def test_columns_round_trip_to_rows():
    logger = _logger(1.0, 100)
    before = datetime.now(UTC)
    x = np.array([[1.0, 2.0, np.nan], [4.0, 5.0, 6.0]], dtype=np.float32)
    _log(logger, 3, "r1", x)
    _log(logger, 3, "", x[:1], role=SHADOW)  # no id: one is generated
    _log(logger, 4, "r2", x[1:])
    events = logger._events(list(logger._buffer))
    assert [(key, e.model.version) for key, e in events] == [("m", 3), ("m", 4)]
    v3 = events_pb2.PredictionsLogged.FromString(events[0][1].SerializeToString())
    assert not v3.records and len(v3.columns.request_ids) == 3 and v3.columns.inputs.datatype == "FP32"

    rows = logged_rows(v3)
    assert [(r.request_id, r.row_index, r.role) for r in rows[:2]] == [("r1", 0, PRODUCTION), ("r1", 1, PRODUCTION)]
    assert rows[2].request_id not in ("", "r1") and rows[2].role == SHADOW
    assert rows[0].inputs == {"f0": 1.0, "f1": 2.0, "f2": None}  # NaN has no JSON form
    assert rows[1].outputs == {"label": 1, "probabilities": [0.25, 0.75], "class": "yes"}
    assert rows[0].outputs["class"] == "no" and rows[0].latency_ms == 1.5
    assert before <= rows[0].occurred_at <= datetime.now(UTC)
    assert [r.inputs["f0"] for r in logged_rows(events[1][1])] == [4.0]


def test_events_hold_at_most_max_records_and_report_drops(monkeypatch):
    monkeypatch.setattr(prediction_log, "MAX_RECORDS_PER_EVENT", 5)
    logger = _logger(1.0, 4)
    for i in range(6):  # 2 over capacity: dropped and counted
        _log(logger, 1, f"r{i}", np.ones((2, 3), dtype=np.float32))
    assert logger.dropped == 2 and len(logger._buffer) == 4
    events = [e for _, e in logger._events(list(logger._buffer))]
    assert [len(e.columns.request_ids) for e in events] == [4, 4]  # 2-row entries, at most 5 rows each
    assert [e.dropped for e in events] == [2, 0]  # reported once
    assert [r.request_id for e in events for r in logged_rows(e)] == ["r0", "r0", "r1", "r1", "r2", "r2", "r3", "r3"]


def test_text_inputs_fall_back_to_records():
    logger = _logger(1.0, 10)
    _log(logger, 1, "t", np.array([["a", "b", "c"]], dtype=object))
    ((_, event),) = logger._events(list(logger._buffer))
    assert len(event.records) == 1 and not event.HasField("columns")
    (row,) = logged_rows(event)
    assert row.inputs == {"f0": "a", "f1": "b", "f2": "c"} and row.outputs["class"] == "no"


def test_records_from_other_producers_are_read_too():
    inputs, outputs = Struct(), Struct()
    inputs.update({"f0": 1.5})
    outputs.update({"class": "yes"})
    record = events_pb2.PredictionRecord(request_id="ext", inputs=inputs, outputs=outputs, row_index=2)
    record.occurred_at.FromDatetime(datetime(2026, 1, 2, tzinfo=UTC))
    (row,) = logged_rows(events_pb2.PredictionsLogged(records=[record]))
    assert (row.request_id, row.row_index, row.inputs, row.outputs) == ("ext", 2, {"f0": 1.5}, {"class": "yes"})
    assert row.occurred_at == datetime(2026, 1, 2, tzinfo=UTC)


def test_malformed_columns_are_rejected():
    logger = _logger(1.0, 10)
    _log(logger, 1, "r", np.ones((2, 3), dtype=np.float32))
    ((_, event),) = logger._events(list(logger._buffer))
    short = events_pb2.PredictionsLogged()
    short.CopyFrom(event)
    del short.columns.latency_ms[1]
    with pytest.raises(InvalidArgument, match="latency_ms"):
        logged_rows(short)
    truncated = events_pb2.PredictionsLogged()
    truncated.CopyFrom(event)
    truncated.columns.inputs.data = truncated.columns.inputs.data[:-4]
    with pytest.raises(InvalidArgument, match="inputs"):
        logged_rows(truncated)


def test_sampling():
    assert all(_logger(1.0, 1).sampled() for _ in range(100))
    assert not any(_logger(0.0, 1).sampled() for _ in range(100))
    tenth = sum(_logger(0.1, 1).sampled() for _ in range(10_000))
    assert 700 < tenth < 1_300


class _Producer:
    """Acks every record at once, or never (a broker that went away)."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.sent: list[events_pb2.PredictionsLogged] = []

    async def send(self, topic: str, value: bytes, *, key: bytes | None, headers: object) -> asyncio.Future[None]:
        self.sent.append(events_pb2.PredictionsLogged.FromString(value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.ack:
            future.set_result(None)
        return future


async def test_logger_publishes_every_flush_interval():
    producer = _Producer()
    logger = _logger(1.0, 10, producer, flush_s=0.01)
    runner = asyncio.ensure_future(logger.run())
    try:
        _log(logger, 1, "r", np.ones((2, 3), dtype=np.float32))
        for _ in range(200):
            if logger.published:
                break
            await asyncio.sleep(0.01)
    finally:
        runner.cancel()
    assert logger.published == 2 and [len(e.columns.request_ids) for e in producer.sent] == [2]


async def test_close_publishes_what_is_left_and_gives_up_on_a_silent_broker():
    producer = _Producer()
    logger = _logger(1.0, 10, producer)
    _log(logger, 1, "last", np.ones((3, 3), dtype=np.float32))
    await logger.close(timeout_s=1.0)  # at stop, without waiting for the next interval
    assert logger.published == 3 and [r.request_id for r in logged_rows(producer.sent[0])] == ["last"] * 3

    silent = _logger(1.0, 10, _Producer(ack=False))
    _log(silent, 1, "lost", np.ones((1, 3), dtype=np.float32))
    started = asyncio.get_running_loop().time()
    await silent.close(timeout_s=0.05)  # logs and returns: stopping must not hang on the broker
    assert silent.published == 0 and asyncio.get_running_loop().time() - started < 1.0
