"""Reads deploy/Dockerfile the way the builder does, so tests follow the file rather than a copy of it:
instructions (continuations joined, comment lines dropped), stages, and the environment and user a
container of a target gets (ARG defaults and earlier ENV values substituted, parent stages first)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "deploy" / "Dockerfile"
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    args: str  # the rest, continuations joined with single spaces
    line: int  # where it starts, 1-based


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments may sit inside a continued instruction; the builder drops them
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    found: list[Stage] = []
    for ins in instructions(path):
        if ins.keyword == "FROM":
            parts = ins.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            found.append(Stage(parts[0], name))
        elif found:
            found[-1].instructions.append(ins)
    return found


def chain(target: str | None = None, path: Path = DOCKERFILE) -> list[Stage]:
    """The stages a target is built from, the base-most first; the default target is the last stage."""
    all_stages = stages(path)
    by_name = {s.name: s for s in all_stages if s.name}
    stage = by_name[target] if target else all_stages[-1]
    out = [stage]
    while stage.base in by_name:
        stage = by_name[stage.base]
        out.insert(0, stage)
    return out


def _pairs(args: str) -> list[tuple[str, str]]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy form: ENV KEY VALUE...
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) if "=" in w else (w, "") for w in words]  # type: ignore[misc]


def _substitute(value: str, known: dict[str, str]) -> str:
    return _VAR.sub(lambda m: known.get(m.group(1) or m.group(2), ""), value)


def environment(target: str | None = None, build_args: dict[str, str] | None = None) -> dict[str, str]:
    """The ENV a container of `target` starts with (what the Dockerfile sets, not the base image's)."""
    env: dict[str, str] = {}
    for stage in chain(target):
        args: dict[str, str] = {}
        for ins in stage.instructions:
            if ins.keyword == "ARG":
                for key, default in _pairs(ins.args):
                    args[key] = (build_args or {}).get(key, default)
            elif ins.keyword == "ENV":
                for key, value in _pairs(ins.args):
                    env[key] = _substitute(value, {**args, **env})
    return env


def user(target: str | None = None) -> str:
    """The USER a container of `target` runs as (the last one set along its chain)."""
    users = [i.args for s in chain(target) for i in s.all("USER")]
    return users[-1] if users else "0"
