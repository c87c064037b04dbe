"""One `flywheel up` per test module (started once, killed after the module's last test) and gRPC
stubs for it. A module that needs a fresh stack per test defines its own `stack` fixture."""

from __future__ import annotations

import pytest

from .clients import Clients
from .stack import UpProcess


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    up = UpProcess(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "home")
    up.start()
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def api(stack):
    clients = Clients(stack)
    yield clients
    clients.close()
