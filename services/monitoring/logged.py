"""A `PredictionsLogged` event checked and turned into the rows monitoring stores (plain Python, CPU
work: callers run it off the event loop).

Anyone who can write to the broker can send one, and a stored row is read by every later window,
so what is stored must be what a window can judge. Refused with InvalidArgument (the consumer
dead-letters the event at once):
- no model name, no rows, more than MAX_EVENT_ROWS rows or MAX_EVENT_VALUES values;
- columns whose arrays disagree in length, tensors whose datatype, shape or byte count is wrong,
  an input matrix that does not match feature_names, and +/-inf anywhere;
- records whose feature values are not scalars (null, bool, finite number, text), whose outputs are
  not numbers or lists of numbers ("class" may also be text), or that hold NaN (JSON has no NaN);
- request ids, names and text over their length caps or holding NUL; negative row indexes or
  latencies; timestamps outside 0001..9999.
NaN in a column tensor is serving's spelling of a missing value (flywheel.predictions.json_value),
so it is stored as null, as serving's own record form stores it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from google.protobuf.struct_pb2 import Value

from flywheel.datatypes import NUMERIC_DTYPES
from flywheel.errors import FlywheelError, InvalidArgument
from flywheel.predictions import logged_rows
from flywheel.v1 import events_pb2
from services.monitoring import limits

MAX_EVENT_ROWS = 100_000  # serving sends at most 500 per event (more only for one larger request)
MAX_EVENT_VALUES = 5_000_000  # feature and output values in one event
MAX_ROW_VALUES = 100_000  # feature and output values in one row
MAX_FEATURES = 10_000
MAX_OUTPUTS = 64
MAX_CLASS_LABELS = 100_000
MAX_OUTPUT_DEPTH = 4  # nested lists in one output value ([[p0, p1]] is depth 2)
MAX_TENSOR_DIMS = 8
MAX_LATENCY_MS = 1e9
CLASS_OUTPUT = "class"


@dataclass(frozen=True, slots=True)
class StoredRow:
    request_id: str
    row_index: int
    inputs: str  # JSON object
    outputs: str  # JSON object
    latency_ms: float
    at: datetime
    role: int


def stored_rows(event: events_pb2.PredictionsLogged) -> list[StoredRow]:
    """The event's rows as monitoring stores them; InvalidArgument if the event is malformed or hostile."""
    check(event)
    try:
        rows = logged_rows(event)
        return [
            StoredRow(
                r.request_id,
                r.row_index,
                json.dumps(r.inputs, allow_nan=False),
                json.dumps(r.outputs, allow_nan=False),
                r.latency_ms,
                r.occurred_at,
                r.role,
            )
            for r in rows
        ]
    except FlywheelError:
        raise
    except (ValueError, TypeError, OverflowError, OSError, IndexError) as exc:
        # check() should have caught it; whatever slipped through is still the event's fault.
        raise InvalidArgument(f"malformed event ({type(exc).__name__})", field="columns") from exc


def check(event: events_pb2.PredictionsLogged) -> None:
    limits.text(event.model.name, "model.name", required=True)
    limits.count(event.model.version, "model.version", 2**63 - 1)
    rows = len(event.records) + len(event.columns.request_ids)
    if rows == 0:
        raise InvalidArgument("a predictions.logged event without records or columns", field="records")
    if rows > MAX_EVENT_ROWS:
        raise InvalidArgument(f"at most {MAX_EVENT_ROWS} rows per event", field="records")
    budget = _Budget()
    for i, record in enumerate(event.records):
        _check_record(record, f"records[{i}]", budget)
    if event.HasField("columns"):
        _check_columns(event.columns, budget)


class _Budget:
    """Values seen so far in the event; refuses past MAX_EVENT_VALUES."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, n: int, field: str) -> None:
        self.used += n
        if self.used > MAX_EVENT_VALUES:
            raise InvalidArgument(f"more than {MAX_EVENT_VALUES} values in one event", field=field)


# ------------------------------------------------------------------------------------------- records


def _check_record(r: events_pb2.PredictionRecord, where: str, budget: _Budget) -> None:
    limits.text(r.request_id, f"{where}.request_id")
    limits.count(r.row_index, f"{where}.row_index", 2**31 - 1)
    limits.number(r.latency_ms, f"{where}.latency_ms", 0.0, MAX_LATENCY_MS)
    limits.timestamp(r.occurred_at, f"{where}.occurred_at")
    if len(r.inputs.fields) > MAX_FEATURES:
        raise InvalidArgument(f"at most {MAX_FEATURES} features", field=f"{where}.inputs")
    if len(r.outputs.fields) > MAX_OUTPUTS:
        raise InvalidArgument(f"at most {MAX_OUTPUTS} outputs", field=f"{where}.outputs")
    for name, value in r.inputs.fields.items():
        limits.text(name, f"{where}.inputs", required=True)
        _scalar(value, f"{where}.inputs", limits.MAX_TEXT_CHARS)
    values = len(r.inputs.fields)
    for name, value in r.outputs.fields.items():
        limits.text(name, f"{where}.outputs", required=True)
        if name == CLASS_OUTPUT:
            _scalar(value, f"{where}.outputs.{CLASS_OUTPUT}", limits.MAX_LABEL_CHARS)
            values += 1
        else:
            values += _numeric(value, f"{where}.outputs", 0, MAX_ROW_VALUES - values)
    if values > MAX_ROW_VALUES:
        raise InvalidArgument(f"more than {MAX_ROW_VALUES} values in one row", field=where)
    budget.take(values, where)


def _scalar(value: Value, field: str, max_chars: int) -> None:
    """null, bool, a finite number or a bounded text: what one feature value (or a class) can be."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument("numbers must be finite", field=field)
    elif kind == "string_value":
        limits.text(value.string_value, field, max_chars)
    elif kind in ("struct_value", "list_value"):
        raise InvalidArgument("values must be scalars (null, bool, number or text)", field=field)


