"""Logged predictions (flywheel.predictions.logged) as rows, whichever form the event carries.

Serving emits columns (PredictionColumns: a few arrays per batch, cheap to build on the serving
path); other producers may send one PredictionRecord per row with Struct inputs and outputs.
Consumers read both through `logged_rows`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from google.protobuf import json_format

from flywheel.datatypes import NUMERIC_DTYPES, datatype_of
from flywheel.errors import InvalidArgument
from flywheel.v1 import events_pb2


@dataclass(frozen=True, slots=True)
class LoggedRow:
    request_id: str
    row_index: int
    inputs: dict[str, Any]  # feature name -> value (NaN as None)
    outputs: dict[str, Any]  # output name -> value or list; "class" when class labels are known
    latency_ms: float
    occurred_at: datetime
    role: int


def logged_rows(event: events_pb2.PredictionsLogged) -> list[LoggedRow]:
    """Every row of the event: its records, then its columns. Raises InvalidArgument if malformed."""
    rows = [
        LoggedRow(
            r.request_id,
            r.row_index,
            json_format.MessageToDict(r.inputs),
            json_format.MessageToDict(r.outputs),
            r.latency_ms,
            r.occurred_at.ToDatetime(tzinfo=UTC),
            r.role,
        )
        for r in event.records
    ]
    if event.HasField("columns"):
        rows += _column_rows(event.columns)
    return rows


def tensor(name: str, array: np.ndarray) -> events_pb2.LoggedTensor:
    """A numeric array as a LoggedTensor."""
    datatype = datatype_of(array.dtype)
    if datatype not in NUMERIC_DTYPES:
        raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which is not logged")
    data = np.ascontiguousarray(array, dtype=NUMERIC_DTYPES[datatype]).tobytes()
    return events_pb2.LoggedTensor(name=name, datatype=datatype, shape=array.shape, data=data)


def _array(t: events_pb2.LoggedTensor, rows: int) -> np.ndarray:
    dtype = NUMERIC_DTYPES.get(t.datatype)
    if dtype is None:
        raise InvalidArgument(f"tensor {t.name!r} has datatype {t.datatype!r}", field="columns")
    shape = tuple(t.shape)
    if not shape or shape[0] != rows or len(t.data) != math.prod(shape) * dtype.itemsize:
        raise InvalidArgument(
            f"tensor {t.name!r} has shape {list(shape)} and {len(t.data)} bytes for {rows} rows", field="columns"
        )
    return np.frombuffer(t.data, dtype=dtype).reshape(shape)


def _column_rows(c: events_pb2.PredictionColumns) -> list[LoggedRow]:
    n = len(c.request_ids)
    for field in ("row_indexes", "latency_ms", "occurred_at_unix_nanos", "roles"):
        if len(getattr(c, field)) != n:
            raise InvalidArgument(f"{len(getattr(c, field))} {field} for {n} request_ids", field=f"columns.{field}")
    features = list(c.feature_names)
    inputs = _array(c.inputs, n).reshape(n, -1) if n else np.empty((0, len(features)))
    if inputs.shape[1] != len(features):
        raise InvalidArgument(f"{inputs.shape[1]} input columns for {len(features)} feature_names", field="columns")
    outputs = {t.name: _array(t, n) for t in c.outputs}
    labels = list(c.class_labels)
    input_rows = json_value(inputs.tolist())
    output_rows = {name: json_value(a.tolist()) for name, a in outputs.items()}
    rows = []
    for i in range(n):
        out: dict[str, Any] = {name: values[i] for name, values in output_rows.items()}
        if labels and isinstance(out.get("label"), int):
            out["class"] = labels[out["label"]] if 0 <= out["label"] < len(labels) else None
        rows.append(
            LoggedRow(
                c.request_ids[i],
                c.row_indexes[i],
                dict(zip(features, input_rows[i], strict=True)),
                out,
                c.latency_ms[i],
                datetime.fromtimestamp(c.occurred_at_unix_nanos[i] / 1e9, UTC),
                c.roles[i],
            )
        )
    return rows


def json_value(v: Any) -> Any:
    """A logged value as JSON can hold it: NaN (no JSON form) as None, bytes as text, lists element-wise."""
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, list):
        return [json_value(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v
