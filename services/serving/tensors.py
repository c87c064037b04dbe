"""Open Inference Protocol (KServe v2) tensors <-> numpy arrays.

Inputs arrive either as `raw_input_contents` (tritonclient's default: one little-endian buffer per
input, index-aligned with `request.inputs`; BYTES elements each prefixed by a 4-byte little-endian
length) or as typed `InferTensorContents`. Outputs always go back as `raw_output_contents`, as the
Triton server does, which is what tritonclient's `InferResult.as_numpy` reads.

Sizes are bounded on both sides by the gRPC message limit: an input's shape may not describe more
elements than a message could carry (an empty dimension counts as 1, so `[10**12, 0]` is not a cheap
way to ask for 10**12 rows), and outputs that would not fit in one response are refused before they
are encoded.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
from tritonclient.grpc import service_pb2 as oip

from flywheel.datatypes import NUMPY_DTYPES, datatype_of
from flywheel.errors import InvalidArgument, ResourceExhausted
from flywheel.v1 import common_pb2

Feeds = dict[str, np.ndarray]
InferInput: TypeAlias = oip.ModelInferRequest.InferInputTensor
InferOutput: TypeAlias = oip.ModelInferResponse.InferOutputTensor

# The typed-contents field per datatype. FP16 has none: KServe v2 sends it raw only.
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_LENGTH_PREFIX = struct.Struct("<I")
RESPONSE_MARGIN = 64 * 1024  # a response's other fields (names, shapes, id), left out of its outputs' share


def to_contents(array: np.ndarray) -> oip.InferTensorContents:
    """Typed contents for one array (for callers that want them instead of raw bytes)."""
    datatype = datatype_of(array.dtype)
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise ValueError(f"{datatype} has no typed contents field; send it raw")
    flat = array.reshape(-1)
    values = [_as_bytes(v) for v in flat] if datatype == "BYTES" else flat.tolist()
    return oip.InferTensorContents(**{field: values})


# ---------------------------------------------------------------------------------------------
# Decoding requests


def decode_inputs(
    request: oip.ModelInferRequest, expected: Sequence[common_pb2.TensorSpec], max_bytes: int = 0
) -> Feeds:
    """Validated input arrays by name, in request order. Raises InvalidArgument naming the field, or
    ResourceExhausted when the shapes describe more than `max_bytes` (0: no limit) could carry."""
    specs = {spec.name: spec for spec in expected}
    described = 0
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; they must be index-aligned",
            field="raw_input_contents",
        )
    feeds: Feeds = {}
    for i, tensor in enumerate(request.inputs):
        spec = _spec_for(i, tensor, specs, feeds)
        shape = _checked_shape(i, tensor, spec)
        described += _described_bytes(tensor.datatype, shape)
        if max_bytes and described > max_bytes:
            raise ResourceExhausted(
                f"input {tensor.name!r} shape {list(shape)[:8]} describes more data than a request may carry "
                f"({max_bytes >> 20} MiB, grpc_max_message_mb; empty dimensions count as 1)",
                field=f"inputs[{i}].shape",
            )
        if raw:
            feeds[tensor.name] = _from_raw(i, tensor, raw[i], shape)
        else:
            feeds[tensor.name] = _from_contents(i, tensor, shape)
    missing = [name for name in specs if name not in feeds]
    if missing:
        raise InvalidArgument(f"missing input(s) {', '.join(map(repr, missing))}", field="inputs")
    return feeds


def _spec_for(
    i: int, tensor: InferInput, specs: Mapping[str, common_pb2.TensorSpec], seen: Feeds
) -> common_pb2.TensorSpec:
    spec = specs.get(tensor.name)
    if spec is None:
        names = ", ".join(map(repr, specs)) or "none"
        raise InvalidArgument(
            f"unknown input {tensor.name!r}; the model's inputs are {names}", field=f"inputs[{i}].name"
        )
    if tensor.name in seen:
        raise InvalidArgument(f"input {tensor.name!r} is given more than once", field=f"inputs[{i}].name")
    if tensor.datatype != spec.datatype:
        raise InvalidArgument(
            f"input {tensor.name!r} has datatype {spec.datatype}, got {tensor.datatype or 'none'}",
            field=f"inputs[{i}].datatype",
        )
    if spec.datatype not in NUMPY_DTYPES:
        raise InvalidArgument(f"datatype {spec.datatype} is not supported", field=f"inputs[{i}].datatype")
    return spec


def _described_bytes(datatype: str, shape: tuple[int, ...]) -> int:
    """What a shape would take on the wire with every empty dimension counted as 1 (BYTES: 4 per element)."""
    itemsize = 4 if datatype == "BYTES" else NUMPY_DTYPES[datatype].itemsize
    return math.prod(max(d, 1) for d in shape) * itemsize


def _checked_shape(i: int, tensor: InferInput, spec: common_pb2.TensorSpec) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    field = f"inputs[{i}].shape"
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"input {tensor.name!r} shape {list(shape)} has a negative dimension", field=field)
    declared = tuple(spec.shape)
    if not declared:  # a signature without a shape constrains nothing
        return shape
    if len(shape) != len(declared):
        raise InvalidArgument(
            f"input {tensor.name!r} must have rank {len(declared)} {list(declared)}, got shape {list(shape)}",
            field=field,
        )
    for axis, (got, want) in enumerate(zip(shape, declared, strict=True)):
        if want >= 0 and got != want:
            raise InvalidArgument(
                f"input {tensor.name!r} dimension {axis} must be {want} (shape {list(declared)}), "
                f"got shape {list(shape)}",
                field=field,
            )
    return shape


def _from_raw(i: int, tensor: InferInput, buffer: bytes, shape: tuple[int, ...]) -> np.ndarray:
    if tensor.contents.ListFields():
        raise InvalidArgument(
            f"input {tensor.name!r} has typed contents while raw_input_contents is used; send one or the other",
            field=f"inputs[{i}].contents",
        )
    count = math.prod(shape)
    if tensor.datatype == "BYTES":
        return _bytes_from_raw(i, tensor.name, buffer, count).reshape(shape)
    dtype = NUMPY_DTYPES[tensor.datatype]
    if len(buffer) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input {tensor.name!r} needs {count * dtype.itemsize} bytes for shape {list(shape)} of "
            f"{tensor.datatype}, got {len(buffer)}",
            field=f"raw_input_contents[{i}]",
        )
    # Zero-copy, read-only view of the request's buffer.
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _bytes_from_raw(i: int, name: str, buffer: bytes, count: int) -> np.ndarray:
    items: list[bytes] = []
    offset, end = 0, len(buffer)
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument(f"input {name!r} BYTES data is truncated", field=f"raw_input_contents[{i}]")
        (length,) = _LENGTH_PREFIX.unpack_from(buffer, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(f"input {name!r} BYTES data is truncated", field=f"raw_input_contents[{i}]")
        items.append(buffer[offset : offset + length])
        offset += length
    if len(items) != count:
        raise InvalidArgument(
            f"input {name!r} has {len(items)} BYTES elements, its shape needs {count}",
            field=f"raw_input_contents[{i}]",
        )
    return _object_array(items)


def _from_contents(i: int, tensor: InferInput, shape: tuple[int, ...]) -> np.ndarray:
    field = f"inputs[{i}].contents"
    wanted = CONTENTS_FIELDS.get(tensor.datatype)
    present = [f.name for f, _ in tensor.contents.ListFields()]
    if wanted is None:
        raise InvalidArgument(
            f"{tensor.datatype} input {tensor.name!r} must be sent in raw_input_contents", field=field
        )
    wrong = [name for name in present if name != wanted]
    if wrong:
        raise InvalidArgument(
            f"{tensor.datatype} input {tensor.name!r} takes its values in {wanted}, got {', '.join(wrong)}",
            field=field,
        )
    values = getattr(tensor.contents, wanted)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidArgument(
            f"input {tensor.name!r} has {len(values)} values in {wanted}, its shape {list(shape)} needs {count}",
            field=field,
        )
    return _typed_array(tensor, values, field).reshape(shape)


def _typed_array(tensor: InferInput, values: Sequence, field: str) -> np.ndarray:
    dtype = NUMPY_DTYPES[tensor.datatype]
    if tensor.datatype == "BYTES":
        return _object_array(list(values))
    if dtype.kind in "iu" and dtype.itemsize < 4:
        # int_contents / uint_contents are 32-bit: narrower types need a range check.
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidArgument(f"input {tensor.name!r} has values outside the {tensor.datatype} range", field=field)
        return wide.astype(dtype)
    return np.array(values, dtype=dtype)


def _object_array(items: list) -> np.ndarray:
    # Filled element-wise so numpy never reads equal-length bytes as a 2-D array.
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    """Rows in a request: the first dimension, which every input must share."""
    if not feeds:
        raise InvalidArgument("no inputs given", field="inputs")
    sizes: dict[str, int] = {}
    for name, array in feeds.items():
        if array.ndim == 0:
            raise InvalidArgument(f"input {name!r} is a scalar; it has no batch dimension", field="inputs")
        sizes[name] = array.shape[0]
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name!r}={n}" for name, n in sizes.items())
        raise InvalidArgument(f"inputs disagree on the batch size (first dimension): {listed}", field="inputs")
    return next(iter(sizes.values()))


# ---------------------------------------------------------------------------------------------
# Encoding responses


def encode_outputs(
    outputs: Mapping[str, np.ndarray], requested: Sequence[str], max_bytes: int = 0
) -> tuple[list[InferOutput], list[bytes]]:
    """Output tensors (name, datatype, shape) and their raw_output_contents, index-aligned.

    `requested` empty means every output, in the model's order (the order of `outputs`). Outputs
    that would take more than `max_bytes` (0: no limit, else the message limit) raise ResourceExhausted
    before they are encoded.
    """
    for i, name in enumerate(requested):
        if name not in outputs:
            known = ", ".join(map(repr, outputs))
            raise InvalidArgument(
                f"unknown output {name!r}; the model's outputs are {known}", field=f"outputs[{i}].name"
            )
    tensors: list[InferOutput] = []
    raw: list[bytes] = []
    limit = max(1, max_bytes - RESPONSE_MARGIN) if max_bytes else 0
    names = list(requested or outputs)
    if limit:
        numeric = sum(np.asarray(outputs[n]).nbytes for n in names if np.asarray(outputs[n]).dtype != object)
        if numeric > limit:
            raise output_too_large(numeric, limit)
    size = 0
    for name in names:
        array = np.asarray(outputs[name])
        datatype = datatype_of(array.dtype)
        tensors.append(InferOutput(name=name, datatype=datatype, shape=array.shape))
        raw.append(raw_bytes(array, datatype))
        size += len(raw[-1])
        if limit and size > limit:  # strings: known once encoded
            raise output_too_large(size, limit)
    return tensors, raw


def output_too_large(size: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the model's outputs for this request would take {_mib(size)} MiB, more than the {_mib(limit)} MiB "
        "a response may carry (grpc_max_message_mb); send fewer rows"
    )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f}"


def raw_bytes(array: np.ndarray, datatype: str | None = None) -> bytes:
    """The raw (little-endian, row-major) wire form of an array."""
    datatype = datatype or datatype_of(array.dtype)
    if datatype == "BYTES":
        items = [_as_bytes(v) for v in array.reshape(-1)]
        return b"".join(_LENGTH_PREFIX.pack(len(item)) + item for item in items)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def _as_bytes(value: object) -> bytes:
    # ONNX Runtime hands string tensors back as str; the wire carries bytes.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()
