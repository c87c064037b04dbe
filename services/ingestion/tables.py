"""Readers that turn ingested bytes or rows into Arrow tables for validation.

Every reader (except Parquet) returns one `pa.string()` column per schema field, in schema order:
validation then parses text into typed columns in one place and can name the row and value that
failed, whatever the input format. Columns not in the schema are dropped; empty cells are null.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2

_BOM = b"\xef\xbb\xbf"
# The request field blamed for unreadable bytes (the stream's chunks, a file, a Kafka batch).
DATA_FIELD = "data"


def field_names(schema: common_pb2.Schema) -> list[str]:
    return [f.name for f in schema.fields]


def _missing(name: str) -> InvalidArgument:
    return InvalidArgument("missing_field: column is not in the input", field=name)


def _header(data: bytes, delimiter: str) -> list[str]:
    """Column names from the first line; parsed here so a missing field names itself."""
    first = data[: data.find(b"\n")] if b"\n" in data else data
    if first.startswith(_BOM):
        first = first[len(_BOM) :]
    try:
        text = first.decode("utf-8").rstrip("\r")
        names = next(csv.reader([text], delimiter=delimiter), [])
    except (UnicodeDecodeError, csv.Error) as e:
        raise InvalidArgument(f"unreadable CSV header: {e}", field=DATA_FIELD) from e
    return [n.strip() for n in names]


def _unique_names(names: list[str], wanted: set[str]) -> list[str]:
    """Arrow needs distinct names; unwanted blanks/duplicates get placeholders (they are dropped)."""
    seen: set[str] = set()
    out: list[str] = []
    for i, name in enumerate(names):
        if name in seen and name in wanted:
            raise InvalidArgument("column appears twice in the header", field=name)
        if not name or name in seen:
            name = f"__unused_{i}"
        seen.add(name)
        out.append(name)
    return out


def read_csv(data: bytes, schema: common_pb2.Schema, delimiter: str = ",") -> pa.Table:
    """CSV with a header row -> one string column per schema field (schema order)."""
    if len(delimiter) != 1:
        raise InvalidArgument("delimiter must be a single character", field="csv_delimiter")
    if not data.strip():
        raise InvalidArgument("empty CSV: a header row is required", field=DATA_FIELD)
    wanted = field_names(schema)
    names = _unique_names(_header(data, delimiter), set(wanted))
    for name in wanted:
        if name not in names:
            raise _missing(name)
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in wanted},
        include_columns=wanted,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        null_values=[""],
    )
    # Names are given explicitly (header parsed above), so the header row is skipped as data.
    read = pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=True)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    try:
        table = pacsv.read_csv(io.BytesIO(data), read, parse, convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InvalidArgument(f"unreadable CSV: {e}", field=DATA_FIELD) from e
    return table.select(wanted)


def _as_text(column: pa.ChunkedArray | pa.Array, name: str) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_string(column.type):
        return column
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InvalidArgument(f"type_mismatch: cannot read a {column.type} column", field=name) from e


def to_text_table(table: pa.Table, schema: common_pb2.Schema) -> pa.Table:
    """Selects the schema's columns from any Arrow table and casts them to text."""
    wanted = field_names(schema)
    columns = []
    for name in wanted:
        if name not in table.column_names:
            raise _missing(name)
        columns.append(_as_text(table.column(name), name))
    return pa.table(columns, names=wanted)


def read_arrow_ipc(data: bytes, schema: common_pb2.Schema) -> pa.Table:
    """An Arrow IPC stream -> string columns, so it takes the same validation path as CSV."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidArgument(f"unreadable Arrow IPC stream: {e}", field=DATA_FIELD) from e
    return to_text_table(table, schema)


def _text(value: Any) -> str | None:
    """One JSON value as the text a CSV cell would hold (bools lowercase, floats round-trip)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # Lists/objects cannot match any field type; keep them visible in the error sample.
    return json.dumps(value, sort_keys=True)


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: common_pb2.Schema) -> pa.Table:
    """JSON rows (e.g. from Kafka) -> string columns; a missing key is null."""
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise InvalidArgument(f"row {i}: expected a JSON object", field="records")
    wanted = field_names(schema)
    # The per-row loop is unavoidable for Python dicts; it is not on the bulk (CSV) path.
    columns = [_string_column(rows, name) for name in wanted]
    return pa.table(columns, names=wanted)


def _string_column(rows: Sequence[Mapping[str, Any]], name: str) -> pa.Array:
    values = [_text(row.get(name)) for row in rows]
    try:
        return pa.array(values, type=pa.string())
    except UnicodeEncodeError:
        # JSON may carry lone surrogates ("\ud800") that no UTF-8 column can hold: the row is bad
        # input, named by position (the value itself is never echoed back).
        for i, v in enumerate(values, start=1):
            if v is not None and not _encodable(v):
                raise InvalidArgument(f"row {i}: not valid UTF-8 text", field=name) from None
        raise


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_parquet(data: bytes) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidArgument(f"unreadable Parquet: {e}", field=DATA_FIELD) from e
