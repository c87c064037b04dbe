"""Shared pieces of the service command groups: channels and stubs, the gRPC error line, JSON output,
enum names, formatting of protobuf values, paging and the NAME[:VERSION|@ALIAS] reference."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from flywheel.config import get_settings
from flywheel.grpc import sync_channel
from flywheel.v1 import (
    auth_pb2_grpc,
    common_pb2,
    ingestion_pb2_grpc,
    monitoring_pb2_grpc,
    registry_pb2_grpc,
    serving_pb2_grpc,
    training_pb2_grpc,
)

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper as EnumTypeWrapper

# Deadline for unary calls; streams (ingest, watch, download) run without one.
RPC_TIMEOUT_S = 60.0

console = Console()
err_console = Console(stderr=True)

_STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "ingestion": ingestion_pb2_grpc.IngestionServiceStub,
    "training": training_pb2_grpc.TrainingServiceStub,
    "registry": registry_pb2_grpc.RegistryServiceStub,
    "monitoring": monitoring_pb2_grpc.MonitoringServiceStub,
    "serving": serving_pb2_grpc.ServingAdminStub,
    "tokens": auth_pb2_grpc.TokenServiceStub,
}
# Stubs served by another service's address: the token API lives in the registry.
_HOSTED_BY = {"tokens": "registry"}


class CliError(Exception):
    """A failure the command reports as `error: <message>` with exit code `code` (2 = bad input)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------------
# Channels and errors


@contextmanager
def channel(service: str) -> Iterator[grpc.Channel]:
    """A fresh channel to `service`, closed on exit: the CLI's one way to reach a service. It carries
    the caller's credentials (FLYWHEEL_AUTH_TOKEN and FLYWHEEL_TLS_*, else $FLYWHEEL_HOME/credentials)
    and balances over every replica (FLYWHEEL_<SERVICE>_ADDR, else the list a running `flywheel up`
    saved in $FLYWHEEL_HOME/addresses.json), failing over when one dies (flywheel.grpc.channels)."""
    ch = sync_channel(get_settings(), _HOSTED_BY.get(service, service))
    try:
        yield ch
    finally:
        ch.close()


@contextmanager
def connect(service: str) -> Iterator[Any]:
    """A stub for `service` ("ingestion", "training", "registry", "monitoring", "serving" for
    ServingAdmin, or "tokens" for the registry's TokenService) on a fresh channel."""
    with channel(service) as ch:
        yield _STUBS[service](ch)


def rpc_error_line(exc: grpc.RpcError) -> str:
    """`error: <CODE>: <details>` on one line, for any grpc.RpcError."""
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    text = " ".join(str(details if details is not None else exc).split())
    return f"error: {name}: {text}" if text else f"error: {name}"


def report_rpc_error(exc: grpc.RpcError) -> int:
    print(rpc_error_line(exc), file=sys.stderr)
    return 1


def report_error(message: str) -> None:
    print("error: " + " ".join(message.split()), file=sys.stderr)


F = TypeVar("F", bound=Callable[[argparse.Namespace], int])
M = TypeVar("M", bound=Message)
V = TypeVar("V", bound=int)  # a protobuf enum's ValueType


def command(fn: F) -> F:
    """Wraps a handler: gRPC errors become one stderr line and exit 1, CliError its code, ^C 130."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except grpc.RpcError as exc:
            return report_rpc_error(exc)
        except CliError as exc:
            report_error(str(exc))
            return exc.code
        except KeyboardInterrupt:
            report_error("interrupted")
            return 130

    return cast(F, wrapper)


# ---------------------------------------------------------------------------------------------------
# JSON


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def dumps(obj: Message | dict[str, Any] | list[Any]) -> str:
    if isinstance(obj, Message):
        obj = to_dict(obj)
    return json.dumps(obj, indent=2)


def print_json(obj: Message | dict[str, Any] | list[Any]) -> None:
    print(dumps(obj))


def list_json(key: str, items: Sequence[Message]) -> dict[str, Any]:
    """{key: [...]} with the key present even when empty (MessageToDict omits empty lists)."""
    return {key: [to_dict(item) for item in items]}


def print_listing(
    as_json: bool,
    key: str,
    items: Sequence[M],
    table: Callable[[Sequence[M]], Any],
    empty: str | None = None,
) -> int:
    """A list command's output: {key: [...]} as JSON, else a table, else "no <key>" (or `empty`)."""
    if as_json:
        print_json(list_json(key, items))
    elif not items:
        console.print(empty or f"no {key}", highlight=False)
    else:
        console.print(table(items), highlight=False)
    return 0


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (proto field names) for scripts")


