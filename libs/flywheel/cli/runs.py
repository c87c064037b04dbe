"""`flywheel runs start|list|show|watch|compare|cancel`: training runs (TrainingService)."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from flywheel.cli import client
from flywheel.cli.client import (
    command,
    console,
    enum_name,
    fmt_metrics,
    fmt_number,
    fmt_time,
    status_markup,
)
from flywheel.v1 import common_pb2, training_pb2

TERMINAL = frozenset(
    {training_pb2.RUN_STATUS_SUCCEEDED, training_pb2.RUN_STATUS_FAILED, training_pb2.RUN_STATUS_CANCELLED}
)
STATUS_CHOICES = client.enum_choices(training_pb2.RunStatus)


def status_text(status: int) -> str:
    return enum_name(training_pb2.RunStatus, status)


def stage_text(stage: int) -> str:
    return enum_name(training_pb2.RunStage, stage).replace("_", " ") if stage else "-"


def fmt_spec(run: training_pb2.Run) -> str:
    return f"{run.spec_name} v{run.spec_version}" if run.spec_name else "-"


def run_duration(run: training_pb2.Run) -> str:
    return client.elapsed(run.start_time, run.end_time)


def test_metric(run: training_pb2.Run) -> str:
    aggregate = [m for m in run.evaluation.metrics if not m.class_label]
    return fmt_metrics(aggregate[:3])


# ---------------------------------------------------------------------------------------------------
# Rendering


def runs_table(runs: Sequence[training_pb2.Run]) -> Table:
    table = Table("run", "spec", "dataset", "trigger", "status", "stage", "test metrics", "model", "created", "took")
    for r in runs:
        table.add_row(
            r.run_id,
            fmt_spec(r),
            client.fmt_dataset_ref(r.dataset),
            enum_name(training_pb2.RunTrigger, r.trigger),
            status_markup(status_text(r.status)),
            stage_text(r.stage),
            test_metric(r),
            client.fmt_model_ref(r.registered_model),
            fmt_time(r.create_time),
            run_duration(r),
        )
    return table


def trials_table(run: training_pb2.Run) -> Table:
    table = client.titled_table("trials", "#", "status", "params", "cv metrics", "duration", "error")
    has_best = run.status == training_pb2.RUN_STATUS_SUCCEEDED or len(run.best_params.fields) > 0
    for t in run.trials:
        best = has_best and t.number == run.best_trial
        table.add_row(
            f"{t.number}{' *' if best else ''}",
            status_markup(status_text(t.status)) if t.status else "-",
            client.fmt_struct(t.params),
            fmt_metrics(t.metrics),
            client.fmt_duration(t.duration),
            t.error or "",
            style="bold" if best else None,
        )
    return table


def evaluation_renderables(evaluation: training_pb2.Evaluation) -> list[RenderableType]:
    if not evaluation.metrics:
        return []
    split = enum_name(common_pb2.Split, evaluation.split) if evaluation.split else "test"
    parts: list[RenderableType] = []
    aggregate = [m for m in evaluation.metrics if not m.class_label]
    per_class = [m for m in evaluation.metrics if m.class_label]
    if aggregate:
        table = client.titled_table(f"{split} metrics ({evaluation.rows} rows)", "metric", "value")
        for m in aggregate:
            table.add_row(m.name, fmt_number(m.value))
        parts.append(table)
    if per_class:
        names = list(dict.fromkeys(m.name for m in per_class))
        classes = list(dict.fromkeys(m.class_label for m in per_class))
        values = {(m.class_label, m.name): m.value for m in per_class}
        table = client.titled_table(f"{split} metrics per class", "class", *names)
        for label in classes:
            table.add_row(label, *(fmt_number(values[label, n]) if (label, n) in values else "-" for n in names))
        parts.append(table)
    cm = evaluation.confusion_matrix
    if cm.labels:
        table = client.titled_table("confusion matrix", "actual \\ predicted", *cm.labels)
        for label, row in zip(cm.labels, cm.rows, strict=False):
            table.add_row(label, *(str(c) for c in row.counts))
        parts.append(table)
    return parts


def fmt_parity(parity: training_pb2.ParityCheck) -> str:
    if not parity.rows_checked and not parity.reason and not parity.passed:
        return "-"
    verdict = "[green]passed[/]" if parity.passed else "[red]failed[/]"
    text = (
        f"{verdict}: max abs diff {fmt_number(parity.max_abs_diff)}"
        f" (tolerance {fmt_number(parity.tolerance)}) on {parity.rows_checked} rows"
    )
    if parity.label_agreement:
        text += f", label agreement {parity.label_agreement:.2%}"
    if parity.reason:
        text += f"; {parity.reason}"
    return text


def run_detail(run: training_pb2.Run) -> Group:
    trigger = enum_name(training_pb2.RunTrigger, run.trigger)
    if run.trigger_event_id:
        trigger += f" (event {run.trigger_event_id})"
    rows: list[tuple[str, Any]] = [
        ("run", run.run_id),
        ("status", status_markup(status_text(run.status))),
        ("stage", stage_text(run.stage)),
        ("spec", fmt_spec(run)),
        ("dataset", client.fmt_dataset_ref(run.dataset, with_hash=True)),
        ("trigger", trigger),
        ("seed", str(run.seed)),
        ("code version", run.code_version or "-"),
        ("attempt", str(run.attempt or 1)),
        ("created", fmt_time(run.create_time)),
        ("started", fmt_time(run.start_time)),
        ("ended", fmt_time(run.end_time)),
        ("took", run_duration(run)),
    ]
    if run.cancelled_by and run.status != training_pb2.RUN_STATUS_CANCELLED:
        # cancelled, but its worker has not stopped it yet
        rows.append(("cancelling", f"[yellow]asked by {run.cancelled_by}{_reason(run.cancel_reason)}[/]"))
    if run.error:
        colour = "yellow" if run.status == training_pb2.RUN_STATUS_CANCELLED else "red"
        rows.append(("error" if colour == "red" else "cancelled", f"[{colour}]{run.error}[/]"))
    if run.best_params.fields:
        rows.append(("best trial", f"{run.best_trial}: {client.fmt_struct(run.best_params)}"))
    rows.append(("parity", fmt_parity(run.parity)))
    rows.append(("registered model", client.fmt_model_ref(run.registered_model)))
    parts: list[RenderableType] = [client.kv_table(rows)]
    if run.trials:
        parts.append(trials_table(run))
    parts.extend(evaluation_renderables(run.evaluation))
    return Group(*parts)


def _reason(reason: str) -> str:
    return f": {reason}" if reason else ""


def _cell(values: Sequence[Any], i: int) -> str:
    return client.fmt_value(values[i]) if i < len(values) else "-"


def comparison_table(run_ids: Sequence[str], response: training_pb2.CompareRunsResponse) -> Table:
    """Rows = metric and param names, columns = runs (request order); differing rows in yellow,
    the best run's value of each metric in bold green."""
    by_id = {r.run_id: r for r in response.runs}
    table = Table("")
    for run_id in run_ids:
        run = by_id.get(run_id)
        header = run_id[:8] if len(run_id) > 12 else run_id
        if run is not None:
            header += f"\n{fmt_spec(run)}"
        table.add_column(header, justify="right")
    n = len(run_ids)

    def context_row(name: str, cells: list[str]) -> None:
        table.add_row(name, *cells, style="yellow" if len(set(cells)) > 1 else None)

    if by_id:
        context_row("dataset", [client.fmt_dataset_ref(by_id[i].dataset) if i in by_id else "-" for i in run_ids])
        context_row("status", [status_text(by_id[i].status) if i in by_id else "-" for i in run_ids])
        table.add_section()
    for row in response.metrics:
        cells = [_cell(row.values, i) for i in range(n)]
        if 0 <= row.best_index < n and row.best_index < len(row.values):
            cells[row.best_index] = f"[bold green]{cells[row.best_index]}[/]"
        table.add_row(row.name, *cells, style="yellow" if row.differs else None)
    if response.metrics and response.params:
        table.add_section()
    for row in response.params:
        cells = [_cell(row.values, i) for i in range(n)]
        table.add_row(row.name, *cells, style="yellow" if row.differs else None)
    return table


