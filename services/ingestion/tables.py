"""Readers that turn ingested bytes or rows into Arrow tables for validation.

Every reader (except Parquet) returns one `pa.string()` column per schema field, in schema order:
validation then parses text into typed columns in one place and can name the row and value that
failed, whatever the input format. Columns not in the schema are dropped; empty cells are null.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from flywheel.errors import InvalidArgument, ResourceExhausted
from flywheel.v1 import common_pb2, ingestion_pb2

_BOM = b"\xef\xbb\xbf"
_CSV_SHAPE = re.compile(r"Expected (\d+) columns?, got (\d+)")
_CSV_ROW = re.compile(r"Row #(\d+)")


@dataclass(frozen=True)
class ReadLimits:
    """What one ingest may decode, checked before and while reading: a small upload must not
    unfold into gigabytes (a decompression bomb) or hold one giant cell."""

    max_rows: int = 50_000_000
    max_columns: int = 10_000
    max_decoded_bytes: int = 4 * 1024**3
    max_cell_chars: int = 1024 * 1024
    max_line_bytes: int = 4 * 1024 * 1024


DEFAULT_LIMITS = ReadLimits()
PARQUET_BATCH_ROWS = 8192
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
        raise InvalidArgument(f"unreadable CSV header ({type(e).__name__})", field=DATA_FIELD) from None
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


def read_csv(
    data: bytes, schema: common_pb2.Schema, delimiter: str = ",", limits: ReadLimits = DEFAULT_LIMITS
) -> pa.Table:
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
    _check_line_lengths(data, limits.max_line_bytes)
    # Names are given explicitly (header parsed above), so the header row is skipped as data.
    read = pacsv.ReadOptions(
        column_names=names, skip_rows=1, use_threads=True, block_size=_block_size(limits.max_line_bytes)
    )
    parse = pacsv.ParseOptions(delimiter=delimiter)
    try:
        table = pacsv.read_csv(io.BytesIO(data), read, parse, convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InvalidArgument(_csv_error(str(e), limits), field=DATA_FIELD) from None
    table = table.select(wanted)
    check_table(table, limits)
    return table


def _check_line_lengths(data: bytes, max_bytes: int) -> None:
    """Every line (the bytes between two newlines) holds at most `max_bytes`. Each step jumps past
    the last newline of the next `max_bytes + 1` bytes, so every byte is looked at about twice (in C:
    bytes.rfind), nothing is copied, and a window without a newline is a line over the cap."""
    start = 0
    while len(data) - start > max_bytes:
        newline = data.rfind(b"\n", start, start + max_bytes + 1)
        if newline < 0:
            line = data.count(b"\n", 0, start) + 1
            raise InvalidArgument(f"line {line} is longer than {max_bytes} bytes", field=DATA_FIELD)
        start = newline + 1


def _block_size(max_line_bytes: int) -> int:
    """Arrow's CSV reader parses rows of up to twice its block size, and one that starts at the end of
    a block must end within the next: a block one line long (plus CR LF) never refuses a line within
    the cap, which _check_line_lengths enforces exactly."""
    return max_line_bytes + 2


def _csv_error(message: str, limits: ReadLimits) -> str:
    """Arrow's CSV errors quote the offending line; say what was wrong without echoing input."""
    row = _CSV_ROW.search(message)
    where = f" (row {row.group(1)})" if row else ""
    shape = _CSV_SHAPE.search(message)
    if shape:
        return f"unreadable CSV{where}: expected {shape.group(1)} columns, got {shape.group(2)}"
    if "straddling" in message or "block" in message:
        # Lines are within the cap (checked before parsing): quoted cells make this row span several.
        block = _block_size(limits.max_line_bytes)
        return f"unreadable CSV{where}: a row spanning lines is longer than the reader's block of {block} bytes"
    return f"unreadable CSV{where}: malformed quoting or encoding"


def check_table(table: pa.Table, limits: ReadLimits) -> None:
    """Rows, columns, decoded size and the longest text cell within the limits."""
    if table.num_rows > limits.max_rows:
        raise ResourceExhausted(f"{table.num_rows} rows; at most {limits.max_rows} per ingest", field=DATA_FIELD)
    if table.num_columns > limits.max_columns:
        raise ResourceExhausted(f"{table.num_columns} columns; at most {limits.max_columns}", field=DATA_FIELD)
    if table.nbytes > limits.max_decoded_bytes:
        raise ResourceExhausted(
            f"decodes to {table.nbytes} bytes; at most {limits.max_decoded_bytes}", field=DATA_FIELD
        )
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_string(column.type) and column.null_count < len(column):
            longest = pc.max(pc.utf8_length(column)).as_py() or 0
            if longest > limits.max_cell_chars:
                raise InvalidArgument(f"a cell holds {longest} characters; at most {limits.max_cell_chars}", field=name)


def _read_batches(batches: Iterable[pa.RecordBatch], limits: ReadLimits) -> pa.Table:
    """Collects record batches, stopping as soon as rows or decoded bytes pass the limits. A batch is
    whole before it can be counted: bounding the memory it takes to decode one is the decoding
    child's address-space limit (decode_guard.py)."""
    kept: list[pa.RecordBatch] = []
    rows = size = 0
    for batch in batches:
        rows += batch.num_rows
        size += batch.nbytes
        if rows > limits.max_rows or size > limits.max_decoded_bytes:
            raise ResourceExhausted(
                f"decodes to more than {limits.max_rows} rows or {limits.max_decoded_bytes} bytes", field=DATA_FIELD
            )
        kept.append(batch)
    if not kept:
        raise InvalidArgument("no record batches", field=DATA_FIELD)
    return pa.Table.from_batches(kept)


