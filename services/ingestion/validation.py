"""Schema validation: text columns in, typed valid rows plus per-reason counts out.

Everything is column-at-a-time (pyarrow.compute / numpy). The common case, a clean column, costs
one Arrow cast and one min/max scan; per-row masks are built only for columns that fail.

Value rules, per field:
- empty cells and, for FLOAT, NaN are null; null in a non-nullable field -> null_not_allowed;
- text that does not parse as the field's type -> type_mismatch (surrounding whitespace is ignored);
  BOOL accepts true/false/1/0/yes/no in any case;
- FLOAT values must be finite, and numbers must lie in [min, max] when set -> out_of_range;
- allowed_values, when non-empty, lists the only values allowed -> not_allowed_value.
A row failing several rules counts once, under its first failing field in schema order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, ingestion_pb2
from services.ingestion.versioning import SPLIT_COLUMN

NULL_NOT_ALLOWED = "null_not_allowed"
OUT_OF_RANGE = "out_of_range"
NOT_ALLOWED_VALUE = "not_allowed_value"
TYPE_MISMATCH = "type_mismatch"
MISSING_FIELD = "missing_field"
# Index + 1 is the reason's code in the per-row failure array (0 = valid).
REASONS = (NULL_NOT_ALLOWED, OUT_OF_RANGE, NOT_ALLOWED_VALUE, TYPE_MISMATCH, MISSING_FIELD)
SAMPLE_LIMIT = 20

ARROW_TYPES: dict[int, pa.DataType] = {
    common_pb2.FIELD_TYPE_FLOAT: pa.float64(),
    common_pb2.FIELD_TYPE_INT: pa.int64(),
    common_pb2.FIELD_TYPE_BOOL: pa.bool_(),
    common_pb2.FIELD_TYPE_CATEGORICAL: pa.string(),
}
_TRUE = pa.array(["true", "1", "yes"])
_FALSE = pa.array(["false", "0", "no"])
# Supersets of what Arrow's casts accept (checked exactly by the cast itself): cells that fail
# these are mismatches without a cast attempt, so a column of junk never falls to bisection.
_FLOAT_TEXT = r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|nan|inf|infinity)$"
_INT_TEXT = r"^-?(?:\d+|0x[0-9a-f]+)$"

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class RowError:
    row: int  # 1-based data row in ingest order
    field: str
    reason: str
    value: str

    def to_proto(self) -> ingestion_pb2.RowError:
        return ingestion_pb2.RowError(row=self.row, field=self.field, reason=self.reason, value=self.value)


@dataclass
class ValidationResult:
    table: pa.Table  # valid rows only, typed
    rows_received: int
    counts: dict[str, int]  # invalid rows per reason (non-zero reasons only)
    sample_errors: list[RowError] = field(default_factory=list)  # first SAMPLE_LIMIT invalid rows

    @property
    def rows_accepted(self) -> int:
        return self.table.num_rows

    @property
    def rows_invalid(self) -> int:
        return self.rows_received - self.table.num_rows

    def to_proto(self) -> ingestion_pb2.IngestStats:
        return ingestion_pb2.IngestStats(
            rows_received=self.rows_received,
            rows_accepted=self.rows_accepted,
            rows_quarantined=self.rows_invalid,
            quarantine_counts=self.counts,
            sample_errors=[e.to_proto() for e in self.sample_errors],
        )


@dataclass
class _Checked:
    """One field's outcome: the typed column and a (reason, row mask) per failing rule."""

    typed: pa.ChunkedArray
    failures: list[tuple[str, np.ndarray]]


