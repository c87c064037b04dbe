"""How many processes of each service `flywheel up` runs, and where each listens and logs.

Replica 0 of a service keeps everything a single-process stack had: its port (FLYWHEEL_<SERVICE>_PORT),
its name and its log file (log/serving.log). Replica i listens on that port + i x
FLYWHEEL_REPLICA_PORT_STEP and logs to log/serving-i.log; its component name is serving-i.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import SERVICES, Settings
from flywheel.errors import StartupError

MAX_REPLICAS = 16  # per service: beyond this a typo, not a plan, on one machine


@dataclass(frozen=True)
class Replica:
    service: str
    index: int
    port: int
    address: str  # how clients reach it

    @property
    def name(self) -> str:
        """serving, serving-1, serving-2, ...: the component name in logs, `status` and stack.json."""
        return self.service if self.index == 0 else f"{self.service}-{self.index}"

    def log_file(self, logs: Path) -> Path:
        return logs / f"{self.name}.log"


def parse_counts(values: Sequence[str], services: Iterable[str] = SERVICES) -> dict[str, int]:
    """`--replicas` values, each N (every service) or SERVICE=N (that service; wins over N, in any
    order) -> a count for every service (1 where nothing says otherwise). ValueError says what is wrong."""
    known = tuple(services)
    every = 1
    own: dict[str, int] = {}
    for value in values:
        name, sep, count_text = value.strip().rpartition("=")
        count = _count(count_text, value)
        if not sep:
            every = count
        elif name.strip() in known:
            own[name.strip()] = count
        else:
            raise ValueError(f"--replicas {value!r}: unknown service; one of {', '.join(known)}")
    return {name: own.get(name, every) for name in known}


def _count(text: str, value: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_REPLICAS:
        raise ValueError(f"--replicas {value!r}: expected N or SERVICE=N with N from 1 to {MAX_REPLICAS}")
    return int(text)


def plan(settings: Settings, counts: dict[str, int]) -> dict[str, list[Replica]]:
    """Every replica of every service; StartupError when two would share a port."""
    replicas: dict[str, list[Replica]] = {}
    for service in SERVICES:
        count = counts.get(service, 1)
        found = []
        for i in range(count):
            port = settings.replica_port(service, i)
            # One replica: the address clients used before (an explicit FLYWHEEL_<SERVICE>_ADDR included).
            address = settings.addr_for(service) if count == 1 else f"127.0.0.1:{port}"
            found.append(Replica(service, i, port, address))
        replicas[service] = found
    taken: dict[int, str] = {}
    for replica in (r for group in replicas.values() for r in group):
        if replica.port in taken:
            raise StartupError(
                f"{replica.name} and {taken[replica.port]} would both listen on port {replica.port}: "
                "set FLYWHEEL_<SERVICE>_PORT or FLYWHEEL_REPLICA_PORT_STEP so that ports differ"
            )
        taken[replica.port] = replica.name
    return replicas


def addresses(replicas: dict[str, list[Replica]]) -> dict[str, list[str]]:
    """service -> the addresses of its replicas, what clients balance over."""
    return {service: [r.address for r in group] for service, group in replicas.items()}
