"""Prediction logging to flywheel.predictions.logged: sampled, buffered, batched, asynchronous.

`log()` is called on the request path and only appends references to a bounded deque (or
counts a drop). Every `flush_s` (setting serving_log_flush_s) a background task turns what
accumulated into events, column-wise (PredictionColumns: one concatenation per tensor, not one
Struct per row, which used to cost more than the prediction), and publishes them, so a slow or
absent broker never slows a prediction. At stop, one last flush publishes what is left.

Each group of entries and each event stands alone: one that cannot be encoded or published (a
record the broker refuses as too large, say) is dropped and counted, and the others go out.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.bus import EventProducer, Topics
from flywheel.bus.serde import CONTENT_PROTOBUF, event_type_name, new_meta
from flywheel.logging import get_logger
from flywheel.predictions import json_value, tensor
from flywheel.v1 import common_pb2, events_pb2
from services.serving import metrics

log = get_logger(__name__)
MAX_RECORDS_PER_EVENT = 500
Role: TypeAlias = common_pb2.ServingRole.ValueType


@dataclass(frozen=True, slots=True)
class _Entry:
    model: str
    version: int
    request_id: str
    features: Sequence[str]
    inputs: np.ndarray  # rows x features
    outputs: dict[str, np.ndarray]
    class_labels: Sequence[str]
    latency_ms: float
    at_ns: int
    role: Role

    @property
    def rows(self) -> int:
        return len(self.inputs)

    def group(self) -> tuple:
        """Entries that can share one set of columns: same model version, names, dtypes and shapes."""
        outs = tuple((n, a.dtype.str, a.shape[1:]) for n, a in self.outputs.items())
        return (self.model, self.version, tuple(self.features), tuple(self.class_labels), self.inputs.dtype.str,
                self.inputs.shape[1:], outs)  # fmt: skip


class PredictionLogger:
    def __init__(self, producer: EventProducer, sample_rate: float, capacity: int, flush_s: float) -> None:
        self._producer = producer
        self.sample_rate = sample_rate
        self._flush_s = flush_s
        self._buffer: deque[_Entry] = deque()
        self._capacity = capacity
        self.dropped = 0
        self._dropped_unreported = 0
        self.published = 0

    def sampled(self) -> bool:
        """Whether the next request should be logged (call once per request, then log() if True)."""
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate

    def log(
        self,
        *,
        model: str,
        version: int,
        request_id: str,
        features: Sequence[str],
        inputs: np.ndarray,
        outputs: dict[str, np.ndarray],
        class_labels: Sequence[str],
        latency_ms: float,
        role: Role,
    ) -> None:
        """Queues one sampled request's rows; an empty request_id gets a generated one."""
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            self._dropped_unreported += 1
            return
        request_id = request_id or str(uuid.uuid4())
        at = time.time_ns()
        self._buffer.append(
            _Entry(model, version, request_id, features, inputs, outputs, class_labels, latency_ms, at, role)
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except Exception as exc:  # the broker may be away: the records are dropped, and counted
                metrics.background_failures.add(1, {"loop": "prediction_log"})
                log.warning("prediction log: publish failed", error=repr(exc))

    async def close(self, timeout_s: float) -> None:
        """At stop: publishes what is still buffered, waiting at most `timeout_s` for the broker."""
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except Exception as exc:
            log.warning("prediction log: final publish failed", error=repr(exc))

    async def flush(self) -> None:
        entries: list[_Entry] = []
        while self._buffer:
            entries.append(self._buffer.popleft())
        if not entries:
            return
        events = self._events(entries)  # on the loop: a few concatenations, cheaper than a thread hop
        acks: list[tuple[int, asyncio.Future[Any]]] = []
        for key, event in events:
            headers = [("content-type", CONTENT_PROTOBUF.encode()), ("event-type", event_type_name(event).encode())]
            try:
                ack = await self._producer.send(
                    Topics.PREDICTIONS_LOGGED, event.SerializeToString(), key=key.encode(), headers=headers
                )
            except Exception as exc:  # refused before it left (too large, producer closed): this event only
                self._skip(_rows(event), "publish", exc)
                continue
            acks.append((_rows(event), ack))
        results = await asyncio.gather(*(ack for _, ack in acks), return_exceptions=True)
        failed: BaseException | None = None
        for (rows, _), result in zip(acks, results, strict=True):
            if isinstance(result, BaseException):
                self.dropped += rows
                failed = result
            else:
                self.published += rows
        if failed is not None:
            raise failed

    def _skip(self, rows: int, stage: str, exc: Exception) -> None:
        self.dropped += rows
        metrics.background_failures.add(1, {"loop": "prediction_log"})
        log.warning("prediction log: records dropped", stage=stage, rows=rows, error=repr(exc))

    def _events(self, entries: list[_Entry]) -> list[tuple[str, events_pb2.PredictionsLogged]]:
        groups: dict[tuple, list[_Entry]] = {}
        for e in entries:
            groups.setdefault(e.group(), []).append(e)
        out = []
        dropped, self._dropped_unreported = self._dropped_unreported, 0
        for group in groups.values():
            first = group[0]
            for chunk in _chunks(group, MAX_RECORDS_PER_EVENT):
                event = events_pb2.PredictionsLogged(
                    meta=new_meta("serving"),
                    model=common_pb2.ModelRef(name=first.model, version=first.version),
                    dropped=dropped,
                )
                try:
                    if first.inputs.dtype.kind in "biuf":
                        event.columns.CopyFrom(_columns(chunk))
                    else:  # text inputs have no column form here: one record per row
                        event.records.extend(r for e in chunk for r in _records(e))
                except Exception as exc:  # outputs this encoding cannot carry: this chunk only
                    self._skip(sum(e.rows for e in chunk), "encode", exc)
                    continue
                dropped = 0
                out.append((first.model, event))
        return out


def _chunks(entries: list[_Entry], max_rows: int) -> list[list[_Entry]]:
    """Consecutive entries, at most max_rows rows per chunk (an entry with more rows is a chunk alone)."""
    chunks: list[list[_Entry]] = [[]]
    rows = 0
    for e in entries:
        if chunks[-1] and rows + e.rows > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(e)
        rows += e.rows
    return chunks


def _columns(entries: list[_Entry]) -> events_pb2.PredictionColumns:
    first = entries[0]
    columns = events_pb2.PredictionColumns(
        feature_names=first.features,
        class_labels=first.class_labels,
        inputs=tensor("inputs", np.concatenate([e.inputs for e in entries])),
        outputs=[tensor(name, np.concatenate([e.outputs[name] for e in entries])) for name in first.outputs],
    )
    for e in entries:
        n = e.rows
        columns.request_ids.extend([e.request_id] * n)
        columns.row_indexes.extend(range(n))
        columns.latency_ms.extend([e.latency_ms] * n)
        columns.occurred_at_unix_nanos.extend([e.at_ns] * n)
        columns.roles.extend([e.role] * n)
    return columns


def _rows(event: events_pb2.PredictionsLogged) -> int:
    return len(event.records) + len(event.columns.request_ids)


def _records(e: _Entry) -> list[events_pb2.PredictionRecord]:
    ts = Timestamp()
    ts.FromNanoseconds(e.at_ns)
    outs = {name: arr.tolist() for name, arr in e.outputs.items()}
    records = []
    for i, row in enumerate(e.inputs.tolist()):
        inputs = Struct()
        inputs.update({name: json_value(v) for name, v in zip(e.features, row, strict=False)})
        row_out: dict[str, Any] = {name: json_value(values[i]) for name, values in outs.items() if i < len(values)}
        if "label" in row_out and e.class_labels:
            idx = int(row_out["label"])
            row_out["class"] = e.class_labels[idx] if 0 <= idx < len(e.class_labels) else None
        outputs = Struct()
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
