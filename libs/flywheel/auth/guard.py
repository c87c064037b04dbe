"""The check every RPC passes before its handler runs: who is calling, and may they call this."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flywheel.errors import PermissionDenied, Unavailable

from . import roles
from .authenticator import Authenticator
from .principal import ANONYMOUS, Principal, set_current


class Guard:
    def __init__(self, mode: str) -> None:
        if mode not in ("required", "off"):
            raise ValueError(f"FLYWHEEL_AUTH_MODE must be 'required' or 'off', not {mode!r}")
        self.enabled = mode == "required"
        self.authenticator: Authenticator | None = None  # set once the database is connected

    async def check(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        """The caller, set as the current principal; UNAUTHENTICATED or PERMISSION_DENIED otherwise."""
        if not self.enabled or roles.is_public(method):
            set_current(ANONYMOUS)
            return ANONYMOUS
        if self.authenticator is None:
            raise Unavailable("not ready to authenticate callers yet")
        principal = await self.authenticator.authenticate(metadata)  # unknown callers learn nothing more
        needed = roles.roles_for(method)
        if needed is None:
            raise PermissionDenied(f"{method} is not open to any role")
        if not roles.allowed(method, principal.roles):
            held = ", ".join(sorted(principal.roles)) or "no role"
            raise PermissionDenied(f"{method} needs the role {roles.describe(needed)}; {principal.name} has {held}")
        set_current(principal)
        return principal
