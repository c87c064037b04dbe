"""`flywheel predict MODEL[:VERSION] --json ROWS`: one inference call over the Open Inference Protocol.

Flywheel models take one 2-D input [rows, features] whose columns are the registry signature's
`feature_names` in order. ROWS is a JSON list of objects (feature -> value) or of lists (values in
feature order), or `@FILE` (`@-`: stdin); values are numbers, true/false (1/0) or null (NaN, which
the models' imputers fill). The request uses tritonclient's generated OIP modules (imported lazily,
like numpy, so other commands start fast).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from rich.markup import escape
from rich.table import Table

from flywheel.cli import client
from flywheel.cli.client import CliError, ModelSelector, command, console, fmt_number
from flywheel.cli.deploy import serving_channel
from flywheel.v1 import common_pb2, registry_pb2

# Input datatypes predict can send (the features are floats), with their little-endian numpy dtype.
INPUT_DTYPES = {"FP32": "<f4", "FP64": "<f8"}

# KServe v2 datatype -> (little-endian numpy dtype, InferTensorContents field).
OUTPUT_TYPES: dict[str, tuple[str, str]] = {
    "BOOL": ("?", "bool_contents"),
    "INT8": ("i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "UINT8": ("u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "FP16": ("<f2", "fp32_contents"),
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
    "BYTES": ("", "bytes_contents"),
}

# At most this many classes get a column each in the table; more share one cell.
MAX_CLASS_COLUMNS = 8


# ---------------------------------------------------------------------------------------------------
# Arguments and ROWS


def predict_ref_arg(text: str) -> ModelSelector:
    """argparse type for MODEL (production), MODEL:VERSION or MODEL@ALIAS."""
    try:
        ref = client.parse_model_ref(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if ref.version is None and ref.alias is None and ":" in text:
        raise argparse.ArgumentTypeError(
            f"invalid model reference {text!r}: use MODEL (production), MODEL:VERSION or MODEL@ALIAS"
        )
    return ref


def parse_rows(text: str) -> tuple[list[Any], str]:
    """ROWS as given to --json: inline JSON, `@FILE` or `@-` (stdin). Returns the rows, all objects or
    all lists (a single object is one row), and where they came from; bad input is a CliError, code 2."""
    if text.startswith("@"):
        source = text[1:]
        if not source:
            raise CliError("--json @FILE: the file name is missing", code=2)
        if source == "-":
            source = "stdin"
            try:
                data = json.load(sys.stdin)
            except json.JSONDecodeError as exc:
                raise CliError(f"stdin: not valid JSON: {exc}", code=2) from exc
        else:
            data = client.load_json(source)
    else:
        source = "--json"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"--json: not valid JSON: {exc}", code=2) from exc
    return check_rows(data, source), source


def check_rows(data: Any, source: str) -> list[Any]:
    expected = "expected a JSON list of objects (feature -> value) or a list of lists (values in feature order)"
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise CliError(f"{source}: {expected}, got {_json_type(data)}", code=2)
    if not data:
        raise CliError(f"{source}: no rows", code=2)
    if all(isinstance(row, dict) for row in data) or all(isinstance(row, list) for row in data):
        return data
    if not any(isinstance(row, dict | list) for row in data):
        raise CliError(f"{source}: {expected}; for a single row of values write [[...]]", code=2)
    first = next(i for i, row in enumerate(data) if type(row) is not type(data[0]))
    raise CliError(
        f"{source}: {expected}; row 0 is {_json_type(data[0])} but row {first} is {_json_type(data[first])}",
        code=2,
    )


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def feature_value(value: Any, row: int, feature: str) -> float:
    """A JSON value as a float feature: numbers, true/false as 1/0, null as NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    raise CliError(
        f"row {row}, feature {feature}: expected a number, true/false or null, got {_json_type(value)} {value!r}",
        code=2,
    )


def rows_matrix(rows: Sequence[Any], feature_names: Sequence[str], n_columns: int = 0) -> list[list[float]]:
    """Rows (objects or lists, see parse_rows) as a [rows, features] matrix in feature order.
    n_columns: the input's width from ModelMetadata (0 when variable); bad rows are a CliError, code 2."""
    width = n_columns or len(feature_names)
    names = list(feature_names)
    matrix: list[list[float]] = []
    if rows and isinstance(rows[0], dict):
        if not names:
            raise CliError("the registry lists no feature names for this model: give rows as lists of values", code=2)
        known = set(names)
        for i, row in enumerate(rows):
            missing = [n for n in names if n not in row]
            if missing:
                raise CliError(
                    f"row {i}: missing feature{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
                    f" (the model's features: {', '.join(names)})",
                    code=2,
                )
            unknown = [k for k in row if k not in known]
            if unknown:
                raise CliError(
                    f"row {i}: unknown feature{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))}"
                    f" (the model's features: {', '.join(names)})",
                    code=2,
                )
            matrix.append([feature_value(row[n], i, repr(n)) for n in names])
        return matrix
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise CliError(f"row {i}: expected a list of values, got {_json_type(row)}", code=2)
        width = width or len(row)
        if len(row) != width:
            what = f"the model's {width} features ({', '.join(names)})" if names else f"{width} values"
            raise CliError(f"row {i}: {len(row)} values, expected {what}", code=2)
        labels = [repr(n) for n in names] if len(names) == width else [f"#{j}" for j in range(width)]
        matrix.append([feature_value(v, i, labels[j]) for j, v in enumerate(row)])
    return matrix


