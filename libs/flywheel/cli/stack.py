"""`flywheel up|down|status`: the embedded stack."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

from rich.console import Console
from rich.table import Table

from flywheel.config import get_settings
from flywheel.errors import StartupError

console = Console()


def cmd_up(args: argparse.Namespace) -> int:
    from flywheel.logging import configure_logging
    from flywheel.stack.procs import pid_alive
    from flywheel.stack.replicas import parse_counts
    from flywheel.stack.up import Stack, read_state

    try:
        replicas = parse_counts(args.replicas or [])
    except ValueError as exc:
        print(f"flywheel up: error: {exc}", file=sys.stderr)
        return 2
    settings = get_settings()
    configure_logging("stack", settings.log_level)
    existing = read_state(settings.home)
    if existing and pid_alive(existing["supervisor_pid"]):
        console.print(
            f"[red]error[/]: a stack is already running (pid {existing['supervisor_pid']}) in {settings.home}"
        )
        return 1
    try:
        stack = Stack(settings, tls=args.tls, mtls=args.mtls, replicas=replicas)
    except StartupError as exc:
        print(f"flywheel up: error: {exc}", file=sys.stderr)
        return 2
    try:
        stack.start()
        if args.demo:
            # The demo is a client like any other: a separate process against the running stack, with
            # the admin credential this stack just wrote (not whatever the caller's environment holds).
            subprocess.Popen([sys.executable, "-m", "flywheel.cli", "demo"], env=stack.client_env())
        stack.supervise()
    except StartupError as exc:
        print(f"flywheel up: error: {exc}", file=sys.stderr)
        return 2
    finally:
        stack.stop()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from flywheel.stack.procs import pid_alive
    from flywheel.stack.up import read_state

    state = read_state(get_settings().home)
    if state is None or not pid_alive(state["supervisor_pid"]):
        console.print("no stack is running")
        return 0
    pid = state["supervisor_pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        console.print(f"[red]error[/]: the stack (pid {pid}) did not stop within {args.timeout:.0f}s")
        return 1
    console.print("stack stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from flywheel.stack.up import status

    rows = asyncio.run(status(get_settings()))
    if not rows:
        console.print("no stack is running")
        return 1
    table = Table("component", "address", "health")
    for name, address, ok in rows:
        table.add_row(name, address, "[green]healthy[/]" if ok else "[red]unhealthy[/]")
    console.print(table)
    return 0 if all(ok for _, _, ok in rows) else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser(
        "up", help="start the embedded stack (PostgreSQL, Kafka broker, five services, --replicas N of each)"
    )
    up.add_argument("--demo", action="store_true", help="once ready, run `flywheel demo` against it")
    up.add_argument(
        "--tls",
        action="store_true",
        help="serve every service over TLS with a local CA and certificates made under $FLYWHEEL_HOME/tls",
    )
    up.add_argument("--mtls", action="store_true", help="--tls, and clients must present a certificate from that CA")
    up.add_argument(
        "--replicas",
        action="append",
        metavar="N|SERVICE=N",
        help="processes per service: N for every service, SERVICE=N for one (repeatable, e.g. --replicas 2 "
        "--replicas serving=3); replica i listens on the service's port + i x FLYWHEEL_REPLICA_PORT_STEP (100)",
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the embedded stack started by `flywheel up`")
    down.add_argument("--timeout", type=float, default=60.0)
    down.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="health of every component; exit 0 only when all are healthy")
    st.set_defaults(func=cmd_status)
