"""`flywheel demo`: the whole loop on a running stack, each step printed as it happens.

A synthetic tabular data set (generated here, nothing downloaded) is ingested, trained, checked,
promoted and served; reference traffic raises nothing; shifted traffic raises a drift alert;
training waits for new data; a fresh snapshot arrives and the model is retrained, beats
production on the same rows and is swapped in, and the trace id of the chain is shown. Act two: a
snapshot with inverted labels yields a model that wins on its own test split and is promoted; live
feedback shows it wrong and the post-promotion guard rolls production back. Act three: promotions
become progressive, and the next bad snapshot's model is stopped at its first canary step.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Value
from rich.console import Console

from flywheel.auth.credentials import ClientCredentials, client_credentials
from flywheel.cli import client
from flywheel.config import get_settings
from flywheel.grpc import sync_channel
from flywheel.telemetry import read_spans
from flywheel.v1 import (
    common_pb2,
    ingestion_pb2,
    ingestion_pb2_grpc,
    monitoring_pb2,
    monitoring_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

console = Console()
K, T, M, R = common_pb2, training_pb2, monitoring_pb2, registry_pb2
FEATURES = ["tenure", "spend", "visits", "tickets"]
# tritonclient's status strings for a call the credentials cannot make.
_REFUSED = {str(grpc.StatusCode.UNAUTHENTICATED), str(grpc.StatusCode.PERMISSION_DENIED)}


def _data(rows: int, seed: int, shift: float, weights: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    x[:, 0] += shift
    x[:, 1] *= 1 + shift
    y = ((x - [shift, 0, 0, 0]) @ np.array(weights) + rng.normal(scale=0.3, size=rows) > 0).astype(int)
    return x, y


def _labels(x: np.ndarray, weights: tuple[float, ...], shift: float, seed: int) -> np.ndarray:
    """The true class of rows `x` under the concept `_data` draws labels from."""
    noise = np.random.default_rng(seed).normal(scale=0.3, size=len(x))
    return (((x - [shift, 0, 0, 0]) @ np.array(weights) + noise) > 0).astype(int)


def _csv(x: np.ndarray, y: np.ndarray, start_id: int) -> bytes:
    lines = ["id," + ",".join(FEATURES) + ",churned"]
    lines += [
        f"{start_id + i}," + ",".join(f"{v:.5f}" for v in row) + f",{t}"
        for i, (row, t) in enumerate(zip(x, y, strict=True))
    ]
    return ("\n".join(lines) + "\n").encode()


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 180) -> Any:
    with console.status(what):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = check()
            except grpc.RpcError as exc:
                if str(exc.code()) in _REFUSED:  # waiting will not help: say why at once
                    raise
                value = None
            if value:
                return value
            time.sleep(0.3)
    raise client.CliError(f"timed out after {timeout_s:.0f}s: {what}")


def triton_tls(creds: ClientCredentials) -> dict[str, Any]:
    """tritonclient.grpc.InferenceServerClient's TLS arguments (file paths) for these credentials;
    none for plaintext."""
    if not creds.tls:
        return {}

    def path(p: Path | None) -> str | None:
        return str(p) if p is not None else None

    return {
        "ssl": True,
        "root_certificates": path(creds.tls_ca_file),
        "private_key": path(creds.tls_key_file),
        "certificate_chain": path(creds.tls_cert_file),
    }


class Demo:
    def __init__(self, suffix: str) -> None:
        s = get_settings()
        self.ingestion = ingestion_pb2_grpc.IngestionServiceStub(sync_channel(s, "ingestion"))
        self.training = training_pb2_grpc.TrainingServiceStub(sync_channel(s, "training"))
        self.registry = registry_pb2_grpc.RegistryServiceStub(sync_channel(s, "registry"))
        self.monitoring = monitoring_pb2_grpc.MonitoringServiceStub(sync_channel(s, "monitoring"))
        self.serving_addr = s.addr_for("serving")
        self.creds = client_credentials(s)
        # tritonclient sends headers per call: every inference call carries the token.
        self.headers = {"authorization": f"Bearer {self.creds.token}"} if self.creds.token else None
        self.kafka = s.kafka_bootstrap
        self.spans = s.spans_file or s.home / "spans.jsonl"
        self.dataset = f"demo-churn-{suffix}"
        self.model = f"demo-churn-{suffix}"

    def step(self, text: str) -> None:
        console.print(f"[bold cyan]>[/] {text}")

    def run(self) -> int:
        import tritonclient.grpc as triton

        started = time.monotonic()
        schema = K.Schema(
            fields=[K.Field(name="id", type=K.FIELD_TYPE_INT)]
            + [K.Field(name=f, type=K.FIELD_TYPE_FLOAT) for f in FEATURES]
            + [K.Field(name="churned", type=K.FIELD_TYPE_INT, min=0, max=1)],
            label_field="churned",
            key_field="id",
        )
        self.ingestion.CreateDataset(
            ingestion_pb2.CreateDatasetRequest(dataset=ingestion_pb2.Dataset(name=self.dataset, schema=schema,
                micro_batch=ingestion_pb2.MicroBatchPolicy(max_rows=5000, max_wait=Duration(seconds=1))))
        )  # fmt: skip
        x, y = _data(5000, seed=1, shift=0.0, weights=(1.5, 0.5, -0.5, -1.0))
        v1 = self.ingestion.IngestDataset(iter([
            ingestion_pb2.IngestDatasetRequest(header=ingestion_pb2.IngestHeader(dataset=self.dataset)),
            ingestion_pb2.IngestDatasetRequest(chunk=_csv(x, y, 0)),
        ])).version  # fmt: skip
        self.step(f"ingested dataset {self.dataset} v{v1.ref.version}: {v1.row_count} rows "
                  f"({v1.train_rows} train / {v1.test_rows} test), hash {v1.ref.content_hash[:12]}")  # fmt: skip

        space = T.SearchSpace(strategy=T.SEARCH_STRATEGY_GRID, seed=7)
        for c in (0.1, 1.0):
            space.params["C"].choices.values.add().number_value = c
        spec = T.TrainingSpec(
            name=self.model, dataset=self.dataset, model_name=self.model, task=K.TASK_CLASSIFICATION,
            estimator=T.ESTIMATOR_LOGISTIC_REGRESSION, search_space=space, metric="accuracy",
            triggers=T.Triggers(on_data_versioned=True, on_drift_detected=True, wait_for_new_data=True,
                                cooldown=Duration(seconds=120)),
            promotion_policy=K.PromotionPolicy(metric="accuracy", direction=K.METRIC_DIRECTION_MAXIMIZE,
                                               min_improvement=0.01, approval=K.APPROVAL_MODE_AUTO),
        )  # fmt: skip
        self.training.CreateSpec(T.CreateSpecRequest(spec=spec))
        self.step(f"training spec {self.model}: logistic regression, grid of 2, retrains on drift")
        self.training.StartRun(T.StartRunRequest(spec_name=self.model))
        run = self._run_done(T.RUN_TRIGGER_MANUAL)
        acc = {m.name: m.value for m in run.evaluation.metrics if not m.class_label}
        self.step(f"run {run.run_id[:8]} trained v{run.registered_model.version}: test accuracy {acc['accuracy']:.3f}, "
                  f"ONNX parity {'passed' if run.parity.passed else 'FAILED'}")  # fmt: skip
        self._promoted(1)
        infer = triton.InferenceServerClient(self.serving_addr, **triton_tls(self.creds))
        self._served(infer, 1)
        self.step(f"serving v1 over the Open Inference Protocol at {self.serving_addr}")

        policy = M.MonitoringPolicy(model_name=self.model, enabled=True, consecutive_breaches=1,
                                    window=M.WindowPolicy(size_rows=250, min_rows=100, duration=Duration(seconds=600)),
                                    cooldown=Duration(seconds=120))  # fmt: skip
        self.monitoring.SetMonitoringPolicy(M.SetMonitoringPolicyRequest(policy=policy))
        self._traffic(infer, _data(500, seed=2, shift=0.0, weights=(1, 0, 0, 0))[0], "ref")
        windows = _wait("monitoring the reference traffic", lambda: self._windows(2))
        self.step(f"reference traffic: {len(windows)} windows, breached: "
                  f"{sorted({K.DriftKind.Name(b) for w in windows for b in w.breached}) or 'nothing'}")  # fmt: skip

        shift_at = time.monotonic()
        self._traffic(infer, _data(500, seed=3, shift=2.0, weights=(1, 0, 0, 0))[0], "shifted")
        alert = _wait("waiting for monitoring to notice the shift", self._alert)
        alert_at = time.monotonic()
        named = ", ".join(f"{s.feature} {s.statistic}={s.score:.2f}" for s in alert.scores if s.breached)
        self.step(f"[yellow]drift detected[/] in window {alert.window_id}: {named}")
        decisions = _wait("training decides", lambda: [
            d for d in self.training.ListTriggerDecisions(T.ListTriggerDecisionsRequest(spec_name=self.model)).decisions
            if d.trigger == T.RUN_TRIGGER_DRIFT_DETECTED
        ])  # fmt: skip
        drift = [d for d in decisions if d.trigger == T.RUN_TRIGGER_DRIFT_DETECTED]
        self.step(f"training: {drift[-1].decision} ({drift[-1].reason})" if drift else "training: no decision yet")

        x2, y2 = _data(5000, seed=4, shift=2.0, weights=(-1.0, 1.0, 1.0, 0.5))
        header = ingestion_pb2.IngestHeader(dataset=self.dataset, mode=K.WRITE_MODE_REPLACE)
        v2 = self.ingestion.IngestDataset(iter([
            ingestion_pb2.IngestDatasetRequest(header=header),
            ingestion_pb2.IngestDatasetRequest(chunk=_csv(x2, y2, 1_000_000)),
        ])).version  # fmt: skip
        self.step(f"new labelled data arrives: dataset v{v2.ref.version}, a fresh snapshot of "
                  f"{v2.row_count} rows in which the customers, and what makes them churn, have changed")  # fmt: skip
        run2 = self._run_done(T.RUN_TRIGGER_DRIFT_DETECTED)
        acc2 = {m.name: m.value for m in run2.evaluation.metrics if not m.class_label}
        self.step(f"retrained on dataset v{run2.dataset.version}: v{run2.registered_model.version}, "
                  f"test accuracy {acc2['accuracy']:.3f}")  # fmt: skip
        mv = self._promoted(run2.registered_model.version)
        self.step(f"registry: {mv.promotion.reason}")
        self._served(infer, run2.registered_model.version)
        served_at = time.monotonic()
        since_alert, since_shift = served_at - alert_at, served_at - shift_at
        self.step(f"[green]serving v{run2.registered_model.version}[/]: "
                  f"{since_alert:.1f}s from the drift alert, {since_shift:.1f}s from the shift")  # fmt: skip

        trace = _wait("collecting the trace", lambda: self._trace(run2.trigger_event_id), timeout_s=30)
        self.step(f"one trace links alert, run, registration, checks, promotion and swap: [bold]{trace}[/]")
        console.print(f"  see it with: flywheel traces --chain {run2.trigger_event_id}")
        self._act_two(infer, x2, run2.registered_model.version)
        self._act_three(run2.registered_model.version)
        console.print(f"demo finished in {time.monotonic() - started:.1f}s")
        infer.close()
        return 0

    def _act_two(self, infer: Any, x_live: np.ndarray, good: int) -> None:
        """A snapshot whose labels a broken upstream job inverted: the model trained on it wins on its
        own test split and is promoted, live labels show it wrong, and the guard rolls it back."""
        console.print("[bold]act two: a bad snapshot gets through, and the post-promotion guard takes it back[/]")
        quality = M.QualityThreshold(metric="accuracy", max_drop=0.05, min_labelled_rows=200)
        policy = self.monitoring.GetMonitoringPolicy(M.GetMonitoringPolicyRequest(model_name=self.model)).policy
        policy.quality.CopyFrom(quality)
        self.monitoring.SetMonitoringPolicy(M.SetMonitoringPolicyRequest(policy=policy))
        x3, y3 = _data(5000, seed=5, shift=2.0, weights=(-1.0, 1.0, 1.0, 0.5))
        header = ingestion_pb2.IngestHeader(dataset=self.dataset, mode=K.WRITE_MODE_REPLACE)
        v3 = self.ingestion.IngestDataset(iter([
            ingestion_pb2.IngestDatasetRequest(header=header),
            ingestion_pb2.IngestDatasetRequest(chunk=_csv(x3, 1 - y3, 2_000_000)),  # every label inverted
        ])).version  # fmt: skip
        self.step(f"dataset v{v3.ref.version} arrives with every label inverted by an upstream bug")
        bad = self._run_done(T.RUN_TRIGGER_DATA_VERSIONED, v3.ref.version).registered_model.version
        mv = self._promoted(bad)
        self.step(f"registry: {mv.promotion.reason}")
        self._served(infer, bad)
        self.step(f"[yellow]serving v{bad}[/], guarded for an hour after its promotion")
        rows = x_live[:250]
        self._traffic(infer, rows, "live")
        truth = _labels(rows, weights=(-1.0, 1.0, 1.0, 0.5), shift=2.0, seed=6)
        labels = [
            M.FeedbackLabel(request_id=f"live-{i - i % 25}", row_index=i % 25, label=Value(number_value=float(t)))
            for i, t in enumerate(truth)
        ]

        def rolled_back() -> R.AuditEvent | None:
            self.monitoring.RecordFeedback(M.RecordFeedbackRequest(model_name=self.model, labels=labels))
            events = self.registry.ListAuditEvents(R.ListAuditEventsRequest(name=self.model)).events
            return next((e for e in events if e.action == R.AUDIT_ACTION_ROLLED_BACK), None)

        self.step(f"{len(labels)} feedback labels of live traffic arrive")
        event = _wait("the guard judging the labelled window", rolled_back, timeout_s=60)
        self.step(f"[red]rolled back by {event.actor}[/]: {event.reason.removeprefix('guard: ')}")
        self._alerted(K.DRIFT_KIND_GUARD_ROLLBACK)
        self._served(infer, good)
        self.step(f"[green]serving v{good} again[/]: no request failed, no person woken up")

    def _act_three(self, good: int) -> None:
        """Promotions become progressive: the next bad snapshot's model gets a 25% canary, the feedback
        on its requests breaches the quality gate, and it is aborted before it reaches production."""
        console.print("[bold]act three: a progressive rollout stops the next bad snapshot at its first step[/]")
        policy = self.registry.GetPromotionPolicy(R.GetPromotionPolicyRequest(model_name=self.model)).policy
        policy.rollout.CopyFrom(K.RolloutPolicy(
            mode=K.ROLLOUT_MODE_PROGRESSIVE, steps=[25, 50], min_step_duration=Duration(seconds=30), min_step_rows=25,
            gates=K.RolloutGates(max_prediction_psi=1.0, max_p99_latency_ratio=50.0, min_labelled_rows=25),
        ))  # fmt: skip
        self.registry.SetPromotionPolicy(R.SetPromotionPolicyRequest(model_name=self.model, policy=policy))
        self.step("promotion policy: progressive, a canary at 25% then 50% (30 s each), gated on errors, "
                  "latency, prediction distance and live quality")  # fmt: skip
        x4, y4 = _data(5000, seed=7, shift=2.0, weights=(-1.0, 1.0, 1.0, 0.5))
        header = ingestion_pb2.IngestHeader(dataset=self.dataset, mode=K.WRITE_MODE_REPLACE)
        v4 = self.ingestion.IngestDataset(iter([
            ingestion_pb2.IngestDatasetRequest(header=header),
            ingestion_pb2.IngestDatasetRequest(chunk=_csv(x4, 1 - y4, 3_000_000)),  # inverted again
        ])).version  # fmt: skip
        self.step(f"dataset v{v4.ref.version} arrives, its labels inverted again")
        bad = self._run_done(0, v4.ref.version).registered_model.version

        def rolling() -> R.ModelVersion | None:
            mv = self.registry.GetModelVersion(R.GetModelVersionRequest(name=self.model, version=bad)).version
            if mv.promotion.state in (R.PROMOTION_STATE_NOT_PROMOTED, R.PROMOTION_STATE_CHECKS_FAILED):
                raise client.CliError(f"v{bad} was not rolled out: {mv.promotion.reason}")
            return mv if mv.promotion.state == R.PROMOTION_STATE_ROLLING_OUT else None

        _wait(f"v{bad}'s staging checks", rolling)
        self.step(f"[yellow]v{bad} wins on its own test split: a canary for 25% of requests[/]")
        traffic = _Traffic(self, x4[:2000])
        traffic.start()
        try:

            def aborted() -> R.ModelVersion | None:
                labels = traffic.labels()
                if labels:
                    self.monitoring.RecordFeedback(M.RecordFeedbackRequest(model_name=self.model, labels=labels))
                mv = self.registry.GetModelVersion(R.GetModelVersionRequest(name=self.model, version=bad)).version
                return mv if mv.promotion.state in (R.PROMOTION_STATE_ABORTED, R.PROMOTION_STATE_PROMOTED) else None

            mv = _wait("the canary's gates", aborted, timeout_s=90)
        finally:
            traffic.stop()
        if mv.promotion.state != R.PROMOTION_STATE_ABORTED:
            raise client.CliError(f"v{bad} was promoted: {mv.promotion.reason}")
        self.step(f"[red]rollout of v{bad} aborted[/] ({mv.promotion.actor}): {mv.promotion.reason}")
        self._alerted(K.DRIFT_KIND_ROLLOUT_ABORTED)
        share = traffic.versions.count(str(bad))
        self.step(f"[green]v{good} keeps production[/]: v{bad} answered {share} of {len(traffic.versions)} requests "
                  f"as a canary, {len(traffic.failures)} failed")  # fmt: skip

    def _alerted(self, kind: K.DriftKind.ValueType) -> None:
        """The alert monitoring raised about what just happened (what an on-call dashboard shows)."""

        def raised() -> M.Alert | None:
            alerts = self.monitoring.ListAlerts(M.ListAlertsRequest(model_name=self.model, kind=kind)).alerts
            return alerts[0] if alerts else None

        alert = _wait("the alert", raised, timeout_s=30)
        self.step(f"alert {alert.alert_id} ({K.DriftKind.Name(kind).removeprefix('DRIFT_KIND_').lower()})")

    def _run_done(self, trigger: int, dataset_version: int = 0) -> T.Run:
        """The run of `trigger` (0: any) on `dataset_version` (0: any), once it succeeded."""

        def done() -> T.Run | None:
            runs = self.training.ListRuns(T.ListRunsRequest(spec_name=self.model)).runs
            for r in runs:
                if (dataset_version and r.dataset.version != dataset_version) or (trigger and r.trigger != trigger):
                    continue
                if r.status == T.RUN_STATUS_FAILED:
                    raise client.CliError(f"run {r.run_id} failed: {r.error}")
                if r.status == T.RUN_STATUS_SUCCEEDED:
                    return r
            return None

        return _wait("training", done)

    def _promoted(self, version: int) -> R.ModelVersion:
        def decided() -> R.ModelVersion | None:
            mv = self.registry.GetModelVersion(R.GetModelVersionRequest(name=self.model, version=version)).version
            return mv if mv.promotion.state not in (0, R.PROMOTION_STATE_PENDING_CHECKS) else None

        mv = _wait(f"staging checks of v{version}", decided)
        checks = ", ".join(f"{c.name} {'ok' if c.passed else 'FAILED'}" for c in mv.staging.checks)
        self.step(f"staging checks of v{version}: {checks}; p99 {mv.staging.latency_p99_ms:.2f} ms")
        if mv.promotion.state != R.PROMOTION_STATE_PROMOTED:
            raise client.CliError(f"v{version} was not promoted: {mv.promotion.reason}")
        return mv

    def _served(self, infer: Any, version: int) -> None:
        import tritonclient.grpc as triton
        from tritonclient.utils import InferenceServerException

        def ok() -> bool:
            inp = triton.InferInput("input", [1, len(FEATURES)], "FP32")
            inp.set_data_from_numpy(np.zeros((1, len(FEATURES)), np.float32))
            try:
                response = infer.infer(self.model, [inp], headers=self.headers)
                return bool(response.get_response().model_version == str(version))
            except InferenceServerException as exc:
                if exc.status() in _REFUSED:  # waiting will not help: say why at once
                    raise client.CliError(str(exc)) from exc
                return False
            except Exception:
                return False

        _wait(f"serving to swap to v{version}", ok)

    def _traffic(self, infer: Any, x: np.ndarray, prefix: str) -> None:
        import tritonclient.grpc as triton

        for i in range(0, len(x), 25):
            chunk = x[i : i + 25].astype(np.float32)
            inp = triton.InferInput("input", list(chunk.shape), "FP32")
            inp.set_data_from_numpy(chunk)
            infer.infer(self.model, [inp], request_id=f"{prefix}-{i}", headers=self.headers)
        self.step(f"sent {len(x)} {prefix} rows through tritonclient")

    def _windows(self, n: int) -> list[M.WindowReport] | None:
        windows = self.monitoring.GetDriftReport(M.GetDriftReportRequest(model_name=self.model)).windows
        return list(windows) if len(windows) >= n else None

    def _alert(self) -> M.Alert | None:
        alerts = self.monitoring.ListAlerts(
            M.ListAlertsRequest(model_name=self.model, kind=K.DRIFT_KIND_DATA_DRIFT)
        ).alerts
        return alerts[0] if alerts else None

    def _trace(self, event_id: str) -> str | None:
        for span in read_spans(self.spans):
            if span["attributes"].get("flywheel.event_id") == event_id:
                return str(span["trace_id"])
        return None


class _Traffic:
    """One-row requests in a thread of their own, each with the label the true concept gives it."""

    def __init__(self, demo: Demo, rows: np.ndarray) -> None:
        import threading

        self._demo, self._rows = demo, rows
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._labels: list[M.FeedbackLabel] = []
        self.versions: list[str] = []
        self.failures: list[str] = []

    def _run(self) -> None:
        import tritonclient.grpc as triton

        truth = _labels(self._rows, weights=(-1.0, 1.0, 1.0, 0.5), shift=2.0, seed=8)
        infer = triton.InferenceServerClient(self._demo.serving_addr, **triton_tls(self._demo.creds))
        try:
            for i, row in enumerate(self._rows):
                if self._stop.is_set():
                    break
                inp = triton.InferInput("input", [1, len(FEATURES)], "FP32")
                inp.set_data_from_numpy(row.reshape(1, -1).astype(np.float32))
                try:
                    answer = infer.infer(self._demo.model, [inp], request_id=f"act3-{i}", headers=self._demo.headers)
                    self.versions.append(answer.get_response().model_version)
                    self._labels.append(
                        M.FeedbackLabel(request_id=f"act3-{i}", label=Value(number_value=float(truth[i])))
                    )
                except Exception as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.01)
        finally:
            infer.close()

    def labels(self) -> list[M.FeedbackLabel]:
        return list(self._labels[-5000:])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@client.command
def cmd_demo(args: argparse.Namespace) -> int:
    return Demo(time.strftime("%H%M%S")).run()


def add_commands(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the whole loop on the running stack, printing each step")
    demo.set_defaults(func=cmd_demo)