def progress_update(p: training_pb2.RunProgress) -> dict[str, Any]:
    """Fields for the watch bar's task: stage as description, trials completed out of total."""
    best = f"best {fmt_number(p.best_score)}" if p.trials_completed else ""
    description = stage_text(p.stage) if p.stage else status_text(p.status)
    return {
        "description": description,
        "total": p.trials_total or None,
        "completed": p.trials_completed,
        "best": best,
    }


def trial_line(trial: training_pb2.Trial) -> str:
    text = f"trial {trial.number}: {fmt_metrics(trial.metrics)}"
    if trial.params.fields:
        text += f"  {client.fmt_struct(trial.params)}"
    if trial.duration.seconds or trial.duration.nanos:
        text += f"  ({client.fmt_duration(trial.duration)})"
    if trial.error:
        text += f"  [red]{trial.error}[/]"
    return text


def final_line(run: training_pb2.Run) -> str:
    head = f"run {run.run_id} {status_markup(status_text(run.status))}"
    if run.status == training_pb2.RUN_STATUS_SUCCEEDED:
        text = f"{head} in {run_duration(run)}: {test_metric(run)}"
        if run.registered_model.name:
            text += f"; registered {client.fmt_model_ref(run.registered_model)}"
        return text
    return f"{head} at stage {stage_text(run.stage)}" + (f": {run.error}" if run.error else "")


