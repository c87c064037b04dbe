"""`flywheel drift report|alerts|segments`: what monitoring sees in production traffic (MonitoringService):
per-window drift, integrity, quality and latency, the alerts it raised (or a live stream of them), and
per-segment quality with the gaps between segments."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from flywheel.cli import client
from flywheel.cli.client import command, console, enum_name, fmt_number, fmt_time
from flywheel.cli.deploy import model_name_arg
from flywheel.v1 import common_pb2, monitoring_pb2

# --kind choices -> DriftKind.
KINDS: dict[str, common_pb2.DriftKind.ValueType] = {
    "data": common_pb2.DRIFT_KIND_DATA_DRIFT,
    "prediction": common_pb2.DRIFT_KIND_PREDICTION_DRIFT,
    "integrity": common_pb2.DRIFT_KIND_INTEGRITY,
    "quality": common_pb2.DRIFT_KIND_QUALITY,
    "segment": common_pb2.DRIFT_KIND_SEGMENT,
    "estimated": common_pb2.DRIFT_KIND_ESTIMATED_PERFORMANCE,
    "guard": common_pb2.DRIFT_KIND_GUARD_ROLLBACK,
    "rollout": common_pb2.DRIFT_KIND_ROLLOUT_ABORTED,
}


# ---------------------------------------------------------------------------------------------------
# Channel (client.connect covers the registry, training and ingestion)


def connect_monitoring() -> AbstractContextManager[Any]:
    """A MonitoringService stub on a fresh channel to the monitoring address."""
    return client.connect("monitoring")


# ---------------------------------------------------------------------------------------------------
# Arguments

_AGO = re.compile(r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time ("2024-05-01", "2024-05-01T12:00:00Z", "...+02:00"; no zone = UTC) or a
    span back from now ("90s", "30m", "2h", "7d", "1w"), as an aware UTC datetime; ValueError otherwise."""
    value = text.strip()
    match = _AGO.match(value.lower())
    if match:
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=float(match["n"]) * _UNIT_S[match["unit"]])
    try:
        dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError as exc:
        raise ValueError(f"expected an ISO 8601 time or a span like 30m, 2h, 7d; got {text!r}") from exc
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def since_arg(text: str) -> datetime:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def timestamp(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts


# ---------------------------------------------------------------------------------------------------
# Rendering: shared


def kind_text(kind: int) -> str:
    """DRIFT_KIND_DATA_DRIFT -> "data drift"."""
    return enum_name(common_pb2.DriftKind, kind).replace("_", " ") if kind else "-"


def fmt_kinds(kinds: Sequence[int]) -> str:
    if not kinds:
        return "[green]none[/]"
    return "[red]" + ", ".join(kind_text(k) for k in kinds) + "[/]"


def fmt_ref(ref: common_pb2.ModelRef) -> str:
    """ "churn:3" (the model:version form alerts use)."""
    if not ref.name:
        return "-"
    return f"{ref.name}:{ref.version}" if ref.version else ref.name


def fmt_segment(segment: common_pb2.Segment) -> str:
    return f"{segment.field}={segment.value}" if segment.field else "-"


def fmt_p_value(p: float) -> str:
    return fmt_number(p) if p else "-"


def fmt_breached(breached: bool) -> str:
    return "[bold red]yes[/]" if breached else "no"


def fmt_range(start: Timestamp, end: Timestamp) -> str:
    return f"{fmt_time(start)} - {fmt_time(end)}" if start.seconds or end.seconds else "-"


def fmt_latency(latency: monitoring_pb2.LatencySummary) -> str:
    if not (latency.p50_ms or latency.p99_ms or latency.mean_ms):
        return "-"
    text = f"p50 {fmt_number(latency.p50_ms)} ms, p99 {fmt_number(latency.p99_ms)} ms"
    return text + (f", mean {fmt_number(latency.mean_ms)} ms" if latency.mean_ms else "")


def scores_table(scores: Sequence[common_pb2.FeatureScore], title: str, name: str = "feature") -> Table:
    """One row per (feature, statistic); breached rows in red."""
    table = client.titled_table(title, name, "statistic", "score", "threshold", "p-value", "breached")
    for s in scores:
        table.add_row(
            escape(s.feature) or "-",
            escape(s.statistic) or "-",
            fmt_number(s.score),
            fmt_number(s.threshold) if s.threshold else "-",
            fmt_p_value(s.p_value),
            fmt_breached(s.breached),
            style="red" if s.breached else None,
        )
    return table


def fmt_scores(scores: Sequence[common_pb2.FeatureScore]) -> str:
    """ "age psi=0.31, age ks=0.22": the breached ones, or all when none is marked."""
    shown = [s for s in scores if s.breached] or list(scores)
    return ", ".join(f"{s.feature} {s.statistic}={fmt_number(s.score)}" for s in shown) or "-"


# ---------------------------------------------------------------------------------------------------
# Rendering: drift report


def integrity_renderables(integrity: monitoring_pb2.IntegrityReport) -> list[RenderableType]:
    """Per-feature counts (features with any), missing and extra fields, and the integrity rates."""
    parts: list[RenderableType] = []
    counted = [f for f in integrity.features if f.nulls or f.out_of_range or f.unseen_categories or f.type_mismatches]
    if counted:
        table = client.titled_table("integrity", "feature", "nulls", "out of range", "unseen", "type mismatches")
        for f in counted:
            table.add_row(
                escape(f.feature), str(f.nulls), str(f.out_of_range), str(f.unseen_categories), str(f.type_mismatches)
            )
        parts.append(table)
    elif integrity.features:
        parts.append("integrity: no nulls, out-of-range values, unseen categories or type mismatches")
    if integrity.missing_fields:
        parts.append(f"[red]missing fields[/]: {escape(', '.join(integrity.missing_fields))}")
    if integrity.extra_fields:
        parts.append(f"[yellow]extra fields[/]: {escape(', '.join(integrity.extra_fields))}")
    if integrity.scores:
        parts.append(scores_table(integrity.scores, "integrity rates"))
    return parts


def quality_table(quality: monitoring_pb2.QualityReport) -> Table:
    rows: list[tuple[str, Any]] = [
        ("metric", escape(quality.metric) or "-"),
        ("value", fmt_number(quality.value)),
        ("reference (test)", fmt_number(quality.reference_value)),
        ("drop", fmt_number(quality.drop)),
        ("labelled rows", str(quality.labelled_rows)),
        ("breached", fmt_breached(quality.breached)),
    ]
    others = [m for m in quality.metrics if m.name != quality.metric or m.class_label]
    if others:
        rows.append(("metrics", escape(client.fmt_metrics(others))))
    return client.kv_table(rows, title="quality")


def estimate_table(est: monitoring_pb2.PerformanceEstimate) -> Table:
    """Performance estimated without labels; next to the labels' verdict on the same rows when known."""
    rows: list[tuple[str, Any]] = [
        ("metric", escape(est.metric) or "-"),
        ("estimated", fmt_number(est.value)),
    ]
    if est.HasField("realized"):
        rows.append(("realized (labels)", fmt_number(est.realized)))
    rows += [
        ("reference (test)", fmt_number(est.reference_value)),
        ("drop", fmt_number(est.drop)),
        ("rows", str(est.rows)),
    ]
    if not est.HasField("realized"):
        rows.append(("breached", fmt_breached(est.breached)))
    others = [m for m in est.metrics if m.name != est.metric]
    if others:
        rows.append(("estimates", escape(client.fmt_metrics(others))))
    return client.kv_table(rows, title="estimated performance (no labels)")


def window_report(window: monitoring_pb2.WindowReport) -> Group:
    """A window's header (rows, time range, breached kinds, reference, latency), then its tables."""
    rows: list[tuple[str, Any]] = [
        ("window", escape(window.window_id) or "-"),
        ("model", client.fmt_model_ref(window.model)),
        ("rows", str(window.rows)),
        ("time range", fmt_range(window.start, window.end)),
        ("breached", fmt_kinds(window.breached)),
        ("reference", client.fmt_dataset_ref(window.reference)),
        ("latency", fmt_latency(window.latency)),
    ]
    parts: list[RenderableType] = [client.kv_table(rows)]
    if window.feature_scores:
        parts.append(scores_table(window.feature_scores, "feature drift"))
    if window.prediction_scores:
        parts.append(scores_table(window.prediction_scores, "prediction drift", name="output"))
    if window.HasField("integrity"):
        parts.extend(integrity_renderables(window.integrity))
    if window.HasField("quality"):
        parts.append(quality_table(window.quality))
    if window.HasField("estimated"):
        parts.append(estimate_table(window.estimated))
    if window.guard_checks:
        parts.append(scores_table(window.guard_checks, "post-promotion guard", name="check"))
    return Group(*parts)


def drift_report(windows: Sequence[monitoring_pb2.WindowReport]) -> Group:
    parts: list[RenderableType] = []
    for i, w in enumerate(windows):
        if i:
            parts.append("")
        parts.append(window_report(w))
    return Group(*parts)


# ---------------------------------------------------------------------------------------------------
# Rendering: alerts


def alert_kind(alert: monitoring_pb2.Alert) -> str:
    text = kind_text(alert.kind)
    return text + " [dim](suppressed)[/]" if alert.suppressed else text


def alerts_table(alerts: Sequence[monitoring_pb2.Alert]) -> Table:
    table = Table("time", "model", "kind", "window", "breached", "segment", "message")
    for a in alerts:
        table.add_row(
            fmt_time(a.create_time),
            escape(fmt_ref(a.model)),
            alert_kind(a),
            escape(a.window_id) or "-",
            escape(fmt_scores(a.scores)),
            escape(fmt_segment(a.segment)),
            escape(a.message) or "-",
        )
    return table


def alert_line(alert: monitoring_pb2.Alert) -> str:
    """ "2024-05-01 12:00:00  churn:3  data drift  window w-7: age psi=0.31 - message" for --watch."""
    text = f"{fmt_time(alert.create_time)}  [bold]{escape(fmt_ref(alert.model))}[/]  [red]{alert_kind(alert)}[/]"
    if alert.window_id:
        text += f"  window {escape(alert.window_id)}"
    detail = [fmt_scores(alert.scores)] if alert.scores else []
    if alert.segment.field:
        detail.append(f"segment {fmt_segment(alert.segment)}")
    if detail:
        text += ": " + escape(", ".join(detail))
    if alert.message:
        text += f" - {escape(alert.message)}"
    return text


def alert_json_line(alert: monitoring_pb2.Alert) -> str:
    return json.dumps(client.to_dict(alert), separators=(",", ":"))


# ---------------------------------------------------------------------------------------------------
# Rendering: segments


def metric_names(stats: Sequence[monitoring_pb2.SegmentStats]) -> list[str]:
    return list(dict.fromkeys(client.metric_label(m) for s in stats for m in s.metrics))


def segments_table(field: str, stats: Sequence[monitoring_pb2.SegmentStats]) -> Table:
    """One row per segment value, a column per metric; breached segments in red."""
    names = metric_names(stats)
    table = client.titled_table(field, "segment", "rows", "labelled", *names, "breached")
    for s in stats:
        values = {client.metric_label(m): m.value for m in s.metrics}
        table.add_row(
            escape(s.segment.value) or "-",
            str(s.rows),
            str(s.labelled_rows),
            *(fmt_number(values[n]) if n in values else "-" for n in names),
            fmt_breached(s.breached),
            style="red" if s.breached else None,
        )
    return table


def _metric_of(stats: Sequence[monitoring_pb2.SegmentStats], segment: common_pb2.Segment, metric: str) -> str:
    for s in stats:
        if s.segment.field == segment.field and s.segment.value == segment.value:
            for m in s.metrics:
                if client.metric_label(m) == metric:
                    return f" {fmt_number(m.value)}"
    return ""


def gap_line(gap: monitoring_pb2.SegmentGap, stats: Sequence[monitoring_pb2.SegmentStats] = ()) -> str:
    """ "accuracy gap 0.29: best plan=pro 0.91, worst plan=free 0.62 [breached]"."""
    best = fmt_segment(gap.best) + _metric_of(stats, gap.best, gap.metric)
    worst = fmt_segment(gap.worst) + _metric_of(stats, gap.worst, gap.metric)
    text = f"{escape(gap.metric or 'metric')} gap {fmt_number(gap.gap)}: best {escape(best)}, worst {escape(worst)}"
    return f"[bold red]{text}  breached[/]" if gap.breached else text


def segment_report(response: monitoring_pb2.GetSegmentReportResponse) -> Group:
    """Per field (in the order the server sent them): the segments table, then its gap lines."""
    head = client.fmt_model_ref(response.model)
    if response.window_id:
        head += f"  window {escape(response.window_id)}"
    parts: list[RenderableType] = [f"[bold]{head}[/]"]
    fields = list(dict.fromkeys([s.segment.field for s in response.segments] + [g.field for g in response.gaps]))
    for f in fields:
        stats = [s for s in response.segments if s.segment.field == f]
        if stats:
            parts.append(segments_table(escape(f) or "-", stats))
        else:
            parts.append(f"[bold]{escape(f) or '-'}[/]: no segments")
        parts.extend(gap_line(g, stats) for g in response.gaps if g.field == f)
    return Group(*parts)


def segment_json(response: monitoring_pb2.GetSegmentReportResponse) -> dict[str, Any]:
    return {
        **client.to_dict(response),
        **client.list_json("segments", response.segments),
        **client.list_json("gaps", response.gaps),
    }


# ---------------------------------------------------------------------------------------------------
# Commands


@command
def cmd_drift_report(args: argparse.Namespace) -> int:
    request = monitoring_pb2.GetDriftReportRequest(
        model_name=args.model,
        model_version=args.version or 0,
        window_id=args.window or "",
        window_count=args.windows or 0,
    )
    with connect_monitoring() as stub:
        response = stub.GetDriftReport(request, timeout=client.RPC_TIMEOUT_S)
    return client.print_listing(
        args.json, "windows", response.windows, drift_report, empty=f"no windows for {args.model} yet"
    )


def _list_request(args: argparse.Namespace) -> monitoring_pb2.ListAlertsRequest:
    request = monitoring_pb2.ListAlertsRequest(
        model_name=args.model or "",
        kind=KINDS[args.kind] if args.kind else common_pb2.DRIFT_KIND_UNSPECIFIED,
        page_size=min(args.limit, 1000) if args.limit else 0,
    )
    if args.since is not None:
        request.since.CopyFrom(timestamp(args.since))
    return request


def watch_alerts(stub: Any, args: argparse.Namespace) -> int:
    """Prints alerts as WatchAlerts delivers them (after those since --since, oldest first) until ^C."""
    request = monitoring_pb2.WatchAlertsRequest(
        model_name=args.model or "", kinds=[KINDS[args.kind]] if args.kind else []
    )
    call = stub.WatchAlerts(request)  # started before the backfill so nothing falls in between
    seen: set[str] = set()

    def show(alert: monitoring_pb2.Alert) -> None:
        if alert.alert_id:
            if alert.alert_id in seen:
                return
            seen.add(alert.alert_id)
        if args.json:
            print(alert_json_line(alert), flush=True)
        else:
            console.print(alert_line(alert), highlight=False)

    try:
        if args.since is not None:
            backlog = client.paged(stub.ListAlerts, _list_request(args), "alerts", limit=args.limit or None)
            for alert in reversed(backlog):
                show(alert)
        if not args.json:
            client.err_console.print("watching for alerts (Ctrl-C to stop)", highlight=False)
        for response in call:
            show(response.alert)
    finally:
        call.cancel()
    client.report_error("the alert stream ended: the monitoring service closed it")
    return 1


@command
def cmd_alerts(args: argparse.Namespace) -> int:
    with connect_monitoring() as stub:
        if args.watch:
            return watch_alerts(stub, args)
        alerts = client.paged(stub.ListAlerts, _list_request(args), "alerts", limit=args.limit or None)
    return client.print_listing(args.json, "alerts", alerts, alerts_table)


@command
def cmd_segments(args: argparse.Namespace) -> int:
    request = monitoring_pb2.GetSegmentReportRequest(
        model_name=args.model, model_version=args.version or 0, window_id=args.window or "", field=args.field or ""
    )
    with connect_monitoring() as stub:
        response = stub.GetSegmentReport(request, timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(segment_json(response))
    elif not response.segments and not response.gaps:
        console.print(f"no segment report for {args.model}", highlight=False)
    else:
        console.print(segment_report(response), highlight=False)
    return 0


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version", type=client.positive_int, metavar="V", help="model version (default: the one in production)"
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    drift = sub.add_parser("drift", help="drift, integrity, quality and latency per monitoring window")
    cmds = drift.add_subparsers(dest="drift_command", required=True)
    report = cmds.add_parser("report", help="a model's recent windows: feature and prediction drift, integrity")
    report.add_argument("model", type=model_name_arg, metavar="MODEL")
    _add_version(report)
    which = report.add_mutually_exclusive_group()
    which.add_argument("--window", metavar="ID", help="one window by id")
    which.add_argument("--windows", type=client.positive_int, metavar="N", help="the N most recent windows (1)")
    client.add_json_flag(report)
    report.set_defaults(func=cmd_drift_report)

    alerts = sub.add_parser("alerts", help="alerts raised by monitoring, newest first, or a live stream (--watch)")
    alerts.add_argument("model", nargs="?", type=model_name_arg, metavar="MODEL", help="one model's alerts")
    alerts.add_argument("--kind", choices=list(KINDS), help="only this kind of alert")
    alerts.add_argument(
        "--since", type=since_arg, metavar="TIME", help="ISO 8601 time (UTC unless it has a zone) or 30m, 2h, 7d"
    )
    alerts.add_argument(
        "--limit", type=client.non_negative_int, default=50, metavar="N", help="alerts listed (50; 0 = all)"
    )
    alerts.add_argument(
        "--watch",
        action="store_true",
        help="print alerts as they are raised until Ctrl-C (after those since --since); --json: one per line",
    )
    client.add_json_flag(alerts)
    alerts.set_defaults(func=cmd_alerts)

    segments = sub.add_parser("segments", help="per-segment quality and prediction rates and the gaps between them")
    segments.add_argument("model", type=model_name_arg, metavar="MODEL")
    _add_version(segments)
    segments.add_argument("--window", metavar="ID", help="default: the latest window")
    segments.add_argument("--field", metavar="F", help="one segment field (default: every configured one)")
    client.add_json_flag(segments)
    segments.set_defaults(func=cmd_segments)
