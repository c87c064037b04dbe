"""`flywheel deploy status|history|approve|reject|rollback|canary|shadow|clear`: what serving runs
(ServingAdmin: the stored traffic policy, its audit trail, and each serving replica's view of it) and
how versions get there (the registry's staging reports, promotion decisions and rollback)."""

from __future__ import annotations

import argparse
import getpass
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import grpc
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from flywheel.cli import client
from flywheel.cli.client import CliError, command, console, enum_name, fmt_number, fmt_time
from flywheel.cli.models import fmt_promotion
from flywheel.v1 import common_pb2, monitoring_pb2, registry_pb2, serving_pb2

# Audit actions `deploy status MODEL` lists: how production moved and why.
DEPLOY_ACTIONS = frozenset(
    {
        registry_pb2.AUDIT_ACTION_CHECKS_REPORTED,
        registry_pb2.AUDIT_ACTION_PROMOTED,
        registry_pb2.AUDIT_ACTION_NOT_PROMOTED,
        registry_pb2.AUDIT_ACTION_APPROVED,
        registry_pb2.AUDIT_ACTION_REJECTED,
        registry_pb2.AUDIT_ACTION_ROLLED_BACK,
        registry_pb2.AUDIT_ACTION_ALIAS_SET,
        registry_pb2.AUDIT_ACTION_ALIAS_DELETED,
        registry_pb2.AUDIT_ACTION_POLICY_SET,
    }
)


# ---------------------------------------------------------------------------------------------------
# Serving channel (client.connect covers the registry, training and ingestion)


def serving_channel() -> AbstractContextManager[grpc.Channel]:
    """A fresh channel to the serving address (ServingAdmin and the inference service)."""
    return client.channel("serving")


def connect_admin() -> AbstractContextManager[Any]:
    return client.connect("serving")


# ---------------------------------------------------------------------------------------------------
# Arguments


def default_actor() -> str:
    """The login name, so audit records say who; the server falls back to its own default when empty."""
    try:
        return getpass.getuser()
    except Exception:  # no user database entry, no LOGNAME/USER: let the server decide
        return ""


def versioned_ref_arg(text: str) -> client.ModelSelector:
    """argparse type for MODEL:VERSION (an explicit version number)."""
    try:
        ref = client.parse_model_ref(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if ref.version is None:
        raise argparse.ArgumentTypeError(f"expected MODEL:VERSION with a version number, got {text!r}")
    return ref


def model_name_arg(text: str) -> str:
    """argparse type for a bare model name (no version or alias)."""
    name = text.strip()
    if not name or any(c in name for c in ":@") or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"expected a model name, got {text!r}")
    return name


