"""Runs `flywheel up` as a subprocess on free ports under a temporary FLYWHEEL_HOME."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from flywheel.config import SERVICES
from flywheel.stack.procs import free_port

FLYWHEEL = Path(sys.executable).parent / "flywheel"


class UpProcess:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.ports = {name: free_port() for name in SERVICES}
        self.env = {
            **os.environ,
            "FLYWHEEL_HOME": str(home),
            "FLYWHEEL_PG_PORT": str(free_port()),
            "FLYWHEEL_BROKER_PORT": str(free_port()),
            **{f"FLYWHEEL_{n.upper()}_PORT": str(p) for n, p in self.ports.items()},
        }
        self.output = home / "up.out"
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['FLYWHEEL_BROKER_PORT']}"

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def start(self, timeout_s: float = 120) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen([str(FLYWHEEL), "up"], env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "ready" in self.output.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"flywheel up exited {self.proc.returncode}:\n{self.output.read_text()}")
            time.sleep(0.3)
        raise AssertionError(f"flywheel up not ready after {timeout_s}s:\n{self.output.read_text()}")

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(FLYWHEEL), *args], env=self.env, capture_output=True, text=True, timeout=timeout_s)

    def descendants(self) -> list[psutil.Process]:
        """Every process that belongs to this stack: children of `flywheel up`, or using its home."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline", "environ"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                env = p.info["environ"] or {}
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if p.pid == os.getpid():
                continue
            if str(self.home) in cmd or env.get("FLYWHEEL_HOME") == str(self.home):
                found.append(p)
        return found

    def interrupt(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        return self.proc.wait(timeout_s)

    def kill_all(self) -> None:
        for p in self.descendants():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
