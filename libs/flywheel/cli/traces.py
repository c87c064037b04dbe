"""`flywheel traces [--last|--chain EVENT_ID|--trace TRACE_ID]`: the chains of the embedded stack, rebuilt
from its span file (FLYWHEEL_SPANS_FILE, by default <home>/spans.jsonl): a list of recent traces, or one
trace as a tree of service, span name and duration.

Apart from reading the file and the command handler, everything here is a pure function of span dicts
as `flywheel.telemetry.span_to_dict` writes them (trace_id, span_id, parent_span_id, name, kind, service,
start_ns, end_ns, status, attributes)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Column, Table
from rich.tree import Tree

from flywheel.cli import client
from flywheel.cli.client import CliError, command, console
from flywheel.config import get_settings

Span = dict[str, Any]

TRAINING_SPAN = "training run"
EVENT_ID_ATTR = "flywheel.event_id"
ALERT_ID_ATTR = "flywheel.alert_id"
# Attributes worth a glance in the tree (the ids that link a chain to the rest of the system).
SHOWN_ATTRS = (EVENT_ID_ATTR, ALERT_ID_ATTR, "flywheel.run_id")


# ---------------------------------------------------------------------------------------------------
# Reading


def spans_path() -> Path:
    """FLYWHEEL_SPANS_FILE, or <home>/spans.jsonl where `flywheel up` writes it."""
    settings = get_settings()
    return settings.spans_file or settings.home / "spans.jsonl"


def parse_span_lines(lines: Iterable[str]) -> list[Span]:
    """Span dicts from JSON lines. Lines that are not a span (a partial last line while a service is
    writing, stray text) are skipped: the file is appended to by several processes."""
    spans: list[Span] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("trace_id"), str) and isinstance(obj.get("span_id"), str):
            spans.append(obj)
    return spans


def load_spans(path: Path) -> list[Span]:
    if not path.exists():
        raise CliError(
            f"no span file at {path}: start the stack with `flywheel up` (it writes <home>/spans.jsonl)"
            " or point FLYWHEEL_SPANS_FILE at one"
        )
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_span_lines(fh)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------------------------
# Spans and traces


def _ns(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def start_ns(span: Span) -> int:
    return _ns(span.get("start_ns")) or 0


def end_ns(span: Span) -> int | None:
    return _ns(span.get("end_ns"))


def duration_ns(span: Span) -> int | None:
    end, start = end_ns(span), _ns(span.get("start_ns"))
    return None if end is None or start is None else max(0, end - start)


def is_error(span: Span) -> bool:
    return str(span.get("status") or "").upper() == "ERROR"


def attributes(span: Span) -> dict[str, Any]:
    attrs = span.get("attributes")
    return attrs if isinstance(attrs, dict) else {}


def service_name(span: Span) -> str:
    """The resource's service.name as written ("flywheel-training"); "-" when absent."""
    return str(span.get("service") or "") or "-"


def _order(span: Span) -> tuple[int, int, str, str]:
    return (start_ns(span), end_ns(span) or 0, str(span.get("name") or ""), str(span.get("span_id")))


def group_by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    traces: dict[str, list[Span]] = {}
    for span in spans:
        traces.setdefault(span["trace_id"], []).append(span)
    return traces


def trace_start(spans: Sequence[Span]) -> int:
    return min((start_ns(s) for s in spans), default=0)


def trace_end(spans: Sequence[Span]) -> int:
    return max((end_ns(s) or start_ns(s) for s in spans), default=0)


def newest_first(traces: dict[str, list[Span]]) -> list[str]:
    """Trace ids, the latest-starting trace first (ties: the one that ended last)."""
    return sorted(traces, key=lambda t: (trace_start(traces[t]), trace_end(traces[t]), t), reverse=True)


def select_last(spans: Iterable[Span]) -> str | None:
    """The most recent complete chain: the newest trace with a "training run" span, else the newest
    trace; None when there are no spans."""
    traces = group_by_trace(spans)
    order = newest_first(traces)
    for trace_id in order:
        if any(s.get("name") == TRAINING_SPAN for s in traces[trace_id]):
            return trace_id
    return order[0] if order else None


def select_chain(spans: Iterable[Span], event_id: str) -> str | None:
    """The trace holding a span whose flywheel.event_id (or flywheel.alert_id) is `event_id`; the newest
    one if several do; None if none."""
    traces = group_by_trace(
        s for s in spans if event_id in (attributes(s).get(EVENT_ID_ATTR), attributes(s).get(ALERT_ID_ATTR))
    )
    order = newest_first(traces)
    return order[0] if order else None


