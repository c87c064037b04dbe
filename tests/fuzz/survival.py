"""Whether the stack's services survived: their PIDs (a crash or restart changes one) and the crash
marks in their logs since a point in time (a process's uncaught traceback, a background task that
died, `flywheel up` restarting a service)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from flywheel.config import SERVICES
from tests.e2e.stack import UpProcess

# Log lines that mean a process (or one of its loops) died rather than refused an input.
CRASH_EVENTS = ("background task died", "service exited, restarting")


def service_pids(stack: UpProcess) -> dict[str, int]:
    """service -> PID of the process running `python -m services.<service>`."""
    found: dict[str, int] = {}
    for p in stack.descendants():
        try:
            cmd = p.info["cmdline"] or []
        except (psutil.NoSuchProcess, KeyError):
            continue
        if len(cmd) >= 2 and cmd[-2] == "-m" and cmd[-1].startswith("services."):
            name = cmd[-1].removeprefix("services.")
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                found[name] = p.pid
    return found


def _logs(stack: UpProcess) -> list[Path]:
    return [stack.home / "log" / f"{name}.log" for name in SERVICES] + [stack.output]


@dataclass
class Checkpoint:
    """The services' PIDs and the logs' lengths at one moment; `problems()` says what went wrong since."""

    stack: UpProcess
    pids: dict[str, int] = field(default_factory=dict)
    offsets: dict[Path, int] = field(default_factory=dict)

    @classmethod
    def now(cls, stack: UpProcess) -> Checkpoint:
        offsets = {p: p.stat().st_size if p.exists() else 0 for p in _logs(stack)}
        return cls(stack, service_pids(stack), offsets)

    def problems(self) -> list[str]:
        found = []
        pids = service_pids(self.stack)
        for name in SERVICES:
            if pids.get(name) != self.pids.get(name):
                found.append(f"{name} restarted or gone: pid {self.pids.get(name)} -> {pids.get(name)}")
        for path, offset in self.offsets.items():
            found += [f"{path.name}: {mark}" for mark in crash_marks(_read_from(path, offset))]
        return found


def _read_from(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def crash_marks(text: str) -> list[str]:
    """The crash marks in a stretch of log: crash events, and raw tracebacks (not a JSON log line:
    Python printed them as the process or a thread died), with their text."""
    marks: list[str] = []
    raw: list[str] = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            if raw:
                marks.append("\n".join(raw)[-4000:])
                raw = []
            if entry.get("event") in CRASH_EVENTS:
                marks.append(json.dumps(entry)[:2000])
        elif line.startswith("Traceback") or raw:
            raw.append(line)
        elif any(event in line for event in CRASH_EVENTS):
            marks.append(line[:2000])
    if raw:
        marks.append("\n".join(raw)[-4000:])
    return marks
