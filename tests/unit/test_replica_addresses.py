"""Addresses of replicated services: FLYWHEEL_<SERVICE>_ADDR as a gRPC target (one address unchanged,
a list balanced round-robin with health checks, the Kubernetes DNS form), read retries, `--replicas`
counts and the ports and files `flywheel up` gives each replica."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import ValidationError

from flywheel import addresses
from flywheel.addresses import Target
from flywheel.auth.credentials import ClientCredentials
from flywheel.config import SERVICES, Settings
from flywheel.errors import StartupError
from flywheel.grpc.channels import aio_channel_to, channel_target, client_address, tritonclient_args
from flywheel.stack.replicas import parse_counts, plan


def test_one_address_is_passed_on_as_before() -> None:
    assert addresses.parse("127.0.0.1:50054") == Target("127.0.0.1:50054")
    assert addresses.parse("serving:50054") == Target("serving:50054")
    assert addresses.parse(" [::1]:7 ") == Target("[::1]:7")


def test_a_list_becomes_one_balanced_static_target() -> None:
    assert addresses.parse("127.0.0.1:50054, 127.0.0.1:50154") == Target(
        "ipv4:127.0.0.1:50054,127.0.0.1:50154", authority="127.0.0.1:50054", balanced=True
    )
    # localhost is 127.0.0.1, and the authority (the name TLS verifies) stays as written.
    assert addresses.parse("localhost:1,localhost:2") == Target(
        "ipv4:127.0.0.1:1,127.0.0.1:2", authority="localhost:1", balanced=True
    )
    assert addresses.parse("[::1]:1,[::1]:2") == Target("ipv6:[::1]:1,[::1]:2", authority="[::1]:1", balanced=True)
    assert addresses.parse("ipv4:10.0.0.1:5,10.0.0.2:5") == Target(
        "ipv4:10.0.0.1:5,10.0.0.2:5", authority="10.0.0.1:5", balanced=True
    )


def test_the_kubernetes_form_is_one_dns_name_balanced_over_what_it_resolves_to() -> None:
    target = addresses.parse("dns:///serving.flywheel.svc.cluster.local:50054")
    assert target == Target("dns:///serving.flywheel.svc.cluster.local:50054", balanced=True)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("serving-a:50054,serving-b:50054", "dns:///NAME:PORT"),  # names in a list: one DNS name instead
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:1,127.0.0.1:99999", "port must be a number from 1 to 65535"),
        ("127.0.0.1:1,127.0.0.1:x", "port must be a number"),
        ("dns:///a:1,b:2", "names one endpoint"),
        ("  ", "empty address"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        addresses.parse(text)


def test_settings_refuse_a_bad_list_at_start_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match="serving_addr"):
        Settings(serving_addr="a:1,b:2")
    assert Settings(serving_addr="127.0.0.1:1,127.0.0.1:2").serving_addr == "127.0.0.1:1,127.0.0.1:2"


def _config(options: list[tuple[str, object]]) -> dict[str, Any]:
    return json.loads(str(dict(options)["grpc.service_config"]))


def test_a_list_balances_round_robin_over_healthy_replicas_and_retries_reads_only() -> None:
    target, options = channel_target("127.0.0.1:1,127.0.0.1:2", Settings())
    assert target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert dict(options)["grpc.default_authority"] == "127.0.0.1:1"
    config = _config(options)
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    assert dict(options)["grpc.max_reconnect_backoff_ms"] <= 1000, "a replica back is used again within a second"
    (method_config,) = config["methodConfig"]
    retried = {(n["service"], n["method"]) for n in method_config["name"]}
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert ("flywheel.v1.RegistryService", "ListModels") in retried
    assert ("inference.GRPCInferenceService", "ModelInfer") in retried
    # Changes are never retried: one caught on a dying replica may have been applied.
    for change in ("RegisterModel", "SetAlias", "ApproveVersion"):
        assert ("flywheel.v1.RegistryService", change) not in retried
    assert ("flywheel.v1.TrainingService", "StartRun") not in retried
    assert ("flywheel.v1.IngestionService", "IngestDataset") not in retried


def test_one_address_keeps_grpcs_default_policy_and_authority() -> None:
    target, options = channel_target("127.0.0.1:50054", Settings())
    assert target == "127.0.0.1:50054"
    assert "grpc.default_authority" not in dict(options)
    config = _config(options)
    assert "loadBalancingConfig" not in config and "healthCheckConfig" not in config
    assert config["methodConfig"]  # reads are still retried on UNAVAILABLE


def test_the_cli_finds_the_lists_up_saved_and_an_explicit_address_wins(tmp_path: Path) -> None:
    addresses.write_saved(tmp_path, {"serving": ["127.0.0.1:1", "127.0.0.1:2"]})
    settings = Settings(home=tmp_path, serving_port=7)
    assert client_address(settings, "serving") == "127.0.0.1:1,127.0.0.1:2"
    assert client_address(settings, "serving", saved_file=False) == "127.0.0.1:7"  # services: env only
    assert client_address(settings, "registry") == f"127.0.0.1:{settings.registry_port}"
    explicit = Settings(home=tmp_path, serving_addr="10.0.0.1:5")
    assert client_address(explicit, "serving") == "10.0.0.1:5"
    assert tritonclient_args(settings)["url"] == "ipv4:127.0.0.1:1,127.0.0.1:2"
    addresses.saved_file(tmp_path).write_text("not json")
    assert client_address(settings, "serving") == "127.0.0.1:7"


def test_replica_counts_from_flags() -> None:
    assert parse_counts([]) == dict.fromkeys(SERVICES, 1)
    assert parse_counts(["2"]) == dict.fromkeys(SERVICES, 2)
    counts = parse_counts(["serving=3", "2", "training=1"])  # a service's own count wins, in any order
    assert counts == {"ingestion": 2, "training": 1, "registry": 2, "serving": 3, "monitoring": 2}
    for bad, says in [("0", "from 1 to"), ("17", "from 1 to"), ("x", "expected N"), ("web=2", "unknown service")]:
        with pytest.raises(ValueError, match=says):
            parse_counts([bad])


def test_replica_zero_keeps_todays_port_name_and_log(tmp_path: Path) -> None:
    settings = Settings(serving_port=50054, replica_port_step=100)
    replicas = plan(settings, {"serving": 3})
    serving = replicas["serving"]
    assert [r.port for r in serving] == [50054, 50154, 50254]
    assert [r.name for r in serving] == ["serving", "serving-1", "serving-2"]
    assert [r.log_file(tmp_path).name for r in serving] == ["serving.log", "serving-1.log", "serving-2.log"]
    assert [r.address for r in serving] == ["127.0.0.1:50054", "127.0.0.1:50154", "127.0.0.1:50254"]
    assert [r.address for r in replicas["registry"]] == [settings.addr_for("registry")]  # one: as before


def test_replicas_that_would_share_a_port_are_refused() -> None:
    with pytest.raises(StartupError, match="both listen on port 50154"):
        plan(Settings(serving_port=50054, registry_port=50154), {"serving": 2})


async def test_a_call_goes_to_a_live_replica_when_one_is_gone_and_never_to_one_not_serving() -> None:
    """Real servers: one NOT_SERVING (a replica still loading), one stopped (killed), one SERVING."""
    servers, names = [], []
    for status in (health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING):
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await servicer.set("", status)
        servers.append(server)
        names.append(f"127.0.0.1:{port}")
    dead = grpc.aio.server()
    dead_port = dead.add_insecure_port("127.0.0.1:0")
    await dead.start()
    await dead.stop(None)
    try:
        address = ",".join([f"127.0.0.1:{dead_port}", *names])
        async with aio_channel_to(address, Settings(), ClientCredentials()) as channel:
            # By method path: grpc_health's published stubs leave HealthStub.Check untyped.
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            for _ in range(6):
                reply = await check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                # Only the SERVING replica answers: the NOT_SERVING one would have said so.
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for server in servers:
            await server.stop(None)


# A replica in its own process, so that it can die as one does (SIGKILL): it answers a read and a
# write of the registry's API, and with "hang" never answers, printing each call it takes.
_REPLICA = r"""
import asyncio, sys, grpc
from grpc_health.v1 import health, health_pb2_grpc

