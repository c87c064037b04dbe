"""`flywheel specs create|list|show`: versioned training specs (TrainingService)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Group
from rich.table import Table

from flywheel.cli import client
from flywheel.cli.client import command, console, enum_name, fmt_direction, fmt_number, fmt_policy, fmt_time
from flywheel.v1 import common_pb2, training_pb2


def fmt_triggers(triggers: training_pb2.Triggers) -> str:
    parts = []
    if triggers.on_data_versioned:
        parts.append("data.versioned")
    if triggers.on_drift_detected:
        parts.append("drift.detected" + (" (wait for new data)" if triggers.wait_for_new_data else ""))
    if parts and triggers.HasField("cooldown"):
        parts.append(f"cooldown {client.fmt_duration(triggers.cooldown)}")
    return ", ".join(parts) or "manual only"


def fmt_distribution(dist: training_pb2.ParamDistribution) -> str:
    kind = dist.WhichOneof("kind")
    if kind == "choices":
        return "choices " + client.fmt_value(dist.choices)
    if kind == "range":
        r = dist.range
        flags = [name for name, on in (("log", r.log), ("integer", r.integer)) if on]
        return f"range [{fmt_number(r.low)}, {fmt_number(r.high)}]" + (f" ({', '.join(flags)})" if flags else "")
    return "-"


def specs_table(specs: Sequence[training_pb2.TrainingSpec]) -> Table:
    table = Table("name", "version", "dataset", "model", "task", "estimator", "metric", "triggers", "created")
    for s in specs:
        table.add_row(
            s.name,
            f"v{s.version}",
            s.dataset,
            s.model_name,
            enum_name(common_pb2.Task, s.task),
            enum_name(training_pb2.Estimator, s.estimator),
            f"{s.metric} ({fmt_direction(s.direction)})" if s.metric else "-",
            fmt_triggers(s.triggers),
            fmt_time(s.create_time),
        )
    return table


def search_space_table(space: training_pb2.SearchSpace) -> Table:
    title = (
        f"search space: {enum_name(training_pb2.SearchStrategy, space.strategy) if space.strategy else 'default'}"
        f", budget {space.trial_budget or 'default'}, seed {space.seed}, cv folds {space.cv_folds or 'default'}"
    )
    table = client.titled_table(title, "param", "values")
    for name, dist in sorted(space.params.items()):
        table.add_row(name, fmt_distribution(dist))
    for name, value in sorted(space.fixed_params.fields.items()):
        table.add_row(name, f"fixed {client.fmt_value(value)}")
    return table


def spec_detail(spec: training_pb2.TrainingSpec) -> Group:
    rows = [
        ("spec", f"{spec.name} v{spec.version}"),
        ("description", spec.description or "-"),
        ("dataset", spec.dataset),
        ("model", spec.model_name),
        ("task", enum_name(common_pb2.Task, spec.task)),
        ("estimator", enum_name(training_pb2.Estimator, spec.estimator)),
        ("metric", f"{spec.metric} ({fmt_direction(spec.direction)})" if spec.metric else "-"),
        ("features", ", ".join(spec.feature_fields) or "all schema fields except label and key"),
        ("triggers", fmt_triggers(spec.triggers)),
        ("promotion", fmt_policy(spec.promotion_policy)),
        ("parity tolerance", fmt_number(spec.parity_tolerance) if spec.parity_tolerance else "default"),
        ("tags", client.fmt_map(spec.tags)),
        ("created", fmt_time(spec.create_time)),
    ]
    return Group(client.kv_table(rows), search_space_table(spec.search_space))


@command
def cmd_create(args: argparse.Namespace) -> int:
    spec = client.load_json_message(args.file, training_pb2.TrainingSpec())
    assert isinstance(spec, training_pb2.TrainingSpec)
    with client.connect("training") as stub:
        response = stub.CreateSpec(training_pb2.CreateSpecRequest(spec=spec), timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(response.spec)
    else:
        console.print(f"created spec [bold]{response.spec.name}[/] v{response.spec.version}")
        console.print(spec_detail(response.spec))
    return 0


@command
def cmd_list(args: argparse.Namespace) -> int:
    request = training_pb2.ListSpecsRequest(
        dataset=args.dataset or "", model_name=args.model or "", all_versions=args.all_versions
    )
    with client.connect("training") as stub:
        specs = client.paged(stub.ListSpecs, request, "specs")
    return client.print_listing(args.json, "specs", specs, specs_table)


@command
def cmd_show(args: argparse.Namespace) -> int:
    with client.connect("training") as stub:
        response = stub.GetSpec(
            training_pb2.GetSpecRequest(name=args.name, version=args.version or 0), timeout=client.RPC_TIMEOUT_S
        )
    if args.json:
        client.print_json(response.spec)
    else:
        console.print(spec_detail(response.spec))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("specs", help="versioned training specs")
    cmds = group.add_subparsers(dest="specs_command", required=True)

    create = cmds.add_parser("create", help="create a spec, or a new version of the spec with that name")
    create.add_argument("--file", required=True, metavar="SPEC.json", help="JSON flywheel.v1.TrainingSpec")
    client.add_json_flag(create)
    create.set_defaults(func=cmd_create)

    ls = cmds.add_parser("list", help="list specs (latest versions)")
    ls.add_argument("--dataset", metavar="NAME", help="only specs on this dataset")
    ls.add_argument("--model", metavar="NAME", help="only specs registering into this model")
    ls.add_argument("--all-versions", action="store_true", help="every version, not only the latest")
    client.add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    show = cmds.add_parser("show", help="one spec version")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--version", type=client.non_negative_int, metavar="N", help="default: latest")
    client.add_json_flag(show)
    show.set_defaults(func=cmd_show)
