"""`flywheel up --replicas`: two registry and two serving processes behind one address list, over
mutual TLS. The CLI balances over the registry's replicas and keeps working while one is killed
(and restarted by the supervisor); a channel to the list verifies every replica's certificate
against the list's first address (the stack's certificate names 127.0.0.1 and localhost).

The heavier checks (every service twice, the closed loop with a replica of each killed, inference
failing over) are in tests/scale/test_replicas.py, under `make test-scale`."""

from __future__ import annotations

from flywheel.addresses import read_saved

from .stack import UpProcess

STACK_ARGS = ("--mtls", "--replicas", "registry=2", "--replicas", "serving=2")


def test_the_cli_fails_over_between_registry_replicas_over_mtls(stack: UpProcess) -> None:
    saved = read_saved(stack.home)  # what `up` left for the CLI: every replica of each service
    assert saved["registry"] == stack.target("registry") and saved["serving"] == stack.target("serving")
    assert saved["training"] == stack.address("training")  # one replica: one address, as before
    status = stack.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for replica in ("registry-1", "serving-1", *stack.addresses("registry"), *stack.addresses("serving")):
        assert replica in status.stdout, (replica, status.stdout)

    listed = stack.cli("models", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    pid = stack.kill_replica("registry", 0)
    for _ in range(3):  # replica 0 is down or restarting: the other answers every command
        listed = stack.cli("models", "list")
        assert listed.returncode == 0, listed.stdout + listed.stderr
    stack.wait_replica_back("registry", 0, pid, timeout_s=120)
    status = stack.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr  # restarted: all healthy again


def test_tritonclient_reaches_the_serving_replicas_over_mtls(stack: UpProcess) -> None:
    with stack.triton() as client:  # the balanced target and channel arguments, with the stack's CA
        assert client.is_server_ready(headers=stack.headers)
        assert client.is_server_live(headers=stack.headers)