def check_schema(schema: common_pb2.Schema) -> None:
    """Rejects schemas validation cannot apply (also usable by CreateDataset)."""
    if not schema.fields:
        raise InvalidArgument("a schema needs at least one field", field="schema.fields")
    names: set[str] = set()
    for f in schema.fields:
        where = f"schema.fields.{f.name or '?'}"
        if not f.name or f.name == SPLIT_COLUMN or f.name in names:
            raise InvalidArgument(f"name must be non-empty, unique and not {SPLIT_COLUMN}", field=where)
        names.add(f.name)
        if f.type not in ARROW_TYPES:
            raise InvalidArgument("type must be float, int, bool or categorical", field=f"{where}.type")
        if f.HasField("min") and f.HasField("max") and f.min > f.max:
            raise InvalidArgument("min is greater than max", field=f"{where}.min")
    if schema.key_field not in names:
        raise InvalidArgument("must name a schema field", field="schema.key_field")
    if schema.label_field and schema.label_field not in names:
        raise InvalidArgument("must name a schema field", field="schema.label_field")


def _parallel(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    # Arrow kernels and numpy release the GIL, so columns are checked side by side.
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Boolean Arrow data -> numpy bool mask, null as False."""
    return np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _cast_lenient(chunk: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast, turning unparseable cells into nulls by bisecting failing slices.

    Only reached for cells that pass the regex prefilter yet fail Arrow's cast (overflowing
    integers, a leading '+' on an int), so it stays rare and shallow.
    """
    try:
        return pc.cast(chunk, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(chunk) <= 1:
            return pa.nulls(len(chunk), target)
        mid = len(chunk) // 2
        return pa.concat_arrays([_cast_lenient(chunk.slice(0, mid), target), _cast_lenient(chunk.slice(mid), target)])


def _parse_number(text: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    try:
        return pc.cast(text, target)  # fast path: the whole column parses
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    trimmed = pc.utf8_trim_whitespace(text)
    pattern = _FLOAT_TEXT if pa.types.is_floating(target) else _INT_TEXT
    plausible = pc.match_substring_regex(trimmed, pattern, ignore_case=True)
    candidates = pc.if_else(plausible, trimmed, pa.scalar(None, pa.string()))
    return pa.chunked_array([_cast_lenient(c, target) for c in candidates.chunks], type=target)


def _parse_bool(text: pa.ChunkedArray) -> pa.ChunkedArray:
    lowered = pc.ascii_lower(pc.ascii_trim_whitespace(text))
    false_or_null = pc.if_else(pc.is_in(lowered, _FALSE), False, pa.scalar(None, pa.bool_()))
    return pc.if_else(pc.is_in(lowered, _TRUE), True, false_or_null)


def _parse(column: pa.ChunkedArray, ftype: int) -> pa.ChunkedArray:
    """Text (or already-typed data, e.g. from Parquet) -> the field's Arrow type; bad cells null."""
    target = ARROW_TYPES[ftype]
    if column.type == target:
        return column
    text = column if pa.types.is_string(column.type) else column.cast(pa.string())
    if ftype == common_pb2.FIELD_TYPE_BOOL:
        return _parse_bool(text)
    if ftype == common_pb2.FIELD_TYPE_CATEGORICAL:
        return text
    return _parse_number(text, target)


def _nan_to_null(values: pa.ChunkedArray) -> pa.ChunkedArray:
    if not pc.any(pc.is_nan(values)).as_py():
        return values
    return pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)


def _range_failures(typed: pa.ChunkedArray, f: common_pb2.Field) -> np.ndarray | None:
    """Rows outside [min, max] (or non-finite floats); None when min/max show none exist."""
    lo = f.min if f.HasField("min") else float("-inf")
    hi = f.max if f.HasField("max") else float("inf")
    bounds = pc.min_max(typed)
    vmin, vmax = bounds["min"].as_py(), bounds["max"].as_py()
    if vmin is None or (lo <= vmin and vmax <= hi and np.isfinite(vmin) and np.isfinite(vmax)):
        return None
    outside = pc.or_(pc.less(typed, pa.scalar(lo)), pc.greater(typed, pa.scalar(hi)))
    if pa.types.is_floating(typed.type):
        outside = pc.or_(outside, pc.is_inf(typed))
    return _mask(outside)


def _allowed_set(f: common_pb2.Field) -> pa.Array:
    values = _parse(pa.chunked_array([pa.array(list(f.allowed_values), pa.string())]), f.type)
    if values.null_count:
        raise InvalidArgument(
            "allowed_values must parse as the field's type", field=f"schema.fields.{f.name}.allowed_values"
        )
    return values.combine_chunks()


def _check_field(column: pa.ChunkedArray, f: common_pb2.Field) -> _Checked:
    try:
        typed = _parse(column, f.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        # Only a column of a non-scalar Arrow type (list, struct) gets here: no cell can match.
        raise InvalidArgument(f"{TYPE_MISMATCH}: cannot read a {column.type} column", field=f.name) from e
    failures: list[tuple[str, np.ndarray]] = []
    mismatch = np.zeros(len(column), dtype=bool)
    if typed.null_count != column.null_count:
        mismatch = _mask(pc.and_(column.is_valid(), typed.is_null()))
        failures.append((TYPE_MISMATCH, mismatch))
    if f.type == common_pb2.FIELD_TYPE_FLOAT:
        typed = _nan_to_null(typed)
    if not f.nullable and typed.null_count > int(mismatch.sum()):
        failures.insert(0, (NULL_NOT_ALLOWED, _mask(typed.is_null()) & ~mismatch))
    if f.type in (common_pb2.FIELD_TYPE_FLOAT, common_pb2.FIELD_TYPE_INT):
        outside = _range_failures(typed, f)
        if outside is not None:
            failures.append((OUT_OF_RANGE, outside))
    if f.allowed_values:
        allowed = pc.is_in(typed, value_set=_allowed_set(f))
        if not pc.all(pc.or_kleene(allowed, typed.is_null())).as_py():
            failures.append((NOT_ALLOWED_VALUE, _mask(pc.and_(typed.is_valid(), pc.invert(allowed)))))
    return _Checked(typed, failures)


def _cell_text(column: pa.ChunkedArray, row: int) -> str:
    value = column[row]
    if not value.is_valid:
        return ""
    return str(value.as_py()) if pa.types.is_string(value.type) else str(value.cast(pa.string()).as_py())


def _first_failures(checked: Iterable[_Checked], n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row: reason code (0 = valid) and field index of the first failure in schema order."""
    code: np.ndarray | None = None
    field_index = np.zeros(0, dtype=np.int32)
    for index, result in enumerate(checked):
        for reason, mask in result.failures:
            if code is None:
                code, field_index = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int32)
            first = mask & (code == 0)
            code[first] = REASONS.index(reason) + 1
            field_index[first] = index
    return None if code is None else (code, field_index)


def _check_all(raw: pa.Table, schema: common_pb2.Schema) -> tuple[list[_Checked], list[str]]:
    check_schema(schema)
    names = [f.name for f in schema.fields]
    for name in names:
        if name not in raw.column_names:
            raise InvalidArgument(f"{MISSING_FIELD}: column is not in the input", field=name)
    fields = list(schema.fields)
    checked = _parallel(lambda i: _check_field(raw.column(names[i]), fields[i]), range(len(fields)))
    return checked, names


def validate(raw: pa.Table, schema: common_pb2.Schema) -> ValidationResult:
    """Types every schema column and separates valid rows from invalid ones."""
    checked, names = _check_all(raw, schema)
    typed = pa.table([c.typed for c in checked], names=names)
    first = _first_failures(checked, raw.num_rows)
    if first is None:
        return ValidationResult(typed, raw.num_rows, {}, [])
    code, field_index = first
    per_reason = np.bincount(code, minlength=len(REASONS) + 1)[1:]
    counts = {reason: int(k) for reason, k in zip(REASONS, per_reason, strict=True) if k}
    sample = [
        RowError(
            row=int(row) + 1,
            field=names[field_index[row]],
            reason=REASONS[code[row] - 1],
            value=_cell_text(raw.column(names[field_index[row]]), int(row)),
        )
        for row in np.flatnonzero(code)[:SAMPLE_LIMIT]
    ]
    return ValidationResult(typed.filter(pa.array(code == 0)), raw.num_rows, counts, sample)


def first_error(raw: pa.Table, schema: common_pb2.Schema) -> RowError | None:
    """The first invalid row (REJECT policy); None when every row is valid."""
    errors = validate(raw, schema).sample_errors
    return errors[0] if errors else None
