"""One `flywheel up` per test module (started once, killed after the module's last test) and gRPC
stubs for it, carrying the admin credentials `flywheel up` wrote. A module may set STACK_ARGS
(arguments to `flywheel up`, e.g. ("--tls",)); a module that needs a fresh stack per test, or a
different environment, defines its own `stack` fixture."""

from __future__ import annotations

import pytest

from .clients import Clients
from .stack import UpProcess


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    home = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "home"
    up = UpProcess(home, *getattr(request.module, "STACK_ARGS", ()))
    up.start()
    yield up
    up.kill_all()


@pytest.fixture(scope="module")
def api(stack):
    clients = Clients(stack)
    yield clients
    clients.close()