def select_trace(spans: Iterable[Span], trace_id: str) -> str | None:
    """A trace id given in full or by a unique prefix; CliError (2) when a prefix is ambiguous."""
    wanted = trace_id.strip().lower()
    ids = {s["trace_id"] for s in spans}
    if wanted in ids:
        return wanted
    matches = sorted(t for t in ids if t.startswith(wanted)) if wanted else []
    if len(matches) > 1:
        raise CliError(f"trace id prefix {trace_id!r} matches {len(matches)} traces; give more digits", code=2)
    return matches[0] if matches else None


# ---------------------------------------------------------------------------------------------------
# The tree


@dataclass
class SpanNode:
    span: Span
    children: list[SpanNode] = field(default_factory=list)
    # The span names a parent that is not in the file (not exported yet, or from another process's
    # file); it is shown at the root.
    parent_missing: bool = False


def build_tree(spans: Iterable[Span]) -> list[SpanNode]:
    """Root nodes of one trace's spans, every level ordered by start time. A span whose parent is not
    among `spans` becomes a root with parent_missing set; duplicate span ids keep the first; spans caught
    in a parent cycle (a corrupt file) are attached at the root too, so every span appears exactly once."""
    by_id: dict[str, Span] = {}
    for span in spans:
        by_id.setdefault(str(span.get("span_id")), span)
    nodes = {span_id: SpanNode(span) for span_id, span in by_id.items()}
    roots: list[SpanNode] = []
    for span_id, node in nodes.items():
        parent = node.span.get("parent_span_id")
        if not parent:
            roots.append(node)
        elif parent == span_id or parent not in nodes:
            node.parent_missing = True
            roots.append(node)
        else:
            nodes[parent].children.append(node)

    reached: set[int] = set()

    def visit(node: SpanNode) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            reached.add(id(n))
            stack.extend(n.children)

    for root in roots:
        visit(root)
    for node in nodes.values():  # parent cycles: cut each at its first unreached span
        if id(node) not in reached:
            nodes[node.span["parent_span_id"]].children.remove(node)
            node.parent_missing = True
            roots.append(node)
            visit(node)

    def sort(level: list[SpanNode]) -> None:
        level.sort(key=lambda n: _order(n.span))
        for n in level:
            sort(n.children)

    sort(roots)
    return roots


def tree_json(nodes: Sequence[SpanNode]) -> list[dict[str, Any]]:
    """The spans as nested JSON: each span dict with `children` (and `parent_missing` when true)."""
    out = []
    for node in nodes:
        item = dict(node.span)
        if node.parent_missing:
            item["parent_missing"] = True
        item["children"] = tree_json(node.children)
        out.append(item)
    return out


def fmt_ms(ns: int | None) -> str:
    """Nanoseconds as milliseconds: "0.42 ms", "12.3 ms", "1,234.5 ms"; "-" when unknown."""
    if ns is None:
        return "-"
    ms = ns / 1e6
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:,.1f} ms"


def fmt_start(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def span_label(span: Span, origin: int, parent_missing: bool = False) -> str:
    """ "+12.3 ms  flywheel-registry  /flywheel.v1.RegistryService/RegisterModel  4.56 ms", red if it failed."""
    offset = f"+{fmt_ms(max(0, start_ns(span) - origin))}"
    text = f"{escape(service_name(span))}  {escape(str(span.get('name') or '-'))}  {fmt_ms(duration_ns(span))}"
    text = f"[bold red]{text}  ERROR[/]" if is_error(span) else text
    ids = "  ".join(
        f"{key.removeprefix('flywheel.')}={escape(str(attributes(span)[key]))}"
        for key in SHOWN_ATTRS
        if attributes(span).get(key)
    )
    label = f"[dim]{offset}[/]  {text}"
    if ids:
        label += f"  [dim]{ids}[/]"
    if parent_missing:
        label += "  [yellow](parent not in file)[/]"
    return label


def trace_header(trace_id: str, spans: Sequence[Span]) -> str:
    services = sorted({service_name(s) for s in spans})
    errors = sum(1 for s in spans if is_error(s))
    text = (
        f"[bold]trace {escape(trace_id)}[/]\n{fmt_start(trace_start(spans))} UTC  {len(spans)} spans"
        f"  {fmt_ms(trace_end(spans) - trace_start(spans))}  services: {escape(', '.join(services))}"
    )
    return text + (f"  [red]{errors} error{'s' if errors != 1 else ''}[/]" if errors else "")


def trace_tree(trace_id: str, spans: Sequence[Span]) -> Tree:
    """The rich Tree of one trace: the trace id at the top, then its spans by start time, offsets from
    the trace's start."""
    origin = trace_start(spans)
    tree = Tree(trace_header(trace_id, spans))

    def add(parent: Tree, nodes: Sequence[SpanNode]) -> None:
        for node in nodes:
            add(parent.add(span_label(node.span, origin, node.parent_missing)), node.children)

    add(tree, build_tree(spans))
    return tree


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    start_ns: int
    duration_ns: int
    root: str
    spans: int
    services: tuple[str, ...]
    errors: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "start_ns": self.start_ns,
            "duration_ns": self.duration_ns,
            "root": self.root,
            "spans": self.spans,
            "services": list(self.services),
            "errors": self.errors,
        }


