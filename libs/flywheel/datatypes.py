"""KServe v2 (Open Inference Protocol) tensor datatypes and their numpy dtypes: one table for
serving's tensor codec and for the prediction log's arrays."""

from __future__ import annotations

import numpy as np

# Explicit little-endian dtypes: the wire format is little-endian whatever the host is.
NUMERIC_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMPY_DTYPES: dict[str, np.dtype] = {**NUMERIC_DTYPES, "BYTES": np.dtype(object)}

_DATATYPE_BY_KIND: dict[tuple[str, int], str] = {(dt.kind, dt.itemsize): name for name, dt in NUMERIC_DTYPES.items()}


def datatype_of(dtype: np.dtype) -> str:
    """The KServe v2 datatype of a numpy dtype; str, bytes and object arrays are BYTES."""
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPE_BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype") from None