def _kind(dtype: pa.DataType) -> str:
    """A type's kind ("struct", "list", ...) without its parameters: nested names come from the file."""
    return type(dtype).__name__.removesuffix("Type").lower() or "unknown"


def _as_text(column: pa.ChunkedArray | pa.Array, name: str) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_string(column.type):
        return column
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InvalidArgument(f"type_mismatch: cannot read a {_kind(column.type)} column as text", field=name) from e


def text_columns(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """Selects the named columns from any Arrow table, in that order, cast to text."""
    columns = []
    for name in names:
        if name not in table.column_names:
            raise _missing(name)
        columns.append(_as_text(table.column(name), name))
    return pa.table(columns, names=list(names))


def to_text_table(table: pa.Table, schema: common_pb2.Schema) -> pa.Table:
    """Selects the schema's columns from any Arrow table and casts them to text."""
    return text_columns(table, field_names(schema))


Source: TypeAlias = bytes | pa.Buffer | pa.NativeFile  # what a binary reader takes


def _buffer(data: Source) -> pa.Buffer | pa.NativeFile:
    return pa.py_buffer(data) if isinstance(data, bytes) else data


def _arrow_table(data: Source, limits: ReadLimits) -> pa.Table:
    try:
        reader = pa.ipc.open_stream(_buffer(data))
        if len(reader.schema) > limits.max_columns:
            raise ResourceExhausted(f"{len(reader.schema)} columns; at most {limits.max_columns}", field=DATA_FIELD)
        return _read_batches(reader, limits)
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidArgument(f"unreadable Arrow IPC stream ({type(e).__name__})", field=DATA_FIELD) from None


def read_arrow_ipc(data: Source, schema: common_pb2.Schema, limits: ReadLimits = DEFAULT_LIMITS) -> pa.Table:
    """An Arrow IPC stream -> string columns, so it takes the same validation path as CSV. Read a
    batch at a time: compressed buffers decode only as far as the limits allow."""
    text = to_text_table(_arrow_table(data, limits), schema)
    check_table(text, limits)
    return text


def decode_untrusted(data: Source, fmt: int, names: Sequence[str], limits: ReadLimits = DEFAULT_LIMITS) -> pa.Table:
    """An uploaded Arrow IPC stream or Parquet file -> the named columns as text, within the limits.
    What the decoding child runs (decode_child.py): every allocation sized by the file happens here."""
    if fmt == ingestion_pb2.DATA_FORMAT_ARROW_IPC:
        table = _arrow_table(data, limits)
    elif fmt == ingestion_pb2.DATA_FORMAT_PARQUET:
        table = read_untrusted_parquet(data, limits)
    else:
        raise InvalidArgument("ARROW_IPC or PARQUET", field="format")
    text = text_columns(table, names)
    del table  # the decoded columns go before the text ones are measured
    check_table(text, limits)
    return text


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


def rows_to_table(
    rows: Sequence[Mapping[str, Any]], schema: common_pb2.Schema, limits: ReadLimits = DEFAULT_LIMITS
) -> pa.Table:
    """JSON rows (e.g. from Kafka) -> string columns; a missing key is null."""
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise InvalidArgument(f"row {i}: expected a JSON object", field="records")
    wanted = field_names(schema)
    # The per-row loop is unavoidable for Python dicts; it is not on the bulk (CSV) path.
    columns = [_string_column(rows, name) for name in wanted]
    table = pa.table(columns, names=wanted)
    check_table(table, limits)
    return table


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
    """A Parquet file Flywheel wrote itself (a stored dataset version): trusted, read whole."""
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidArgument(f"unreadable Parquet: {e}", field=DATA_FIELD) from e


def read_untrusted_parquet(data: Source, limits: ReadLimits = DEFAULT_LIMITS) -> pa.Table:
    """An uploaded Parquet file: its metadata is checked against the limits before any data page
    is decoded, then it is read a batch at a time (metadata can lie)."""
    try:
        source = pa.BufferReader(data) if isinstance(data, bytes | pa.Buffer) else data
        f = pq.ParquetFile(source)
        meta = f.metadata
        declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if meta.num_rows > limits.max_rows or meta.num_columns > limits.max_columns:
            raise ResourceExhausted(
                f"{meta.num_rows} rows x {meta.num_columns} columns; at most {limits.max_rows} x {limits.max_columns}",
                field=DATA_FIELD,
            )
        if declared > limits.max_decoded_bytes:
            raise ResourceExhausted(
                f"decodes to {declared} bytes; at most {limits.max_decoded_bytes}", field=DATA_FIELD
            )
        # Small batches: a batch is decoded whole before it is counted.
        return _read_batches(f.iter_batches(batch_size=PARQUET_BATCH_ROWS, use_threads=False), limits)
    except (pa.ArrowInvalid, OSError) as e:
        raise InvalidArgument(f"unreadable Parquet ({type(e).__name__})", field=DATA_FIELD) from None