def summarize(spans: Iterable[Span], limit: int | None = None, min_spans: int = 1) -> list[TraceSummary]:
    """One summary per trace with at least `min_spans` spans, newest first, at most `limit`."""
    traces = {t: members for t, members in group_by_trace(spans).items() if len(members) >= min_spans}
    out = []
    for trace_id in newest_first(traces)[:limit]:
        members = traces[trace_id]
        roots = build_tree(members)
        root = next((n.span for n in roots if not n.parent_missing), roots[0].span)
        out.append(
            TraceSummary(
                trace_id=trace_id,
                start_ns=trace_start(members),
                duration_ns=trace_end(members) - trace_start(members),
                root=f"{service_name(root)}  {root.get('name') or '-'}",
                spans=len(members),
                services=tuple(sorted({service_name(s) for s in members})),
                errors=sum(1 for s in members if is_error(s)),
            )
        )
    return out


def traces_table(summaries: Sequence[TraceSummary]) -> Table:
    table = Table(
        Column("trace", no_wrap=True, min_width=32),  # ids are for copying: never cut
        "start (UTC)",
        Column("root span", overflow="fold"),
        "spans",
        "duration",
        Column("services", overflow="fold"),
    )
    for t in summaries:
        spans = str(t.spans) + (f" [red]({t.errors} failed)[/]" if t.errors else "")
        table.add_row(
            t.trace_id, fmt_start(t.start_ns), escape(t.root), spans, fmt_ms(t.duration_ns), "\n".join(t.services)
        )
    return table


# ---------------------------------------------------------------------------------------------------
# Command


@command
def cmd_traces(args: argparse.Namespace) -> int:
    path = spans_path()
    spans = load_spans(path)
    if args.chain is None and not args.last and args.trace is None:
        summaries = summarize(spans, args.limit or None, args.min_spans)
        if args.json:
            client.print_json({"traces": [s.to_dict() for s in summaries]})
            return 0
        if summaries:
            console.print(traces_table(summaries), highlight=False)
        else:
            empty = f"no traces in {path}" if not spans else f"no traces of {args.min_spans}+ spans in {path}"
            console.print(empty, highlight=False)
        small = sum(1 for members in group_by_trace(spans).values() if len(members) < args.min_spans)
        if small:
            console.print(
                f"[dim]{small} traces of fewer than {args.min_spans} spans not listed (--min-spans 1)[/]",
                highlight=False,
            )
        return 0

    if args.last:
        trace_id = select_last(spans)
        if trace_id is None:
            raise CliError(f"no spans in {path}")
    elif args.chain is not None:
        trace_id = select_chain(spans, args.chain)
        if trace_id is None:
            raise CliError(f"no span in {path} carries event or alert id {args.chain!r}")
    else:
        trace_id = select_trace(spans, args.trace)
        if trace_id is None:
            raise CliError(f"no trace {args.trace!r} in {path}")
    members = [s for s in spans if s["trace_id"] == trace_id]
    if args.json:
        client.print_json({"trace_id": trace_id, "spans": tree_json(build_tree(members))})
    else:
        console.print(trace_tree(trace_id, members), highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    traces = sub.add_parser(
        "traces",
        help="recent traces from the stack's span file, or one chain as a tree (service, span, duration)",
    )
    which = traces.add_mutually_exclusive_group()
    which.add_argument(
        "--last", action="store_true", help="the newest trace with a training run (else the newest trace)"
    )
    which.add_argument(
        "--chain", metavar="EVENT_ID", help="the trace that handled this event (flywheel.event_id or alert id)"
    )
    which.add_argument("--trace", metavar="TRACE_ID", help="one trace by id (or a unique prefix)")
    traces.add_argument(
        "--limit", type=client.non_negative_int, default=20, metavar="N", help="traces listed (20; 0 = all)"
    )
    traces.add_argument(
        "--min-spans",
        type=client.positive_int,
        default=2,
        metavar="N",
        help="list only traces of at least N spans (2: hides lone health polls and queries)",
    )
    client.add_json_flag(traces)
    traces.set_defaults(func=cmd_traces)