def _numeric(value: Value, field: str, depth: int, room: int) -> int:
    """How many values a numeric output holds: null, bool, a finite number, or nested lists of them."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument("numbers must be finite", field=field)
        return 1
    if kind in ("null_value", "bool_value", None):
        return 1
    if kind == "list_value" and depth < MAX_OUTPUT_DEPTH:
        items = value.list_value.values
        if len(items) > room:
            raise InvalidArgument(f"more than {MAX_ROW_VALUES} values in one row", field=field)
        n = 0
        for item in items:
            n += _numeric(item, field, depth + 1, room - n)
            if n > room:
                raise InvalidArgument(f"more than {MAX_ROW_VALUES} values in one row", field=field)
        return n
    if kind == "list_value":
        raise InvalidArgument(f"lists nested at most {MAX_OUTPUT_DEPTH} deep", field=field)
    raise InvalidArgument('outputs must be numbers or lists of numbers ("class" may be text)', field=field)


# ------------------------------------------------------------------------------------------- columns


def _check_columns(c: events_pb2.PredictionColumns, budget: _Budget) -> None:
    n = len(c.request_ids)
    for name in ("row_indexes", "latency_ms", "occurred_at_unix_nanos", "roles"):
        if len(getattr(c, name)) != n:
            raise InvalidArgument(f"one entry per request id ({n})", field=f"columns.{name}")
    for request_id in c.request_ids:
        limits.text(request_id, "columns.request_ids")
    if n and min(c.row_indexes) < 0:
        raise InvalidArgument("must be >= 0", field="columns.row_indexes")
    latency = np.asarray(c.latency_ms, dtype=np.float64)
    if not ((latency >= 0) & (latency <= MAX_LATENCY_MS)).all():  # NaN fails both comparisons
        raise InvalidArgument(f"must be finite numbers in [0, {MAX_LATENCY_MS:g}]", field="columns.latency_ms")
    if not 1 <= len(c.feature_names) <= MAX_FEATURES:
        raise InvalidArgument(f"between 1 and {MAX_FEATURES} names", field="columns.feature_names")
    for name in c.feature_names:
        limits.text(name, "columns.feature_names", required=True)
    if len(c.class_labels) > MAX_CLASS_LABELS:
        raise InvalidArgument(f"at most {MAX_CLASS_LABELS} labels", field="columns.class_labels")
    for label in c.class_labels:
        limits.text(label, "columns.class_labels", limits.MAX_LABEL_CHARS)
    per_row = _tensor(c.inputs, n, "columns.inputs")
    if per_row != len(c.feature_names):
        raise InvalidArgument(f"{len(c.feature_names)} values per row (one per feature name)", field="columns.inputs")
    if len(c.outputs) > MAX_OUTPUTS:
        raise InvalidArgument(f"at most {MAX_OUTPUTS} outputs", field="columns.outputs")
    names = set()
    for i, t in enumerate(c.outputs):
        where = f"columns.outputs[{i}]"
        limits.text(t.name, f"{where}.name", required=True)
        if t.name in names:
            raise InvalidArgument("output names must be unique", field=f"{where}.name")
        names.add(t.name)
        per_row += _tensor(t, n, where)
    if per_row > MAX_ROW_VALUES:
        raise InvalidArgument(f"more than {MAX_ROW_VALUES} values in one row", field="columns")
    budget.take(n * per_row, "columns")


def _tensor(t: events_pb2.LoggedTensor, rows: int, where: str) -> int:
    """Values per row of a well-formed tensor with `rows` rows and no infinities."""
    limits.text(t.name, f"{where}.name")
    dtype = NUMERIC_DTYPES.get(t.datatype)
    if dtype is None:
        raise InvalidArgument("datatype must be a numeric KServe v2 datatype", field=f"{where}.datatype")
    shape = list(t.shape)
    if not 1 <= len(shape) <= MAX_TENSOR_DIMS or shape[0] != rows or any(d < 0 for d in shape):
        raise InvalidArgument(f"shape must be [rows ({rows}), ...] with at most {MAX_TENSOR_DIMS} dims", field=where)
    per_row = 1
    for d in shape[1:]:
        per_row *= d
        if per_row > MAX_ROW_VALUES:
            raise InvalidArgument(f"more than {MAX_ROW_VALUES} values in one row", field=where)
    if len(t.data) != rows * per_row * dtype.itemsize:
        raise InvalidArgument("data size does not match shape and datatype", field=f"{where}.data")
    if dtype.kind == "f" and np.isinf(np.frombuffer(t.data, dtype=dtype)).any():
        raise InvalidArgument("values must not be infinite", field=f"{where}.data")
    return per_row
