"""What a model's graph lets a request do, read before the model is loaded (in the trial-load child).

Two questions, answered from the graph alone (its nodes, and those of every subgraph):

1. Is its cost fixed by the request's shape? A graph with control flow (Loop, Scan, If), an op
   whose output size comes from tensor *values* (ConstantOfShape, Expand, Tile, Range, Resize, Pad,
   OneHot, ... : `DATA_DEPENDENT`), or an op outside the standard domains can cost arbitrarily more
   on one request than on the zeros timed at load, so its batches never run on the event loop.

2. Can a request make it allocate memory that serving's inference cap (`serving_infer_memory_mb`,
   ONNX Runtime's shared CPU arena) does not see? Tensor buffers are all in the arena; three things
   are not, and a graph that uses them in a way a request can drive is refused:
   - the text of string tensors (the arena holds 32 bytes per element; the characters live on the
     heap): a string tensor may only be made by ops that select, reshape, cast or normalise strings
     (`STRING_VIEWS`), by label ops and gathers whose strings are the model's own constants of at most
     `MAX_COPIED_STRING_BYTES` each, or by a gather of request strings at constant, distinct indices
     (column selection). Anything that could repeat or join request strings (Tile, Expand, Where,
     Concat, StringConcat, control flow, sequences, ...) is refused;
   - a Loop keeps one tensor per iteration for its scan outputs and sequence-typed carried values
     (about 200 bytes of bookkeeping each, outside the arena, and nothing in the arena for empty
     tensors): such a Loop needs a constant trip count of at most `MAX_COLLECTED_ITERATIONS`;
   - SplitToSequence makes one tensor per piece: its split must be a constant list.

This module imports only the standard library and onnx: the trial-load script loads it by path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})

# Ops whose cost or output size follows tensor values (or data-dependent control flow), not only shapes.
DATA_DEPENDENT = frozenset({
    "Loop", "Scan", "If",
    "ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot", "CenterCropPad",
    "Col2Im", "MaxUnpool", "AffineGrid", "DFT", "STFT", "MelWeightMatrix", "BlackmanWindow", "HammingWindow",
    "HannWindow", "TopK", "NonMaxSuppression", "NonZero", "Unique", "Compress",
    "StringSplit", "StringConcat", "RegexFullMatch", "ImageDecoder",
    "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength",
    "SequenceMap", "SplitToSequence", "ConcatFromSequence",
})  # fmt: skip

# Ops whose output size comes from the inputs from this index on (shapes, repeats, pads, scales, k, ...):
# with those constant, only the request's shape matters.
SIZE_INPUTS = {
    "ConstantOfShape": 0, "Range": 0, "Expand": 1, "Tile": 1, "Pad": 1, "Resize": 1, "Upsample": 1, "OneHot": 1,
    "TopK": 1, "CenterCropPad": 1, "Col2Im": 1, "MaxUnpool": 2, "DFT": 1, "STFT": 1, "MelWeightMatrix": 0,
    "BlackmanWindow": 0, "HammingWindow": 0, "HannWindow": 0, "AffineGrid": 1,
}  # fmt: skip

# Each output string is one input string (or a bounded transform of one), never more of them.
STRING_VIEWS = frozenset({
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Split", "Cast", "CastLike",
    "StringNormalizer", "Compress",
})  # fmt: skip
# ai.onnx.ml ops whose string outputs are copies of strings in their attributes, one per input element.
LABEL_OPS = frozenset({
    "LabelEncoder", "CategoryMapper", "TreeEnsembleClassifier", "LinearClassifier", "SVMClassifier",
})  # fmt: skip
# Ops that copy elements of a data input to positions an index, shape or condition input chooses.
GATHERS = frozenset({
    "Gather", "GatherElements", "GatherND", "ArrayFeatureExtractor", "Concat", "Where", "Expand", "Tile", "Pad",
    "Scatter", "ScatterElements", "ScatterND",
})  # fmt: skip
COLUMN_SELECTIONS = frozenset({"Gather", "ArrayFeatureExtractor"})  # data first, indices second

MAX_COPIED_STRING_BYTES = 64  # a constant string a gather or label op may copy once per element
MAX_COLLECTED_ITERATIONS = 100_000  # a Loop that keeps a tensor per iteration needs a constant count ≤ this
STRIP_BYTES = 4096  # initializer data above this is dropped before type inference (only types are needed)
NAME_CHARS = 64
UNKNOWN_LENGTH = 1 << 40  # a derived constant string whose length was not tracked

SEQUENCE = -1  # a "type" for sequence, map and optional values


@dataclass
class GraphFacts:
    refusal: str = ""  # why serving will not load the model; empty: nothing found
    dynamic_ops: list[str] = field(default_factory=list)  # sorted, unique: data-dependent or non-standard ops
    notes: list[str] = field(default_factory=list)  # e.g. type inference did not run


class Refused(Exception):
    pass


def analyse(model: onnx.ModelProto) -> GraphFacts:
    """The model's facts. Modifies `model` (large initializer data is dropped before type inference)."""
    facts = GraphFacts()
    constant_strings = _string_constants(model.graph)  # read before stripping
    _strip(model.graph)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=False)
    except Exception as exc:  # types then come from the graph's declarations and the ops alone
        facts.notes.append(f"type inference failed: {type(exc).__name__}")
    dynamic: set[str] = set()
    try:
        _Scope(model.graph, None, constant_strings, dynamic).check()
    except Refused as exc:
        facts.refusal = str(exc)
    except RecursionError:
        facts.refusal = "its subgraphs are nested too deeply to check"
    facts.dynamic_ops = sorted(dynamic)
    return facts


