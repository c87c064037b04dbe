"""`flywheel traces`, `drift report`, `alerts` and `segments` without servers: argument parsing, the span
tree and chain selection from hand-written span dicts, rendering of hand-built MonitoringService messages,
and the handlers against in-process fake stubs (no channel is opened)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from rich.console import Console

from flywheel.cli import client, monitoring, traces
from flywheel.cli.traces import SpanNode
from flywheel.config import Settings
from flywheel.v1 import common_pb2, monitoring_pb2

from .cli_helpers import parse, render

# ---------------------------------------------------------------------------------------------------
# Parser


@pytest.mark.parametrize(
    ("argv", "func", "expected"),
    [
        (["traces"], traces.cmd_traces,
         {"last": False, "chain": None, "trace": None, "limit": 20, "min_spans": 2, "json": False}),
        (["traces", "--last"], traces.cmd_traces, {"last": True, "chain": None, "trace": None}),
        (["traces", "--last", "--json"], traces.cmd_traces, {"last": True, "json": True}),
        (["traces", "--chain", "ev-1"], traces.cmd_traces, {"chain": "ev-1", "last": False}),
        (["traces", "--trace", "abc123", "--json"], traces.cmd_traces, {"trace": "abc123", "json": True}),
        (["traces", "--limit", "0", "--min-spans", "1"], traces.cmd_traces, {"limit": 0, "min_spans": 1}),
        (["drift", "report", "churn"], monitoring.cmd_drift_report,
         {"model": "churn", "version": None, "window": None, "windows": None, "json": False}),
        (["drift", "report", "churn", "--version", "3", "--window", "w-7", "--json"], monitoring.cmd_drift_report,
         {"version": 3, "window": "w-7", "json": True}),
        (["drift", "report", "churn", "--windows", "5"], monitoring.cmd_drift_report, {"windows": 5, "window": None}),
        (["alerts"], monitoring.cmd_alerts,
         {"model": None, "kind": None, "since": None, "limit": 50, "watch": False, "json": False}),
        (["alerts", "churn", "--kind", "data", "--watch", "--json"], monitoring.cmd_alerts,
         {"model": "churn", "kind": "data", "watch": True, "json": True}),
        (["alerts", "--since", "2024-05-01T12:00:00Z", "--limit", "0"], monitoring.cmd_alerts,
         {"since": datetime(2024, 5, 1, 12, tzinfo=UTC), "limit": 0}),
        (["alerts", "--since", "2024-05-01"], monitoring.cmd_alerts, {"since": datetime(2024, 5, 1, tzinfo=UTC)}),
        (["alerts", "--kind", "segment"], monitoring.cmd_alerts, {"kind": "segment"}),
        (["segments", "churn"], monitoring.cmd_segments,
         {"model": "churn", "version": None, "window": None, "field": None, "json": False}),
        (["segments", "churn", "--version", "2", "--window", "w-1", "--field", "plan", "--json"],
         monitoring.cmd_segments, {"version": 2, "window": "w-1", "field": "plan", "json": True}),
    ],
)  # fmt: skip
def test_parser_accepts_commands_and_flags(argv, func, expected):
    args = parse(*argv)
    assert args.func is func
    for key, value in expected.items():
        assert getattr(args, key) == value, key


@pytest.mark.parametrize("kind", ["data", "prediction", "integrity", "quality", "segment"])
def test_every_kind_maps_to_a_drift_kind(kind):
    assert parse("alerts", "--kind", kind).kind == kind
    assert monitoring.KINDS[kind] != common_pb2.DRIFT_KIND_UNSPECIFIED


@pytest.mark.parametrize(
    "argv",
    [
        ["traces", "--last", "--chain", "ev-1"],
        ["traces", "--chain", "ev-1", "--trace", "abc"],
        ["traces", "--chain"],
        ["traces", "--limit", "-1"],
        ["traces", "--min-spans", "0"],
        ["traces", "extra"],
        ["drift"],
        ["drift", "report"],
        ["drift", "report", "churn:3"],
        ["drift", "report", "churn", "--version", "0"],
        ["drift", "report", "churn", "--windows", "0"],
        ["drift", "report", "churn", "--window", "w-1", "--windows", "2"],
        ["alerts", "churn@production"],
        ["alerts", "--kind", "drift"],
        ["alerts", "--since", "yesterday"],
        ["alerts", "--limit", "-1"],
        ["segments"],
        ["segments", "churn", "--version", "x"],
    ],
)
def test_parser_rejects_bad_input(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


def test_existing_groups_are_still_there():
    groups = ("datasets", "specs", "runs", "models", "deploy", "predict", "up", "down", "status")
    for group in (*groups, "traces", "drift", "alerts", "segments"):
        with pytest.raises(SystemExit) as exc:
            parse(group, "--help")
        assert exc.value.code == 0


def test_parse_since():
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert monitoring.parse_since("30m", now) == now - timedelta(minutes=30)
    assert monitoring.parse_since("2h", now) == now - timedelta(hours=2)
    assert monitoring.parse_since("7d", now) == now - timedelta(days=7)
    assert monitoring.parse_since("1.5h", now) == now - timedelta(minutes=90)
    assert monitoring.parse_since("2024-05-01T14:00:00+02:00") == now
    assert monitoring.parse_since("2024-05-01T12:00:00") == now  # no zone: UTC
    with pytest.raises(ValueError, match="ISO 8601"):
        monitoring.parse_since("last tuesday")
    ts = monitoring.timestamp(now)
    assert ts.seconds == int(now.timestamp()) and ts.nanos == 0


# ---------------------------------------------------------------------------------------------------
# Spans

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def span(trace, sid, parent=None, name="op", service="flywheel-registry", start=0, dur=1, status="UNSET", **attrs):
    return {
        "trace_id": trace,
        "span_id": sid,
        "parent_span_id": parent,
        "name": name,
        "kind": "INTERNAL",
        "service": service,
        "start_ns": T0 + start * MS,
        "end_ns": T0 + (start + dur) * MS,
        "status": status,
        "attributes": attrs,
    }


# One chain: a registration call publishes an event, serving consumes it; the children are written out
# of order (as the exporters of several processes append them), and one span's parent never made it.
CHAIN = [
    span("t1", "c", "a", "outbox publish flywheel.model.promoted", start=5, dur=1),
    span("t1", "b", "a", "INSERT", start=2, dur=1),
    span("t1", "a", None, "/flywheel.v1.RegistryService/RegisterModel", start=0, dur=10),
    span("t1", "d", "c", "flywheel.model.promoted process", "flywheel-serving", start=8, dur=30,
         **{"flywheel.event_id": "ev-1"}),
    span("t1", "e", "d", "/flywheel.v1.RegistryService/GetModelVersion", "flywheel-serving", start=9, dur=3,
         status="ERROR"),
    span("t1", "f", "zz", "swap", "flywheel-serving", start=20, dur=2),
]  # fmt: skip


def ids(nodes: list[SpanNode]) -> list:
    return [(n.span["span_id"], ids(n.children)) if n.children else n.span["span_id"] for n in nodes]


def test_build_tree_nests_children_by_start_time_and_roots_orphans():
    roots = traces.build_tree(CHAIN)
    assert ids(roots) == [("a", ["b", ("c", [("d", ["e"])])]), "f"]
    assert [r.parent_missing for r in roots] == [False, True]
    assert traces.duration_ns(roots[0].span) == 10 * MS
    assert traces.duration_ns(roots[0].children[1].children[0].span) == 30 * MS


def test_build_tree_orders_roots_and_ties_and_keeps_every_span_once():
    spans = [
        span("t", "x", None, "late", start=5),
        span("t", "y", None, "early", start=1, dur=4),
        span("t", "z", None, "early-short", start=1, dur=2),
        span("t", "x", None, "duplicate of x", start=0),  # the first copy wins
        span("t", "p", "q", "cycle p", start=3),  # p <-> q: a corrupt file still prints both
        span("t", "q", "p", "cycle q", start=4),
        span("t", "s", "s", "own parent", start=6),
    ]
    roots = traces.build_tree(spans)
    names = [r.span["name"] for r in roots]
    assert names == ["early-short", "early", "cycle p", "late", "own parent"]
    assert roots[2].parent_missing and [c.span["name"] for c in roots[2].children] == ["cycle q"]
    assert roots[4].parent_missing

    def count(nodes):
        return sum(1 + count(n.children) for n in nodes)

    assert count(roots) == 6


def test_build_tree_survives_missing_fields():
    roots = traces.build_tree(
        [{"trace_id": "t", "span_id": "a"}, {"trace_id": "t", "span_id": "b", "parent_span_id": "a"}]
    )
    assert ids(roots) == [("a", ["b"])]
    assert traces.duration_ns(roots[0].span) is None
    assert traces.fmt_ms(None) == "-" and traces.service_name(roots[0].span) == "-"


def test_tree_json_nests_spans():
    nested = traces.tree_json(traces.build_tree(CHAIN))
    assert [n["span_id"] for n in nested] == ["a", "f"]
    assert nested[1]["parent_missing"] is True and "parent_missing" not in nested[0]
    assert nested[0]["children"][1]["children"][0]["attributes"] == {"flywheel.event_id": "ev-1"}
    assert nested[0]["children"][0]["children"] == []
    json.dumps(nested)


def test_fmt_ms():
    assert traces.fmt_ms(420_000) == "0.42 ms"
    assert traces.fmt_ms(12_345_678) == "12.3 ms"
    assert traces.fmt_ms(1_234_500_000) == "1,234.5 ms"
    assert traces.fmt_ms(0) == "0.00 ms"


def test_trace_tree_rendering():
    text = render(traces.trace_tree("t1", CHAIN))
    lines = text.splitlines()
    assert lines[0].strip() == "trace t1"
    assert lines[1].startswith("2023-11-14 22:13:20.000 UTC  6 spans  38.0 ms")
    assert "services: flywheel-registry, flywheel-serving  1 error" in lines[1]
    assert "+0.00 ms  flywheel-registry  /flywheel.v1.RegistryService/RegisterModel  10.0 ms" in lines[2]
    assert "+2.00 ms  flywheel-registry  INSERT  1.00 ms" in lines[3]
    assert "+8.00 ms  flywheel-serving  flywheel.model.promoted process  30.0 ms  event_id=ev-1" in text
    assert "+9.00 ms  flywheel-serving  /flywheel.v1.RegistryService/GetModelVersion  3.00 ms  ERROR" in text
    assert "+20.0 ms  flywheel-serving  swap  2.00 ms  (parent not in file)" in lines[-1]
    assert text.index("RegisterModel") < text.index("INSERT") < text.index("outbox publish") < text.index("swap")


def test_error_spans_are_red():
    assert "red" in traces.span_label(CHAIN[4], T0)
    assert "red" not in traces.span_label(CHAIN[2], T0)
    assert traces.span_label(span("t", "a", name="[x]"), T0).count("\\[x]") == 1  # markup escaped


# Three traces: t-old ran training; t-new is newer, without a training run; t-alert raised an alert.
SELECTION = [
    span("t-old", "1", None, "/flywheel.v1.IngestionService/Ingest", start=0, dur=50),
    span("t-old", "2", "1", "flywheel.dataset.versioned process", "flywheel-training", start=10,
         **{"flywheel.event_id": "ev-ds"}),
    span("t-old", "3", "2", "training run", "flywheel-training", start=20, dur=30),
    span("t-new", "4", None, "/flywheel.v1.RegistryService/SetAlias", start=100),
    span("t-new", "5", "4", "flywheel.model.promoted process", "flywheel-serving", start=101,
         **{"flywheel.event_id": "ev-promo"}),
    span("t-alert", "6", None, "flywheel.predictions.logged process", "flywheel-monitoring", start=60,
         **{"flywheel.event_id": "ev-pred", "flywheel.alert_id": "a-1"}),
]  # fmt: skip


def test_select_last_prefers_the_newest_trace_with_a_training_run():
    assert traces.select_last(SELECTION) == "t-old"
    newer_training = [*SELECTION, span("t-newest", "9", None, "training run", start=200)]
    assert traces.select_last(newer_training) == "t-newest"
    without = [s for s in SELECTION if s["name"] != "training run"]
    assert traces.select_last(without) == "t-new"
    assert traces.select_last([]) is None


def test_select_chain_by_event_or_alert_id():
    assert traces.select_chain(SELECTION, "ev-ds") == "t-old"
    assert traces.select_chain(SELECTION, "ev-promo") == "t-new"
    assert traces.select_chain(SELECTION, "a-1") == "t-alert"
    assert traces.select_chain(SELECTION, "ev-pred") == "t-alert"
    assert traces.select_chain(SELECTION, "nope") is None
    redelivered = [*SELECTION, span("t-again", "7", None, "x process", start=300, **{"flywheel.event_id": "ev-ds"})]
    assert traces.select_chain(redelivered, "ev-ds") == "t-again"  # the newest of several


def test_select_trace_by_id_or_unique_prefix():
    assert traces.select_trace(SELECTION, "t-old") == "t-old"
    assert traces.select_trace(SELECTION, "t-o") == "t-old"
    assert traces.select_trace(SELECTION, "zz") is None
    with pytest.raises(traces.CliError) as exc:
        traces.select_trace(SELECTION, "t-")
    assert exc.value.code == 2 and "matches 3 traces" in str(exc.value)


def test_summaries_newest_first():
    summaries = traces.summarize(CHAIN + SELECTION)
    assert [s.trace_id for s in summaries] == ["t-new", "t-alert", "t-old", "t1"]
    t1 = summaries[-1]
    assert (t1.root, t1.spans, t1.duration_ns, t1.errors) == (
        "flywheel-registry  /flywheel.v1.RegistryService/RegisterModel",
        6,
        38 * MS,
        1,
    )
    assert t1.services == ("flywheel-registry", "flywheel-serving")
    assert [s.trace_id for s in traces.summarize(CHAIN + SELECTION, limit=2)] == ["t-new", "t-alert"]
    assert [s.trace_id for s in traces.summarize(CHAIN + SELECTION, min_spans=2)] == ["t-new", "t-old", "t1"]
    text = render(traces.traces_table(summaries))
    assert "t1" in text and "6 (1 failed)" in text and "38.0 ms" in text and "flywheel-serving" in text
    orphan_first = [span("o", "x", "gone", "orphan", start=0), span("o", "y", None, "root", start=1)]
    assert traces.summarize(orphan_first)[0].root == "flywheel-registry  root"  # a true root over an orphan


def test_parse_span_lines_skips_what_is_not_a_span():
    lines = [json.dumps(CHAIN[0]), "", "not json", '{"trace_id": "t"}', "[1]", json.dumps(CHAIN[1])[:-5]]
    assert traces.parse_span_lines(lines) == [CHAIN[0]]


@pytest.fixture
def span_file(tmp_path, monkeypatch):
    path = tmp_path / "spans.jsonl"
    monkeypatch.setattr(traces, "get_settings", lambda: Settings(home=tmp_path, spans_file=None))
    monkeypatch.setattr(traces, "console", Console(width=220))
    return path


def test_spans_path_prefers_the_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(traces, "get_settings", lambda: Settings(home=tmp_path))
    assert traces.spans_path() == tmp_path / "spans.jsonl"
    monkeypatch.setattr(traces, "get_settings", lambda: Settings(home=tmp_path, spans_file=tmp_path / "x.jsonl"))
    assert traces.spans_path() == tmp_path / "x.jsonl"


def test_traces_without_a_span_file_exits_1_with_one_line(span_file, capsys):
    args = parse("traces", "--last")
    assert args.func(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: no span file at {span_file}")
    assert captured.err.count("\n") == 1


def test_traces_commands_on_a_span_file(span_file, capsys):
    span_file.write_text("".join(json.dumps(s) + "\n" for s in CHAIN + SELECTION))

    args = parse("traces", "--last")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("trace t-old") and "flywheel-training  training run  30.0 ms" in out

    args = parse("traces", "--chain", "ev-1", "--json")
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trace_id"] == "t1" and [s["span_id"] for s in doc["spans"]] == ["a", "f"]

    args = parse("traces", "--trace", "t-a")
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("trace t-alert")

    args = parse("traces", "--chain", "missing")
    assert args.func(args) == 1
    assert capsys.readouterr().err == f"error: no span in {span_file} carries event or alert id 'missing'\n"

    args = parse("traces")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "t-new" in out and "t-alert" not in out and "1 traces of fewer than 2 spans not listed" in out

    args = parse("traces", "--json", "--min-spans", "1")
    assert args.func(args) == 0
    listed = json.loads(capsys.readouterr().out)["traces"]
    assert [t["trace_id"] for t in listed] == ["t-new", "t-alert", "t-old", "t1"]
    assert listed[-1]["services"] == ["flywheel-registry", "flywheel-serving"] and listed[-1]["spans"] == 6


# ---------------------------------------------------------------------------------------------------
# Monitoring messages


def score(feature, statistic, value, threshold, p=0.0, breached=False) -> common_pb2.FeatureScore:
    return common_pb2.FeatureScore(
        feature=feature, statistic=statistic, score=value, threshold=threshold, p_value=p, breached=breached
    )


def window() -> monitoring_pb2.WindowReport:
    w = monitoring_pb2.WindowReport(
        window_id="w-7",
        model=common_pb2.ModelRef(name="churn", version=3),
        rows=5000,
        reference=common_pb2.DatasetRef(name="churn-data", version=2),
        feature_scores=[
            score("age", "psi", 0.31, 0.2, breached=True),
            score("age", "ks", 0.22, 0.1, p=1e-9, breached=True),
            score("tenure", "psi", 0.01, 0.2),
        ],
        prediction_scores=[score("label", "chi2", 3.5, 0.01, p=0.06)],
        integrity=monitoring_pb2.IntegrityReport(
            features=[
                monitoring_pb2.FeatureIntegrity(feature="age", nulls=12, out_of_range=3),
                monitoring_pb2.FeatureIntegrity(feature="tenure"),
            ],
            missing_fields=["plan"],
            extra_fields=["zip"],
            scores=[score("age", "null_rate", 0.0024, 0.01)],
        ),
        quality=monitoring_pb2.QualityReport(
            labelled_rows=800,
            metric="accuracy",
            value=0.81,
            reference_value=0.9,
            drop=0.09,
            breached=True,
            metrics=[common_pb2.Metric(name="accuracy", value=0.81), common_pb2.Metric(name="f1", value=0.77)],
        ),
        latency=monitoring_pb2.LatencySummary(p50_ms=1.25, p99_ms=8.5, mean_ms=2),
        breached=[common_pb2.DRIFT_KIND_DATA_DRIFT, common_pb2.DRIFT_KIND_QUALITY],
    )
    w.start.FromDatetime(datetime(2024, 5, 1, 12))
    w.end.FromDatetime(datetime(2024, 5, 1, 12, 5))
    return w


def test_window_report():
    text = render(monitoring.window_report(window()))
    for fragment in (
        "window      w-7",
        "model       churn v3",
        "rows        5000",
        "time range  2024-05-01 12:00:00 - 2024-05-01 12:05:00",
        "breached    data drift, quality",
        "reference   churn-data v2",
        "latency     p50 1.25 ms, p99 8.5 ms, mean 2 ms",
        "feature drift",
        "prediction drift",
        "missing fields: plan",
        "extra fields: zip",
        "integrity rates",
        "quality",
        "f1=0.77",
    ):
        assert fragment in text, fragment
    assert (
        text.index("feature drift") < text.index("prediction drift") < text.index("integrity") < text.index("\nquality")
    )
    row = next(line for line in text.splitlines() if "age" in line and " ks " in line)
    assert "0.22" in row and "0.1" in row and "1e-09" in row and "yes" in row
    assert "tenure" not in text.split("integrity")[1].split("missing fields")[0]  # clean features are not listed


def test_breached_scores_are_red():
    table = monitoring.scores_table(window().feature_scores, "feature drift")
    assert [r.style for r in table.rows] == ["red", "red", None]
    assert "[bold red]yes[/]" in monitoring.fmt_breached(True)
    assert "[red]" in monitoring.fmt_kinds([common_pb2.DRIFT_KIND_SEGMENT])
    assert "none" in monitoring.fmt_kinds([])


def test_window_without_quality_or_integrity():
    w = monitoring_pb2.WindowReport(window_id="w-1", rows=10, feature_scores=[score("age", "psi", 0.01, 0.2)])
    text = render(monitoring.drift_report([w, w]))
    assert "quality" not in text and "integrity" not in text and "breached    none" in text
    assert text.count("window      w-1") == 2
    clean = monitoring_pb2.IntegrityReport(features=[monitoring_pb2.FeatureIntegrity(feature="age")])
    assert "no nulls" in render(monitoring.integrity_renderables(clean)[0])


def alert(**kw) -> monitoring_pb2.Alert:
    a = monitoring_pb2.Alert(
        alert_id=kw.pop("alert_id", "a-1"),
        model=common_pb2.ModelRef(name="churn", version=3),
        kind=kw.pop("kind", common_pb2.DRIFT_KIND_DATA_DRIFT),
        window_id="w-7",
        scores=kw.pop("scores", [score("age", "psi", 0.31, 0.2, breached=True), score("tenure", "psi", 0.01, 0.2)]),
        message=kw.pop("message", "2 features drifted"),
        **kw,
    )
    a.create_time.FromDatetime(datetime(2024, 5, 1, 12, 6))
    return a


def test_alerts_table_and_line():
    segment = alert(
        alert_id="a-2",
        kind=common_pb2.DRIFT_KIND_SEGMENT,
        scores=[score("accuracy", "accuracy", 0.6, 0.7, breached=True)],
        segment=common_pb2.Segment(field="plan", value="free"),
        message="",
        suppressed=True,
    )
    text = render(monitoring.alerts_table([alert(), segment]))
    assert "2024-05-01 12:06:00" in text and "churn:3" in text and "data drift" in text and "w-7" in text
    assert "age psi=0.31" in text and "tenure" not in text  # only the breached scores
    assert "segment (suppressed)" in text and "plan=free" in text and "accuracy accuracy=0.6" in text
    line = render(monitoring.alert_line(alert()))
    assert line.strip() == "2024-05-01 12:06:00  churn:3  data drift  window w-7: age psi=0.31 - 2 features drifted"
    assert "segment plan=free" in render(monitoring.alert_line(segment))
    assert json.loads(monitoring.alert_json_line(alert()))["model"] == {"name": "churn", "version": "3"}
    assert monitoring.fmt_scores([score("a", "psi", 0.1, 0.2)]) == "a psi=0.1"  # none breached: all


def segment_response() -> monitoring_pb2.GetSegmentReportResponse:
    def stats(field, value, rows, acc, rate, breached=False):
        return monitoring_pb2.SegmentStats(
            segment=common_pb2.Segment(field=field, value=value),
            rows=rows,
            labelled_rows=rows // 2,
            metrics=[
                common_pb2.Metric(name="accuracy", value=acc),
                common_pb2.Metric(name="positive_rate", value=rate),
            ],
            breached=breached,
        )

    return monitoring_pb2.GetSegmentReportResponse(
        model=common_pb2.ModelRef(name="churn", version=3),
        window_id="w-7",
        segments=[
            stats("plan", "pro", 400, 0.91, 0.2),
            stats("plan", "free", 600, 0.62, 0.5, breached=True),
            stats("age", "[20, 30)", 300, 0.8, 0.3),
        ],
        gaps=[
            monitoring_pb2.SegmentGap(
                field="plan",
                metric="accuracy",
                gap=0.29,
                best=common_pb2.Segment(field="plan", value="pro"),
                worst=common_pb2.Segment(field="plan", value="free"),
                breached=True,
            ),
            monitoring_pb2.SegmentGap(field="region", metric="accuracy", gap=0.0),
        ],
    )


def test_segment_report():
    response = segment_response()
    text = render(monitoring.segment_report(response))
    assert text.startswith("churn v3  window w-7")
    assert text.index("plan") < text.index("age") < text.index("region: no segments")
    free = next(line for line in text.splitlines() if "free" in line and "│" in line)
    assert "600" in free and "300" in free and "0.62" in free and "0.5" in free and "yes" in free
    assert "[20, 30)" in text  # bucket labels are not taken for markup
    assert "accuracy gap 0.29: best plan=pro 0.91, worst plan=free 0.62  breached" in text
    table = monitoring.segments_table("plan", response.segments[:2])
    assert [c.header for c in table.columns] == ["segment", "rows", "labelled", "accuracy", "positive_rate", "breached"]
    assert [r.style for r in table.rows] == [None, "red"]
    assert "red" not in monitoring.gap_line(response.gaps[1])


# ---------------------------------------------------------------------------------------------------
# Handlers against fake stubs


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeCall:
    """A server stream: yields its items, then raises `end` (KeyboardInterrupt, an RpcError) if given."""

    def __init__(self, items, end: BaseException | None = None) -> None:
        self.items, self.end, self.cancelled = items, end, False

    def __iter__(self):
        yield from self.items
        if self.end is not None:
            raise self.end

    def cancel(self) -> None:
        self.cancelled = True


class FakeMonitoring:
    def __init__(self) -> None:
        self.requests: list = []
        self.responses: dict = {}
        self.errors: dict = {}
        self.stream: FakeCall = FakeCall([])

    def _answer(self, method, request):
        self.requests.append((method, request))
        if method in self.errors:
            raise self.errors[method]
        return self.responses[method]

    def GetDriftReport(self, request, timeout=None):
        return self._answer("GetDriftReport", request)

    def GetSegmentReport(self, request, timeout=None):
        return self._answer("GetSegmentReport", request)

    def ListAlerts(self, request, timeout=None):
        return self._answer("ListAlerts", request)

    def WatchAlerts(self, request):
        self.requests.append(("WatchAlerts", request))
        return self.stream


@pytest.fixture
def fake(monkeypatch):
    stub = FakeMonitoring()

    @contextmanager
    def connect():
        yield stub

    monkeypatch.setattr(monitoring, "connect_monitoring", connect)
    wide = Console(width=220)
    monkeypatch.setattr(monitoring, "console", wide)
    monkeypatch.setattr(client, "console", wide)  # listings print through client.print_listing
    return stub


def test_drift_report_request_and_output(fake, capsys):
    fake.responses["GetDriftReport"] = monitoring_pb2.GetDriftReportResponse(windows=[window()])
    args = parse("drift", "report", "churn", "--version", "3", "--windows", "4")
    assert args.func(args) == 0
    method, request = fake.requests[-1]
    assert method == "GetDriftReport"
    assert (request.model_name, request.model_version, request.window_id, request.window_count) == ("churn", 3, "", 4)
    assert "feature drift" in capsys.readouterr().out

    args = parse("drift", "report", "churn", "--window", "w-7", "--json")
    assert args.func(args) == 0
    assert fake.requests[-1][1].window_id == "w-7" and fake.requests[-1][1].window_count == 0
    assert json.loads(capsys.readouterr().out)["windows"][0]["window_id"] == "w-7"

    fake.responses["GetDriftReport"] = monitoring_pb2.GetDriftReportResponse()
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == {"windows": []}
    args = parse("drift", "report", "churn")
    assert args.func(args) == 0
    assert capsys.readouterr().out == "no windows for churn yet\n"


def test_rpc_errors_are_one_line_and_exit_1(fake, capsys):
    fake.errors["GetDriftReport"] = FakeRpcError(grpc.StatusCode.NOT_FOUND, "model churn has no\nproduction version")
    args = parse("drift", "report", "churn")
    assert args.func(args) == 1
    assert capsys.readouterr().err == "error: NOT_FOUND: model churn has no production version\n"


def test_alerts_list_request_and_output(fake, capsys):
    fake.responses["ListAlerts"] = monitoring_pb2.ListAlertsResponse(alerts=[alert()])
    args = parse("alerts", "churn", "--kind", "prediction", "--since", "2024-05-01T12:00:00Z", "--limit", "10")
    assert args.func(args) == 0
    request = fake.requests[-1][1]
    assert request.model_name == "churn" and request.kind == common_pb2.DRIFT_KIND_PREDICTION_DRIFT
    assert request.since.ToDatetime(tzinfo=UTC) == datetime(2024, 5, 1, 12, tzinfo=UTC) and request.page_size == 10
    assert "age psi=0.31" in capsys.readouterr().out

    args = parse("alerts", "--json")
    assert args.func(args) == 0
    request = fake.requests[-1][1]
    assert request.model_name == "" and request.kind == 0 and not request.HasField("since")
    assert json.loads(capsys.readouterr().out)["alerts"][0]["alert_id"] == "a-1"

    fake.responses["ListAlerts"] = monitoring_pb2.ListAlertsResponse()
    args = parse("alerts")
    assert args.func(args) == 0
    assert capsys.readouterr().out == "no alerts\n"


def test_alerts_watch_prints_each_alert_until_ctrl_c(fake, capsys):
    second = alert(alert_id="a-2", message="again")
    fake.stream = FakeCall(
        [monitoring_pb2.WatchAlertsResponse(alert=a) for a in (alert(), second)], KeyboardInterrupt()
    )
    args = parse("alerts", "churn", "--kind", "integrity", "--watch")
    assert args.func(args) == 130
    assert fake.stream.cancelled
    request = fake.requests[-1][1]
    assert request.model_name == "churn" and list(request.kinds) == [common_pb2.DRIFT_KIND_INTEGRITY]
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("2 features drifted") and lines[1].endswith("again")
    assert captured.err.endswith("error: interrupted\n")


def test_alerts_watch_json_backfills_since_without_duplicates(fake, capsys):
    older, newer = alert(alert_id="a-0", message="first"), alert(alert_id="a-1")
    fake.responses["ListAlerts"] = monitoring_pb2.ListAlertsResponse(alerts=[newer, older])  # newest first
    fake.stream = FakeCall(
        [monitoring_pb2.WatchAlertsResponse(alert=a) for a in (newer, alert(alert_id="a-2"))], KeyboardInterrupt()
    )
    args = parse("alerts", "--watch", "--since", "1h", "--json")
    assert args.func(args) == 130
    assert [m for m, _ in fake.requests] == ["WatchAlerts", "ListAlerts"]  # the stream opens first
    assert list(fake.requests[0][1].kinds) == []
    ids = [json.loads(line)["alert_id"] for line in capsys.readouterr().out.splitlines()]
    assert ids == ["a-0", "a-1", "a-2"]


def test_alerts_watch_stream_ending_or_failing_exits_1(fake, capsys):
    fake.stream = FakeCall([])
    args = parse("alerts", "--watch")
    assert args.func(args) == 1
    assert capsys.readouterr().err.endswith("error: the alert stream ended: the monitoring service closed it\n")
    fake.stream = FakeCall([], FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection reset"))
    assert args.func(args) == 1
    assert capsys.readouterr().err.endswith("error: UNAVAILABLE: connection reset\n")
    assert fake.stream.cancelled


def test_segments_request_and_output(fake, capsys):
    fake.responses["GetSegmentReport"] = segment_response()
    args = parse("segments", "churn", "--version", "3", "--window", "w-7", "--field", "plan")
    assert args.func(args) == 0
    request = fake.requests[-1][1]
    assert (request.model_name, request.model_version, request.window_id, request.field) == ("churn", 3, "w-7", "plan")
    assert "accuracy gap 0.29" in capsys.readouterr().out

    args = parse("segments", "churn", "--json")
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["window_id"] == "w-7" and len(doc["segments"]) == 3 and len(doc["gaps"]) == 2

    fake.responses["GetSegmentReport"] = monitoring_pb2.GetSegmentReportResponse()
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == {"segments": [], "gaps": []}
    args = parse("segments", "churn")
    assert args.func(args) == 0
    assert capsys.readouterr().out == "no segment report for churn\n"