def load_json(path: str) -> Any:
    """A JSON file's content; unreadable or invalid files are a CliError with code 2."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}", code=2) from exc
    except json.JSONDecodeError as exc:
        raise CliError(f"{path}: not valid JSON: {exc}", code=2) from exc


def load_json_message(path: str, message: Message) -> Message:
    """Parses a JSON file into `message` (proto3 JSON mapping); bad input is a CliError with code 2."""
    return parse_dict(load_json(path), message, path)


def parse_dict(obj: Any, message: Message, source: str) -> Message:
    if not isinstance(obj, dict):
        raise CliError(f"{source}: expected a JSON object", code=2)
    try:
        json_format.ParseDict(obj, message)
    except json_format.ParseError as exc:
        raise CliError(f"{source}: {exc}", code=2) from exc
    return message


# ---------------------------------------------------------------------------------------------------
# Enums


def _enum_prefix(enum: Any) -> str:
    zero = enum.Name(0)  # every flywheel enum has FOO_UNSPECIFIED = 0
    return zero[: -len("UNSPECIFIED")] if zero.endswith("UNSPECIFIED") else ""


def enum_name(enum: Any, value: int) -> str:
    """RUN_STATUS_SUCCEEDED -> "succeeded"; unknown numbers print as themselves."""
    try:
        name = enum.Name(value)
    except ValueError:
        return str(value)
    prefix = _enum_prefix(enum)
    return (name[len(prefix) :] if name.startswith(prefix) else name).lower()


def enum_value(enum: EnumTypeWrapper[V], short: str) -> V:
    """ "succeeded" -> RUN_STATUS_SUCCEEDED; also accepts the full name."""
    name = short.upper().replace("-", "_")
    if not name.startswith(_enum_prefix(enum)):
        name = _enum_prefix(enum) + name
    return enum.Value(name)


def enum_choices(enum: Any) -> list[str]:
    return [enum_name(enum, number) for number in enum.values() if number != 0]


# ---------------------------------------------------------------------------------------------------
# Formatting


def fmt_time(ts: Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_duration(d: Duration) -> str:
    if d.seconds == 0 and d.nanos == 0:
        return "-"
    return fmt_seconds(d.seconds + d.nanos / 1e9)


def elapsed(start: Timestamp, end: Timestamp) -> str:
    if start.seconds == 0 or end.seconds == 0:
        return "-"
    return fmt_seconds(max(0.0, (end.seconds - start.seconds) + (end.nanos - start.nanos) / 1e9))


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def fmt_number(x: float) -> str:
    """Whole numbers as integers, others to 4 significant digits (6 from 10^4 up)."""
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}" if abs(x) >= 1e4 else f"{x:.4g}"


def plain(value: Any) -> Any:
    """A google.protobuf.Value / Struct / ListValue as a plain Python value."""
    if isinstance(value, struct_pb2.Value):
        return json_format.MessageToDict(value)
    if isinstance(value, struct_pb2.Struct | struct_pb2.ListValue):
        return json_format.MessageToDict(value)
    return value


def fmt_value(value: Any) -> str:
    """A protobuf Value (or plain value) for a table cell: null -> "-", whole floats as ints."""
    v = plain(value)
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return fmt_number(float(v))
    if isinstance(v, str):
        return v
    return json.dumps(_whole_floats_as_ints(v), separators=(",", ":"))


def _whole_floats_as_ints(v: Any) -> Any:
    """JSON numbers from protobuf are floats; 64.0 reads better as 64 in a table."""
    if isinstance(v, float) and v == int(v) and abs(v) < 1e15:
        return int(v)
    if isinstance(v, list):
        return [_whole_floats_as_ints(x) for x in v]
    if isinstance(v, dict):
        return {k: _whole_floats_as_ints(x) for k, x in v.items()}
    return v


def fmt_struct(struct: struct_pb2.Struct) -> str:
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in sorted(struct.fields.items())) or "-"


def fmt_map(mapping: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(mapping.items())) or "-"


def short_hash(h: str, n: int = 12) -> str:
    return h[:n] if h else "-"


def fmt_dataset_ref(ref: common_pb2.DatasetRef, with_hash: bool = False) -> str:
    if not ref.name:
        return "-"
    text = f"{ref.name} v{ref.version}"
    return f"{text} ({short_hash(ref.content_hash)})" if with_hash and ref.content_hash else text


def fmt_model_ref(ref: common_pb2.ModelRef) -> str:
    return f"{ref.name} v{ref.version}" if ref.name else "-"


def metric_label(metric: common_pb2.Metric) -> str:
    label = metric.name
    if metric.class_label:
        label += f"[{metric.class_label}]"
    return label


def fmt_metrics(metrics: Sequence[common_pb2.Metric]) -> str:
    return ", ".join(f"{metric_label(m)}={fmt_number(m.value)}" for m in metrics) or "-"


def metrics_table(metrics: Sequence[common_pb2.Metric], title: str | None = None) -> Table:
    """Aggregate metrics as rows; per-class metrics as a class x metric grid underneath."""
    table = titled_table(title, "metric", "split", "class", "value")
    for m in metrics:
        split = enum_name(common_pb2.Split, m.split) if m.split else "-"
        table.add_row(m.name, split, m.class_label or "-", fmt_number(m.value))
    return table


def titled_table(title: str | None, *headers: str, **kwargs: Any) -> Table:
    """A table whose left-justified title never wraps (the table is at least as wide as it)."""
    if title:
        kwargs.setdefault("min_width", len(title) + 2)
    return Table(*headers, title=title, title_justify="left", **kwargs)


def kv_table(rows: Sequence[tuple[str, Any]], title: str | None = None) -> Table:
    """Two columns, key and value, no header: a detail view."""
    table = Table(show_header=False, box=None, title=title, title_justify="left", pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value if not isinstance(value, str | int | float) else str(value))
    return table


def fmt_direction(direction: common_pb2.MetricDirection.ValueType) -> str:
    return {common_pb2.METRIC_DIRECTION_MAXIMIZE: "max", common_pb2.METRIC_DIRECTION_MINIMIZE: "min"}.get(
        direction, "-"
    )


def fmt_policy(policy: common_pb2.PromotionPolicy) -> str:
    if not policy.metric:
        return "-"
    text = f"{policy.metric} ({fmt_direction(policy.direction)}), min improvement {fmt_number(policy.min_improvement)}"
    if policy.approval:
        text += f", {enum_name(common_pb2.ApprovalMode, policy.approval)} approval"
    return text


def status_markup(text: str) -> str:
    colour = {
        "succeeded": "green",
        "failed": "red",
        "cancelled": "yellow",
        "running": "cyan",
        "queued": "blue",
    }.get(text)
    return f"[{colour}]{text}[/]" if colour else text


# ---------------------------------------------------------------------------------------------------
# Paging


class PagedRequest(Protocol):
    """Every List request: a page token to continue from."""

    page_token: str


def paged(method: Callable[..., Any], request: PagedRequest, field: str, limit: int | None = None) -> list[Any]:
    """Every item of a paged List RPC (following next_page_token), at most `limit` when given."""
    items: list[Any] = []
    seen: set[str] = set()
    while True:
        response = method(request, timeout=RPC_TIMEOUT_S)
        items.extend(getattr(response, field))
        token = response.next_page_token
        if not token or token in seen or (limit is not None and len(items) >= limit):
            break
        seen.add(token)
        request.page_token = token  # every List request has one; Message does not say so
    return items[:limit] if limit is not None else items


# ---------------------------------------------------------------------------------------------------
# NAME[:VERSION|@ALIAS]

_REF = re.compile(r"^(?P<name>[^:@\s]+)(?::(?P<version>[^:@\s]+)|@(?P<alias>[^:@\s]+))?$")


@dataclass(frozen=True)
class ModelSelector:
    """A model reference: exactly one of version and alias, or neither for the latest version."""

    name: str
    version: int | None = None
    alias: str | None = None

    def apply(self, request: Any) -> Any:
        """Sets the request's `selector` oneof (version or alias); leaves it unset for latest."""
        if self.alias is not None:
            request.alias = self.alias
        elif self.version is not None:
            request.version = self.version
        return request

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return self.name


def parse_model_ref(text: str) -> ModelSelector:
    """ "churn" (latest), "churn:3" or "churn:latest", "churn@production"; ValueError otherwise."""
    match = _REF.match(text.strip())
    if not match:
        raise ValueError(f"invalid model reference {text!r}: expected NAME, NAME:VERSION or NAME@ALIAS")
    name, version, alias = match.group("name", "version", "alias")
    if alias is not None:
        return ModelSelector(name, alias=alias)
    if version is None or version == "latest":
        return ModelSelector(name)
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"invalid model reference {text!r}: VERSION must be a positive integer")
    return ModelSelector(name, version=int(version))


def model_ref_arg(text: str) -> ModelSelector:
    """argparse type for NAME[:VERSION|@ALIAS]."""
    try:
        return parse_model_ref(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value
