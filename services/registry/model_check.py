"""What the registry accepts as a model file: a well-formed ONNX model whose weights are all inside
the file (no external data a loader would go looking for on disk) and whose opsets this platform's
runtime knows. Model files come from outside; anything else is refused as INVALID_ARGUMENT.

Also the bounds on what a registration declares about the model (check_declared): its signature,
lineage, parameters and per-class metrics are copied into model.registered events and rows, which
must stay far below the broker's message limit whatever a caller sends.

Plain Python over the `onnx` package; validation is CPU-bound, so callers run it in a thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from flywheel.errors import InvalidArgument
from flywheel.v1 import common_pb2, registry_pb2

FIELD = "chunk"
# Operator domains ONNX Runtime implements; a model asking for any other needs custom ops we do not load.
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


MAX_TENSORS = 64  # inputs, and outputs, of a signature
MAX_TENSOR_DIMS = 32
MAX_DATATYPE_CHARS = 32
MAX_FEATURES = 10_000
MAX_CLASS_LABELS = 10_000
MAX_NAME_CHARS = 256  # tensor and feature names, lineage identifiers, actor, idempotency key
MAX_LABEL_CHARS = 1024  # class labels (in the signature and on per-class metrics)
MAX_PARENT_VERSIONS = 1000
MAX_PARAMS = 256
MAX_PARAM_KEY_CHARS = 128
MAX_PARAM_VALUE_BYTES = 4096  # one parameter's value, serialized
MAX_HEADER_BYTES = 1024 * 1024  # the whole registration header, serialized
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def validate_onnx_file(path: Path, max_opset: int | None = None) -> None:
    """validate_onnx on a file: its bytes are held only until they are parsed."""
    validate_onnx(path.read_bytes(), max_opset)


def validate_onnx(data: bytes, max_opset: int | None = None) -> onnx.ModelProto:
    limit = max_opset or onnx.defs.onnx_opset_version()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidArgument(f"not an ONNX model ({type(exc).__name__})", field=FIELD) from None
    del data  # the parsed model holds it all now; a caller's temporary bytes can go
    if not model.graph.node and not model.graph.output:
        raise InvalidArgument("not an ONNX model (empty graph)", field=FIELD)
    for opset in model.opset_import:
        if opset.domain not in KNOWN_DOMAINS:
            raise InvalidArgument(f"uses the operator domain {opset.domain!r}, which serving cannot run", field=FIELD)
        if opset.domain in ("", "ai.onnx") and opset.version > limit:
            raise InvalidArgument(f"opset {opset.version} is newer than the supported {limit}", field=FIELD)
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise InvalidArgument("refers to external tensor data; embed every weight in the file", field=FIELD)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(f"invalid ONNX model: {first}", field=FIELD) from None
    return model


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, sparse ones, node attributes, and subgraphs' (If, Loop, Scan)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_declared(header: registry_pb2.RegisterModelHeader) -> None:
    """Counts and lengths of everything a registration header declares beyond what rules.py checks
    (name, tags, description, metric names and values, policy); INVALID_ARGUMENT names the field."""
    _check_signature(header.signature, "header.signature")
    _check_lineage(header.lineage, "header.lineage")
    for i, m in enumerate(header.metrics):
        _at_most(m.class_label, MAX_LABEL_CHARS, f"header.metrics[{i}].class_label")
    _check_params(header, "header.params")
    _at_most(header.idempotency_key, MAX_NAME_CHARS, "header.idempotency_key")
    _at_most(header.actor, MAX_NAME_CHARS, "header.actor")
    if header.sha256 and not _SHA256.match(header.sha256):
        raise InvalidArgument("must be a sha256 digest: 64 lowercase hex characters", field="header.sha256")
    size = header.ByteSize()
    if size > MAX_HEADER_BYTES:
        raise InvalidArgument(f"the header is {size} bytes serialized; at most {MAX_HEADER_BYTES}", field="header")


def _at_most(text: str, chars: int, field: str) -> None:
    if len(text) > chars:
        raise InvalidArgument(f"at most {chars} characters", field=field)


def _check_signature(signature: common_pb2.ModelSignature, field: str) -> None:
    for kind, tensors in (("inputs", signature.inputs), ("outputs", signature.outputs)):
        if len(tensors) > MAX_TENSORS:
            raise InvalidArgument(f"at most {MAX_TENSORS} tensors", field=f"{field}.{kind}")
        for i, tensor in enumerate(tensors):
            where = f"{field}.{kind}[{i}]"
            if not 0 < len(tensor.name) <= MAX_NAME_CHARS:
                raise InvalidArgument(f"a tensor name has 1-{MAX_NAME_CHARS} characters", field=f"{where}.name")
            _at_most(tensor.datatype, MAX_DATATYPE_CHARS, f"{where}.datatype")
            if len(tensor.shape) > MAX_TENSOR_DIMS:
                raise InvalidArgument(f"at most {MAX_TENSOR_DIMS} dimensions", field=f"{where}.shape")
            if any(d < -1 for d in tensor.shape):
                raise InvalidArgument("dimensions are -1 (variable) or sizes", field=f"{where}.shape")
    _check_names(signature.feature_names, MAX_FEATURES, MAX_NAME_CHARS, f"{field}.feature_names")
    _check_names(signature.class_labels, MAX_CLASS_LABELS, MAX_LABEL_CHARS, f"{field}.class_labels")


def _check_names(names: Sequence[str], count: int, chars: int, field: str) -> None:
    if len(names) > count:
        raise InvalidArgument(f"at most {count} entries", field=field)
    for i, name in enumerate(names):
        _at_most(name, chars, f"{field}[{i}]")


def _check_lineage(lineage: common_pb2.Lineage, field: str) -> None:
    _at_most(lineage.dataset.name, MAX_NAME_CHARS, f"{field}.dataset.name")
    _at_most(lineage.dataset.content_hash, MAX_NAME_CHARS, f"{field}.dataset.content_hash")
    for name in ("run_id", "spec_name", "code_version"):
        _at_most(getattr(lineage, name), MAX_NAME_CHARS, f"{field}.{name}")
    if len(lineage.parent_dataset_versions) > MAX_PARENT_VERSIONS:
        raise InvalidArgument(f"at most {MAX_PARENT_VERSIONS} versions", field=f"{field}.parent_dataset_versions")


def _check_params(header: registry_pb2.RegisterModelHeader, field: str) -> None:
    params = header.params.fields
    if len(params) > MAX_PARAMS:
        raise InvalidArgument(f"at most {MAX_PARAMS} parameters", field=field)
    for key, value in params.items():
        if not 0 < len(key) <= MAX_PARAM_KEY_CHARS:
            raise InvalidArgument(f"parameter names have 1-{MAX_PARAM_KEY_CHARS} characters", field=field)
        if value.ByteSize() > MAX_PARAM_VALUE_BYTES:
            raise InvalidArgument(
                f"a parameter's value is at most {MAX_PARAM_VALUE_BYTES} bytes serialized", field=field
            )
