"""`flywheel models list|show|lineage|download`: the model registry (RegistryService)."""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.tree import Tree

from flywheel.cli import client
from flywheel.cli.client import CliError, ModelSelector, command, console, enum_name, fmt_time
from flywheel.rollout_gates import step_name
from flywheel.v1 import common_pb2, registry_pb2

# ---------------------------------------------------------------------------------------------------
# Rendering


def fmt_aliases(aliases: Any) -> str:
    """Model.aliases (alias -> version) as "production=v3, staging=v4"."""
    return ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items(), key=lambda kv: (kv[1], kv[0]))) or "-"


def models_table(models: Sequence[registry_pb2.Model]) -> Table:
    table = Table("model", "latest", "aliases", "promotion policy", "created")
    for m in models:
        table.add_row(
            m.name,
            f"v{m.latest_version}" if m.latest_version else "-",
            fmt_aliases(m.aliases),
            client.fmt_policy(m.policy),
            fmt_time(m.create_time),
        )
    return table


def signature_table(signature: common_pb2.ModelSignature) -> Table:
    table = client.titled_table("signature", "", "name", "datatype", "shape")
    for kind, tensors in (("input", signature.inputs), ("output", signature.outputs)):
        for t in tensors:
            shape = "[" + ", ".join("?" if d < 0 else str(d) for d in t.shape) + "]"
            table.add_row(kind, t.name, t.datatype, shape)
    return table


def fmt_lineage(lineage: common_pb2.Lineage) -> str:
    if not lineage.run_id and not lineage.dataset.name:
        return "-"
    parts = [f"dataset {client.fmt_dataset_ref(lineage.dataset, with_hash=True)}"]
    if lineage.run_id:
        parts.append(f"run {lineage.run_id}")
    if lineage.spec_name:
        parts.append(f"spec {lineage.spec_name} v{lineage.spec_version}")
    if lineage.code_version:
        parts.append(f"code {lineage.code_version}")
    return ", ".join(parts)


def fmt_promotion(decision: registry_pb2.PromotionDecision) -> str:
    if not decision.state:
        return "-"
    text = enum_name(registry_pb2.PromotionState, decision.state).replace("_", " ")
    if decision.state == registry_pb2.PROMOTION_STATE_ROLLING_OUT and decision.HasField("rollout"):
        r = decision.rollout
        gates = ", ".join(f"{g.gate} {g.value:.3g}/{g.threshold:g}" for g in r.gates if g.sample)
        text += f" ({step_name(r)}, step {r.step + 1} of {r.steps}{'; ' + gates if gates else ''})"
    return text + (f": {decision.reason}" if decision.reason else "")


def model_version_detail(mv: registry_pb2.ModelVersion) -> Group:
    rows: list[tuple[str, Any]] = [
        ("model", client.fmt_model_ref(mv.ref)),
        ("description", mv.description or "-"),
        ("task", enum_name(common_pb2.Task, mv.task)),
        ("checksum", f"sha256:{mv.checksum}" if mv.checksum else "-"),
        ("size", client.fmt_bytes(mv.size_bytes) if mv.size_bytes else "-"),
        ("format", mv.format or "-"),
        ("artifact", mv.artifact_uri or "-"),
        ("aliases", ", ".join(sorted(mv.aliases)) or "-"),
        ("tags", client.fmt_map(mv.tags)),
        ("lineage", fmt_lineage(mv.lineage)),
        ("features", ", ".join(mv.signature.feature_names) or "-"),
        ("classes", ", ".join(mv.signature.class_labels) or "-"),
        ("params", client.fmt_struct(mv.params)),
        ("promotion", fmt_promotion(mv.promotion)),
        ("created", f"{fmt_time(mv.create_time)}" + (f" by {mv.created_by}" if mv.created_by else "")),
    ]
    if mv.archived:
        rows.append(("archived", f"[yellow]yes[/]: {mv.archive_reason or 'no reason given'}"))
    parts: list[RenderableType] = [client.kv_table(rows)]
    if mv.metrics:
        parts.append(client.metrics_table(mv.metrics, title="metrics"))
    if mv.signature.inputs or mv.signature.outputs:
        parts.append(signature_table(mv.signature))
    return Group(*parts)


def lineage_tree(response: registry_pb2.GetLineageResponse) -> Tree:
    """model version -> run -> training dataset version -> its parents, nearest first."""
    mv = response.version
    lineage = response.lineage if response.HasField("lineage") else mv.lineage
    head = f"[bold]model {client.fmt_model_ref(mv.ref)}[/]"
    if mv.checksum:
        head += f"  sha256:{client.short_hash(mv.checksum)}"
    if mv.aliases:
        head += "  @" + " @".join(sorted(mv.aliases))
    tree = Tree(head)
    run_label = f"run {lineage.run_id}" if lineage.run_id else "run -"
    details = []
    if lineage.spec_name:
        details.append(f"spec {lineage.spec_name} v{lineage.spec_version}")
    details.append(f"seed {lineage.seed}")
    if lineage.code_version:
        details.append(f"code {lineage.code_version}")
    node = tree.add(f"{run_label}  ({', '.join(details)})")
    ancestry: Iterable[common_pb2.DatasetRef]
    if response.dataset_ancestry:
        ancestry = response.dataset_ancestry
    else:
        ds = lineage.dataset
        ancestry = [ds] + [common_pb2.DatasetRef(name=ds.name, version=v) for v in lineage.parent_dataset_versions]
    for i, ref in enumerate(ancestry):
        label = "dataset" if i == 0 else "parent"
        text = f"{label} {client.fmt_dataset_ref(ref)}"
        if ref.content_hash:
            text += f"  {client.short_hash(ref.content_hash)}"
        node = node.add(text)
    return tree


