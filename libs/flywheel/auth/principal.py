"""The authenticated caller of the RPC being handled, set by the method wrapper for the call's task."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]
    kind: str  # "token" (minted by Flywheel), "jwt" (an identity provider's) or "anonymous" (auth off)
    expires_at: float | None = None  # epoch seconds; None: does not expire


ANONYMOUS = Principal("anonymous", frozenset(), "anonymous")
_current: ContextVar[Principal] = ContextVar("flywheel_principal", default=ANONYMOUS)


def current() -> Principal:
    return _current.get()


def set_current(principal: Principal) -> None:
    _current.set(principal)
