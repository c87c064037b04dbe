"""`flywheel datasets create|ingest|list|show`: datasets and their immutable versions (IngestionService)."""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from flywheel.cli import client
from flywheel.cli.client import CliError, command, console, enum_name, fmt_number, fmt_time
from flywheel.config import get_settings
from flywheel.v1 import common_pb2, ingestion_pb2

POLICIES = {
    "reject": ingestion_pb2.INVALID_ROW_POLICY_REJECT,
    "quarantine": ingestion_pb2.INVALID_ROW_POLICY_QUARANTINE,
}
MODES = {"append": common_pb2.WRITE_MODE_APPEND, "replace": common_pb2.WRITE_MODE_REPLACE}
FORMATS = {"csv": ingestion_pb2.DATA_FORMAT_CSV, "arrow": ingestion_pb2.DATA_FORMAT_ARROW_IPC}
ARROW_SUFFIXES = {".arrow", ".arrows", ".ipc", ".feather"}
ARROW_FILE_MAGIC = b"ARROW1"
SCHEMA_KEYS = {"fields", "label_field", "labelField", "key_field", "keyField", "train_fraction", "trainFraction"}


# ---------------------------------------------------------------------------------------------------
# Building requests


def dataset_from_file(path: str) -> ingestion_pb2.Dataset:
    """The JSON file holds a `Schema` (it has "fields") or a whole `Dataset` (it has "schema")."""
    obj = client.load_json(path)
    dataset = ingestion_pb2.Dataset()
    if isinstance(obj, dict) and "schema" not in obj and SCHEMA_KEYS & obj.keys():
        client.parse_dict(obj, dataset.schema, path)
    else:
        client.parse_dict(obj, dataset, path)
    return dataset


def build_dataset(args: argparse.Namespace) -> ingestion_pb2.Dataset:
    """The dataset from --schema, with NAME and the flags overriding what the file says."""
    dataset = dataset_from_file(args.schema)
    dataset.name = args.name
    if args.label is not None:
        dataset.schema.label_field = args.label
    if args.key is not None:
        dataset.schema.key_field = args.key
    if args.train_fraction is not None:
        dataset.schema.train_fraction = args.train_fraction
    if args.policy is not None:
        dataset.invalid_row_policy = POLICIES[args.policy]
    if args.description is not None:
        dataset.description = args.description
    return dataset


