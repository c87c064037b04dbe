"""Runs a service as a child process and restarts it when it crashes, with backoff."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from flywheel.logging import get_logger
from flywheel.retry import Backoff

from .procs import die_with_parent, stop_process

log = get_logger(__name__)


class SupervisedService:
    def __init__(self, name: str, env: dict[str, str], log_file: Path, *, label: str | None = None) -> None:
        """`name` is the service (services.<name> runs); `label` tells its replicas apart (serving-1)."""
        self.name = name
        self.label = label or name
        self.env = env
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._backoff = Backoff(0.5, 30.0)  # crash restarts: slower than a call retry
        self._started_at = 0.0
        self._restart_at: float | None = None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
            )
        self._started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> None:
        """Called periodically: restart a crashed process after a backoff that grows with crashes."""
        if self.proc is None:
            return
        code = self.proc.poll()
        if code is None:
            return
        now = time.monotonic()
        if self._restart_at is None:
            if now - self._started_at > 60:
                self._backoff.reset()  # it ran fine for a while: start the backoff over
            delay = self._backoff.next_delay()
            log.warning("service exited, restarting", service=self.label, exit_code=code, in_s=delay)
            self._restart_at = now + delay
        elif now >= self._restart_at:
            self._restart_at = None
            self.restarts += 1
            self.start()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s=timeout_s)