class _Scope:
    """One graph (the main graph or a subgraph): its types, constants and nodes; outer names visible."""

    def __init__(
        self, graph: onnx.GraphProto, outer: _Scope | None, strings: dict[str, int], dynamic: set[str]
    ) -> None:
        self.graph, self.outer, self.dynamic = graph, outer, dynamic
        self.strings = strings  # string constants: the longest element in bytes (shared by all scopes)
        self.types: dict[str, int | None] = {}
        self.maybe_strings: set[str] = set()  # values of unknown type that may be strings
        self.constants: dict[str, onnx.TensorProto | None] = {}  # the value when small and known
        for info in (*graph.input, *graph.value_info, *graph.output):
            self.types[info.name] = _elem_type(info.type)
        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.constants[init.name] = init if _small(init) else None
        for sparse in graph.sparse_initializer:
            self.types[sparse.values.name] = sparse.values.data_type
            self.constants[sparse.values.name] = None

    def _owner(self, name: str) -> _Scope | None:
        """The innermost scope that declares `name`."""
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.types or name in scope.constants:
                return scope
            scope = scope.outer
        return None

    def type_of(self, name: str) -> int | None:
        owner = self._owner(name)
        return owner.types.get(name) if owner else None

    def maybe_string(self, name: str) -> bool:
        owner = self._owner(name)
        if owner is None:
            return False
        kind = owner.types.get(name)
        return kind == TensorProto.STRING or (kind is None and name in owner.maybe_strings)

    def constant(self, name: str) -> bool:
        owner = self._owner(name)
        return owner is not None and name in owner.constants

    def constant_value(self, name: str) -> onnx.TensorProto | None:
        owner = self._owner(name)
        return owner.constants.get(name) if owner else None

    def check(self) -> None:
        for node in self.graph.node:
            op = node.op_type
            if node.domain not in STANDARD_DOMAINS:
                self.dynamic.add(f"{node.domain[:NAME_CHARS]}.{op[:NAME_CHARS]}")
            elif op in DATA_DEPENDENT and self._depends_on_values(node):
                self.dynamic.add(op)
            for sub in _subgraphs(node):
                _Scope(sub, self, self.strings, self.dynamic).check()
            self._learn(node)
            if node.domain in STANDARD_DOMAINS:
                if op == "Loop":
                    self._check_loop(node)
                elif op == "SplitToSequence":
                    self._check_split_to_sequence(node)
            if any(self.maybe_string(out) for out in node.output if out):
                self._check_string_producer(node)

    def _depends_on_values(self, node: onnx.NodeProto) -> bool:
        """Whether a DATA_DEPENDENT op here can see request values: through its size inputs when it has
        them (constant ones fix the size), else through any input or a subgraph."""
        if any(_subgraphs(node)):
            return True
        first = SIZE_INPUTS.get(node.op_type)
        names = node.input[first:] if first is not None else node.input
        return not all(self.constant(name) for name in names if name) or (first is None and not node.input)

    def _all_constant(self, node: onnx.NodeProto) -> bool:
        inputs = [name for name in node.input if name]
        return bool(inputs) and all(self.constant(name) for name in inputs)

    def _learn(self, node: onnx.NodeProto) -> None:
        """Types (where inference left them unknown) and constness of the node's outputs."""
        outputs = [name for name in node.output if name]
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS and outputs:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    self.types.setdefault(outputs[0], attr.t.data_type)
                elif attr.name in ("value_string", "value_strings"):
                    self.types.setdefault(outputs[0], TensorProto.STRING)
                self.constants[outputs[0]] = attr.t if attr.type == AttributeProto.TENSOR and _small(attr.t) else None
            return
        inputs = [name for name in node.input if name]
        string_inputs = [name for name in inputs if self.maybe_string(name)]
        to_string = node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.STRING for a in node.attribute)
        for out in outputs:
            if out not in self.types:
                self.types[out] = None
            if string_inputs or to_string:
                self.maybe_strings.add(out)
        if self._all_constant(node) and not any(_subgraphs(node)):
            # Constant as well; strings made from constants are no longer than their longest (or a number's text).
            longest = max((self.strings.get(name, UNKNOWN_LENGTH) for name in string_inputs), default=32)
            for out in outputs:
                self.constants[out] = None
                if self.maybe_string(out):
                    self.strings[out] = longest

    def _check_loop(self, node: onnx.NodeProto) -> None:
        carried = max(0, len(node.input) - 2)
        scan_outputs = len(node.output) - carried
        sequences = any(self.type_of(name) == SEQUENCE for name in node.input[2:] if name)
        for body in _subgraphs(node):
            values = list(body.input)[2:] + list(body.output)[1:]
            sequences = sequences or any(_elem_type(v.type) == SEQUENCE for v in values)
        if scan_outputs <= 0 and not sequences:
            return  # it keeps nothing per iteration: its memory is what one iteration takes
        trips = _scalar(self.constant_value(node.input[0])) if node.input and node.input[0] else None
        if trips is None or not 0 <= trips <= MAX_COLLECTED_ITERATIONS:
            raise Refused(
                f"node {_name(node)} (Loop) keeps a value for every iteration and its iteration count is not a "
                f"constant of at most {MAX_COLLECTED_ITERATIONS:,}: a request could make it hold any number"
            )

    def _check_split_to_sequence(self, node: onnx.NodeProto) -> None:
        split = node.input[1] if len(node.input) > 1 else ""
        value = self.constant_value(split) if split else None
        if value is None or len(value.dims) != 1:
            raise Refused(
                f"node {_name(node)} (SplitToSequence) makes one tensor per piece of a request-sized axis; "
                "only a constant list of split sizes is accepted"
            )

    def _check_string_producer(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if node.domain not in STANDARD_DOMAINS:
            raise self._string_refusal(node)
        if op in STRING_VIEWS:
            return
        if op in LABEL_OPS and node.domain == "ai.onnx.ml":
            longest = max((len(s) for a in node.attribute for s in _attribute_strings(a)), default=0)
            if longest > MAX_COPIED_STRING_BYTES:
                raise _too_long(node, longest)
            return
        if op in GATHERS:
            string_inputs = [name for name in node.input if name and self.maybe_string(name)]
            if all(self.constant(name) for name in string_inputs):
                longest = max((self.strings.get(name, UNKNOWN_LENGTH) for name in string_inputs), default=0)
                if longest > MAX_COPIED_STRING_BYTES:
                    raise _too_long(node, longest)
                return
            if (
                op in COLUMN_SELECTIONS
                and len(node.input) > 1
                and _distinct_indices(self.constant_value(node.input[1]))
            ):
                return
        raise self._string_refusal(node)

    def _string_refusal(self, node: onnx.NodeProto) -> Refused:
        return Refused(
            f"node {_name(node)} ({node.op_type[:NAME_CHARS]}) could repeat or join request strings: string "
            "tensors may only be selected, reshaped, cast, normalised or labelled from the model's own constants"
        )


def _too_long(node: onnx.NodeProto, longest: int) -> Refused:
    size = f"{longest} bytes" if longest != UNKNOWN_LENGTH else "unknown length"
    return Refused(
        f"node {_name(node)} ({node.op_type[:NAME_CHARS]}) copies a string of {size} once per element; strings a "
        f"model copies that way may have at most {MAX_COPIED_STRING_BYTES} bytes"
    )


def _elem_type(value_type: onnx.TypeProto) -> int | None:
    kind = value_type.WhichOneof("value")
    if kind == "tensor_type":
        return value_type.tensor_type.elem_type or None
    if kind == "sparse_tensor_type":
        return value_type.sparse_tensor_type.elem_type or None
    if kind in ("sequence_type", "map_type", "optional_type"):
        return SEQUENCE
    return None


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _attribute_strings(attr: onnx.AttributeProto) -> Iterable[bytes]:
    if attr.type == AttributeProto.STRING:
        return [attr.s]
    if attr.type == AttributeProto.STRINGS:
        return attr.strings
    if attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.STRING:
        return attr.t.string_data
    return []


def _string_constants(graph: onnx.GraphProto) -> dict[str, int]:
    """The longest element, in bytes, of every string constant (initializers and Constant nodes, subgraphs too)."""
    found: dict[str, int] = {}
    for init in graph.initializer:
        if init.data_type == TensorProto.STRING:
            found[init.name] = max((len(s) for s in init.string_data), default=0)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS and node.output:
            for attr in node.attribute:
                strings = list(_attribute_strings(attr))
                if strings or attr.name in ("value_string", "value_strings"):
                    found[node.output[0]] = max((len(s) for s in strings), default=0)
        for sub in _subgraphs(node):
            found.update(_string_constants(sub))
    return found


_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _strip(graph: onnx.GraphProto) -> None:
    """Drops large numeric initializer data: type inference needs types and shapes, and the small
    constants ops read as shapes or indices; it copies the model, so a 1 GB model would cost GBs."""
    for init in graph.initializer:
        if init.data_type != TensorProto.STRING and init.ByteSize() > STRIP_BYTES:
            for name in _DATA_FIELDS:
                init.ClearField(name)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_type != TensorProto.STRING:
                if attr.t.ByteSize() > STRIP_BYTES:
                    for name in _DATA_FIELDS:
                        attr.t.ClearField(name)
        for sub in _subgraphs(node):
            _strip(sub)


def _small(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type != TensorProto.STRING and tensor.ByteSize() <= STRIP_BYTES


def _scalar(tensor: onnx.TensorProto | None) -> int | None:
    if tensor is None:
        return None
    try:
        array = numpy_helper.to_array(tensor)
    except Exception:
        return None
    if array.size != 1 or array.dtype.kind not in "iu":
        return None
    return int(array.reshape(-1)[0])


def _distinct_indices(tensor: onnx.TensorProto | None) -> bool:
    """Constant, 0-D or 1-D, non-negative and without repeats: each request string is copied once at most."""
    if tensor is None or len(tensor.dims) > 1:
        return False
    try:
        array = numpy_helper.to_array(tensor).reshape(-1)
    except Exception:
        return False
    values = array.tolist()
    return array.dtype.kind in "iu" and all(v >= 0 for v in values) and len(set(values)) == len(values)


def _name(node: onnx.NodeProto) -> str:
    return repr(node.name[:NAME_CHARS]) if node.name else f"with output {node.output[0][:NAME_CHARS]!r}"
