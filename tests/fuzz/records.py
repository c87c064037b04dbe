"""Generated Kafka records for the topics outside producers write to: JSON (the shapes serde.py and
the ingestion handlers read) and protobuf (the topic's event type, generated from its descriptor),
each now and then random bytes or a truncated or mutated serialization, with generated keys and
headers. A share is "almost valid": the right shape for a dataset or model the stack holds, with
wrong types, NaN and infinities, lone surrogates, giant strings or unknown names, so it gets past
the decoder into the handlers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from hypothesis import strategies as st

from flywheel.bus.serde import CONTENT_JSON, CONTENT_PROTOBUF
from flywheel.bus.topics import EVENT_TYPES, Topics
from flywheel.v1 import common_pb2, events_pb2

from . import values as v
from .protos import MessageStrategies
from .world import COLORS, FEATURES, World

HUGE_CHARS = 40_000  # keeps a JSON-escaped record well inside what the stack's producers republish
TOPICS = (Topics.INGEST_RECORDS, Topics.FEEDBACK, Topics.PREDICTIONS_LOGGED)


@dataclass(frozen=True)
class Record:
    kind: str  # what generated it, for the report of a record that went wrong
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]

    def describe(self, limit: int = 600) -> str:
        value = self.value if self.value is None or len(self.value) <= limit else self.value[:limit] + b"..."
        key = self.key if self.key is None or len(self.key) <= 80 else self.key[:80] + b"..."
        headers = [(k[:40], h if h is None or len(h) <= 80 else h[:80] + b"...") for k, h in self.headers]
        return f"{self.kind}: key={key!r} headers={headers!r} value({len(self.value or b'')} bytes)={value!r}"


class RecordStrategies:
    def __init__(self, world: World) -> None:
        self.world = world
        self.names = v.texts(world.names, huge_chars=HUGE_CHARS)
        self.json_names = v.texts(world.names, huge_chars=HUGE_CHARS, surrogates=True)
        self.messages = MessageStrategies(world.names, world.ints, huge_chars=HUGE_CHARS, max_repeated=3)
        self.json_any = v.json_values(self.json_names)

    def for_topic(self, topic: str) -> st.SearchStrategy[Record]:
        """About half the records are built to get past the decoder (right envelope, right content
        type, the stack's names; hostile values inside); the rest are wrong in every other way."""
        wrong_types = {
            Topics.INGEST_RECORDS: self._ingest_json(),
            Topics.FEEDBACK: self._feedback_json(),
            Topics.PREDICTIONS_LOGGED: self._predictions_json(),
        }[topic]
        typed = {
            Topics.INGEST_RECORDS: self._ingest_json(),  # any JSON row reaches the handler
            Topics.FEEDBACK: self._feedback_typed(),
            Topics.PREDICTIONS_LOGGED: self._predictions_typed(),
        }[topic]
        cls = EVENT_TYPES[topic]
        near_proto = self._near_valid_proto(topic).map(lambda m: m.SerializeToString())
        protos = st.one_of(self.messages.of(cls.DESCRIPTOR), self._near_valid_proto(topic)).map(
            lambda m: m.SerializeToString()
        )
        reaching = [
            self._reaching(topic, "json-typed", typed.map(_json_bytes), json_body=True),
            self._reaching(topic, "proto-near-valid", near_proto, json_body=False),
        ]
        others = [
            self._record(topic, "json-wrong-types", wrong_types.map(_json_bytes), json_body=True),
            self._record(topic, "json-any", self.json_any.map(_json_bytes), json_body=True),
            self._record(topic, "json-broken", _broken_json(), json_body=True),
            self._record(topic, "proto", protos, json_body=False),
            self._record(topic, "proto-mutated", _mutated(protos), json_body=False),
            self._record(topic, "random-bytes", v.binaries(2048), json_body=st.booleans()),
        ]

        @st.composite
        def record(draw: st.DrawFn) -> Record:
            group = reaching if draw(st.integers(0, 99)) < 50 else others
            return draw(group[draw(st.integers(0, len(group) - 1))])

        return record()

    # -- envelopes ---------------------------------------------------------------------------------

    def _record(
        self, topic: str, kind: str, values: st.SearchStrategy[bytes], *, json_body: bool | st.SearchStrategy[bool]
    ) -> st.SearchStrategy[Record]:
        body = json_body if isinstance(json_body, st.SearchStrategy) else st.just(json_body)
        return st.builds(
            # (a record needs a key or a value: a null value comes with a key, if only an empty one)
            lambda key, value, is_json, headers: Record(
                kind, key if value is not None else key or b"", value, headers(is_json, topic)
            ),
            self._keys(),
            values | st.none() if kind == "random-bytes" else values,
            body,
            st.builds(_Headers, _content_types(), _event_types(topic), _extra_headers()),
        )

    def _reaching(
        self, topic: str, kind: str, values: st.SearchStrategy[bytes], *, json_body: bool
    ) -> st.SearchStrategy[Record]:
        """A record with the envelope a consumer accepts: keyed by a name the stack holds, the right
        content type (as sent by a careful producer), the right event type, and odd extra headers."""
        right = CONTENT_JSON if json_body else CONTENT_PROTOBUF
        content = st.sampled_from([right, f"{right}; charset=utf-8"]).map(lambda c: ("content-type", c.encode()))
        event = ("event-type", EVENT_TYPES[topic].DESCRIPTOR.full_name.encode())
        key = {Topics.INGEST_RECORDS: self.world.datasets}.get(topic, (self.world.model,))
        return st.builds(
            lambda k, value, c, extra: Record(kind, k.encode(), value, (c, event, *extra)),
            st.sampled_from(key),
            values,
            content,
            _extra_headers(),
        )

    def _keys(self) -> st.SearchStrategy[bytes | None]:
        return st.one_of(
            st.sampled_from([self.world.model, *self.world.datasets]).map(str.encode),
            st.sampled_from([self.world.model, *self.world.datasets]).map(str.encode),
            self.names.map(lambda s: s.encode("utf-8")),
            st.none(),
            st.just(b""),
            st.binary(max_size=32),  # not UTF-8, mostly
            st.builds(lambda unit, n: unit * n, st.binary(min_size=1, max_size=3), st.integers(1000, 100_000)),
        )

    # -- almost-valid JSON bodies --------------------------------------------------------------------

    def _cell(self) -> st.SearchStrategy[Any]:
        """A value for any field of the datasets: the right type, another one, or a hostile one."""
        return st.one_of(
            v.floats(),
            v.ints(-(2**70), 2**70),
            st.integers(-(10**400), 10**400),  # past any float
            st.booleans(),
            st.none(),
            st.sampled_from(COLORS),
            self.json_names,
            st.sampled_from(["1.5", "true", "NaN", "", "1e999"]),
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
        )

    def _row(self) -> st.SearchStrategy[dict[str, Any]]:
        known = {name: self._cell() for name in ["id", *FEATURES, "color", "flag", "label"]}
        return st.builds(
            lambda row, extra: {**row, **extra},
            st.fixed_dictionaries({}, optional=known),
            st.dictionaries(self.json_names, self._cell(), max_size=2),
        )

    def _ingest_json(self) -> st.SearchStrategy[Any]:
        rows = st.lists(self._row(), max_size=5)
        return st.one_of(
            self._row(),
            rows,
            st.builds(lambda r: {"rows": r}, rows),
            st.builds(lambda d, r: {"dataset": d, "rows": r, "meta": {"eventId": "x"}}, self.json_names, rows),
            st.builds(lambda r: {"rows": r}, self.json_any),
        )

    def _feedback_json(self) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries(
            {},
            optional={
                "meta": st.fixed_dictionaries({}, optional={"eventId": self.json_names, "schemaVersion": self._cell()}),
                "modelName": st.sampled_from([self.world.model]) | self.json_names,
                "requestId": st.sampled_from(self.world.request_ids) | self.json_names,
                "label": self._cell(),
                "rowIndex": self._cell(),
                "features": self._row() | self.json_any,
                "occurredAt": st.sampled_from(
                    ["2024-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0000-00-00T00:00:00Z", "x"]
                )
                | self._cell(),
            },
        )

    def _typed_cell(self) -> st.SearchStrategy[Any]:
        """A value google.protobuf.Value parses (no lone surrogates), of any JSON type."""
        return st.one_of(
            v.floats(), st.integers(-(2**53), 2**53), st.booleans(), st.none(), st.sampled_from(COLORS), self.names
        )

    def _typed_row(self) -> st.SearchStrategy[dict[str, Any]]:
        known = {name: self._typed_cell() for name in ["id", *FEATURES, "color", "flag", "label"]}
        return st.builds(
            lambda row, extra: {**row, **extra},
            st.fixed_dictionaries({}, optional=known),
            st.dictionaries(self.names, self._typed_cell(), max_size=2),
        )

    def _timestamp(self) -> st.SearchStrategy[str]:
        return st.sampled_from(
            ["2024-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"]
        )

    def _feedback_typed(self) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries(
            {
                "modelName": st.just(self.world.model),
                "requestId": st.sampled_from(self.world.request_ids) | self.names,
                "label": self._typed_cell() | st.lists(self._typed_cell(), max_size=3),
            },
            optional={
                "meta": st.fixed_dictionaries({"eventId": _event_id()}),
                "rowIndex": v.ints(*v.INT32, known=(0, 1, 2)),
                "features": self._typed_row(),
                "occurredAt": self._timestamp(),
            },
        )

    def _predictions_typed(self) -> st.SearchStrategy[Any]:
        record = st.fixed_dictionaries(
            {"requestId": st.sampled_from(self.world.request_ids) | self.names},
            optional={
                "inputs": self._typed_row(),
                "outputs": st.fixed_dictionaries(
                    {},
                    optional={
                        "label": self._typed_cell() | st.lists(self._typed_cell(), max_size=3),
                        "probabilities": st.lists(self._typed_cell(), max_size=3),
                    },
                )
                | st.dictionaries(self.names, self._typed_cell(), max_size=3),
                "latencyMs": v.floats(),
                "rowIndex": v.ints(*v.INT32, known=(0, 1, 2)),
                "occurredAt": self._timestamp(),
                "role": st.sampled_from(["SERVING_ROLE_PRODUCTION", "SERVING_ROLE_SHADOW", "SERVING_ROLE_UNSPECIFIED"]),
            },
        )
        return st.fixed_dictionaries(
            {
                "model": st.fixed_dictionaries(
                    {
                        "name": st.just(self.world.model),
                        "version": st.sampled_from([self.world.model_version, self.world.model_version + 1]),
                    }
                ),
                "records": st.lists(record, min_size=1, max_size=6),
            },
            optional={"meta": st.fixed_dictionaries({"eventId": _event_id()}), "dropped": v.ints(*v.INT64)},
        )

    def _predictions_json(self) -> st.SearchStrategy[Any]:
        record = st.fixed_dictionaries(
            {},
            optional={
                "requestId": st.sampled_from(self.world.request_ids) | self.json_names,
                "inputs": self._row() | self.json_any,
                "outputs": st.fixed_dictionaries({}, optional={"label": self._cell(), "probabilities": self._cell()})
                | self.json_any,
                "latencyMs": self._cell(),
                "rowIndex": self._cell(),
                "occurredAt": self._cell(),
                "role": st.sampled_from(["SERVING_ROLE_PRODUCTION", "SERVING_ROLE_SHADOW", "nope"]) | self._cell(),
            },
        )
        return st.fixed_dictionaries(
            {
                "model": st.fixed_dictionaries(
                    {"name": st.just(self.world.model) | self.json_names, "version": self._cell()}
                )
            },
            optional={
                "meta": st.fixed_dictionaries({"eventId": self.json_names}),
                "records": st.lists(record, max_size=4),
                "columns": self.json_any,
                "dropped": self._cell(),
            },
        )

    # -- almost-valid protobuf ------------------------------------------------------------------------

    def _near_valid_proto(self, topic: str) -> st.SearchStrategy[Message]:
        if topic == Topics.INGEST_RECORDS:
            return st.builds(
                lambda event_id, dataset, rows: events_pb2.IngestRecords(
                    meta=common_pb2.EventMeta(event_id=event_id), dataset=dataset, rows=rows
                ),
                _event_id(),
                st.sampled_from(self.world.datasets) | self.names,
                st.lists(self._struct_row(), max_size=5),
            )
        if topic == Topics.FEEDBACK:
            return st.builds(
                _feedback,
                st.sampled_from([self.world.model]) | self.names,
                st.sampled_from(self.world.request_ids) | self.names,
                self.messages.of(events_pb2.Feedback.DESCRIPTOR.fields_by_name["label"].message_type),
                v.ints(*v.INT32, known=(0, 1, 2)),
                st.none() | self._struct_row(),
                _event_id(),
            )
        return st.builds(_columns_event, st.just(self.world), _column_shapes(), _event_id())

    def _struct_row(self) -> st.SearchStrategy[Message]:
        cell = st.one_of(
            v.floats(), st.booleans(), st.none(), st.sampled_from(COLORS), self.names, v.ints(-(2**60), 2**60)
        )
        fields = st.fixed_dictionaries(
            {}, optional={name: cell for name in ["id", *FEATURES, "color", "flag", "label"]}
        )
        return fields.map(_struct)


class _Headers:
    """The headers of one record, given whether its body is JSON: content-type right, wrong, garbage
    or missing; event-type right, unknown or missing; trace context and other headers, garbage too."""

    def __init__(
        self, content: tuple[str, bytes | None] | None, event: bytes | None, extra: list[tuple[str, bytes | None]]
    ):
        self.content, self.event, self.extra = content, event, extra

    def __call__(self, is_json: bool, topic: str) -> tuple[tuple[str, bytes | None], ...]:
        headers: list[tuple[str, bytes | None]] = []
        if self.content is not None:
            mode, raw = self.content
            right = CONTENT_JSON if is_json else CONTENT_PROTOBUF
            value = {
                "right": right.encode(),
                "param": f"{right}; charset=utf-8".encode(),
                "upper": right.upper().encode(),
            }.get(mode, raw)
            headers.append(("content-type", value))
        if self.event is not None:
            headers.append(("event-type", self.event))
        return tuple(headers + self.extra)


def _content_types() -> st.SearchStrategy[tuple[str, bytes | None] | None]:
    return st.one_of(
        st.just(("right", None)),
        st.just(("right", None)),
        st.just(("right", None)),
        st.just(("param", None)),
        st.just(("upper", None)),
        st.none(),
        st.tuples(
            st.just("raw"),
            st.sampled_from([CONTENT_JSON.encode(), CONTENT_PROTOBUF.encode(), b"text/csv", b"", b"\xff\xfe", None])
            | st.binary(max_size=12),
        ),
    )


def _event_types(topic: str) -> st.SearchStrategy[bytes | None]:
    right = EVENT_TYPES[topic].DESCRIPTOR.full_name.encode()
    return st.one_of(
        st.just(right), st.none(), st.sampled_from([b"flywheel.v1.Nope", b"", b"\xff"]), st.binary(max_size=16)
    )


def _extra_headers() -> st.SearchStrategy[list[tuple[str, bytes | None]]]:
    names = st.sampled_from(
        ["traceparent", "tracestate", "baggage", "content-type", "error.type", "source.topic"]
    ) | st.text(max_size=12)
    garbage = st.one_of(
        st.sampled_from([b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01", b"00-zz-zz-zz", b"\xff\xfe", b"", None]),
        st.binary(max_size=64),
        st.builds(lambda n: b"x" * n, st.integers(1000, 60_000)),
    )
    return st.lists(st.tuples(names, garbage), max_size=3)


def _event_id() -> st.SearchStrategy[str]:
    """Mostly fresh ids (a repeated one is a duplicate, skipped before the handler), some odd ones."""
    return st.one_of(st.uuids().map(str), st.uuids().map(str), st.uuids().map(str), st.text(max_size=12))


def _json_bytes(obj: Any) -> bytes:
    # allow_nan: NaN and Infinity literals, which Python's JSON reader accepts; ensure_ascii writes
    # lone surrogates as \\udXXX escapes, which it reads back as lone surrogates.
    return json.dumps(obj, allow_nan=True, ensure_ascii=True).encode()


@st.composite
def _broken_json(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return b"[" * draw(st.integers(1, 200_000))  # nesting past the recursion limit
    if kind == 1:
        return b'{"rows": [{"color": "' + draw(st.binary(min_size=1, max_size=8)) + b'"}]}'  # not UTF-8
    if kind == 2:
        text = json.dumps({"rows": [{"color": draw(st.text(max_size=8)) + "\ud800"}]}, ensure_ascii=False)
        return text.encode("utf-8", "surrogatepass")  # a surrogate encoded raw: invalid UTF-8
    if kind == 3:
        return b'{"rows": [{"id": 1e999999, "f0": -1e999999}]}'
    if kind == 4:
        return b"\xef\xbb\xbf" + _json_bytes({"rows": [{"id": 1}]})  # a BOM
    return draw(st.sampled_from([b"", b"null", b"{", b'"rows"', b"[1,2]", b"NaN", b"{}", b"[]", b"[{}]"]))


def _mutated(serialized: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(serialized))
        how = draw(st.integers(0, 3))
        if not data or how == 0:
            return bytes(data) + draw(st.binary(min_size=1, max_size=16))  # trailing garbage
        if how == 1:
            return bytes(data[: draw(st.integers(0, len(data) - 1))])  # truncated
        if how == 2:
            for _ in range(draw(st.integers(1, 4))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))  # flipped bytes
            return bytes(data)
        # Invalid UTF-8 spliced in place of valid bytes: length prefixes stay right.
        at = draw(st.integers(0, len(data) - 1))
        n = min(len(data) - at, 2)
        data[at : at + n] = b"\xed\xa0\x80\xff"[:n]
        return bytes(data)

    return mutate()


def _struct(row: dict[str, Any]) -> Message:
    struct = events_pb2.IngestRecords().rows.add()
    for k, value in row.items():
        if value is None:
            struct.fields[k].null_value = 0
        elif isinstance(value, bool):
            struct.fields[k].bool_value = value
        elif isinstance(value, int | float):
            struct.fields[k].number_value = float(value)
        else:
            struct.fields[k].string_value = value
    return struct


def _feedback(
    model: str, request_id: str, label: Message, row_index: int, features: Message | None, event_id: str
) -> Message:
    event = events_pb2.Feedback(model_name=model, request_id=request_id, row_index=row_index)
    event.meta.event_id = event_id
    event.label.CopyFrom(label)
    if features is not None:
        event.features.CopyFrom(features)
    return event


@st.composite
def _column_shapes(draw: st.DrawFn) -> dict[str, Any]:
    """PredictionColumns, as serving writes them, with generated sizes, values and inconsistencies."""
    n = draw(st.integers(0, 6))
    consistent = draw(st.integers(0, 3)) > 0  # mostly lengths that agree, so the rows reach the handler

    def length() -> int:
        return n if consistent else draw(st.integers(0, 8))

    datatype = draw(st.sampled_from(["FP32", "FP64", "INT64", "INT32", "BOOL", "BYTES", "FP16", ""]))
    features = draw(st.lists(st.sampled_from(FEATURES) | st.text(max_size=6), min_size=0, max_size=5))
    return {
        "n": n,
        "request_ids": [draw(st.text(max_size=8)) for _ in range(length())],
        "row_indexes": [draw(v.ints(*v.INT32)) for _ in range(length())],
        "latency_ms": [draw(v.floats()) for _ in range(length())],
        "occurred_at": [draw(v.ints(*v.INT64, known=(0, 1_700_000_000_000_000_000))) for _ in range(length())],
        "roles": [draw(st.integers(0, 4) | v.ints(*v.INT32)) for _ in range(length())],
        "features": features,
        "datatype": datatype,
        "shape": [n, len(features)] if consistent else draw(st.lists(v.ints(*v.INT64), max_size=3)),
        "data": draw(st.binary(min_size=0, max_size=n * len(features) * 8)) if not consistent else None,
        "values": draw(st.lists(v.floats(), min_size=n * max(len(features), 1), max_size=n * max(len(features), 1))),
        "label": draw(st.lists(v.ints(*v.INT64), min_size=n, max_size=n)),
        "class_labels": draw(st.lists(st.text(max_size=4), max_size=3)),
    }


def _columns_event(world: World, c: dict[str, Any], event_id: str) -> Message:
    import numpy as np

    from flywheel.predictions import tensor

    event = events_pb2.PredictionsLogged()
    event.meta.event_id = event_id
    event.model.name = world.model
    event.model.version = world.model_version
    cols = event.columns
    cols.request_ids.extend(c["request_ids"])
    cols.row_indexes.extend(c["row_indexes"])
    cols.latency_ms.extend(c["latency_ms"])
    cols.occurred_at_unix_nanos.extend(c["occurred_at"])
    cols.roles.extend(c["roles"])
    cols.feature_names.extend(c["features"])
    cols.class_labels.extend(c["class_labels"])
    n, width = c["n"], len(c["features"])
    if c["data"] is None and c["datatype"] in ("FP32", "FP64"):
        dtype = np.float32 if c["datatype"] == "FP32" else np.float64
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.array(c["values"][: n * width], dtype=dtype).reshape(n, width)
        cols.inputs.CopyFrom(tensor("inputs", array))
    else:
        cols.inputs.name, cols.inputs.datatype = "inputs", c["datatype"]
        cols.inputs.shape.extend(c["shape"])
        cols.inputs.data = c["data"] or b""
    label = cols.outputs.add()
    label.CopyFrom(tensor("label", np.array(c["label"], dtype=np.int64)))
    return event
