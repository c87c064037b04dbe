"""Dataset versions: deterministic train/test split, append/replace, Parquet bytes, content hash.

Split: a row's split depends only on the string form of its key and the train fraction, through
a hash written out here (FNV-1a 64 over the UTF-8 bytes, then the MurmurHash3 64-bit finaliser),
so a key lands in the same split in every version, process and machine. The string form is Arrow's
cast to string: ints in decimal, bools "true"/"false", floats in shortest round-trip form; a null
key hashes as the empty string.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2

SPLIT_COLUMN = "__split"
TRAIN = "train"
TEST = "test"
DEFAULT_TRAIN_FRACTION = 0.8
# Fixed so the same table always gives the same file; small enough to stream a split out.
ROW_GROUP_ROWS = 1 << 17
CONTENT_HASH_VERSION = b"flywheel-content-v1"

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)


def resolve_train_fraction(train_fraction: float) -> float:
    if train_fraction == 0:
        return DEFAULT_TRAIN_FRACTION
    if not 0 < train_fraction < 1:
        raise InvalidArgument("must be in (0, 1); 0 means 0.8", field="train_fraction")
    return float(train_fraction)


def _string_buffers(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data bytes) of a string array, zero-copy."""
    width = np.int64 if pa.types.is_large_string(text.type) else np.int32
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width)[text.offset : text.offset + len(text) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), data


def _fnv1a(text: pa.Array) -> np.ndarray:
    """FNV-1a 64 of every string, vectorised over strings (one numpy pass per byte position)."""
    offsets, data = _string_buffers(text)
    lengths = np.diff(offsets)
    # Longest first, so the strings still active at byte position j are a prefix of the order.
    order = np.argsort(-lengths, kind="stable")
    starts, ordered_lengths = offsets[:-1][order], lengths[order]
    active = np.searchsorted(-ordered_lengths, -np.arange(int(lengths.max(initial=0))), side="left")
    h = np.full(len(text), _FNV_OFFSET, dtype=np.uint64)
    for j, m in enumerate(active):
        h[:m] = (h[:m] ^ data[starts[:m] + j]) * _FNV_PRIME
    out = np.empty_like(h)
    out[order] = h
    return out


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 finaliser: FNV's low-entropy high bits become uniform."""
    h = h ^ (h >> np.uint64(33))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(33))
    h = h * _MIX2
    return h ^ (h >> np.uint64(33))


