"""Where a client finds a service: FLYWHEEL_<SERVICE>_ADDR read as a gRPC target, and the addresses
file `flywheel up` leaves for the CLI. Plain rules: no grpc import (flywheel.grpc.channels builds the
channel from a `Target`).

An address takes one of three forms:
- `host:port`: one server, as always (gRPC's default resolver, first reachable address).
- a comma-separated list of `ip:port` (or `localhost:port`): a static set of replicas, e.g.
  `127.0.0.1:50054,127.0.0.1:50154` from `flywheel up --replicas 2`. Host names other than localhost
  are refused in a list: resolved once they would never follow a replica that moved, and gRPC has no
  resolver for a list of names. One DNS name that resolves to every replica does that job instead.
- a gRPC target URI: `dns:///serving.flywheel.svc.cluster.local:50054` (the Kubernetes form, against
  a headless Service whose name resolves to every ready pod), `ipv4:`, `ipv6:`, `unix:`.
Lists and URIs are balanced: channels spread calls over every replica that reports SERVING.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

# The resolvers gRPC ships; anything else before a colon is a host name (localhost:50051).
SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract")
_LIST_HINT = "for host names give one DNS name that resolves to every replica (dns:///NAME:PORT)"


@dataclass(frozen=True)
class Target:
    uri: str  # what grpc.*_channel() is given
    authority: str | None = None  # host:port the channel names (TLS checks the certificate against it)
    balanced: bool = False  # several replicas: round_robin over those that report SERVING


def split(text: str) -> list[str]:
    """The entries of a comma-separated address, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse(text: str) -> Target:
    """The gRPC target for one FLYWHEEL_<SERVICE>_ADDR value; ValueError says what is wrong."""
    value = text.strip()
    if not value:
        raise ValueError("empty address: expected HOST:PORT, a list of IP:PORT, or dns:///NAME:PORT")
    scheme, _, rest = value.partition(":")
    if scheme.lower() in ("ipv4", "ipv6"):
        return _static(split(rest))
    if scheme.lower() in SCHEMES:
        if "," in value:
            raise ValueError(f"a {scheme}: target names one endpoint; a list takes IP:PORT entries; {_LIST_HINT}")
        return Target(value, balanced=True)
    entries = split(value)
    if len(entries) == 1:
        return Target(entries[0])  # one address is passed on as given: nothing changes for it
    return _static(entries)


def _static(entries: list[str]) -> Target:
    """An ipv4:/ipv6: target for a list of literal addresses (localhost counts as 127.0.0.1)."""
    if not entries:
        raise ValueError("an address list needs at least one IP:PORT")
    literal: list[str] = []
    versions: set[int] = set()
    for entry in entries:
        host, port = _host_port(entry)
        if host.lower() == "localhost":
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address("127.0.0.1")
        else:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"{entry!r}: a list of addresses takes IP:PORT (or localhost:PORT); {_LIST_HINT}"
                ) from None
        versions.add(ip.version)
        literal.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    if len(versions) > 1:
        raise ValueError("an address list mixes IPv4 and IPv6 addresses; gRPC takes one family per list")
    # The authority (and so the name TLS verifies) is the first entry as written: with
    # `flywheel up --tls` the certificate names both 127.0.0.1 and localhost.
    host, port = _host_port(entries[0])
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return Target(f"ipv{versions.pop()}:{','.join(literal)}", authority=authority, balanced=True)


def _host_port(entry: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or [IPV6]:PORT; ValueError otherwise."""
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{entry!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = entry.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{entry!r}: expected HOST:PORT (an IPv6 host in brackets: [::1]:PORT)")
    if not host or any(c.isspace() or c in "/@[]" for c in host):
        raise ValueError(f"{entry!r}: expected HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def join(addresses: list[str]) -> str:
    return ",".join(addresses)


# -- the file `flywheel up` leaves for its clients ---------------------------------------------------


def saved_file(home: Path) -> Path:
    """Next to $FLYWHEEL_HOME/credentials: every service's address list, for the CLI and the demo."""
    return home / "addresses.json"


def write_saved(home: Path, addresses: dict[str, list[str]]) -> None:
    path = saved_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({name: join(found) for name, found in addresses.items()}, indent=2))
    os.replace(tmp, path)


def read_saved(home: Path) -> dict[str, str]:
    """service -> its address list as `flywheel up` wrote it; {} without a (readable) file."""
    try:
        data = json.loads(saved_file(home).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and v.strip()}
