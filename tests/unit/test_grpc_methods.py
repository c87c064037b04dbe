"""Method wrapping: a SERVER span per call that continues the caller's trace (unless the method is
untraced), domain errors as status codes recorded on the span, generic and registered handlers alike."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from flywheel import errors
from flywheel.grpc import MethodWrapper
from flywheel.stack.procs import free_port


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _serve(wrapper: MethodWrapper, registered: bool) -> tuple[grpc.aio.Server, int]:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"bad":
            raise errors.InvalidArgument("must not be bad", field="payload")
        return b"ok:" + request

    async def count(request: bytes, context: grpc.aio.ServicerContext):
        for i in range(3):
            yield bytes([i])
        raise errors.NotFound("no fourth", field="n")

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Quiet": grpc.unary_unary_rpc_method_handler(echo),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    server = grpc.aio.server()
    if registered:
        server.add_registered_method_handlers(
            "t.T", {name: wrapper.wrap(f"/t.T/{name}", h) for name, h in handlers.items()}
        )
    else:
        server.add_generic_rpc_handlers((wrapper.generic(grpc.method_handlers_generic_handler("t.T", handlers)),))
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    return server, port


@pytest.mark.parametrize("registered", [False, True], ids=["generic", "registered"])
async def test_spans_continue_the_callers_trace_and_record_status(spans, registered):
    provider, exporter = spans
    server, port = await _serve(MethodWrapper({"/t.T/Quiet"}, tracer=provider.get_tracer("test")), registered)
    caller = provider.get_tracer("caller")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with caller.start_as_current_span("client") as client_span:
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                metadata = tuple(carrier.items())
                assert await channel.unary_unary("/t.T/Echo")(b"hi", metadata=metadata) == b"ok:hi"
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await channel.unary_unary("/t.T/Echo")(b"bad", metadata=metadata)
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert bad.value.details() == "payload: must not be bad"
                assert await channel.unary_unary("/t.T/Quiet")(b"q", metadata=metadata) == b"ok:q"
                got = []
                with pytest.raises(grpc.aio.AioRpcError) as missing:
                    async for item in channel.unary_stream("/t.T/Count")(b"", metadata=metadata):
                        got.append(item)
                assert got == [b"\x00", b"\x01", b"\x02"]
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(None)

    server_spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in server_spans] == ["/t.T/Echo", "/t.T/Echo", "/t.T/Count"]  # Quiet is untraced
    trace_id = client_span.get_span_context().trace_id
    for s in server_spans:
        assert s.context.trace_id == trace_id and s.parent.span_id == client_span.get_span_context().span_id
        assert s.attributes["rpc.system"] == "grpc" and s.attributes["rpc.service"] == "t.T"
    ok, bad_span, stream_span = server_spans
    assert ok.status.status_code == StatusCode.UNSET and ok.attributes["rpc.method"] == "Echo"
    assert bad_span.status.status_code == StatusCode.ERROR
    assert bad_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert stream_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_unexpected_errors_are_internal_and_unknown_methods_unimplemented(spans):
    provider, exporter = spans

    async def boom(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("bug")

    wrapper = MethodWrapper(tracer=provider.get_tracer("test"))
    server = grpc.aio.server()
    generic = grpc.method_handlers_generic_handler("t.T", {"Boom": grpc.unary_unary_rpc_method_handler(boom)})
    server.add_generic_rpc_handlers((wrapper.generic(generic),))
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(2):  # the second call is served from the wrapped-handler cache
                with pytest.raises(grpc.aio.AioRpcError) as boom_err:
                    await channel.unary_unary("/t.T/Boom")(b"")
                assert boom_err.value.code() == grpc.StatusCode.INTERNAL
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await channel.unary_unary("/t.T/Nope")(b"")
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)
    (first, second) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert first.status.status_code == StatusCode.ERROR and first.events[0].name == "exception"
    assert trace.format_trace_id(first.context.trace_id) != trace.format_trace_id(second.context.trace_id)


@pytest.mark.parametrize("trace_inference", [False, True])
async def test_serving_leaves_inference_untraced_unless_asked(tmp_path, trace_inference):
    from flywheel.config import Settings
    from flywheel.grpc import GrpcServer
    from services.serving.models import ModelManager
    from services.serving.runtime_state import ServingRuntime
    from services.serving.service import register

    settings = Settings(home=tmp_path, trace_inference=trace_inference)
    server = GrpcServer(settings, free_port())
    ctx = SimpleNamespace(settings=settings)
    manager = ModelManager(settings)
    register(server, ctx, ServingRuntime(manager, None, None))  # type: ignore[arg-type]
    await manager.close()
    infer = {"/inference.GRPCInferenceService/ModelInfer", "/inference.GRPCInferenceService/ModelStreamInfer"}
    assert server.untraced == (set() if trace_inference else infer)
