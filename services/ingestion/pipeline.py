"""From a raw batch to everything a new dataset version needs, with no I/O.

validate -> policy (reject or quarantine) -> combine with the parent -> split -> then Parquet
bytes, content hash and profile, which are independent and run side by side.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, ingestion_pb2
from services.ingestion.profile import build_profile
from services.ingestion.validation import ValidationResult, validate
from services.ingestion.versioning import (
    SPLIT_COLUMN,
    TRAIN,
    assign_split,
    combine,
    content_hash,
    resolve_train_fraction,
    to_parquet_bytes,
)

_POLICIES = (
    ingestion_pb2.INVALID_ROW_POLICY_UNSPECIFIED,
    ingestion_pb2.INVALID_ROW_POLICY_REJECT,
    ingestion_pb2.INVALID_ROW_POLICY_QUARANTINE,
)


@dataclass
class PreparedVersion:
    table: pa.Table  # the whole version (parent rows included for APPEND), with SPLIT_COLUMN
    parquet: bytes
    content_hash: str
    profile: dict[str, Any]
    row_count: int
    train_rows: int
    test_rows: int
    stats: ValidationResult  # of the new rows only


def _apply_policy(result: ValidationResult, policy: int) -> None:
    if policy not in _POLICIES:
        raise InvalidArgument(f"unknown invalid-row policy {policy}", field="invalid_row_policy")
    if policy != ingestion_pb2.INVALID_ROW_POLICY_QUARANTINE and result.sample_errors:
        e = result.sample_errors[0]
        # The value is not repeated: it would travel into gRPC errors, logs and DLQ headers.
        raise InvalidArgument(f"row {e.row}: {e.reason}", field=e.field)
    if result.rows_accepted == 0:
        raise InvalidArgument("no valid rows", field="records")


def prepare_version(
    raw_new: pa.Table,
    schema: common_pb2.Schema,
    policy: int,
    parent: pa.Table | None,
    mode: int,
) -> PreparedVersion:
    """Validates `raw_new` (text columns) and builds the version it makes on top of `parent`."""
    resolve_train_fraction(schema.train_fraction)  # fail before the expensive work
    result = validate(raw_new, schema)
    _apply_policy(result, policy)
    table = assign_split(combine(parent, result.table, mode, schema.key_field), schema.key_field, schema.train_fraction)
    with ThreadPoolExecutor(max_workers=3) as pool:
        parquet = pool.submit(to_parquet_bytes, table)
        digest = pool.submit(content_hash, table)
        profile = pool.submit(build_profile, table, schema)
        train_rows = pc.sum(pc.equal(table.column(SPLIT_COLUMN), pa.scalar(TRAIN))).as_py() or 0
        return PreparedVersion(
            table=table,
            parquet=parquet.result(),
            content_hash=digest.result(),
            profile=profile.result(),
            row_count=table.num_rows,
            train_rows=train_rows,
            test_rows=table.num_rows - train_rows,
            stats=result,
        )
