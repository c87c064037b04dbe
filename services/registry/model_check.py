"""What the registry accepts as a model file: a well-formed ONNX model whose weights are all inside
the file (no external data a loader would go looking for on disk) and whose opsets this platform's
runtime knows. Model files come from outside; anything else is refused as INVALID_ARGUMENT.

Plain Python over the `onnx` package; CPU-bound, so callers run it in a thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from google.protobuf.message import DecodeError

from flywheel.errors import InvalidArgument

FIELD = "chunk"
# Operator domains ONNX Runtime implements; a model asking for any other needs custom ops we do not load.
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def validate_onnx(data: bytes, max_opset: int | None = None) -> onnx.ModelProto:
    limit = max_opset or onnx.defs.onnx_opset_version()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidArgument(f"not an ONNX model ({type(exc).__name__})", field=FIELD) from None
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
