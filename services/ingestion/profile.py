"""Reference profile of a dataset version, computed on its train split.

Monitoring compares serving traffic with it: PSI on the quantile bins, the two-sample KS test on
the value sample, PSI/chi-square on category frequencies. The profile is a JSON-serialisable dict
(stored as an artifact); `profile_summary` is its protobuf digest without the samples.

Binning rule (use `bin_index` to apply it elsewhere): edges e0 < e1 < ... < ek; bin i holds
e_i <= v < e_{i+1}, the last bin also holds v == ek; values below e0 count in the first bin and
above ek in the last.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.v1 import common_pb2, ingestion_pb2
from services.ingestion.versioning import SPLIT_COLUMN, TRAIN

PROFILE_FORMAT = 1
SAMPLE_SIZE = 5000
SAMPLE_SEED = 20240501
NUMERIC = (common_pb2.FIELD_TYPE_FLOAT, common_pb2.FIELD_TYPE_INT)


def bin_index(edges: np.ndarray | list[float], values: np.ndarray) -> np.ndarray:
    """Bin of each value under the profile's binning rule (see the module docstring)."""
    inner = np.asarray(edges, dtype=np.float64)[1:-1]
    return np.searchsorted(inner, values, side="right")


def _quantile_edges(ordered: np.ndarray, bins: int) -> np.ndarray:
    """Quantile edges of sorted values (numpy's 'linear' method), deduplicated; min and max outermost."""
    position = np.linspace(0.0, 1.0, bins + 1) * (len(ordered) - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, len(ordered) - 1)
    edges = ordered[below] + (ordered[above] - ordered[below]) * (position - below)
    edges[0], edges[-1] = ordered[0], ordered[-1]
    edges = np.unique(edges)
    # A constant column still gets one (closed) bin.
    return edges if len(edges) > 1 else np.repeat(edges, 2)


def _histogram(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin; on sorted values it is a handful of binary searches."""
    below_edge = np.searchsorted(ordered, edges[1:-1], side="left")
    return np.diff(np.concatenate([[0], below_edge, [len(ordered)]]))


def _numeric(values: pa.ChunkedArray, sample: pa.ChunkedArray, bins: int) -> dict[str, Any]:
    present = values.drop_null().to_numpy().astype(np.float64, copy=False)
    total = len(values)
    profile: dict[str, Any] = {
        "count": len(present),
        "null_rate": (total - len(present)) / total if total else 0.0,
        "min": None,
        "max": None,
        "mean": None,
        "stddev": None,
        "bin_edges": [],
        "histogram": [],
        "sample": [float(v) for v in sample.drop_null().to_numpy()],
    }
    if len(present) == 0:
        return profile
    ordered = np.sort(present)
    edges = _quantile_edges(ordered, bins)
    profile.update(
        min=float(ordered[0]),
        max=float(ordered[-1]),
        mean=float(np.mean(present)),
        stddev=float(np.std(present)),  # population (ddof=0)
        bin_edges=edges.tolist(),
        histogram=_histogram(ordered, edges).tolist(),
    )
    return profile


def _categorical(values: pa.ChunkedArray) -> dict[str, Any]:
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    present = text.drop_null()
    counts = pc.value_counts(present)
    keys = counts.field("values").to_pylist()
    freq = counts.field("counts").to_numpy() / max(len(present), 1)
    total = len(values)
    return {
        "count": len(present),
        "null_rate": (total - len(present)) / total if total else 0.0,
        "category_frequencies": {k: float(f) for k, f in sorted(zip(keys, freq, strict=True))},
    }


def _train_rows(table: pa.Table) -> pa.Table:
    if SPLIT_COLUMN not in table.column_names:
        return table
    return table.filter(pc.equal(table.column(SPLIT_COLUMN), pa.scalar(TRAIN)))


def _sample_rows(train: pa.Table) -> pa.Table:
    """One seeded uniform sample of rows, shared by all features (a joint sample), in row order."""
    rng = np.random.default_rng(SAMPLE_SEED)
    size = min(train.num_rows, SAMPLE_SIZE)
    rows = np.sort(rng.choice(train.num_rows, size=size, replace=False)) if size else np.zeros(0, np.int64)
    return train.take(pa.array(rows, pa.int64()))


def build_profile(table: pa.Table, schema: common_pb2.Schema, bins: int = 10) -> dict[str, Any]:
    """Profile of every schema field but the key, on the train split (all rows if unsplit)."""
    if bins < 1:
        raise ValueError("bins must be >= 1")
    train = _train_rows(table)
    sample = _sample_rows(train)
    order = [f.name for f in schema.fields if f.name != schema.key_field]
    features: dict[str, Any] = {}
    for f in schema.fields:
        if f.name == schema.key_field:
            continue
        column = train.column(f.name)
        if f.type in NUMERIC:
            features[f.name] = _numeric(column, sample.column(f.name), bins)
        else:
            features[f.name] = _categorical(column)
        features[f.name]["type"] = common_pb2.FieldType.Name(f.type)
    return {
        "format": PROFILE_FORMAT,
        "split": TRAIN,
        "row_count": train.num_rows,
        "bins": bins,
        "label_field": schema.label_field,
        "feature_order": order,
        "features": features,
    }


def profile_to_json(profile: dict[str, Any]) -> bytes:
    """Canonical JSON bytes for the profile artifact (sorted keys, no NaN)."""
    return json.dumps(profile, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def profile_summary(profile: dict[str, Any], schema: common_pb2.Schema) -> ingestion_pb2.ProfileSummary:
    types = {f.name: f.type for f in schema.fields}
    summary = ingestion_pb2.ProfileSummary(row_count=profile["row_count"])
    for name in profile["feature_order"]:
        p = profile["features"][name]
        feature = summary.features.add(
            name=name, type=types.get(name, common_pb2.FIELD_TYPE_UNSPECIFIED), count=p["count"]
        )
        feature.null_rate = p["null_rate"]
        for key in ("min", "max", "mean", "stddev"):
            if p.get(key) is not None:
                setattr(feature, key, p[key])
        feature.bin_edges.extend(p.get("bin_edges", []))
        feature.histogram.extend(p.get("histogram", []))
        feature.category_frequencies.update(p.get("category_frequencies", {}))
    return summary
