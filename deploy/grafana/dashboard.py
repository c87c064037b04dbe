#!/usr/bin/env python3
"""Writes dashboards/flywheel.json, the Flywheel dashboard that Grafana provisions (docker-compose.yml).

    .venv/bin/python deploy/grafana/dashboard.py           # rewrite the JSON after changing a panel here
    .venv/bin/python deploy/grafana/dashboard.py --check   # exit 1 when the JSON is not what this writes

The panels read the metrics the services serve on FLYWHEEL_METRICS_PORT, named as the OpenTelemetry
Prometheus exporter names them (dots as underscores, counters ending in _total, seconds in _seconds;
`{unit}` annotations dropped), with the `service` label Prometheus adds per target
(deploy/prometheus/prometheus.yml). tests/unit/test_deploy_descriptors.py checks every metric, label
and topic a query names against the code, and that the JSON is up to date. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "flywheel.json"
DATASOURCE = {"type": "prometheus", "uid": "flywheel-prometheus"}  # provisioning/datasources/flywheel.yaml
UID = "flywheel-loop"
SVC = 'service=~"$service"'
MODEL = 'model=~"$model"'
RATE = "$__rate_interval"
ERRORS = f'{MODEL}, outcome="error"'


@dataclass
class Panel:
    title: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    description: str
    kind: str = "timeseries"  # timeseries | stat | bars (a timeseries drawn as bars)
    unit: str = "short"
    width: int = 12
    height: int = 8
    mappings: list[dict[str, Any]] = field(default_factory=list)


def _per_window(expr: str) -> str:
    return f"sum by (topic) (increase({expr}[{RATE}]))"


def _request_rate(selector: str) -> str:
    """Inference calls per second per model version (flywheel.serving.requests)."""
    return f"sum by (model, version) (rate(flywheel_serving_requests_total{{{selector}}}[{RATE}]))"


def _latency(quantile: float) -> str:
    """A quantile of answered calls' duration per model version, from the histogram's buckets."""
    buckets = f'flywheel_serving_request_duration_seconds_bucket{{{MODEL}, outcome="ok"}}'
    return f"histogram_quantile({quantile}, sum by (le, model, version) (rate({buckets}[{RATE}])))"


def _shadow(figure: str) -> str:
    """One figure of the live shadow comparison, per model and challenger."""
    selector = f'{MODEL}, figure="{figure}"'
    return f"max by (model, challenger_version) (flywheel_monitoring_shadow_comparison{{{selector}}})"


def _increase(metric: str, by: str, selector: str = "") -> str:
    """Events per dashboard interval, summed by the `by` labels."""
    return (
        f"sum by ({by}) (increase({metric}{{{selector}}}[{RATE}]))"
        if selector
        else (f"sum by ({by}) (increase({metric}[{RATE}]))")
    )


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "The loop at a glance (over the time range)",
        [
            Panel(
                "Services up",
                [(f'up{{job="flywheel", {SVC}}}', "{{service}}")],
                "Whether Prometheus reached each service's metrics endpoint at the last scrape.",
                kind="stat",
                width=8,
                height=5,
                mappings=[
                    {"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0}}},
                    {"type": "value", "options": {"1": {"text": "UP", "color": "green", "index": 1}}},
                ],
            ),
            Panel(
                "Alerts raised",
                [('sum(increase(flywheel_outbox_published_total{topic="flywheel.drift.detected"}[$__range]))', "")],
                "Unsuppressed drift and quality alerts: each publishes one flywheel.drift.detected event (outbox)."
                " Guard rollbacks and aborted rollouts have their own panels.",
                kind="stat",
                width=4,
                height=5,
            ),
            Panel(
                "Model versions registered",
                [('sum(increase(flywheel_outbox_published_total{topic="flywheel.model.registered"}[$__range]))', "")],
                "flywheel.model.registered events the registry published: finished training runs and uploads.",
                kind="stat",
                width=4,
                height=5,
            ),
            Panel(
                "Promotions",
                [('sum(increase(flywheel_outbox_published_total{topic="flywheel.model.promoted"}[$__range]))', "")],
                "flywheel.model.promoted events the registry published.",
                kind="stat",
                width=4,
                height=5,
            ),
            Panel(
                "Dead-lettered events",
                [
                    ("sum(increase(flywheel_consumer_dead_lettered_total[$__range]))", "sent to <topic>.dlq"),
                    ("sum(increase(flywheel_dead_letters_stored_total[$__range]))", "kept in dead_letters"),
                ],
                "Events a consumer gave up on. docs/operations.md says what to do about them.",
                kind="stat",
                width=4,
                height=5,
            ),
        ],
    ),
    (
        "Monitoring: drift and alerts",
        [
            Panel(
                "Drift score per feature",
                [
                    (
                        f"max by (model, feature, statistic) (flywheel_monitoring_drift_score{{{MODEL}}})",
                        "{{model}} {{feature}} ({{statistic}})",
                    )
                ],
                "The last drift score monitoring computed for each model's feature, by statistic.",
                width=16,
            ),
            Panel(
                "Alerts raised",
                [
                    (
                        'sum(increase(flywheel_outbox_published_total{topic="flywheel.drift.detected"}[$__rate_interval]))',
                        "alerts",
                    )
                ],
                "Unsuppressed drift and quality alerts per interval (flywheel.drift.detected events published).",
                kind="bars",
                width=8,
            ),
            Panel(
                "Estimated performance (no labels)",
                [
                    (
                        f"max by (model, metric) (flywheel_monitoring_estimated_performance{{{MODEL}}})",
                        "{{model}} {{metric}}",
                    )
                ],
                "A classifier's accuracy, F1 or ROC AUC in its last drift window, estimated from its calibrated"
                " probabilities before any label arrives (the policy's estimated_performance metric).",
                width=16,
            ),
            Panel(
                "Shadow vs production (same requests)",
                [
                    (
                        _shadow("agreement"),
                        "{{model}} v{{challenger_version}} agreement",
                    ),
                    (
                        _shadow("challenger_accuracy"),
                        "{{model}} v{{challenger_version}} live accuracy",
                    ),
                    (
                        _shadow("production_accuracy"),
                        "{{model}} production live accuracy",
                    ),
                ],
                "A shadow challenger against production on the requests both answered: how often they agree, and"
                " each one's accuracy on the rows feedback labelled (refreshed every 30 s while the shadow runs).",
                width=24,
            ),
            Panel(
                "Progressive rollouts",
                [
                    (
                        _increase("flywheel_registry_rollout_decisions_total", "model, decision", MODEL),
                        "{{model}} {{decision}}",
                    ),
                    (_increase("flywheel_registry_rollout_failures_total", "model", MODEL), "{{model}} tick failed"),
                ],
                "Canary steps advanced, rollouts promoted and aborted (a gate breached), and driver ticks that"
                " failed (a dependency away; the next tick retries).",
                kind="bars",
                width=8,
            ),
            Panel(
                "Post-promotion guard rollbacks",
                [
                    (
                        _increase("flywheel_monitoring_guard_rollbacks_total", "model, outcome", MODEL),
                        "{{model}} {{outcome}}",
                    )
                ],
                "Rollbacks the guard decided after a promotion breached, by outcome (rolled back, or refused"
                " because production had moved on).",
                kind="bars",
                width=8,
            ),
            Panel(
                "Windows evaluated",
                [
                    (
                        f"sum by (model, kind) (increase(flywheel_monitoring_windows_total{{{MODEL}}}[{RATE}]))",
                        "{{model}} {{kind}}",
                    ),
                    (
                        _increase("flywheel_monitoring_windows_set_aside_total", "model, kind", MODEL),
                        "{{model}} {{kind}} set aside",
                    ),
                ],
                "Monitoring windows closed and judged, and those whose rows could not be judged.",
            ),
            Panel(
                "Monitoring failures and integrity issues",
                [
                    (
                        _increase("flywheel_monitoring_window_failures_total", "model, kind", MODEL),
                        "window {{model}} {{kind}}",
                    ),
                    (f"sum by (step) (increase(flywheel_monitoring_ticker_failures_total[{RATE}]))", "ticker {{step}}"),
                    (
                        f"sum by (model) (increase(flywheel_monitoring_reconcile_failures_total{{{MODEL}}}[{RATE}]))",
                        "reconcile {{model}}",
                    ),
                    (
                        f"sum by (model) (increase(flywheel_monitoring_integrity_issues_total{{{MODEL}}}[{RATE}]))",
                        "integrity {{model}}",
                    ),
                ],
                "Window closings rolled back, ticker and reconcile failures, and integrity issues (nulls, "
                "out-of-range values, unseen categories, type mismatches) in logged predictions.",
            ),
        ],
    ),
    (
        "Serving",
        [
            Panel(
                "Inference requests",
                [(_request_rate(MODEL), "{{model}} v{{version}}")],
                "Inference calls each model version answered per second, errors included (ModelInfer and "
                "stream calls; a shadow version counts the calls mirrored to it).",
                unit="reqps",
                width=8,
            ),
            Panel(
                "Inference error rate",
                [(f"{_request_rate(ERRORS)} / {_request_rate(MODEL)}", "{{model}} v{{version}}")],
                "The share of each model version's calls that failed: bad inputs (INVALID_ARGUMENT), a full queue "
                "or memory cap (RESOURCE_EXHAUSTED), a run stopped at serving_infer_timeout_s (DEADLINE_EXCEEDED).",
                unit="percentunit",
                width=8,
            ),
            Panel(
                "Inference latency (p50, p99)",
                [(_latency(0.5), "p50 {{model}} v{{version}}"), (_latency(0.99), "p99 {{model}} v{{version}}")],
                "Time from a call reaching serving's servicer to its answer (queue, run, encoding), for calls "
                "answered OK; the network and the client's own time are not in it.",
                unit="s",
                width=8,
            ),
            Panel(
                "Prediction log events consumed",
                [
                    (
                        'sum(rate(flywheel_consumer_processed_total{group=~"flywheel-monitoring.*", '
                        'topic="flywheel.predictions.logged"}[$__rate_interval]))',
                        "events/s",
                    )
                ],
                "flywheel.predictions.logged events (batches of logged predictions) monitoring handled.",
                unit="ops",
                width=8,
            ),
            Panel(
                "Model load and reconcile failures",
                [
                    (
                        f"sum by (model) (increase(flywheel_serving_load_failures_total{{{MODEL}}}[{RATE}]))",
                        "load {{model}}",
                    ),
                    (
                        f"sum by (model) (increase(flywheel_serving_reconcile_failures_total{{{MODEL}}}[{RATE}]))",
                        "reconcile {{model}}",
                    ),
                ],
                "Loads refused by the trial load or ONNX Runtime, and production versions the reconciler "
                "could not load (shown FAILED while the rest serve). docs/operations.md has the remedies.",
                kind="bars",
                width=8,
            ),
            Panel(
                "Requests refused or skipped",
                [
                    (
                        f"sum by (model) (increase(flywheel_serving_queue_rejected_total{{{MODEL}}}[{RATE}]))",
                        "queue full {{model}}",
                    ),
                    (
                        f"sum by (model) (increase(flywheel_serving_infer_exhausted_total{{{MODEL}}}[{RATE}]))",
                        "over the memory cap {{model}}",
                    ),
                    (
                        f"sum by (model) (increase(flywheel_serving_infer_timeouts_total{{{MODEL}}}[{RATE}]))",
                        "stopped at the time limit {{model}}",
                    ),
                    (
                        f"sum by (model) (increase(flywheel_serving_shadow_skipped_total{{{MODEL}}}[{RATE}]))",
                        "shadow skipped {{model}}",
                    ),
                    (
                        f"sum by (model) (increase(flywheel_serving_pin_evictions_total{{{MODEL}}}[{RATE}]))",
                        "pin evicted {{model}}",
                    ),
                ],
                "Requests refused with RESOURCE_EXHAUSTED (a model's queue full; more than the inference "
                "memory cap or the response size needed), runs stopped at serving_infer_timeout_s "
                "(DEADLINE_EXCEEDED), shadow mirrors skipped, pinned versions unloaded to make room.",
                kind="bars",
                width=8,
            ),
            Panel(
                "Serving background failures",
                [(f"sum by (loop) (increase(flywheel_serving_background_failures_total[{RATE}]))", "{{loop}}")],
                "Items a background loop (retirement, prediction log flush, reconcile) failed on and skipped.",
                kind="bars",
                width=24,
                height=6,
            ),
        ],
    ),
    (
        "Training and data",
        [
            Panel(
                "Training triggers handled",
                [
                    (
                        "sum by (topic) (rate(flywheel_consumer_processed_total"
                        f'{{group=~"flywheel-training.*"}}[{RATE}]))',
                        "{{topic}}",
                    )
                ],
                "New dataset versions and drift alerts the training service handled (each may start runs).",
                unit="ops",
                width=8,
            ),
            Panel(
                "Training runs ended",
                [(f"sum by (outcome) (increase(flywheel_training_runs_total[{RATE}]))", "{{outcome}}")],
                "Runs that ended: succeeded (a model registered) or failed (the reason is in `flywheel runs show`).",
                kind="bars",
                width=8,
            ),
            Panel(
                "Training runs stopped",
                [(f"sum by (reason) (increase(flywheel_training_runs_stopped_total[{RATE}]))", "{{reason}}")],
                "Runs stopped before they finished: timeout, memory limit, cancelled.",
                kind="bars",
                width=8,
            ),
            Panel(
                "Training loop errors",
                [(f"sum by (loop) (increase(flywheel_training_loop_errors_total[{RATE}]))", "{{loop}}")],
                "Items a training background loop (worker, reconcile, triggers) failed on, logged and skipped.",
                kind="bars",
                width=8,
            ),
            Panel(
                "Dataset versions and models",
                [
                    (
                        _per_window(
                            'flywheel_outbox_published_total{topic=~"flywheel.data.versioned|'
                            'flywheel.model.registered|flywheel.model.promoted"}'
                        ),
                        "{{topic}}",
                    )
                ],
                "Events of the loop's main steps per interval: a dataset version, a model version "
                "registered (a finished training run), a promotion.",
                kind="bars",
            ),
            Panel(
                "Feedback rows rejected",
                [(f"sum by (dataset) (increase(flywheel_ingestion_feedback_rejected_total[{RATE}]))", "{{dataset}}")],
                "Feedback rows a dataset's schema or policy refused (other datasets unaffected).",
                kind="bars",
            ),
        ],
    ),
    (
        "Events and delivery",
        [
            Panel(
                "Consumer lag",
                [(f"sum by (group, topic) (flywheel_consumer_lag{{{SVC}}})", "{{group}} {{topic}}")],
                "Messages each consumer group has yet to read (high-water mark minus position), summed "
                "over partitions. Growing lag: the group cannot keep up, add replicas (up to the partitions).",
                width=12,
            ),
            Panel(
                "Outbox: published and refused",
                [
                    (f"sum by (topic) (rate(flywheel_outbox_published_total{{{SVC}}}[{RATE}]))", "published {{topic}}"),
                    (f"sum by (topic) (rate(flywheel_outbox_failed_total{{{SVC}}}[{RATE}]))", "refused {{topic}}"),
                ],
                "Outbox rows published to Kafka, and attempts the broker refused (retried later; after "
                "FLYWHEEL_OUTBOX_MAX_ATTEMPTS they move to dead_letters). Refusals that persist mean a backlog.",
                unit="ops",
            ),
            Panel(
                "Outbox backlog",
                [(f"sum by (service) (flywheel_outbox_pending{{{SVC}}})", "{{service}}")],
                "Outbox rows each service has committed but not yet published. It should stay near zero; "
                "growth means the broker is away or refusing events (see the refused series).",
                width=12,
            ),
            Panel(
                "Dead letters",
                [
                    (
                        f"sum by (group, topic) (increase(flywheel_consumer_dead_lettered_total{{{SVC}}}[{RATE}]))",
                        "dlq {{group}} {{topic}}",
                    ),
                    (
                        f"sum by (origin, topic) (increase(flywheel_dead_letters_stored_total{{{SVC}}}[{RATE}]))",
                        "stored {{origin}} {{topic}}",
                    ),
                ],
                "Events sent to <topic>.dlq after the last retry, and records kept in the dead_letters "
                "table because the DLQ or the broker refused them.",
                kind="bars",
            ),
            Panel(
                "Retries and duplicates",
                [
                    (f"sum by (group) (rate(flywheel_consumer_retries_total{{{SVC}}}[{RATE}]))", "retries {{group}}"),
                    (
                        f"sum by (group) (rate(flywheel_consumer_duplicates_total{{{SVC}}}[{RATE}]))",
                        "duplicates {{group}}",
                    ),
                ],
                "Handler attempts that failed and were retried, and redeliveries the inbox skipped.",
                unit="ops",
            ),
            Panel(
                "Events handled",
                [(f"sum by (group) (rate(flywheel_consumer_processed_total{{{SVC}}}[{RATE}]))", "{{group}}")],
                "Events each consumer group handled per second (duplicates included).",
                unit="ops",
            ),
            Panel(
                "Handler time (mean)",
                [
                    (
                        f"sum by (group) (rate(flywheel_consumer_handler_duration_seconds_sum{{{SVC}}}[{RATE}]))"
                        f" / sum by (group) (rate(flywheel_consumer_handler_duration_seconds_count{{{SVC}}}[{RATE}]))",
                        "{{group}}",
                    )
                ],
                "Mean time to handle one event, retries included.",
                unit="s",
            ),
        ],
    ),
    (
        "Processes",
        [
            Panel(
                "Resident memory",
                [(f'process_resident_memory_bytes{{job="flywheel", {SVC}}}', "{{service}}")],
                "Each service process's resident memory (serving holds its loaded models here).",
                unit="bytes",
            ),
            Panel(
                "CPU",
                [(f'rate(process_cpu_seconds_total{{job="flywheel", {SVC}}}[{RATE}])', "{{service}}")],
                "CPU seconds per second used by each service process (its main process only).",
                unit="percentunit",
            ),
        ],
    ),
]


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto"}
        for i, (expr, legend) in enumerate(panel.queries)
    ]
    out: dict[str, Any] = {
        "id": panel_id,
        "type": "stat" if panel.kind == "stat" else "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit, "mappings": panel.mappings}, "overrides": []},
    }
    if panel.kind == "stat":
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        }
    else:
        out["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "bars" if panel.kind == "bars" else "line",
            "fillOpacity": 60 if panel.kind == "bars" else 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
        }
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return out


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,  # on time range change: new models appear without a reload
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for title, row in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y = panel_id + 1, y + 1
        x, line_height = 0, 0
        for panel in row:
            if x + panel.width > 24:  # wrap to the next line
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(panel, panel_id, x, y))
            panel_id, x, line_height = panel_id + 1, x + panel.width, max(line_height, panel.height)
        y += line_height
    return {
        "uid": UID,
        "title": "Flywheel",
        "description": "The closed loop: drift and alerts, serving, training, event delivery, processes.",
        "tags": ["flywheel"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                _variable("service", "Service", 'label_values(up{job="flywheel"}, service)'),
                _variable("model", "Model", "label_values(flywheel_monitoring_drift_score, model)"),
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON differs from what this writes")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run {Path(__file__).name} to rewrite it", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