# ---------------------------------------------------------------------------------------------------
# Request and response


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    # Columns of the 2-D input; 0 when the metadata leaves them variable.
    columns: int


def input_spec(metadata: Any, model: str) -> InputSpec:
    """The one 2-D float input a ModelMetadataResponse describes; anything else is a CliError."""
    if len(metadata.inputs) != 1:
        names = ", ".join(t.name for t in metadata.inputs) or "none"
        raise CliError(f"model {model} has {len(metadata.inputs)} inputs ({names}); predict needs exactly one")
    tensor = metadata.inputs[0]
    shape = list(tensor.shape)
    if len(shape) != 2:
        raise CliError(f"input {tensor.name!r} of {model} has shape {shape}; predict needs a 2-D [rows, features]")
    if tensor.datatype not in INPUT_DTYPES:
        raise CliError(f"input {tensor.name!r} of {model} is {tensor.datatype}; predict sends features as FP32 or FP64")
    return InputSpec(tensor.name, tensor.datatype, max(0, int(shape[1])))


def check_outputs(requested: Sequence[str], metadata: Any, model: str) -> None:
    available = [t.name for t in metadata.outputs]
    unknown = [name for name in requested if available and name not in available]
    if unknown:
        raise CliError(
            f"unknown output{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
            f" (the outputs of {model}: {', '.join(available)})",
            code=2,
        )


