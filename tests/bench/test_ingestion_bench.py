"""Ingestion throughput: 1M rows x 20 columns of CSV, Flywheel vs pyarrow alone.

Baseline: pyarrow.csv.read_csv + pyarrow.parquet.write_table. Flywheel: read_csv + prepare_version
(validation, split, content hash, Parquet bytes and profile). Both run in this process, best of 2.
Goal: Flywheel at >= 0.5x the baseline's rows/s. Printed, not asserted (machines vary).
"""

from __future__ import annotations

import gc
import io
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from flywheel.v1 import common_pb2, ingestion_pb2
from services.ingestion import tables
from services.ingestion.pipeline import prepare_version

ROWS = 1_000_000
FEATURES = 18
REPEATS = 2
GOAL = 0.5
LABELS = ["alpha", "beta", "gamma", "delta"]


def _schema() -> common_pb2.Schema:
    fields = [common_pb2.Field(name="id", type=common_pb2.FIELD_TYPE_INT, min=0)]
    for i in range(FEATURES):
        # Bounds on every feature, so range checks are part of the measured work.
        fields.append(
            common_pb2.Field(name=f"f{i}", type=common_pb2.FIELD_TYPE_FLOAT, nullable=True, min=-100, max=100)
        )
    fields.append(common_pb2.Field(name="label", type=common_pb2.FIELD_TYPE_CATEGORICAL, allowed_values=LABELS))
    return common_pb2.Schema(fields=fields, key_field="id", label_field="label", train_fraction=0.8)


def _csv() -> bytes:
    """Seeded data written by Arrow's CSV writer (fast); 1% nulls in f0."""
    rng = np.random.default_rng(42)
    columns: dict[str, pa.Array] = {"id": pa.array(np.arange(ROWS, dtype=np.int64))}
    for i in range(FEATURES):
        values = np.round(rng.normal(loc=i, scale=1 + i / 4, size=ROWS), 6)
        mask = rng.random(ROWS) < 0.01 if i == 0 else None
        columns[f"f{i}"] = pa.array(values, mask=mask)
    columns["label"] = pa.array(np.asarray(LABELS, dtype=object)[rng.integers(0, len(LABELS), ROWS)])
    sink = io.BytesIO()
    pacsv.write_csv(pa.table(columns), sink)
    return sink.getvalue()


def _best(fn: Callable[[], int]) -> tuple[float, int]:
    best, rows = float("inf"), 0
    for _ in range(REPEATS):
        gc.collect()
        start = time.perf_counter()
        rows = fn()
        best = min(best, time.perf_counter() - start)
    return best, rows


@pytest.fixture(scope="module")
def csv_bytes() -> bytes:
    return _csv()


def test_ingestion_throughput(csv_bytes: bytes) -> None:
    schema = _schema()

    def baseline() -> int:
        table = pacsv.read_csv(io.BytesIO(csv_bytes))
        pq.write_table(table, io.BytesIO())
        return table.num_rows

    def flywheel() -> int:
        raw = tables.read_csv(csv_bytes, schema)
        version = prepare_version(raw, schema, ingestion_pb2.INVALID_ROW_POLICY_REJECT, None, 0)
        return version.row_count

    base_s, base_rows = _best(baseline)
    fly_s, fly_rows = _best(flywheel)
    ratio = (fly_rows / fly_s) / (base_rows / base_s)
    print(
        f"\ningestion bench: {ROWS:,} rows x {FEATURES + 2} columns, {len(csv_bytes) / 1e6:.0f} MB CSV"
        f"\n  baseline (pyarrow read_csv + write_table): {base_rows / base_s:,.0f} rows/s ({base_s:.3f} s)"
        f"\n  flywheel (read_csv + prepare_version):     {fly_rows / fly_s:,.0f} rows/s ({fly_s:.3f} s)"
        f"\n  ratio flywheel/baseline: {ratio:.2f}x (goal >= {GOAL}x: {'met' if ratio >= GOAL else 'NOT met'})"
    )
    assert base_rows == ROWS
    assert fly_rows == ROWS