# ---------------------------------------------------------------------------------------------------
# Watching


def watch_run(stub: Any, run_id: str, json_out: bool) -> int:
    """Follows WatchRun until the run ends; 0 if it succeeded, 1 if it failed or was cancelled."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials"),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        console=client.err_console,
        disable=json_out,
    )
    last: training_pb2.RunProgress | None = None
    last_trial = None
    call = stub.WatchRun(training_pb2.WatchRunRequest(run_id=run_id))
    try:
        with progress:
            task = progress.add_task("waiting", total=None, best="")
            for response in call:
                last = response.progress
                progress.update(task, **progress_update(last))
                if last.HasField("last_trial") and last.last_trial.number != last_trial and not json_out:
                    last_trial = last.last_trial.number
                    progress.console.print(trial_line(last.last_trial), highlight=False)
                if last.status in TERMINAL:
                    break
    finally:
        call.cancel()
    run = stub.GetRun(training_pb2.GetRunRequest(run_id=run_id), timeout=client.RPC_TIMEOUT_S).run
    if run.status not in TERMINAL:
        client.report_error(f"the watch stream of run {run_id} ended while it was {status_text(run.status)}")
        return 1
    if json_out:
        client.print_json(run)
    if run.status == training_pb2.RUN_STATUS_SUCCEEDED:
        if not json_out:
            console.print(final_line(run), highlight=False)
        return 0
    error = run.error or (last.message if last is not None else "")
    print(
        f"error: run {run_id} {status_text(run.status)} at stage {stage_text(run.stage)}"
        + (f": {' '.join(error.split())}" if error else ""),
        file=sys.stderr,
    )
    return 1


# ---------------------------------------------------------------------------------------------------
# Commands


@command
def cmd_start(args: argparse.Namespace) -> int:
    request = training_pb2.StartRunRequest(
        spec_name=args.spec,
        spec_version=args.spec_version or 0,
        dataset_version=args.dataset_version or 0,
        request_id=args.request_id or str(uuid.uuid4()),
    )
    if args.seed is not None:
        request.seed = args.seed
    with client.connect("training") as stub:
        response = stub.StartRun(request, timeout=client.RPC_TIMEOUT_S)
        run = response.run
        if not args.json:
            verb = "started" if response.created else "found existing"
            console.print(
                f"{verb} run [bold]{run.run_id}[/]: spec {fmt_spec(run)},"
                f" dataset {client.fmt_dataset_ref(run.dataset)}, {status_markup(status_text(run.status))}",
                highlight=False,
            )
        if args.watch:
            return watch_run(stub, run.run_id, args.json)
    if args.json:
        client.print_json(response)
    return 0


@command
def cmd_list(args: argparse.Namespace) -> int:
    request = training_pb2.ListRunsRequest(
        spec_name=args.spec or "",
        model_name=args.model or "",
        dataset=args.dataset or "",
        status=(
            client.enum_value(training_pb2.RunStatus, args.status)
            if args.status
            else training_pb2.RUN_STATUS_UNSPECIFIED
        ),
    )
    with client.connect("training") as stub:
        runs = client.paged(stub.ListRuns, request, "runs", limit=args.limit or None)
    return client.print_listing(args.json, "runs", runs, runs_table)


@command
def cmd_show(args: argparse.Namespace) -> int:
    with client.connect("training") as stub:
        run = stub.GetRun(training_pb2.GetRunRequest(run_id=args.run_id), timeout=client.RPC_TIMEOUT_S).run
    if args.json:
        client.print_json(run)
    else:
        console.print(run_detail(run))
    return 0


@command
def cmd_watch(args: argparse.Namespace) -> int:
    with client.connect("training") as stub:
        return watch_run(stub, args.run_id, args.json)


@command
def cmd_compare(args: argparse.Namespace) -> int:
    if len(args.run_ids) < 2:
        raise client.CliError("compare needs at least two run ids", code=2)
    request = training_pb2.CompareRunsRequest(run_ids=args.run_ids, metrics=args.metric or [])
    with client.connect("training") as stub:
        response = stub.CompareRuns(request, timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(response)
    else:
        console.print(comparison_table(args.run_ids, response))
    return 0


@command
def cmd_cancel(args: argparse.Namespace) -> int:
    request = training_pb2.CancelRunRequest(run_id=args.run_id, reason=args.reason or "")
    with client.connect("training") as stub:
        run = stub.CancelRun(request, timeout=client.RPC_TIMEOUT_S).run  # waits up to 10 s for the worker
    if args.json:
        client.print_json(run)
    elif run.status == training_pb2.RUN_STATUS_CANCELLED:
        console.print(
            f"run [bold]{run.run_id}[/] {status_markup(status_text(run.status))} at stage {stage_text(run.stage)}"
            f" by {run.cancelled_by}{_reason(run.cancel_reason)}",
            highlight=False,
        )
    else:
        console.print(
            f"run [bold]{run.run_id}[/] is being cancelled: its worker stops it at its next heartbeat"
            f" (`flywheel runs watch {run.run_id}` to follow)",
            highlight=False,
        )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("runs", help="training runs")
    cmds = group.add_subparsers(dest="runs_command", required=True)

    start = cmds.add_parser("start", help="queue a manual run of a spec")
    start.add_argument("spec", metavar="SPEC", help="spec name")
    start.add_argument("--spec-version", type=client.non_negative_int, metavar="N", help="default: latest")
    start.add_argument("--dataset-version", type=client.non_negative_int, metavar="N", help="default: latest")
    start.add_argument("--seed", type=int, metavar="S", help="override the spec's search seed")
    start.add_argument("--request-id", metavar="KEY", help="idempotency key (default: a fresh UUID)")
    start.add_argument("--watch", action="store_true", help="follow the run until it ends (exit 1 if it fails)")
    client.add_json_flag(start)
    start.set_defaults(func=cmd_start)

    ls = cmds.add_parser("list", help="list runs, newest first")
    ls.add_argument("--spec", metavar="NAME")
    ls.add_argument("--model", metavar="NAME")
    ls.add_argument("--dataset", metavar="NAME")
    ls.add_argument("--status", choices=STATUS_CHOICES)
    ls.add_argument("--limit", type=client.non_negative_int, default=0, metavar="N", help="at most N runs")
    client.add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    show = cmds.add_parser("show", help="a run: status, trials, test metrics, parity, registered model")
    show.add_argument("run_id", metavar="RUN_ID")
    client.add_json_flag(show)
    show.set_defaults(func=cmd_show)

    watch = cmds.add_parser("watch", help="progress bar until the run ends; exit 0 on success, 1 on failure")
    watch.add_argument("run_id", metavar="RUN_ID")
    client.add_json_flag(watch)
    watch.set_defaults(func=cmd_watch)

    compare = cmds.add_parser("compare", help="metrics and params of runs side by side")
    compare.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    compare.add_argument("--metric", action="append", metavar="NAME", help="only these metrics (repeatable)")
    client.add_json_flag(compare)
    compare.set_defaults(func=cmd_compare)

    cancel = cmds.add_parser(
        "cancel",
        help="stop a queued or running run: it ends cancelled and registers nothing (exit 1 if it already ended)",
    )
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--reason", metavar="TEXT", help="recorded with the run (who cancelled it is recorded too)")
    client.add_json_flag(cancel)
    cancel.set_defaults(func=cmd_cancel)