def build_infer_request(
    model: str, version: str, spec: InputSpec, matrix: Sequence[Sequence[float]], outputs: Sequence[str] = ()
) -> Any:
    """One ModelInferRequest: the matrix as raw little-endian contents of the single input."""
    import numpy as np
    from tritonclient.grpc import service_pb2

    data = np.asarray(matrix, dtype=INPUT_DTYPES[spec.datatype])
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id=uuid.uuid4().hex)
    request.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(data.shape))
    request.raw_input_contents.append(data.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _bytes_elements(raw: bytes) -> list[str]:
    """BYTES tensor contents: each element a 4-byte little-endian length, then that many bytes."""
    items, pos = [], 0
    while pos + 4 <= len(raw):
        size = int.from_bytes(raw[pos : pos + 4], "little")
        items.append(raw[pos + 4 : pos + 4 + size].decode("utf-8", errors="replace"))
        pos += 4 + size
    return items


def decode_outputs(response: Any) -> dict[str, Any]:
    """A ModelInferResponse's outputs as numpy arrays of their shapes, in response order; reads
    raw_output_contents when the server sent them, else the typed contents."""
    import numpy as np

    decoded: dict[str, Any] = {}
    raw = list(response.raw_output_contents)
    for i, tensor in enumerate(response.outputs):
        if tensor.datatype not in OUTPUT_TYPES:
            raise CliError(f"output {tensor.name!r} has datatype {tensor.datatype!r}, which predict cannot read")
        dtype, field = OUTPUT_TYPES[tensor.datatype]
        shape = [int(d) for d in tensor.shape]
        if raw:
            if i >= len(raw):
                raise CliError(f"output {tensor.name!r} has no raw contents")
            if tensor.datatype == "BYTES":
                array = np.array(_bytes_elements(raw[i]), dtype=object)
            else:
                array = np.frombuffer(raw[i], dtype=dtype)
        else:
            values = list(getattr(tensor.contents, field))
            if tensor.datatype == "BYTES":
                values = [v.decode("utf-8", errors="replace") for v in values]
                array = np.array(values, dtype=object)
            else:
                array = np.array(values, dtype=dtype)
        expected = math.prod(shape)
        if array.size != expected:
            raise CliError(f"output {tensor.name!r}: {array.size} values do not fill shape {shape}")
        decoded[tensor.name] = array.reshape(shape)
    return decoded


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON-ready Python values; float32 shortest form (0.9, not 0.899999976),
    NaN and infinities as null."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.floating):
        x = float(str(value)) if value.dtype.itemsize < 8 else float(value)
        return x if math.isfinite(x) else None
    if isinstance(value, np.generic):
        return value.item()
    return value


def rows_of_outputs(outputs: dict[str, Any], n_rows: int) -> list[dict[str, Any]]:
    """Per input row, {output name: value}; a [rows, 1] output gives a scalar per row."""
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != n_rows:
            raise CliError(f"output {name!r} has shape {list(array.shape)}, expected {n_rows} rows first")
    result: list[dict[str, Any]] = []
    for i in range(n_rows):
        row: dict[str, Any] = {}
        for name, array in outputs.items():
            value = array[i]
            if getattr(value, "shape", ()) == (1,):
                value = value[0]
            row[name] = _plain(value)
        result.append(row)
    return result


def predictions_table(
    rows: Sequence[dict[str, Any]], class_labels: Sequence[str] = (), title: str | None = None
) -> Table:
    """One line per input row. An integer output whose values index class_labels shows the label; a
    list output as wide as class_labels gets a column per class (`probabilities[yes]`)."""
    labels = list(class_labels)
    names = list(rows[0]) if rows else []
    per_class = {
        n
        for n in names
        if labels
        and len(labels) <= MAX_CLASS_COLUMNS
        and all(isinstance(r[n], list) and len(r[n]) == len(labels) for r in rows)
    }
    headers = ["#"]
    for n in names:
        if n in per_class:
            headers.extend(escape(f"{n}[{label}]") for label in labels)
        else:
            headers.append(escape(n))
    table = client.titled_table(title, *headers)
    for column in table.columns:
        column.justify = "right"
    for i, row in enumerate(rows):
        cells = [str(i)]
        for n in names:
            value = row[n]
            if n in per_class:
                cells.extend(_cell(v) for v in value)
            elif isinstance(value, int) and not isinstance(value, bool) and labels and 0 <= value < len(labels):
                cells.append(escape(labels[value]))
            else:
                cells.append(_cell(value))
        table.add_row(*cells)
    return table


def _cell(value: Any) -> str:
    return escape(_text(value))


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return fmt_number(float(value))
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


# ---------------------------------------------------------------------------------------------------
# Command


def _model_version(ref: ModelSelector, required: bool) -> registry_pb2.ModelVersion | None:
    """The registry's version for the reference (no version or alias: `production`). When not
    required (rows given as lists), a failing registry only costs the class labels."""
    request = registry_pb2.GetModelVersionRequest(name=ref.name)
    if ref.version is None and ref.alias is None:
        request.alias = "production"
    else:
        ref.apply(request)
    try:
        with client.connect("registry") as registry:
            return registry.GetModelVersion(request, timeout=client.RPC_TIMEOUT_S).version
    except grpc.RpcError:
        if required:
            raise
        return None


@command
def cmd_predict(args: argparse.Namespace) -> int:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    ref: ModelSelector = args.ref
    rows, _ = parse_rows(args.rows)
    outputs = list(dict.fromkeys(args.output or []))
    by_name = isinstance(rows[0], dict)
    mv = _model_version(ref, required=by_name or ref.alias is not None)
    signature = mv.signature if mv is not None else common_pb2.ModelSignature()
    version = ""
    if ref.version is not None:
        version = str(ref.version)
    elif ref.alias is not None and mv is not None:
        version = str(mv.ref.version)  # OIP knows versions, not aliases
    with serving_channel() as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name=ref.name, version=version), timeout=client.RPC_TIMEOUT_S
        )
        spec = input_spec(metadata, str(ref))
        names = list(signature.feature_names)
        if spec.columns and names and len(names) != spec.columns:
            raise CliError(
                f"{ref}: the served input {spec.name!r} has {spec.columns} columns"
                f" but the registry lists {len(names)} features"
            )
        check_outputs(outputs, metadata, str(ref))
        matrix = rows_matrix(rows, names, spec.columns)
        request = build_infer_request(ref.name, version, spec, matrix, outputs)
        response = stub.ModelInfer(request, timeout=client.RPC_TIMEOUT_S)
    result = rows_of_outputs(decode_outputs(response), len(matrix))
    if args.json_output:
        client.print_json(result)
        return 0
    served = f"{response.model_name or ref.name}" + (f" v{response.model_version}" if response.model_version else "")
    console.print(predictions_table(result, signature.class_labels, title=escape(served)), highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser(
        "predict",
        help="run rows through a served model (Open Inference Protocol)",
        description=(
            "Sends the rows as one ModelInfer request to the serving address. MODEL alone is served by"
            " production (or a canary, if one is set); MODEL:VERSION or MODEL@ALIAS selects a version."
        ),
    )
    predict.add_argument("ref", type=predict_ref_arg, metavar="MODEL[:VERSION|@ALIAS]")
    predict.add_argument(
        "--json",
        dest="rows",
        required=True,
        metavar="ROWS",
        help='rows as JSON: [{"feature": value, ...}, ...] or [[v1, v2, ...], ...]; @FILE reads a file, @- stdin',
    )
    predict.add_argument(
        "--output",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="only these outputs (repeatable; default: all of the model's outputs)",
    )
    predict.add_argument("--json-output", action="store_true", help="print a JSON list of {output: value}, one per row")
    predict.set_defaults(func=cmd_predict)