# ---------------------------------------------------------------------------------------------------
# Download


class ChecksumError(CliError):
    pass


def resolve_out_path(out: str, first: registry_pb2.DownloadArtifactResponse, ref: ModelSelector) -> Path:
    """--out as given, or `<dir>/<name>-v<version>.onnx` when it names an existing directory."""
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        name = first.model.name or ref.name
        version = first.model.version or ref.version
        path = path / (f"{name}-v{version}.onnx" if version else f"{name}.onnx")
    return path


def write_artifact(
    responses: Iterable[registry_pb2.DownloadArtifactResponse],
    out: str,
    ref: ModelSelector,
    progress: Progress | None = None,
) -> tuple[Path, str, int, common_pb2.ModelRef]:
    """Writes the stream to `<path>.part`, checks offsets, size and sha256, then renames to the path."""
    it = iter(responses)
    first = next(it, None)
    if first is None:
        raise CliError("the server sent no artifact data")
    if not first.sha256:
        raise ChecksumError("the first message carries no sha256")
    expected, size = first.sha256.lower(), first.size_bytes
    path = resolve_out_path(out, first, ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    task = progress.add_task(f"downloading {path.name}", total=size or None) if progress else None
    digest = hashlib.sha256()
    written = 0
    last_sha = ""
    try:
        with open(part, "wb") as fh:
            for msg in _chain(first, it):
                if msg.chunk:
                    if msg.offset != written:
                        raise CliError(f"chunk at offset {msg.offset}, expected {written}")
                    fh.write(msg.chunk)
                    digest.update(msg.chunk)
                    written += len(msg.chunk)
                    if progress is not None and task is not None:
                        progress.update(task, completed=written)
                if msg.sha256:
                    last_sha = msg.sha256.lower()
        actual = digest.hexdigest()
        if size and written != size:
            raise ChecksumError(f"received {written} bytes, the server announced {size}")
        if actual != expected:
            raise ChecksumError(f"sha256 mismatch: got {actual}, expected {expected}")
        if last_sha and last_sha != expected:
            raise ChecksumError(f"sha256 of the last message ({last_sha}) differs from the first ({expected})")
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path, actual, written, first.model


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


# ---------------------------------------------------------------------------------------------------
# Commands


def _get_version(stub: Any, ref: ModelSelector) -> registry_pb2.ModelVersion:
    request = ref.apply(registry_pb2.GetModelVersionRequest(name=ref.name))
    return stub.GetModelVersion(request, timeout=client.RPC_TIMEOUT_S).version


@command
def cmd_list(args: argparse.Namespace) -> int:
    with client.connect("registry") as stub:
        models = client.paged(stub.ListModels, registry_pb2.ListModelsRequest(alias=args.alias or ""), "models")
    return client.print_listing(args.json, "models", models, models_table)


@command
def cmd_show(args: argparse.Namespace) -> int:
    with client.connect("registry") as stub:
        version = _get_version(stub, args.ref)
    if args.json:
        client.print_json(version)
    else:
        console.print(model_version_detail(version), highlight=False)
    return 0


@command
def cmd_lineage(args: argparse.Namespace) -> int:
    ref: ModelSelector = args.ref
    with client.connect("registry") as stub:
        number = ref.version or 0
        if ref.alias is not None:
            number = _get_version(stub, ref).ref.version
        response = stub.GetLineage(
            registry_pb2.GetLineageRequest(name=ref.name, version=number), timeout=client.RPC_TIMEOUT_S
        )
    if args.json:
        client.print_json(response)
    else:
        console.print(lineage_tree(response), highlight=False)
    return 0


@command
def cmd_download(args: argparse.Namespace) -> int:
    ref: ModelSelector = args.ref
    request = ref.apply(registry_pb2.DownloadArtifactRequest(name=ref.name))
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=client.err_console,
        transient=True,
    )
    with client.connect("registry") as stub:
        call = stub.DownloadArtifact(request)
        try:
            with progress:
                path, sha, size, model = write_artifact(call, args.out, ref, progress)
        finally:
            call.cancel()
    if args.json:
        client.print_json({"path": str(path), "sha256": sha, "size_bytes": size, "model": client.to_dict(model)})
    else:
        label = f"{client.fmt_model_ref(model)}: " if model.name else ""
        console.print(f"{label}{path} ({client.fmt_bytes(size)})\nsha256 {sha}", highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("models", help="the model registry")
    cmds = group.add_subparsers(dest="models_command", required=True)

    ls = cmds.add_parser("list", help="models with their latest version and aliases")
    ls.add_argument("--alias", metavar="ALIAS", help="only models that have this alias, e.g. production")
    client.add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    show = cmds.add_parser("show", help="one model version: checksum, metrics, signature, lineage, tags")
    show.add_argument("ref", type=client.model_ref_arg, metavar="NAME[:VERSION|@ALIAS]", help="default version: latest")
    client.add_json_flag(show)
    show.set_defaults(func=cmd_show)

    lineage = cmds.add_parser("lineage", help="model version -> run -> dataset version -> its ancestry")
    lineage.add_argument("ref", type=client.model_ref_arg, metavar="NAME[:VERSION]", help="default: latest")
    client.add_json_flag(lineage)
    lineage.set_defaults(func=cmd_lineage)

    download = cmds.add_parser("download", help="download a version's ONNX artifact, verifying its sha256")
    download.add_argument("ref", type=client.model_ref_arg, metavar="NAME[:VERSION|@ALIAS]")
    download.add_argument(
        "--out", required=True, metavar="PATH", help="file to write, or a directory (NAME-vN.onnx inside)"
    )
    client.add_json_flag(download)
    download.set_defaults(func=cmd_download)