def percent_arg(text: str) -> float:
    """argparse type for a traffic percentage in (0, 100]."""
    try:
        value = float(text.rstrip("%"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if math.isnan(value) or not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in (0, 100], got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# Rendering: deployments


def role_text(role: int) -> str:
    return enum_name(common_pb2.ServingRole, role) if role else "-"


def state_text(state: serving_pb2.SlotState.ValueType) -> str:
    return enum_name(serving_pb2.SlotState, state) if state else "-"


def state_markup(state: serving_pb2.SlotState.ValueType) -> str:
    text = state_text(state)
    colour = {
        serving_pb2.SLOT_STATE_READY: "green",
        serving_pb2.SLOT_STATE_LOADING: "cyan",
        serving_pb2.SLOT_STATE_WARMING: "cyan",
        serving_pb2.SLOT_STATE_DRAINING: "yellow",
        serving_pb2.SLOT_STATE_FAILED: "red",
    }.get(state)
    return f"[{colour}]{text}[/]" if colour else text


def fmt_provider(provider: str) -> str:
    """ "CUDAExecutionProvider" -> "CUDA"."""
    if not provider:
        return "-"
    return provider[: -len("ExecutionProvider")] if provider.endswith("ExecutionProvider") else provider


def fmt_version(version: int) -> str:
    return f"v{version}" if version else "-"


def production_version(deployment: serving_pb2.Deployment) -> int:
    """The version answering as production: a ready production slot, else one not draining; 0 if none."""
    production = [s for s in deployment.slots if s.role == common_pb2.SERVING_ROLE_PRODUCTION]
    ready = [s for s in production if s.state == serving_pb2.SLOT_STATE_READY]
    live = [s for s in production if s.state != serving_pb2.SLOT_STATE_DRAINING]
    for slots in (ready, live):
        if slots:
            return slots[0].model.version
    return 0


def fmt_slot(slot: serving_pb2.ModelSlot) -> str:
    """ "production v7 ready (CUDA)"; a failed slot carries its error."""
    text = f"{role_text(slot.role)} {fmt_version(slot.model.version)} {state_markup(slot.state)}"
    if slot.execution_provider:
        text += f" ({fmt_provider(slot.execution_provider)})"
    if slot.error:
        text += f": {escape(slot.error)}"
    return text


def fmt_percent(percent: float) -> str:
    return f"{fmt_number(percent)}%"


def fmt_traffic(deployment: serving_pb2.Deployment) -> str:
    """ "production only", "canary v8 10%", "shadow v8 100%"."""
    traffic = deployment.traffic
    mode = traffic.mode
    if mode in (serving_pb2.TRAFFIC_MODE_UNSPECIFIED, serving_pb2.TRAFFIC_MODE_PRODUCTION_ONLY):
        return "production only"
    name = enum_name(serving_pb2.TrafficMode, mode).replace("_", " ")
    return f"{name} {fmt_version(traffic.challenger.version)} {fmt_percent(traffic.percent)}"


def traffic_line(deployment: serving_pb2.Deployment) -> str:
    """The traffic split in a sentence, as the canary/shadow/clear commands print it."""
    traffic = deployment.traffic
    prod = fmt_version(production_version(deployment))
    head = f"{deployment.model_name}: "
    if traffic.mode == serving_pb2.TRAFFIC_MODE_CANARY:
        challenger = fmt_version(traffic.challenger.version)
        rest = max(0.0, 100.0 - traffic.percent)
        text = f"canary {challenger} {fmt_percent(traffic.percent)}, production {prod} {fmt_percent(rest)}"
    elif traffic.mode == serving_pb2.TRAFFIC_MODE_SHADOW:
        challenger = fmt_version(traffic.challenger.version)
        text = (
            f"production {prod} answers 100%; shadow {challenger} gets a copy of"
            f" {fmt_percent(traffic.percent)} of requests"
        )
    else:
        text = f"production {prod} 100%"
    return head + text


def fmt_logging(deployment: serving_pb2.Deployment) -> str:
    return f"{fmt_number(deployment.log_sample_rate)} / {deployment.log_dropped}"


def fmt_batching(batching: serving_pb2.BatchingConfig) -> str:
    if not batching.enabled:
        return "off"
    parts = []
    if batching.max_batch_size:
        parts.append(f"max batch {batching.max_batch_size}")
    if batching.max_queue_delay_us:
        parts.append(f"max queue delay {fmt_number(batching.max_queue_delay_us / 1000)} ms")
    return "on" + (f" ({', '.join(parts)})" if parts else "")


def deployments_table(deployments: Sequence[serving_pb2.Deployment]) -> Table:
    table = Table("model", "production", "slots", "traffic", "replicas", "log rate / dropped")
    for d in deployments:
        table.add_row(
            d.model_name,
            fmt_version(production_version(d)),
            "\n".join(fmt_slot(s) for s in d.slots) or "-",
            fmt_traffic(d),
            "\n".join(replica_line(r) for r in d.replicas) or "-",
            fmt_logging(d),
        )
    if deployments and deployments[0].replica:
        table.caption = f"slots, statistics and log counts: replica {escape(deployments[0].replica)}"
    return table


REPLICA_STATE_MARKUP = {
    serving_pb2.REPLICA_STATE_IN_SYNC: "[green]in sync[/]",
    serving_pb2.REPLICA_STATE_DISAGREES: "[red]DISAGREES[/]",
    serving_pb2.REPLICA_STATE_STALE: "[yellow]STALE[/]",
}


def fmt_split(model: str, split: serving_pb2.TrafficSplit) -> str:
    return fmt_traffic(serving_pb2.Deployment(model_name=model, traffic=split))


def replica_line(view: serving_pb2.ReplicaView) -> str:
    """ "host:50054 in sync: canary v8 10% (gen 3)"; a disagreeing or stale one says why."""
    state = REPLICA_STATE_MARKUP.get(view.state, "unknown")
    text = f"{escape(view.replica)} {state}"
    if view.state == serving_pb2.REPLICA_STATE_IN_SYNC:
        return text + f": {fmt_split('', view.traffic)} (gen {view.traffic.generation})"
    return text + f": {escape(view.detail)}" if view.detail else text


def replicas_table(deployment: serving_pb2.Deployment) -> Table:
    """One line per serving replica: what it applies, against the stored policy."""
    title = f"replicas (answered by {escape(deployment.replica)})" if deployment.replica else "replicas"
    table = client.titled_table(title, "replica", "state", "traffic", "production", "heartbeat", "detail")
    for r in deployment.replicas:
        table.add_row(
            escape(r.replica),
            REPLICA_STATE_MARKUP.get(r.state, "unknown"),
            f"{fmt_split(deployment.model_name, r.traffic)} (gen {r.traffic.generation})",
            fmt_version(r.production_version),
            fmt_time(r.heartbeat_time),
            escape(r.error or r.detail) or "-",
        )
    return table


def history_table(changes: Sequence[serving_pb2.TrafficChange]) -> Table:
    table = client.titled_table("traffic changes", "time", "change", "gen", "actor", "reason", "replica")
    for c in changes:
        table.add_row(
            fmt_time(c.time),
            f"{fmt_split(c.model_name, c.before)} -> {fmt_split(c.model_name, c.after)}",
            str(c.after.generation),
            escape(c.actor) or "-",
            escape(c.reason) or "-",
            escape(c.replica) or "-",
        )
    return table


def fmt_ms(ms: float) -> str:
    return f"{fmt_number(ms)} ms" if ms else "-"


def slots_table(slots: Sequence[serving_pb2.ModelSlot]) -> Table:
    table = client.titled_table(
        "slots", "role", "version", "state", "provider", "loaded", "in flight", "requests", "errors", "p50", "p99"
    )
    for s in slots:
        table.add_row(
            role_text(s.role),
            fmt_version(s.model.version),
            state_markup(s.state) + (f": {escape(s.error)}" if s.error else ""),
            fmt_provider(s.execution_provider),
            fmt_time(s.loaded_at),
            str(s.inflight_requests),
            str(s.stats.request_count),
            str(s.stats.error_count),
            fmt_ms(s.stats.latency_p50_ms),
            fmt_ms(s.stats.latency_p99_ms),
        )
    return table


def deployment_detail(deployment: serving_pb2.Deployment) -> Group:
    traffic = deployment.traffic
    updated = "-"
    if traffic.update_time.seconds or traffic.updated_by:
        by = f"by {escape(traffic.updated_by)}" if traffic.updated_by else ""
        updated = " ".join(x for x in (fmt_time(traffic.update_time), by) if x and x != "-")
    rows: list[tuple[str, Any]] = [
        ("model", deployment.model_name),
        ("production", fmt_version(production_version(deployment))),
        ("traffic", fmt_traffic(deployment) + (f" (gen {traffic.generation})" if traffic.generation else "")),
        ("traffic updated", updated + (f": {escape(traffic.reason)}" if traffic.reason else "")),
        ("batching", fmt_batching(deployment.batching)),
        ("prediction log", f"sample rate {fmt_number(deployment.log_sample_rate)}, dropped {deployment.log_dropped}"),
    ]
    if deployment.replica:  # slots, their statistics and the log counts are the answering replica's own
        rows.append(("answered by", f"{escape(deployment.replica)} (slots and statistics are this replica's)"))
    parts: list[RenderableType] = [client.kv_table(rows)]
    if deployment.slots:
        parts.append(slots_table(deployment.slots))
    if deployment.replicas:
        parts.append(replicas_table(deployment))
        off = [r for r in deployment.replicas if r.state != serving_pb2.REPLICA_STATE_IN_SYNC]
        if off:
            names = ", ".join(escape(r.replica) for r in off)
            count = f"{len(off)} of {len(deployment.replicas)}"
            parts.append(f"[red]{count} replicas do not apply the stored policy:[/] {names}")
    return Group(*parts)


# ---------------------------------------------------------------------------------------------------
# Rendering: versions, staging and promotion


def fmt_staging(report: registry_pb2.StagingReport) -> str:
    """ "passed", "failed: parity, latency", or "-" before any report."""
    if not report.checks and not report.passed and not report.report_time.seconds:
        return "-"
    if report.passed:
        return "[green]passed[/]"
    failed = [c.name for c in report.checks if not c.passed]
    return "[red]failed[/]" + (f": {', '.join(failed)}" if failed else "")


def _aggregate(metrics: Sequence[common_pb2.Metric]) -> list[common_pb2.Metric]:
    return [m for m in metrics if not m.class_label]


def fmt_sample_vs_champion(report: registry_pb2.StagingReport) -> str:
    """ "f1 0.93 vs 0.91 (v7), accuracy 0.95 vs -": the candidate's sample metrics next to the champion's
    on the same rows; just the candidate's when nothing was in production."""
    sample = _aggregate(report.sample_metrics)
    if not sample:
        return "-"
    champion = {(m.name, m.split): m.value for m in _aggregate(report.champion_metrics)}
    parts = []
    for m in sample:
        text = f"{m.name} {fmt_number(m.value)}"
        if report.champion_version or champion:
            other = champion.get((m.name, m.split))
            text += f" vs {fmt_number(other) if other is not None else '-'}"
        parts.append(text)
    text = ", ".join(parts)
    if report.champion_version:
        text += f" (champion v{report.champion_version})"
    return text


def versions_table(versions: Sequence[registry_pb2.ModelVersion]) -> Table:
    table = client.titled_table(
        "versions", "version", "aliases", "staging", "p50", "p99", "sample metrics vs champion", "promotion"
    )
    for v in versions:
        report = v.staging
        table.add_row(
            fmt_version(v.ref.version),
            ", ".join(sorted(v.aliases)) or "-",
            fmt_staging(report),
            fmt_ms(report.latency_p50_ms),
            fmt_ms(report.latency_p99_ms),
            fmt_sample_vs_champion(report),
            escape(fmt_promotion(v.promotion)),
        )
    return table


def staging_checks_table(version: registry_pb2.ModelVersion) -> Table:
    """One version's checks with their details (shown for the newest version that has a report)."""
    report = version.staging
    title = f"staging checks of {fmt_version(version.ref.version)}"
    if report.reporter or report.report_time.seconds:
        title += f" ({' '.join(x for x in (report.reporter, fmt_time(report.report_time)) if x and x != '-')})"
    table = client.titled_table(title, "check", "result", "detail")
    for c in report.checks:
        table.add_row(c.name, "[green]passed[/]" if c.passed else "[red]failed[/]", escape(c.detail) or "-")
    if report.latency_calls:
        table.add_row(
            "latency calls",
            str(report.latency_calls),
            f"p50 {fmt_ms(report.latency_p50_ms)}, p99 {fmt_ms(report.latency_p99_ms)}",
        )
    return table


def audit_table(events: Sequence[registry_pb2.AuditEvent]) -> Table:
    table = client.titled_table("recent decisions", "time", "action", "version", "actor", "reason")
    for e in events:
        action = enum_name(registry_pb2.AuditAction, e.action).replace("_", " ")
        if e.alias:
            action += f" {e.alias}"
        version = fmt_version(e.version)
        if e.from_version or e.to_version:
            version = f"{fmt_version(e.from_version)} -> {fmt_version(e.to_version)}"
        table.add_row(fmt_time(e.time), action, version, escape(e.actor) or "-", escape(e.reason) or "-")
    return table


def shadow_table(c: monitoring_pb2.ShadowComparison) -> Table:
    """A shadow challenger against production on the same live requests."""
    prod, chal = fmt_version(c.production.version), fmt_version(c.challenger.version)
    rows: list[tuple[str, Any]] = [("rows both answered", str(c.rows))]
    if c.HasField("agreement"):
        rows.append(("agreement", fmt_number(c.agreement)))
    if c.HasField("mean_abs_difference"):
        rows.append(("mean |difference|", fmt_number(c.mean_abs_difference)))
    rows.append(
        ("p50 / p99 latency", f"{prod} {fmt_ms(c.production_latency.p50_ms)} / {fmt_ms(c.production_latency.p99_ms)},"
         f" {chal} {fmt_ms(c.challenger_latency.p50_ms)} / {fmt_ms(c.challenger_latency.p99_ms)}")
    )  # fmt: skip
    rows.append(("labelled rows", str(c.labelled_rows)))
    if c.labelled_rows:
        rows.append((f"live quality {prod}", escape(client.fmt_metrics(list(c.production_quality)))))
        rows.append((f"live quality {chal}", escape(client.fmt_metrics(list(c.challenger_quality)))))
    return client.kv_table(rows, title=f"shadow {chal} vs production {prod} (same requests)")


def model_status(
    name: str,
    deployment: serving_pb2.Deployment | None,
    versions: Sequence[registry_pb2.ModelVersion],
    events: Sequence[registry_pb2.AuditEvent] = (),
    shadow: monitoring_pb2.ShadowComparison | None = None,
) -> Group:
    parts: list[RenderableType] = []
    if deployment is None:
        parts.append(f"{name}: not deployed by serving")
    else:
        parts.append(deployment_detail(deployment))
    if shadow is not None:
        parts.append(shadow_table(shadow))
    if versions:
        parts.append(versions_table(versions))
        reported = next((v for v in versions if v.staging.checks or v.staging.latency_calls), None)
        if reported is not None:
            parts.append(staging_checks_table(reported))
    else:
        parts.append("no versions")
    if events:
        parts.append(audit_table(events))
    return Group(*parts)


def decision_line(response: Any) -> str:
    """For Approve/RejectVersionResponse: "churn v8: promoted: approved by ana"."""
    ref = response.version.ref
    decision = response.decision if response.HasField("decision") else response.version.promotion
    text = f"{client.fmt_model_ref(ref)}: {escape(fmt_promotion(decision))}"
    return text + (f" (by {escape(decision.actor)})" if decision.actor else "")


def rollback_line(name: str, response: registry_pb2.RollbackResponse) -> str:
    """ "churn production: v6 (was v7)"."""
    now = response.production.version
    was = fmt_version(response.previous_version) if response.previous_version else "none"
    return f"{response.production.name or name} production: {fmt_version(now)} (was {was})"


# ---------------------------------------------------------------------------------------------------
# Commands


def _actor(args: argparse.Namespace) -> str:
    return args.actor if args.actor is not None else default_actor()


def _status_json(
    deployment: serving_pb2.Deployment | None,
    versions: Sequence[registry_pb2.ModelVersion],
    events: Sequence[registry_pb2.AuditEvent],
    shadow: monitoring_pb2.ShadowComparison | None = None,
) -> dict[str, Any]:
    return {
        "deployment": client.to_dict(deployment) if deployment is not None else None,
        "shadow_comparison": client.to_dict(shadow) if shadow is not None else None,
        **client.list_json("versions", versions),
        **client.list_json("events", events),
    }


@command
def cmd_status(args: argparse.Namespace) -> int:
    if args.model is None:
        with connect_admin() as admin:
            deployments = client.paged(admin.ListDeployments, serving_pb2.ListDeploymentsRequest(), "deployments")
        return client.print_listing(args.json, "deployments", deployments, deployments_table)

    name = args.model
    limit = args.limit or None
    deployment: serving_pb2.Deployment | None = None
    with connect_admin() as admin:
        try:
            request = serving_pb2.GetDeploymentRequest(model_name=name)
            deployment = admin.GetDeployment(request, timeout=client.RPC_TIMEOUT_S).deployment
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: registered, but nothing served yet
                raise
    with client.connect("registry") as registry:
        versions = client.paged(
            registry.ListModelVersions,
            registry_pb2.ListModelVersionsRequest(name=name, page_size=args.limit),
            "versions",
            limit=limit,
        )
        scan = None if limit is None else max(50, limit)  # decisions are a subset of the audit log
        audit_request = registry_pb2.ListAuditEventsRequest(name=name, page_size=scan or 0)
        recent = client.paged(registry.ListAuditEvents, audit_request, "events", limit=scan)
        events = [e for e in recent if e.action in DEPLOY_ACTIONS][:limit]
    shadow = _shadow_comparison(deployment)
    if args.json:
        client.print_json(_status_json(deployment, versions, events, shadow))
    else:
        console.print(model_status(name, deployment, versions, events, shadow), highlight=False)
    return 0


def _shadow_comparison(deployment: serving_pb2.Deployment | None) -> monitoring_pb2.ShadowComparison | None:
    """Monitoring's comparison of the deployment's shadow with production; None without a shadow or
    before monitoring has paired any of its answers."""
    if deployment is None or deployment.traffic.mode != serving_pb2.TRAFFIC_MODE_SHADOW:
        return None
    request = monitoring_pb2.GetShadowComparisonRequest(
        model_name=deployment.model_name, challenger_version=deployment.traffic.challenger.version
    )
    with client.connect("monitoring") as monitoring:
        try:
            return monitoring.GetShadowComparison(request, timeout=client.RPC_TIMEOUT_S).comparison
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


@command
def cmd_approve(args: argparse.Namespace) -> int:
    ref: client.ModelSelector = args.ref
    request = registry_pb2.ApproveVersionRequest(
        name=ref.name, version=ref.version or 0, actor=_actor(args), reason=args.reason or ""
    )
    with client.connect("registry") as registry:
        response = registry.ApproveVersion(request, timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(response)
    else:
        console.print(decision_line(response), highlight=False)
    return 0


@command
def cmd_reject(args: argparse.Namespace) -> int:
    ref: client.ModelSelector = args.ref
    if not args.reason.strip():
        raise CliError("--reason must not be empty", code=2)
    request = registry_pb2.RejectVersionRequest(
        name=ref.name, version=ref.version or 0, actor=_actor(args), reason=args.reason
    )
    with client.connect("registry") as registry:
        response = registry.RejectVersion(request, timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(response)
    else:
        console.print(decision_line(response), highlight=False)
    return 0


@command
def cmd_rollback(args: argparse.Namespace) -> int:
    request = registry_pb2.RollbackRequest(
        name=args.model, to_version=args.to or 0, actor=_actor(args), reason=args.reason or ""
    )
    with client.connect("registry") as registry:
        response = registry.Rollback(request, timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(response)
    else:
        console.print(rollback_line(args.model, response), highlight=False)
    return 0


def _print_traffic(args: argparse.Namespace, response: Any) -> int:
    if args.json:
        client.print_json(response)
    else:
        console.print(traffic_line(response.deployment), highlight=False)
    return 0


@command
def cmd_history(args: argparse.Namespace) -> int:
    request = serving_pb2.ListTrafficChangesRequest(model_name=args.model, page_size=args.limit)
    with connect_admin() as admin:
        changes = client.paged(admin.ListTrafficChanges, request, "changes", limit=args.limit or None)
    return client.print_listing(args.json, "changes", changes, history_table)


@command
def cmd_canary(args: argparse.Namespace) -> int:
    request = serving_pb2.SetCanaryRequest(
        model_name=args.model,
        challenger_version=args.version,
        percent=args.percent,
        actor=_actor(args),
        reason=args.reason or "",
    )
    with connect_admin() as admin:
        response = admin.SetCanary(request, timeout=client.RPC_TIMEOUT_S)
    return _print_traffic(args, response)


@command
def cmd_shadow(args: argparse.Namespace) -> int:
    request = serving_pb2.SetShadowRequest(
        model_name=args.model,
        challenger_version=args.version,
        percent=args.percent,
        actor=_actor(args),
        reason=args.reason or "",
    )
    with connect_admin() as admin:
        response = admin.SetShadow(request, timeout=client.RPC_TIMEOUT_S)
    return _print_traffic(args, response)


@command
def cmd_clear(args: argparse.Namespace) -> int:
    request = serving_pb2.ClearTrafficRequest(model_name=args.model, actor=_actor(args), reason=args.reason or "")
    with connect_admin() as admin:
        response = admin.ClearTraffic(request, timeout=client.RPC_TIMEOUT_S)
    return _print_traffic(args, response)


def _add_actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor",
        metavar="WHO",
        help="recorded in the audit log only when authentication is off (default: your login name);"
        " otherwise the log names the identity of your credentials",
    )


def _add_reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", metavar="TEXT", help="why; recorded in the traffic audit (`deploy history`)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("deploy", help="deployments, staging checks, promotion, rollback, canary and shadow")
    cmds = group.add_subparsers(dest="deploy_command", required=True)

    status = cmds.add_parser(
        "status", help="every deployment, or one model's slots, traffic, recent versions and decisions"
    )
    status.add_argument("model", nargs="?", type=model_name_arg, metavar="MODEL", help="one model in detail")
    status.add_argument(
        "--limit",
        type=client.non_negative_int,
        default=5,
        metavar="N",
        help="recent versions and decisions (5; 0 = all)",
    )
    client.add_json_flag(status)
    status.set_defaults(func=cmd_status)

    history = cmds.add_parser("history", help="a model's traffic changes (canary, shadow, clear): who, when, why")
    history.add_argument("model", type=model_name_arg, metavar="MODEL")
    history.add_argument(
        "--limit", type=client.non_negative_int, default=20, metavar="N", help="newest changes (20; 0 = all)"
    )
    client.add_json_flag(history)
    history.set_defaults(func=cmd_history)

    approve = cmds.add_parser("approve", help="approve a version pending manual approval (promotes it)")
    approve.add_argument("ref", type=versioned_ref_arg, metavar="MODEL:VERSION")
    approve.add_argument("--reason", metavar="TEXT", help="recorded in the audit log")
    _add_actor(approve)
    client.add_json_flag(approve)
    approve.set_defaults(func=cmd_approve)

    reject = cmds.add_parser("reject", help="reject a version pending manual approval")
    reject.add_argument("ref", type=versioned_ref_arg, metavar="MODEL:VERSION")
    reject.add_argument("--reason", required=True, metavar="TEXT", help="why (required; audited)")
    _add_actor(reject)
    client.add_json_flag(reject)
    reject.set_defaults(func=cmd_reject)

    rollback = cmds.add_parser("rollback", help="move production back to an earlier version")
    rollback.add_argument("model", type=model_name_arg, metavar="MODEL")
    rollback.add_argument(
        "--to", type=client.positive_int, metavar="VERSION", help="default: the version production had before"
    )
    rollback.add_argument("--reason", metavar="TEXT", help="recorded in the audit log")
    _add_actor(rollback)
    client.add_json_flag(rollback)
    rollback.set_defaults(func=cmd_rollback)

    canary = cmds.add_parser("canary", help="answer a percentage of requests from a challenger version")
    canary.add_argument("model", type=model_name_arg, metavar="MODEL")
    canary.add_argument("--version", required=True, type=client.positive_int, metavar="V", help="challenger")
    canary.add_argument("--percent", required=True, type=percent_arg, metavar="P", help="in (0, 100]")
    _add_reason(canary)
    _add_actor(canary)
    client.add_json_flag(canary)
    canary.set_defaults(func=cmd_canary)

    shadow = cmds.add_parser("shadow", help="mirror requests to a challenger; production still answers")
    shadow.add_argument("model", type=model_name_arg, metavar="MODEL")
    shadow.add_argument("--version", required=True, type=client.positive_int, metavar="V", help="challenger")
    shadow.add_argument(
        "--percent", type=percent_arg, default=100.0, metavar="P", help="share of requests mirrored, (0, 100] (100)"
    )
    _add_reason(shadow)
    _add_actor(shadow)
    client.add_json_flag(shadow)
    shadow.set_defaults(func=cmd_shadow)

    clear = cmds.add_parser("clear", help="end canary or shadow traffic: production answers everything")
    clear.add_argument("model", type=model_name_arg, metavar="MODEL")
    _add_reason(clear)
    _add_actor(clear)
    client.add_json_flag(clear)
    clear.set_defaults(func=cmd_clear)
