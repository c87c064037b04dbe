"""Logged predictions (flywheel.predictions.logged) as rows, whichever form the event carries.

Serving emits columns (PredictionColumns: a few arrays per batch, cheap to build on the serving
path); other producers may send one PredictionRecord per row with Struct inputs and outputs.
Consumers read both through `logged_rows`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from google.protobuf import json_format

from flywheel.errors import InvalidArgument
from flywheel.v1 import events_pb2

# KServe v2 datatypes a logged tensor may have (numeric only: BYTES inputs are not logged as columns).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip
_DATATYPES = {(dt.kind, dt.itemsize): name for name, dt in DTYPES.items()}


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
    datatype = _DATATYPES.get((array.dtype.kind, array.dtype.itemsize))
    if datatype is None:
        raise ValueError(f"output {name!r} has dtype {array.dtype}, which is not logged")
    data = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
    return events_pb2.LoggedTensor(name=name, datatype=datatype, shape=array.shape, data=data)


def array(t: events_pb2.LoggedTensor, rows: int) -> np.ndarray:
    dtype = DTYPES.get(t.datatype)
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
    inputs = array(c.inputs, n).reshape(n, -1) if n else np.empty((0, len(features)))
    if inputs.shape[1] != len(features):
        raise InvalidArgument(f"{inputs.shape[1]} input columns for {len(features)} feature_names", field="columns")
    outputs = {t.name: array(t, n) for t in c.outputs}
    labels = list(c.class_labels)
    input_rows = _plain(inputs.tolist())
    output_rows = {name: _plain(a.tolist()) for name, a in outputs.items()}
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


def _plain(values: Sequence[Any]) -> list[Any]:
    """NaN has no JSON form: it is logged as None (as Struct-form records do)."""
    return [_plain(v) if isinstance(v, list) else (None if isinstance(v, float) and v != v else v) for v in values]
