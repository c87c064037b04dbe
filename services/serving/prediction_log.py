"""Prediction logging to flywheel.predictions.logged: sampled, buffered, batched, asynchronous.

`log()` is called on the request path and only appends references to a bounded deque (or
counts a drop); conversion to protobuf and publishing happen in a background task, so a slow
or absent broker never slows a prediction.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.bus import EventProducer, Topics
from flywheel.bus.serde import CONTENT_PROTOBUF, event_type_name, new_meta
from flywheel.logging import get_logger
from flywheel.v1 import common_pb2, events_pb2

log = get_logger(__name__)
FLUSH_S = 0.5
MAX_RECORDS_PER_EVENT = 500


@dataclass(frozen=True)
class _Entry:
    model: str
    version: int
    request_id: str
    features: list[str]
    inputs: np.ndarray  # rows x features
    outputs: dict[str, np.ndarray]
    class_labels: list[str]
    latency_ms: float
    at: float
    role: int


class PredictionLogger:
    def __init__(self, producer: EventProducer, sample_rate: float, capacity: int) -> None:
        self._producer = producer
        self.sample_rate = sample_rate
        self._buffer: deque[_Entry] = deque()
        self._capacity = capacity
        self.dropped = 0
        self._dropped_unreported = 0
        self.published = 0

    def log(
        self,
        *,
        model: str,
        version: int,
        request_id: str,
        features: list[str],
        inputs: np.ndarray,
        outputs: dict[str, np.ndarray],
        class_labels: list[str],
        latency_ms: float,
        role: int,
    ) -> None:
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            self._dropped_unreported += 1
            return
        self._buffer.append(
            _Entry(model, version, request_id, features, inputs, outputs, class_labels, latency_ms, time.time(), role)
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception as exc:  # the broker may be away: the records are dropped, and counted
                log.warning("prediction log: publish failed", error=repr(exc))

    async def flush(self) -> None:
        entries: list[_Entry] = []
        while self._buffer:
            entries.append(self._buffer.popleft())
        if not entries:
            return
        events = await asyncio.to_thread(self._events, entries)
        acks = []
        for key, event in events:
            headers = [("content-type", CONTENT_PROTOBUF.encode()), ("event-type", event_type_name(event).encode())]
            acks.append(
                await self._producer.send(
                    Topics.PREDICTIONS_LOGGED, event.SerializeToString(), key=key.encode(), headers=headers
                )
            )
        try:
            await asyncio.gather(*acks)
            self.published += sum(len(e.records) for _, e in events)
        except Exception:
            self.dropped += sum(len(e.records) for _, e in events)
            raise

    def _events(self, entries: list[_Entry]) -> list[tuple[str, events_pb2.PredictionsLogged]]:
        groups: dict[tuple[str, int], list[events_pb2.PredictionRecord]] = {}
        for e in entries:
            groups.setdefault((e.model, e.version), []).extend(_records(e))
        out = []
        dropped, self._dropped_unreported = self._dropped_unreported, 0
        for (model, version), records in groups.items():
            for i in range(0, len(records), MAX_RECORDS_PER_EVENT):
                event = events_pb2.PredictionsLogged(
                    meta=new_meta("serving"),
                    model=common_pb2.ModelRef(name=model, version=version),
                    records=records[i : i + MAX_RECORDS_PER_EVENT],
                    dropped=dropped,
                )
                dropped = 0
                out.append((model, event))
        return out


def _records(e: _Entry) -> list[events_pb2.PredictionRecord]:
    ts = Timestamp()
    ts.FromNanoseconds(int(e.at * 1e9))
    rows = e.inputs.tolist()
    outs = {name: arr.tolist() for name, arr in e.outputs.items()}
    records = []
    for i, row in enumerate(rows):
        inputs = Struct()
        inputs.update({name: _plain(v) for name, v in zip(e.features, row, strict=False)})
        outputs = Struct()
        row_out: dict[str, Any] = {name: _plain(values[i]) for name, values in outs.items() if i < len(values)}
        if "label" in row_out and e.class_labels:
            idx = int(row_out["label"])
            row_out["class"] = e.class_labels[idx] if 0 <= idx < len(e.class_labels) else None
        outputs.update(row_out)
        records.append(
            events_pb2.PredictionRecord(
                request_id=e.request_id,
                inputs=inputs,
                outputs=outputs,
                latency_ms=e.latency_ms,
                occurred_at=ts,
                row_index=i,
                role=e.role,
            )
        )
    return records


def _plain(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN has no JSON form: log it as null
        return None
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v
