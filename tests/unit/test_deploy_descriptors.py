"""The deployment descriptors hold together: docker-compose.yml, the Prometheus config, the Grafana
dashboard, the Kubernetes manifests and the secrets they read.

No Docker engine or cluster runs here, so each descriptor is checked against its schema (the Compose
specification, the Kubernetes OpenAPI schemas through kubernetes-validate, kustomize's own build when
a kustomize or kubectl binary is on PATH) and against the code it deploys: every setting it names is
a real FLYWHEEL_* setting, every metric, label and topic a dashboard query names is one the services
export (as the real OpenTelemetry Prometheus exporter names it), every port and scrape target
matches, and every secret a descriptor reads is one deploy/generate_secrets.py writes.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from flywheel.bus.topics import all_topics
from flywheel.config import SERVICES, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD_FILE = GRAFANA / "dashboards" / "flywheel.json"
# The oldest Kubernetes the manifests claim (gRPC probes, matchLabelKeys) and the newest schema at hand.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
LIVENESS = "flywheel.liveness"  # the contract's liveness service name (flywheel.grpc.server.LIVENESS)
# Env vars the deployment sets that are not Settings fields: which service a container runs (read by
# `flywheel health`).
NON_SETTINGS_ENV = {"FLYWHEEL_SERVICE"}


# -- loading --------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def version() -> str:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return str(project["version"])


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@cache
def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


@cache
def k8s_resources() -> list[dict[str, Any]]:
    return [doc for name in kustomization()["resources"] for doc in yaml_docs(K8S / name)]


def k8s(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_resources() if d["kind"] == kind}


def configmap() -> dict[str, str]:
    data: dict[str, str] = k8s("ConfigMap")["flywheel-config"]["data"]
    return data


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def seconds(duration: str | int | float) -> float:
    """A Compose or Prometheus duration (45s, 1m30s, 15d) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def setting_names() -> set[str]:
    return {f"FLYWHEEL_{name.upper()}" for name in Settings.model_fields}


# -- the metrics the code exports -----------------------------------------------------------------------

_CREATE = re.compile(
    r"create_(counter|up_down_counter|histogram|gauge|observable_gauge|observable_counter|observable_up_down_counter)$"
)


@cache
def instruments() -> dict[str, tuple[str, str]]:
    """name -> (kind, unit) of every OpenTelemetry instrument created in libs/flywheel and services."""
    found: dict[str, tuple[str, str]] = {}
    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            match = _CREATE.match(node.func.attr)
            if not match or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            unit = next((k.value for k in node.keywords if k.arg == "unit"), None)
            unit_text = unit.value if isinstance(unit, ast.Constant) else ""
            found[str(node.args[0].value)] = (match.group(1), str(unit_text))
    return found


def code_files() -> Iterator[Path]:
    for base in (ROOT / "libs" / "flywheel", ROOT / "services"):
        for path in sorted(base.rglob("*.py")):
            if "v1" not in path.relative_to(base).parts[:1]:
                yield path


@cache
def attribute_keys() -> set[str]:
    """Every attribute key the code records with a measurement: dict literals passed to .add()/.record()
    or Observation(), assigned to a name ending in attrs/attributes, or yielded as (attributes, value)."""
    keys: set[str] = set()

    def take(node: ast.AST | None) -> None:
        if isinstance(node, ast.Dict):
            keys.update(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))

    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("add", "record", "set", "Observation"):
                    for arg in [*node.args, *(k.value for k in node.keywords)]:
                        take(arg)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith(("attrs", "attributes")) for t in node.targets
            ):
                take(node.value)
            elif isinstance(node, ast.Yield) and isinstance(node.value, ast.Tuple) and node.value.elts:
                take(node.value.elts[0])
    return keys


# The services' exporter, run in a child process (it registers with prometheus_client's global
# registry, as in a service): one measurement per instrument, then every sample name it serves.
_EXPORT = """
import json, sys
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY

meter = MeterProvider(metric_readers=[PrometheusMetricReader()]).get_meter("flywheel")
for name, (kind, unit) in json.load(sys.stdin).items():
    if kind.startswith("observable"):
        getattr(meter, "create_" + kind)(name, callbacks=[lambda _: [Observation(1)]], unit=unit)
        continue
    instrument = getattr(meter, "create_" + kind)(name, unit=unit)
    record = {"histogram": "record", "gauge": "set"}.get(kind, "add")
    getattr(instrument, record)(1)
print(json.dumps(sorted({s.name for family in REGISTRY.collect() for s in family.samples})))
"""