async def main():
    hang = sys.argv[1] == "hang"

    def handler(method):
        async def answer(request, context):
            if hang:
                print(method, flush=True)
                await asyncio.sleep(3600)
            return b"live"
        return grpc.unary_unary_rpc_method_handler(answer)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "flywheel.v1.RegistryService", {m: handler(m) for m in ("ListModels", "SetAlias")})])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def _replica(mode: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", _REPLICA, mode], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


async def test_a_read_caught_on_a_killed_replica_is_answered_by_another_and_a_write_fails() -> None:
    dying, dying_port = _replica("hang")
    live, live_port = _replica("live")
    try:
        address = f"127.0.0.1:{dying_port},127.0.0.1:{live_port}"
        async with aio_channel_to(address, Settings(), ClientCredentials()) as channel:
            await channel.channel_ready()
            await asyncio.sleep(0.5)  # both replicas SERVING: round-robin sends every other call to each

            async def call(method: str) -> bytes | grpc.StatusCode:
                try:
                    # No serializers: bytes in, bytes out.
                    stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                        f"/flywheel.v1.RegistryService/{method}"
                    )
                    reply = await stub(b"", timeout=10)
                    return reply
                except grpc.RpcError as exc:
                    return exc.code()

            # Calls alternate between the replicas: this order puts reads and writes on each.
            methods = ("ListModels", "SetAlias", "SetAlias", "ListModels") * 2
            calls = [asyncio.create_task(call(m)) for m in methods]
            await asyncio.sleep(1.0)
            os.kill(dying.pid, signal.SIGKILL)
            results = await asyncio.gather(*calls)
    finally:
        dying.kill()
        live.kill()
    assert dying.stdout is not None
    caught = dying.stdout.read().split()
    assert "ListModels" in caught and "SetAlias" in caught, caught  # both kinds were on the dying replica
    reads = [r for m, r in zip(methods, results, strict=True) if m == "ListModels"]
    writes = [r for m, r in zip(methods, results, strict=True) if m == "SetAlias"]
    assert reads == [b"live"] * 4, "every read answered, those on the killed replica by the other"
    assert writes.count(grpc.StatusCode.UNAVAILABLE) == caught.count("SetAlias"), writes
    assert writes.count(b"live") == 4 - caught.count("SetAlias")
