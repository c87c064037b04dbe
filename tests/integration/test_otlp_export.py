"""With OTEL_EXPORTER_OTLP_ENDPOINT set, the same spans reach an OTLP collector (here a minimal
one speaking the OTLP/gRPC trace service, in the test process)."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from flywheel.stack.procs import free_port
from tests.polling import wait_until

from .harness import EchoProcess


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []  # (service, span name, trace id)
        self._lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self._lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append((service, span.name, span.trace_id.hex()))
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_reach_an_otlp_collector(infra, unique, tmp_path):
    port = free_port()
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    name, topic = f"echo_{unique}", f"test.otlp.{unique}"
    echo = EchoProcess(
        infra.settings(),
        name,
        topic,
        tmp_path / "echo.log",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    echo.start()
    try:
        await echo.emit("otlp-1")

        def chain() -> bool:
            names = {(s, n) for s, n, _ in collector.spans}
            return {(f"flywheel-{name}", "/flywheel.test.Echo/Emit"), (f"flywheel-{name}", f"{topic} process")} <= names

        wait_until(chain, 30, "the server and consumer spans at the collector")
        traces = {t for s, n, t in collector.spans if n in ("/flywheel.test.Echo/Emit", f"{topic} process")}
        assert len(traces) == 1, "one trace from the call to the consumer"
    finally:
        echo.stop()
        server.stop(0)
