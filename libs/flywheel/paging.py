"""Page tokens for List RPCs: opaque to clients, an offset to us."""

from __future__ import annotations

import base64

from flywheel.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("must be >= 0", field="page_size")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        offset = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("o:"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("not a token this server issued", field="page_token") from exc
    if offset < 0:
        raise InvalidArgument("not a token this server issued", field="page_token")
    return offset


def next_token(offset: int, size: int, returned: int) -> str:
    """A token for the next page, or "" when this page was the last (fewer rows than asked)."""
    if returned < size:
        return ""
    return base64.urlsafe_b64encode(f"o:{offset + size}".encode()).decode()
