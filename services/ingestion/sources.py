"""Which local files IngestFromUri may read: only those under the configured roots
(FLYWHEEL_INGEST_ROOTS), after resolving `..` and symlinks. A path outside them is refused without
saying whether it exists, so the API cannot be used to probe the server's filesystem.

Plain Python: no gRPC, no Kafka.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flywheel.errors import InvalidArgument, PermissionDenied


def local_path(uri: str, roots: list[Path]) -> Path:
    """The resolved file a `file://` URI or plain path names, if it lies under one of `roots`."""
    if "\x00" in uri:  # no path holds one; the OS would refuse it with an error of its own
        raise InvalidArgument("must not contain NUL characters", field="uri")
    parts = urlsplit(uri)
    if parts.scheme not in ("", "file"):
        raise InvalidArgument("unsupported scheme; use a path, file:// or sha256:", field="uri")
    if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
        raise InvalidArgument("file:// URIs name this server's files only (no host)", field="uri")
    raw = Path(parts.path if parts.scheme else uri)
    if not raw.is_absolute():
        raise InvalidArgument("must be an absolute path", field="uri")
    resolved = raw.resolve()  # follows symlinks: a link inside a root pointing outside is outside
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise PermissionDenied(
            "not under an ingest root (FLYWHEEL_INGEST_ROOTS); upload the data with IngestDataset instead",
            field="uri",
        )
    return resolved