def key_hash(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Stable 64-bit hash of each key's string form (see the module docstring)."""
    text = keys if pa.types.is_string(keys.type) else pc.cast(keys, pa.string())
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks() if text.num_chunks else pa.array([], pa.string())
    with np.errstate(over="ignore"):
        return _fmix64(_fnv1a(text.fill_null("")))


def train_mask(keys: pa.Array | pa.ChunkedArray, train_fraction: float) -> np.ndarray:
    """True where the key's row belongs to the train split."""
    fraction = resolve_train_fraction(train_fraction)
    # Top 53 bits as a uniform double in [0, 1).
    unit = (key_hash(keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return unit < fraction


def assign_split(table: pa.Table, key_field: str, train_fraction: float) -> pa.Table:
    """Adds (or recomputes) SPLIT_COLUMN ("train"/"test") from the key column's hash."""
    if key_field not in table.column_names:
        raise InvalidArgument("key field is not a column of the data", field="key_field")
    train = pa.array(train_mask(table.column(key_field), train_fraction))
    split = pc.if_else(train, pa.scalar(TRAIN), pa.scalar(TEST))
    return without_split(table).append_column(SPLIT_COLUMN, split)


def without_split(table: pa.Table) -> pa.Table:
    if SPLIT_COLUMN in table.column_names:
        return table.drop_columns([SPLIT_COLUMN])
    return table


def _align(parent: pa.Table, schema: pa.Schema) -> pa.Table:
    """The parent's columns in the new table's order and types (a version's schema is fixed)."""
    for name in schema.names:
        if name not in parent.column_names:
            raise InvalidArgument("parent version has no such column", field=name)
    try:
        return parent.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InvalidArgument(f"parent version does not match the schema: {e}", field="schema") from e


def combine(parent: pa.Table | None, new: pa.Table, mode: int, key_field: str | None = None) -> pa.Table:
    """APPEND (default): an upsert by key — the parent's rows whose key the batch carries are
    replaced by the batch's rows, which come last; REPLACE: the batch alone. Without SPLIT_COLUMN.

    Keying the append means sending the same rows twice yields the same content (and so the
    same version) instead of duplicating them, and a corrected row replaces its old value.
    """
    if mode not in (common_pb2.WRITE_MODE_UNSPECIFIED, common_pb2.WRITE_MODE_APPEND, common_pb2.WRITE_MODE_REPLACE):
        raise InvalidArgument(f"unknown write mode {mode}", field="mode")
    new = without_split(new)
    if parent is None or mode == common_pb2.WRITE_MODE_REPLACE:
        return new
    parent = _align(without_split(parent), new.schema)
    if key_field:
        replaced = pc.is_in(parent[key_field], value_set=new[key_field])
        parent = parent.filter(pc.invert(replaced))
    return pa.concat_tables([parent, new])


def to_parquet_bytes(table: pa.Table) -> bytes:
    """Parquet with every layout choice fixed, so the same table gives the same bytes.

    Chunks are merged first because chunk boundaries change page boundaries; dictionary
    encoding is kept for string/int columns, where it pays, and skipped for floats, where it
    rarely does and costs a hash table per column.
    """
    table = table.replace_schema_metadata(None).combine_chunks()
    dictionary = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_integer(f.type)]
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        row_group_size=ROW_GROUP_ROWS,
        compression="snappy",
        use_dictionary=dictionary,
        write_statistics=True,
        version="2.6",
        data_page_version="1.0",
    )
    return sink.getvalue().to_pybytes()


def _fill_value(dtype: pa.DataType) -> pa.Scalar:
    if pa.types.is_boolean(dtype):
        return pa.scalar(False)
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return pa.scalar("", dtype)
    return pa.scalar(0, dtype)


def _update_values(chunk: pa.Array, values: hashlib._Hash, lengths: hashlib._Hash) -> None:
    if pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type):
        offsets, data = _string_buffers(chunk)
        lengths.update(np.diff(offsets).astype("<i8").tobytes())
        values.update(data[offsets[0] : offsets[-1]].data)
    elif pa.types.is_boolean(chunk.type):
        values.update(np.asarray(chunk.to_numpy(zero_copy_only=False), dtype=np.uint8).data)
    else:
        array = chunk.to_numpy(zero_copy_only=False)
        values.update(np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).data)


def _column_digest(name: str, column: pa.ChunkedArray) -> bytes:
    """sha256 over: name, type, row count, null positions, values (nulls as 0/""/false).

    Streams are kept apart (null positions, value bytes, string lengths) so chunking does not
    change the digest.
    """
    if not (
        pa.types.is_string(column.type)
        or pa.types.is_boolean(column.type)
        or pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
    ):
        column = column.cast(pa.string())
    nulls, values, lengths = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    row = 0
    for chunk in column.chunks:
        if chunk.null_count:
            where = np.flatnonzero(np.asarray(chunk.is_null().to_numpy(zero_copy_only=False))) + row
            nulls.update(where.astype("<i8").tobytes())
            chunk = chunk.fill_null(_fill_value(chunk.type))
        _update_values(chunk, values, lengths)
        row += len(chunk)
    head = f"{name}\x00{column.type}\x00{len(column)}\x00".encode()
    return hashlib.sha256(head + nulls.digest() + values.digest() + lengths.digest()).digest()


def content_hash(table: pa.Table) -> str:
    """sha256 hex of the table's content: column names, order and Arrow types, row count, and
    every value and null in row order (SPLIT_COLUMN included, as stored). Independent of chunking,
    metadata and Parquet encoding; the same rows in the same order give the same hash.
    """
    workers = max(1, min(table.num_columns, os.cpu_count() or 1))
    # hashlib releases the GIL on large buffers, so columns hash in parallel.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(_column_digest, table.column_names, table.columns))
    head = CONTENT_HASH_VERSION + f"\x00{table.num_rows}\x00{table.num_columns}\x00".encode()
    return hashlib.sha256(head + b"".join(digests)).hexdigest()