def infer_format(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    return "arrow" if Path(path).suffix.lower() in ARROW_SUFFIXES else "csv"


def ingest_header(args: argparse.Namespace, fmt: str) -> ingestion_pb2.IngestHeader:
    header = ingestion_pb2.IngestHeader(dataset=args.name, mode=MODES[args.mode], format=FORMATS[fmt])
    delimiter = args.delimiter
    if delimiter is None and fmt == "csv" and Path(args.file).suffix.lower() == ".tsv":
        delimiter = "\t"
    if delimiter:
        header.csv_delimiter = delimiter
    return header


def iter_file_chunks(path: str, chunk_bytes: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            yield chunk


def is_arrow_ipc_file(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC


def iter_arrow_file_as_stream(path: str, chunk_bytes: int) -> Iterator[bytes]:
    """An Arrow IPC *file* (Feather v2) re-encoded batch by batch as the IPC *stream* the API takes."""
    import pyarrow as pa

    reader = pa.ipc.open_file(pa.memory_map(path))
    sink = io.BytesIO()

    def drain() -> Iterator[bytes]:
        data = sink.getvalue()
        sink.seek(0)
        sink.truncate(0)
        for start in range(0, len(data), chunk_bytes):
            yield data[start : start + chunk_bytes]

    writer = pa.ipc.new_stream(sink, reader.schema)
    for i in range(reader.num_record_batches):
        writer.write_batch(reader.get_batch(i))
        yield from drain()
    writer.close()
    yield from drain()


def ingest_requests(
    header: ingestion_pb2.IngestHeader, chunks: Iterator[bytes], on_chunk: Any = None
) -> Iterator[ingestion_pb2.IngestDatasetRequest]:
    yield ingestion_pb2.IngestDatasetRequest(header=header)
    for chunk in chunks:
        yield ingestion_pb2.IngestDatasetRequest(chunk=chunk)
        if on_chunk is not None:
            on_chunk(len(chunk))


# ---------------------------------------------------------------------------------------------------
# Rendering


def datasets_table(datasets: Sequence[ingestion_pb2.Dataset]) -> Table:
    table = Table("name", "latest", "fields", "label", "key", "train", "policy", "created", "description")
    for d in datasets:
        table.add_row(
            d.name,
            f"v{d.latest_version}" if d.latest_version else "-",
            str(len(d.schema.fields)),
            d.schema.label_field or "-",
            d.schema.key_field or "-",
            fmt_number(d.schema.train_fraction or 0.8),
            enum_name(ingestion_pb2.InvalidRowPolicy, d.invalid_row_policy) if d.invalid_row_policy else "-",
            fmt_time(d.create_time),
            d.description,
        )
    return table


def schema_table(schema: common_pb2.Schema) -> Table:
    table = client.titled_table("schema", "field", "type", "nullable", "min", "max", "allowed values", "role")
    for f in schema.fields:
        role = []
        if f.name == schema.label_field:
            role.append("label")
        if f.name == schema.key_field:
            role.append("key")
        table.add_row(
            f.name,
            enum_name(common_pb2.FieldType, f.type),
            "yes" if f.nullable else "no",
            fmt_number(f.min) if f.HasField("min") else "-",
            fmt_number(f.max) if f.HasField("max") else "-",
            ", ".join(f.allowed_values) or "-",
            ", ".join(role) or "-",
        )
    return table


def dataset_detail(dataset: ingestion_pb2.Dataset) -> Group:
    mb = dataset.micro_batch
    batching = []
    if mb.max_rows:
        batching.append(f"max {mb.max_rows} rows")
    if mb.HasField("max_wait"):
        batching.append(f"max wait {client.fmt_duration(mb.max_wait)}")
    rows = [
        ("dataset", dataset.name),
        ("description", dataset.description or "-"),
        ("latest version", f"v{dataset.latest_version}" if dataset.latest_version else "none yet"),
        ("label / key", f"{dataset.schema.label_field or '-'} / {dataset.schema.key_field or '-'}"),
        ("train fraction", fmt_number(dataset.schema.train_fraction or 0.8)),
        (
            "invalid rows",
            enum_name(ingestion_pb2.InvalidRowPolicy, dataset.invalid_row_policy)
            if dataset.invalid_row_policy
            else "reject (default)",
        ),
        ("micro-batch", ", ".join(batching) or "server defaults"),
        ("feedback model", dataset.feedback_model or "-"),
        ("labels", client.fmt_map(dataset.labels)),
        ("created", fmt_time(dataset.create_time)),
    ]
    return Group(client.kv_table(rows), schema_table(dataset.schema))


def versions_table(versions: Sequence[ingestion_pb2.DatasetVersion]) -> Table:
    table = client.titled_table(
        "versions",
        "version",
        "parent",
        "mode",
        "rows",
        "train",
        "test",
        "quarantined",
        "hash",
        "source",
        "created",
    )
    for v in versions:
        table.add_row(
            f"v{v.ref.version}",
            f"v{v.parent_version}" if v.parent_version else "-",
            enum_name(common_pb2.WriteMode, v.mode) if v.mode else "-",
            str(v.row_count),
            str(v.train_rows),
            str(v.test_rows),
            str(v.quarantined_rows),
            client.short_hash(v.ref.content_hash),
            v.source or "-",
            fmt_time(v.create_time),
        )
    return table


def _top_categories(freqs: Any, n: int = 3) -> str:
    top = sorted(freqs.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    text = ", ".join(f"{k} {v:.0%}" for k, v in top)
    return text + (f" (+{len(freqs) - n})" if len(freqs) > n else "") if text else "-"


def profile_table(profile: ingestion_pb2.ProfileSummary) -> Table:
    table = client.titled_table(
        f"profile ({profile.row_count} rows)",
        "feature",
        "type",
        "count",
        "null rate",
        "min",
        "max",
        "mean",
        "stddev",
        "top categories",
    )
    for f in profile.features:
        table.add_row(
            f.name,
            enum_name(common_pb2.FieldType, f.type),
            str(f.count),
            f"{f.null_rate:.2%}",
            fmt_number(f.min) if f.HasField("min") else "-",
            fmt_number(f.max) if f.HasField("max") else "-",
            fmt_number(f.mean) if f.HasField("mean") else "-",
            fmt_number(f.stddev) if f.HasField("stddev") else "-",
            _top_categories(f.category_frequencies),
        )
    return table


def version_detail(version: ingestion_pb2.DatasetVersion) -> Group:
    rows = [
        ("version", client.fmt_dataset_ref(version.ref)),
        ("content hash", version.ref.content_hash or "-"),
        ("parent", f"v{version.parent_version}" if version.parent_version else "-"),
        ("mode", enum_name(common_pb2.WriteMode, version.mode) if version.mode else "-"),
        ("rows", f"{version.row_count} (train {version.train_rows}, test {version.test_rows})"),
        ("quarantined", str(version.quarantined_rows)),
        ("source", version.source or "-"),
        ("data", version.data_uri or "-"),
        ("profile", version.profile_uri or "-"),
        ("created", fmt_time(version.create_time)),
    ]
    return Group(client.kv_table(rows), profile_table(version.profile))


def ingest_summary(response: ingestion_pb2.IngestDatasetResponse) -> Group:
    v = response.version
    verb = "created" if response.created else "existing (identical content; no new version)"
    rows = [
        ("version", f"{client.fmt_dataset_ref(v.ref)}  [{'green' if response.created else 'yellow'}]{verb}[/]"),
        ("content hash", v.ref.content_hash or "-"),
        ("rows", f"{v.row_count} (train {v.train_rows}, test {v.test_rows})"),
    ]
    stats = response.stats
    if stats.rows_received:
        rows.append(("received", f"{stats.rows_received} rows, {stats.rows_accepted} accepted"))
    quarantined = stats.rows_quarantined or v.quarantined_rows
    rows.append(("quarantined", str(quarantined)))
    parts: list[Any] = [client.kv_table(rows)]
    if stats.quarantine_counts:
        reasons = client.titled_table("quarantined per reason", "reason", "rows")
        for reason, count in sorted(stats.quarantine_counts.items(), key=lambda kv: (-kv[1], kv[0])):
            reasons.add_row(reason, str(count))
        parts.append(reasons)
    if stats.sample_errors:
        sample = client.titled_table("sample of invalid rows", "row", "field", "reason", "value")
        for e in stats.sample_errors:
            sample.add_row(str(e.row), e.field, e.reason, e.value)
        parts.append(sample)
    return Group(*parts)


# ---------------------------------------------------------------------------------------------------
# Commands


@command
def cmd_create(args: argparse.Namespace) -> int:
    dataset = build_dataset(args)
    with client.connect("ingestion") as stub:
        response = stub.CreateDataset(ingestion_pb2.CreateDatasetRequest(dataset=dataset), timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(response.dataset)
    else:
        console.print(f"created dataset [bold]{response.dataset.name}[/]")
        console.print(dataset_detail(response.dataset))
    return 0


@command
def cmd_ingest(args: argparse.Namespace) -> int:
    path = args.file
    if not os.path.isfile(path):
        raise CliError(f"{path}: no such file", code=2)
    fmt = infer_format(path, args.format)
    chunk_bytes = max(1, int(args.chunk_mb * 1024 * 1024))
    limit = get_settings().grpc_max_message_mb * 1024 * 1024
    if chunk_bytes > limit - 1024:
        raise CliError(f"--chunk-mb must be below the gRPC message limit ({limit // 2**20} MiB)", code=2)
    header = ingest_header(args, fmt)
    if fmt == "arrow" and is_arrow_ipc_file(path):
        chunks, total = iter_arrow_file_as_stream(path, chunk_bytes), None  # re-encoded: size unknown
    else:
        chunks, total = iter_file_chunks(path, chunk_bytes), os.path.getsize(path)

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=client.err_console,
        transient=True,
    )
    with progress:
        task = progress.add_task(f"sending {Path(path).name}", total=total)
        sent = 0

        def on_chunk(n: int) -> None:
            nonlocal sent
            sent += n
            progress.update(task, advance=n)
            if total is not None and sent >= total:
                progress.update(task, description="server is validating and writing the version")

        with client.connect("ingestion") as stub:
            response = stub.IngestDataset(ingest_requests(header, chunks, on_chunk))
    if args.json:
        client.print_json(response)
    else:
        console.print(ingest_summary(response))
    return 0


@command
def cmd_list(args: argparse.Namespace) -> int:
    with client.connect("ingestion") as stub:
        datasets = client.paged(stub.ListDatasets, ingestion_pb2.ListDatasetsRequest(), "datasets")
    return client.print_listing(args.json, "datasets", datasets, datasets_table)


@command
def cmd_show(args: argparse.Namespace) -> int:
    with client.connect("ingestion") as stub:
        if args.version is not None:
            response = stub.GetDatasetVersion(
                ingestion_pb2.GetDatasetVersionRequest(dataset=args.name, version=args.version),
                timeout=client.RPC_TIMEOUT_S,
            )
            if args.json:
                client.print_json(response.version)
            else:
                console.print(version_detail(response.version))
            return 0
        dataset = stub.GetDataset(ingestion_pb2.GetDatasetRequest(name=args.name), timeout=client.RPC_TIMEOUT_S).dataset
        versions = client.paged(
            stub.ListDatasetVersions, ingestion_pb2.ListDatasetVersionsRequest(dataset=args.name), "versions"
        )
    if args.json:
        client.print_json({"dataset": client.to_dict(dataset), **client.list_json("versions", versions)})
    else:
        console.print(dataset_detail(dataset))
        console.print(versions_table(versions) if versions else "no versions yet")
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _chunk_mb(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("datasets", help="datasets and their immutable versions")
    cmds = group.add_subparsers(dest="datasets_command", required=True)

    create = cmds.add_parser("create", help="create a dataset from a JSON Schema (or Dataset) file")
    create.add_argument("name", metavar="NAME")
    create.add_argument(
        "--schema", required=True, metavar="FILE.json", help="JSON flywheel.v1.Schema, or a whole Dataset"
    )
    create.add_argument("--label", metavar="FIELD", help="label field (overrides the file)")
    create.add_argument("--key", metavar="FIELD", help="key field the split is hashed on (overrides the file)")
    create.add_argument("--train-fraction", type=_fraction, metavar="X", help="train split fraction in (0, 1)")
    create.add_argument("--policy", choices=sorted(POLICIES), help="invalid rows: reject the batch or quarantine")
    create.add_argument("--description", metavar="TEXT")
    client.add_json_flag(create)
    create.set_defaults(func=cmd_create)

    ingest = cmds.add_parser("ingest", help="stream a CSV or Arrow IPC file into a new dataset version")
    ingest.add_argument("name", metavar="NAME")
    ingest.add_argument("file", metavar="FILE")
    ingest.add_argument("--mode", choices=sorted(MODES), default="append", help="default: append")
    ingest.add_argument(
        "--format", choices=sorted(FORMATS), help="default: from the extension (.arrow/.feather/.ipc: arrow)"
    )
    ingest.add_argument("--delimiter", metavar="CHAR", help="CSV delimiter (default ',', '\\t' for .tsv)")
    ingest.add_argument("--chunk-mb", type=_chunk_mb, default=1.0, metavar="N", help="MiB per message (1)")
    client.add_json_flag(ingest)
    ingest.set_defaults(func=cmd_ingest)

    ls = cmds.add_parser("list", help="list datasets")
    client.add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    show = cmds.add_parser("show", help="a dataset and its versions, or one version with its profile")
    show.add_argument("name", metavar="NAME")
    show.add_argument(
        "--version", type=client.non_negative_int, metavar="N", help="one version (0 = latest) with its profile"
    )
    client.add_json_flag(show)
    show.set_defaults(func=cmd_show)