@pytest.fixture(scope="module")
def exported() -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _EXPORT],
        input=json.dumps(instruments()),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    names = set(json.loads(result.stdout))
    assert "flywheel_consumer_lag" in names, names  # the exporter ran and named as expected
    return names


# -- PromQL, as far as the dashboard uses it -----------------------------------------------------------

_STRING = r'"(?:[^"\\]|\\.)*"'
_MATCHER = re.compile(rf"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})\s*(,|$)")
FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile", "label_values"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
# Grafana's own variables, and the dashboard's (its templating list, checked below).
MACROS = {"$__rate_interval", "$__range", "$__interval"}


class Query:
    """A PromQL expression taken apart: metric names, label matchers, grouping labels, functions."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.matchers: list[tuple[str, str, str]] = []
        self.grouping: set[str] = set()
        self.metrics: set[str] = set()
        self.functions: set[str] = set()
        body = expr
        values = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)\s*", body)
        if values:  # Grafana's variable query: label_values(<selector>, <label>)
            self.functions.add("label_values")
            self.grouping.add(values.group(2))
            body = values.group(1)
        for block in re.findall(r"\{([^{}]*)\}", body):
            rest = block
            while rest.strip():
                m = _MATCHER.match(rest)
                assert m, f"cannot read the label matchers {{{block}}} in {expr!r}"
                self.matchers.append((m.group(1), m.group(2), json.loads(m.group(3))))
                rest = rest[m.end() :]
        body = re.sub(r"\{[^{}]*\}", " ", body)
        assert '"' not in body, f"a string outside a label matcher in {expr!r}"
        for window in re.findall(r"\[([^\]]*)\]", body):
            assert window in MACROS or re.fullmatch(r"\d+[smhdw]", window), f"range [{window}] in {expr!r}"
        body = re.sub(r"\[[^\]]*\]", " ", body)
        for labels in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", body):
            self.grouping.update(label.strip() for label in labels.split(",") if label.strip())
        body = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", body)
        depth = 0
        for char in body:
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth >= 0, f"unbalanced parentheses in {expr!r}"
        assert depth == 0, f"unbalanced parentheses in {expr!r}"
        for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?", body):
            word = m.group(0).rstrip("( \t")
            if m.group(1):
                self.functions.add(word)
            elif word not in KEYWORDS:
                self.metrics.add(word)
        leftover = re.sub(r"[a-zA-Z_:][a-zA-Z0-9_:]*|[()\s,/*+\-]|\d+(\.\d+)?", "", body)
        assert not leftover, f"cannot read {leftover!r} in {expr!r}"

    def labels(self) -> set[str]:
        return {label for label, _, _ in self.matchers} | self.grouping


def test_promql_reader_takes_queries_apart() -> None:
    q = Query('sum by (group, topic) (increase(flywheel_x_total{service=~"$service", topic="a.b"}[$__rate_interval]))')
    assert q.metrics == {"flywheel_x_total"} and q.functions == {"sum", "increase"}
    assert q.grouping == {"group", "topic"} and q.matchers == [("service", "=~", "$service"), ("topic", "=", "a.b")]
    assert Query('label_values(up{job="flywheel"}, service)').metrics == {"up"}
    for broken in ("sum(rate(x[5m])", 'x{a="1" b="2"}', "x{a=1}", "rate(x[five])"):
        with pytest.raises(AssertionError):
            Query(broken)


# -- the Grafana dashboard ------------------------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


@cache
def dashboard_queries() -> list[tuple[str, Query, str]]:
    """(where, query, legend) of every panel target and variable query."""
    out = [
        (f"panel {p['title']!r}", Query(t["expr"]), t.get("legendFormat", ""))
        for p in dashboard_panels()
        for t in p["targets"]
    ]
    out += [(f"variable {v['name']}", Query(v["query"]["query"]), "") for v in dashboard()["templating"]["list"]]
    return out


def test_dashboard_json_is_what_its_generator_writes() -> None:
    generator = load_module(GRAFANA / "dashboard.py", "flywheel_dashboard")
    assert DASHBOARD_FILE.read_text() == generator.render(), "run deploy/grafana/dashboard.py to rewrite the JSON"


def test_dashboard_metrics_exist_in_the_code(exported: set[str]) -> None:
    # `up` is Prometheus's own series for every target; everything else must be served by a service.
    known = exported | {"up"}
    for where, query, _ in dashboard_queries():
        missing = query.metrics - known
        assert not missing, f"{where}: {sorted(missing)} is not exported by any service (query {query.expr!r})"
        unknown = query.functions - FUNCTIONS
        assert not unknown, f"{where}: unknown function {sorted(unknown)}"


def test_every_instrument_in_the_code_has_a_panel(exported: set[str]) -> None:
    # A metric nobody looks at is a metric nobody notices: a new instrument needs a panel.
    used = {m for _, q, _ in dashboard_queries() for m in q.metrics}
    for name in instruments():
        base = name.replace(".", "_")
        assert any(u == base or u.startswith(base + "_") for u in used), f"{name} has no panel on the dashboard"


def test_dashboard_labels_and_values_exist() -> None:
    scrape_labels = {"job", "instance", "service"}  # added by Prometheus (prometheus.yml)
    bucket_labels = {"le"}  # a histogram bucket's bound, added by the exporter to its _bucket series
    known = attribute_keys() | scrape_labels | bucket_labels
    topics = set(all_topics())
    for where, query, legend in dashboard_queries():
        unknown = query.labels() - known
        assert not unknown, f"{where}: label {sorted(unknown)} is recorded by no metric"
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            # A legend can only show a label the query keeps: the grouping labels when it aggregates.
            kept = query.grouping if query.grouping else known
            assert label in kept, f"{where}: legend {{{{{label}}}}} is not a label of the result"
        for label, op, value in query.matchers:
            if label == "topic":
                names = value.split("|") if op == "=~" else [value]
                assert set(names) <= topics, f"{where}: topic {value!r} is not a Flywheel topic"
            if label == "group":
                service = re.fullmatch(r"flywheel-(\w+)\.\*", value)
                assert service and service.group(1) in SERVICES, f"{where}: group {value!r} names no service"
            if label == "job":
                assert value in prometheus_jobs(), f"{where}: job {value!r} is not scraped"


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"] for v in board["templating"]["list"]}
    datasource = provisioned_datasources()["prometheus"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        assert panel["type"] in ("row", "timeseries", "stat"), panel["type"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["w"] > 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == datasource, panel["title"]
        assert panel["description"], f"{panel['title']!r} says nothing about what it shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables or f"$__{var[2:]}" in MACROS, f"{panel['title']!r}: ${var} is not defined"


def test_dashboard_shows_the_loop() -> None:
    # What an operator must see without reading logs (issue 13): each has a panel.
    used = {m for _, q, _ in dashboard_queries() for m in q.metrics}
    for metric in (
        "flywheel_monitoring_drift_score",
        "flywheel_consumer_lag",
        "flywheel_outbox_published_total",
        "flywheel_outbox_failed_total",
        "flywheel_consumer_dead_lettered_total",
        "flywheel_dead_letters_stored_total",
        "flywheel_training_runs_stopped_total",
        "flywheel_serving_load_failures_total",
    ):
        assert metric in used, f"no panel shows {metric}"
    drift = [q for _, q, _ in dashboard_queries() if "flywheel_monitoring_drift_score" in q.metrics]
    assert any({"model", "feature"} <= q.grouping for q in drift), "drift scores are not shown per feature"
    alerts = [q for _, q, _ in dashboard_queries() if ("topic", "=", "flywheel.drift.detected") in q.matchers]
    assert alerts, "no panel counts alerts (drift.detected events)"


# -- Grafana provisioning -------------------------------------------------------------------------------


def provisioned_datasources() -> dict[str, str]:
    data = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "flywheel.yaml").read_text())
    return {d["type"]: d["uid"] for d in data["datasources"]}


def test_grafana_is_provisioned_from_the_repository() -> None:
    grafana = compose_services()["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"] if m.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "flywheel.yaml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    assert (ROOT / mounts[path]).resolve() == DASHBOARD_FILE.parent
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{path}/{DASHBOARD_FILE.name}"
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "flywheel.yaml").read_text())
    urls = {d["type"]: d["url"] for d in sources["datasources"]}
    assert urls["prometheus"] == "http://prometheus:9090" and urls["jaeger"] == "http://jaeger:16686"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


# -- Prometheus -----------------------------------------------------------------------------------------


@cache
def prometheus() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PROMETHEUS_FILE.read_text())
    return data


def prometheus_jobs() -> dict[str, list[dict[str, Any]]]:
    return {job["job_name"]: job["static_configs"] for job in prometheus()["scrape_configs"]}


def test_prometheus_config_is_well_formed() -> None:
    config = prometheus()
    assert set(config) <= {"global", "scrape_configs", "rule_files", "alerting", "storage"}, set(config)
    interval, timeout = seconds(config["global"]["scrape_interval"]), seconds(config["global"]["scrape_timeout"])
    assert 0 < timeout <= interval
    names = [job["job_name"] for job in config["scrape_configs"]]
    assert len(names) == len(set(names))
    for job in config["scrape_configs"]:
        assert set(job) <= {"job_name", "metrics_path", "scheme", "static_configs", "scrape_interval", "scrape_timeout"}
        assert job["static_configs"], job["job_name"]
        for group in job["static_configs"]:
            assert set(group) <= {"targets", "labels"}
            for target in group["targets"]:
                assert re.fullmatch(r"[a-z0-9.-]+:\d+", target), target


def test_prometheus_scrapes_every_service_on_its_metrics_port() -> None:
    services = compose_services()
    targets = {(t, group["labels"]["service"]) for group in prometheus_jobs()["flywheel"] for t in group["targets"]}
    expected = set()
    for name in SERVICES:
        env = services[name]["environment"]
        assert env["FLYWHEEL_SERVICE"] == name
        # A service with workers (serving) has one endpoint per worker: the port + i.
        workers = int(env.get(f"FLYWHEEL_{name.upper()}_WORKERS", 1))
        port = int(env["FLYWHEEL_METRICS_PORT"])
        expected |= {(f"{name}:{port + i}", name) for i in range(workers)}
        # Scraped over the compose network only, never published.
        assert all(env["FLYWHEEL_METRICS_PORT"] not in str(p).split(":") for p in services[name].get("ports", []))
    assert targets == expected


def test_prometheus_scrapes_the_collector_where_it_serves_its_metrics() -> None:
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    reader = collector["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["host"] == "0.0.0.0"  # reachable from the prometheus container
    assert [t for g in prometheus_jobs()["otel-collector"] for t in g["targets"]] == [
        f"otel-collector:{reader['port']}"
    ]
    assert "otel-collector" in compose_services()


def test_prometheus_service_runs_this_config() -> None:
    service = compose_services()["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in service["volumes"]
    flags = dict(arg.split("=", 1) for arg in service["command"])
    assert flags["--config.file"] == "/etc/prometheus/prometheus.yml"
    assert seconds(flags["--storage.tsdb.retention.time"]) > 0 and flags["--storage.tsdb.retention.size"]


# -- docker-compose.yml ---------------------------------------------------------------------------------


def test_compose_file_passes_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_publishes_on_loopback_only() -> None:
    for name, service in compose_services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_compose_services_run_the_production_shape() -> None:
    services = compose_services()
    settings = setting_names() | NON_SETTINGS_ENV
    for name in SERVICES:
        service = services[name]
        env = service["environment"]
        unknown = {k for k in env if k.startswith("FLYWHEEL_")} - settings
        assert not unknown, f"{name}: {sorted(unknown)} are not Flywheel settings"
        assert env["FLYWHEEL_SERVICE"] == name and env["OTEL_SERVICE_NAME"] == f"flywheel-{name}"
        assert env["FLYWHEEL_MIGRATE_ON_START"] == "false"
        assert service["image"] == f"flywheel:{version()}"
        # Read-only but for tmpfs: FLYWHEEL_HOME and /tmp writable by the image's user.
        assert service["read_only"] is True
        tmpfs = {entry.split(":")[0]: entry for entry in service["tmpfs"]}
        assert "/tmp" in tmpfs and "uid=10001" in tmpfs[env["FLYWHEEL_HOME"]], service["tmpfs"]
        assert service["healthcheck"]["test"] == ["CMD", "flywheel", "health"]
        # The drain (FLYWHEEL_GRPC_GRACE_S) plus the shutdown after it fits before SIGKILL.
        assert seconds(service["stop_grace_period"]) >= float(env["FLYWHEEL_GRPC_GRACE_S"]) + 15
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert f"deploy/secrets/env/{name}.env" in service["env_file"]
        assert f"deploy/secrets/tokens/{name}.env" in service["env_file"]
        port = env[f"FLYWHEEL_{name.upper()}_PORT"]
        assert env[f"FLYWHEEL_{name.upper()}_ADDR"] == f"{name}:{port}"
        assert f"127.0.0.1:{port}:{port}" in service["ports"]


def test_compose_consumer_timings_suit_a_real_broker() -> None:
    env = compose_services()["registry"]["environment"]
    session = int(env["FLYWHEEL_CONSUMER_SESSION_TIMEOUT_MS"])
    heartbeat = int(env["FLYWHEEL_CONSUMER_HEARTBEAT_MS"])
    rebalance = int(env["FLYWHEEL_CONSUMER_REBALANCE_TIMEOUT_MS"])
    # Within Kafka's group.min/max.session.timeout.ms defaults (6 s, 30 min), heartbeats well inside
    # the session, and longer than the embedded defaults that a GC pause or a slow handler would trip.
    assert 10_000 <= session <= 1_800_000 and heartbeat * 3 <= session and rebalance >= session
    assert session > Settings.model_fields["consumer_session_timeout_ms"].default


def test_compose_migrate_runs_once_as_the_owner_before_the_services() -> None:
    migrate = compose_services()["migrate"]
    assert migrate["command"] == ["flywheel", "migrate"] and migrate["restart"] == "no"
    assert migrate["env_file"] == ["deploy/secrets/env/migrate.env"]
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert migrate["image"] == f"flywheel:{version()}" and migrate["read_only"] is True


def test_compose_caps_what_grows() -> None:
    jaeger = compose_services()["jaeger"]["environment"]
    assert jaeger.get("SPAN_STORAGE_TYPE", "memory") == "memory" and int(jaeger["MEMORY_MAX_TRACES"]) > 0
    postgres = compose_services()["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?"), "no default password"


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("secrets")
    load_module(DEPLOY / "generate_secrets.py", "generate_secrets").generate(out)
    return out


def env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compose_reads_only_secrets_the_generator_writes(secrets: Path) -> None:
    text = COMPOSE_FILE.read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    assert required <= set(env_file(secrets / "compose.env"))
    for name, service in compose_services().items():
        for path in service.get("env_file", []):
            assert (secrets / Path(path).relative_to("deploy/secrets")).exists(), f"{name}: {path} is never written"


def test_database_roles_match_the_postgres_scripts(secrets: Path) -> None:
    # deploy/postgres/init-roles.sh needs a password for each role roles.sql creates; every DSN names one.
    wanted = set(re.findall(r"FLYWHEEL_DB_PASSWORD_(\w+)", (DEPLOY / "postgres" / "init-roles.sh").read_text()))
    assert wanted <= {k.removeprefix("FLYWHEEL_DB_PASSWORD_") for k in env_file(secrets / "env" / "postgres.env")}
    roles = set(re.findall(r"CREATE ROLE (\w+)", (DEPLOY / "postgres" / "roles.sql").read_text()))
    owner = env_file(secrets / "env" / "migrate.env")["FLYWHEEL_DATABASE_URL"]
    assert owner.startswith("postgresql://flywheel_migrator:") and "flywheel_migrator" in roles
    for name in SERVICES:
        dsn = env_file(secrets / "env" / f"{name}.env")["FLYWHEEL_DATABASE_URL"]
        assert dsn.startswith(f"postgresql://flywheel_{name}:") and f"flywheel_{name}" in roles
        assert "sslmode=verify-full" in dsn


def test_shell_scripts_parse() -> None:
    for shell, script in (("bash", "mint-tokens.sh"), ("sh", "secrets-init.sh"), ("bash", "kafka/kafka-init.sh")):
        result = subprocess.run([shell, "-n", str(DEPLOY / script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script}: {result.stderr}"


# -- Kubernetes -----------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = kustomization()["resources"]
    present = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present
    assert not list(K8S.glob("*.yml")), "use .yaml"


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_manifests_pass_the_kubernetes_schemas(k8s_version: str) -> None:
    docs = k8s_resources() + [d for p in sorted((K8S / "examples").glob("*.yaml")) for d in yaml_docs(p)]
    for doc in docs:
        # A CRD's schema is not Kubernetes's: Strimzi users are checked against acls.txt below, the
        # RayCluster in tests/unit/test_training_ray.py.
        if doc["apiVersion"].startswith(("kafka.strimzi.io/", "ray.io/")):
            continue
        kubernetes_validate.validate(doc, k8s_version, strict=True)


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def test_kustomize_output_passes_the_kubernetes_schemas() -> None:
    command = kustomize_command()
    images = kustomization()["images"]
    assert images == [{"name": "flywheel", "newName": images[0]["newName"], "newTag": version()}]
    if command is None:
        return  # without the binary, the listed files were validated one by one above
    result = subprocess.run([*command, str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(docs) == len(k8s_resources())
    image = kustomization()["images"][0]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization()["namespace"], doc["metadata"]["name"]
        for container in pod_spec(doc).get("containers", []):
            assert container["image"] == f"{image['newName']}:{version()}"


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] in ("Deployment", "Job"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return {}


def test_configmap_names_real_settings_only() -> None:
    unknown = {k for k in configmap() if k.startswith("FLYWHEEL_")} - setting_names()
    assert not unknown, f"{sorted(unknown)} are not Flywheel settings"
    assert configmap()["FLYWHEEL_MIGRATE_ON_START"] == "false"


def test_deployments_run_the_production_shape() -> None:
    deployments = k8s("Deployment")
    assert set(deployments) == set(SERVICES)
    data = configmap()
    grace = float(data["FLYWHEEL_GRPC_GRACE_S"])
    for name, deployment in deployments.items():
        pod = pod_spec(deployment)
        (container,) = pod["containers"]
        port = int(data[f"FLYWHEEL_{name.upper()}_PORT"])
        assert container["image"] == f"flywheel:{version()}"
        assert container["args"] == ["python", "-m", f"services.{name}"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["FLYWHEEL_SERVICE"] == name and env["OTEL_SERVICE_NAME"] == f"flywheel-{name}"
        assert {"secretRef": {"name": f"flywheel-{name}"}} in container["envFrom"]
        assert {"containerPort": port, "name": "grpc"} in container["ports"]
        # Liveness ignores PostgreSQL and Kafka; readiness does not; startup waits on the process.
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS}
        assert container["startupProbe"]["grpc"] == {"port": port, "service": LIVENESS}
        assert container["readinessProbe"]["grpc"] == {"port": port}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path in (data["FLYWHEEL_HOME"], "/tmp"):
            assert "emptyDir" in volumes[mounts[path]], f"{name}: {path} is not an emptyDir"
        assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + 15, name
        assert container["resources"]["requests"]["cpu"], f"{name}: the HPA and the scheduler need a CPU request"
        service = k8s("Service")[name]
        assert {"name": "grpc", "port": port, "targetPort": "grpc"} in service["spec"]["ports"]
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_every_deployment_has_a_disruption_budget_and_serving_scales() -> None:
    budgets = k8s("PodDisruptionBudget")
    for name, deployment in k8s("Deployment").items():
        assert budgets[name]["spec"]["selector"] == deployment["spec"]["selector"], name
        replicas = deployment["spec"].get("replicas")
        if budgets[name]["spec"].get("minAvailable") is not None:
            # minAvailable on a single replica would block every node drain.
            assert replicas is None or replicas > budgets[name]["spec"]["minAvailable"], name
    (hpa,) = k8s("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serving"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    # The autoscaler owns the replica count; a fixed one would be reset on every apply.
    assert "replicas" not in k8s("Deployment")["serving"]["spec"]


def test_migration_job_runs_as_the_owner_with_the_image_tag_in_its_name() -> None:
    (job,) = k8s("Job").values()
    pod = pod_spec(job)
    (container,) = pod["containers"]
    assert container["args"] == ["flywheel", "migrate"]
    assert container["image"] == f"flywheel:{version()}"
    assert {"secretRef": {"name": "flywheel-migrate"}} in container["envFrom"]
    assert job["metadata"]["name"].endswith(version().replace(".", "-")), "an upgrade needs a new Job"
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _ports(rule: dict[str, Any]) -> list[tuple[int | str, int | str]]:
    return [(p["port"], p.get("endPort", p["port"])) for p in rule.get("ports", [])]


def _allows(rules: list[dict[str, Any]], port: int | str) -> bool:
    for rule in rules:
        for low, high in _ports(rule):
            if low == port or (isinstance(low, int) and isinstance(port, int) and low <= port <= int(high)):
                return True
    return False


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


def test_network_policies_let_only_what_must_talk() -> None:
    policies = list(k8s("NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"} and "egress" not in deny[0]["spec"]
    data = configmap()
    kafka_port = int(data["FLYWHEEL_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    otlp_port = int(data["OTEL_EXPORTER_OTLP_ENDPOINT"].rsplit(":", 1)[1])
    for name, deployment in k8s("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies if _selects(p, labels)]
        ingress = [r for p in mine for r in p["spec"].get("ingress", [])]
        egress = [r for p in mine for r in p["spec"].get("egress", [])]
        assert _allows(ingress, "grpc") and _allows(ingress, "metrics"), name
        for port in (53, 5432, kafka_port, otlp_port, *(int(data[f"FLYWHEEL_{s.upper()}_PORT"]) for s in SERVICES)):
            assert _allows(egress, port), f"{name} may not reach port {port}"
        assert not _allows(egress, 443), f"{name}: HTTPS out is opt-in (examples/https-egress.yaml)"
    (job,) = k8s("Job").values()
    job_policies = [p for p in policies if _selects(p, job["spec"]["template"]["metadata"]["labels"])]
    job_egress = [r for p in job_policies for r in p["spec"].get("egress", [])]
    assert _allows(job_egress, 5432) and _allows(job_egress, 53), "the migration Job cannot reach PostgreSQL"


def test_strimzi_users_grant_what_the_compose_acls_grant() -> None:
    def acl_rows() -> set[tuple[str, str, str, str, str]]:
        rows = set()
        for line in (DEPLOY / "kafka" / "acls.txt").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                principal, operations, resource, pattern, *names = line.split()
                for op in operations.split(","):
                    rows |= {(principal, op, resource, pattern, n) for n in names}
        return rows

    users = yaml_docs(K8S / "examples" / "strimzi-users.yaml")
    granted = set()
    for user in users:
        assert user["kind"] == "KafkaUser" and user["spec"]["authentication"]["type"] == "scram-sha-512"
        for acl in user["spec"]["authorization"]["acls"]:
            r = acl["resource"]
            pattern = {"prefix": "prefixed", "literal": "literal"}[r["patternType"]]
            granted |= {(user["metadata"]["name"], op, r["type"], pattern, r["name"]) for op in acl["operations"]}
    assert granted == acl_rows()


def test_one_image_tag_everywhere() -> None:
    tag = version()
    assert kustomization()["images"][0]["newTag"] == tag
    readme = (DEPLOY / "README.md").read_text()
    assert f"flywheel:{tag}" in readme
    assert not re.findall(r"flywheel:(?!" + re.escape(tag) + r")\d+\.\d+\.\d+", readme), "another tag in the README"


def test_readme_covers_the_operations_it_promises() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for needle in (
        "http://localhost:3000",  # Grafana
        "http://localhost:16686",  # Jaeger
        "KafkaUser",
        "KafkaTopic",
        "FLYWHEEL_ARTIFACT_ROOT=s3://",
        "FLYWHEEL_S3_ENDPOINT_URL",
        "max_connections",
        "pg_dump",
        "flywheel migrate",
    ):
        assert needle in readme, f"deploy/README.md does not mention {needle}"


def test_no_environment_variable_points_outside_the_settings() -> None:
    # The Job and every Deployment read the same ConfigMap; their own env adds only known names.
    known = setting_names() | NON_SETTINGS_ENV
    for doc in k8s_resources():
        for container in pod_spec(doc).get("containers", []):
            names = {e["name"] for e in container.get("env", [])}
            unknown = {n for n in names if n.startswith("FLYWHEEL_")} - known
            assert not unknown, f"{doc['metadata']['name']}: {sorted(unknown)}"
