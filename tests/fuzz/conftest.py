"""One `flywheel up` for the whole fuzz directory (started once, killed after its last test), the
world it is seeded with (world.py), and gRPC stubs with the admin credentials.

The stack's consumers retry failing records briefly (a handful of milliseconds instead of up to
two seconds): thousands of hostile records are meant to fail, and the outcome (processed or
dead-lettered) is the same either way. Any training run the fuzz manages to start is stopped
after a minute."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.clients import Clients
from tests.e2e.stack import UpProcess

from . import budget  # noqa: F401  (registers the hypothesis profile before any test runs)
from . import world as world_mod
from .survival import Checkpoint

STACK_ENV = {
    "FLYWHEEL_CONSUMER_MAX_ATTEMPTS": "3",
    "FLYWHEEL_CONSUMER_BACKOFF_S": "0.01",
    "FLYWHEEL_CONSUMER_BACKOFF_MAX_S": "0.05",
    "FLYWHEEL_TRAINING_RUN_TIMEOUT_S": "60",
}


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    up = UpProcess(tmp_path_factory.mktemp("fuzz") / "home", env=STACK_ENV)
    up.start()
    yield up
    up.kill_all()


@pytest.fixture(scope="package")
def api(stack: UpProcess) -> Iterator[Clients]:
    clients = Clients(stack)
    yield clients
    clients.close()


@pytest.fixture(scope="package")
def world(stack: UpProcess, api: Clients) -> world_mod.World:
    return world_mod.build(stack, api)


@pytest.fixture(scope="package")
def started(stack: UpProcess, world: world_mod.World) -> Checkpoint:
    """The services' PIDs and log positions once the world is built, before any fuzz."""
    return Checkpoint.now(stack)
