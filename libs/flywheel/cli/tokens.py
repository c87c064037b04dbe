"""`flywheel tokens create|list|revoke|whoami`: API tokens, through the registry's TokenService.

`create --bootstrap` is the one path that does not go through the API: it writes the token store in
PostgreSQL directly, for the first admin of a deployment where nobody holds a token yet.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
from rich.markup import escape
from rich.table import Column, Table

from flywheel.auth.roles import ALL_ROLES
from flywheel.cli import client
from flywheel.cli.client import CliError, command, console, fmt_time
from flywheel.config import get_settings
from flywheel.errors import FlywheelError, InvalidArgument, StartupError
from flywheel.v1 import auth_pb2

_DURATION = re.compile(r"^(\d+)([dhms])$")
_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
MAX_EXPIRES_S = 3650 * 86_400  # what TokenService accepts
BOOTSTRAP_BY = "bootstrap"


def duration_arg(text: str) -> int:
    """argparse type for --expires: 30d, 12h, 90m or 3600s, as seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"expected a duration like 30d, 12h, 90m or 3600s, got {text!r}")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > MAX_EXPIRES_S:
        raise argparse.ArgumentTypeError(f"at most 3650d, got {text!r}")
    return seconds


# ---------------------------------------------------------------------------------------------------
# Rendering


def fmt_expiry(token: auth_pb2.Token) -> str:
    return fmt_time(token.expire_time) if token.HasField("expire_time") else "never"


def fmt_revoked(token: auth_pb2.Token) -> str:
    if not token.HasField("revoke_time"):
        return "-"
    return fmt_time(token.revoke_time) + (f" by {token.revoked_by}" if token.revoked_by else "")


def tokens_table(tokens: Sequence[auth_pb2.Token]) -> Table:
    table = Table(
        Column("id", no_wrap=True, min_width=16),  # ids are for copying into `revoke`: never cut
        Column("name", overflow="fold", min_width=8),
        Column("role", overflow="fold", min_width=8),
        Column("created (UTC)", min_width=10),
        Column("expires (UTC)", min_width=10),
        Column("revoked (UTC)", min_width=10),
    )
    for t in tokens:
        table.add_row(
            t.token_id,
            escape(t.name),
            t.role,
            f"{fmt_time(t.create_time)} by {escape(t.created_by) or '-'}",
            fmt_expiry(t),
            escape(fmt_revoked(t)),
        )
    return table


def usage_hint(name: str) -> str:
    return (
        f"token for {name}, shown only now: pass it as FLYWHEEL_AUTH_TOKEN to the CLI, or send"
        " 'authorization: Bearer <token>' metadata on every gRPC call"
    )


# ---------------------------------------------------------------------------------------------------
# Commands


@command
def cmd_create(args: argparse.Namespace) -> int:
    if args.bootstrap:
        created = _bootstrap(args.name, args.role, args.expires)
    else:
        request = auth_pb2.CreateTokenRequest(name=args.name, role=args.role, ttl_seconds=args.expires or 0)
        with client.connect("tokens") as tokens:
            created = tokens.CreateToken(request, timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(created)
        return 0
    # The secret alone on stdout, so `TOKEN=$(flywheel tokens create ...)` captures just it.
    print(created.secret)
    t = created.token
    print(f"{usage_hint(t.name)} (id {t.token_id}, role {t.role}, expires {fmt_expiry(t)})", file=sys.stderr)
    return 0


def _bootstrap(name: str, role: str, ttl_seconds: int | None) -> auth_pb2.CreateTokenResponse:
    from flywheel import db
    from flywheel.auth import tokens

    try:  # bad input is reported before anything touches the database
        tokens.check_name(name)
    except InvalidArgument as exc:
        raise CliError(str(exc), code=2) from exc
    settings = get_settings()
    where = db.describe_dsn(settings.database_url)
    print(
        f"warning: --bootstrap writes the token straight into PostgreSQL at {where}, bypassing the token"
        " API; use it only for a first admin, then `flywheel tokens create` with that token",
        file=sys.stderr,
    )

    async def mint() -> tuple[tokens.TokenInfo, str]:
        pool = await db.connect(settings.database_url, tokens.SCHEMA, min_size=1, max_size=1)
        try:
            await tokens.migrate(pool)
            expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds) if ttl_seconds else None
            async with pool.acquire() as conn:
                return await tokens.mint(conn, name, role, BOOTSTRAP_BY, expires)
        finally:
            await pool.close()

    try:
        info, secret = asyncio.run(mint())
    except InvalidArgument as exc:
        raise CliError(str(exc), code=2) from exc
    except (StartupError, FlywheelError) as exc:
        raise CliError(str(exc)) from exc
    except asyncpg.PostgresError as exc:
        raise CliError(f"PostgreSQL at {where}: {exc}") from exc
    except OSError as exc:
        raise CliError(f"cannot reach PostgreSQL at {where}: {exc}") from exc
    return auth_pb2.CreateTokenResponse(token=tokens.to_proto(info), secret=secret)


@command
def cmd_list(args: argparse.Namespace) -> int:
    with client.connect("tokens") as tokens:
        found = tokens.ListTokens(auth_pb2.ListTokensRequest(include_revoked=args.all), timeout=client.RPC_TIMEOUT_S)
    empty = "no tokens" if args.all else "no live tokens (--all shows revoked ones too)"
    return client.print_listing(args.json, "tokens", found.tokens, tokens_table, empty=empty)


@command
def cmd_revoke(args: argparse.Namespace) -> int:
    with client.connect("tokens") as tokens:
        response = tokens.RevokeToken(auth_pb2.RevokeTokenRequest(name=args.token), timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(client.list_json("revoked", response.revoked))
        return 0
    for t in response.revoked:
        console.print(f"revoked {escape(t.name)} (id {t.token_id}, role {t.role})", highlight=False)
    console.print("[dim]every service refuses it within FLYWHEEL_AUTH_CACHE_S (default 5 s)[/]", highlight=False)
    return 0


@command
def cmd_whoami(args: argparse.Namespace) -> int:
    with client.connect("tokens") as tokens:
        me = tokens.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=client.RPC_TIMEOUT_S)
    if args.json:
        client.print_json(client.to_dict(me) | {"roles": list(me.roles)})
        return 0
    roles = ", ".join(me.roles) or "none"
    console.print(f"{escape(me.name)} (roles: {escape(roles)}; authenticated by {me.kind})", highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("tokens", help="API tokens: create, list, revoke; who the CLI's credentials are")
    cmds = group.add_subparsers(dest="tokens_command", required=True)

    create = cmds.add_parser(
        "create",
        help="mint a token for a name and one role (admin only); the token is printed once",
        description=(
            "Mints a token through the registry's TokenService (needs an admin credential). With --bootstrap"
            " the token is written to PostgreSQL at FLYWHEEL_DATABASE_URL directly: for the first admin of a"
            " deployment, before anyone can call the API."
        ),
    )
    create.add_argument("name", metavar="NAME", help="who or what holds it (shown as the actor in audit records)")
    create.add_argument(
        "--role",
        required=True,
        choices=ALL_ROLES,
        metavar="ROLE",
        help=f"what it may do: {', '.join(ALL_ROLES)} (libs/flywheel/auth/roles.py)",
    )
    create.add_argument(
        "--expires", type=duration_arg, metavar="DURATION", help="lifetime: 30d, 12h, 90m or 3600s (default: never)"
    )
    create.add_argument(
        "--bootstrap", action="store_true", help="write to PostgreSQL directly, bypassing the API (first admin only)"
    )
    client.add_json_flag(create)
    create.set_defaults(func=cmd_create)

    ls = cmds.add_parser("list", help="tokens (never their secrets): id, name, role, created, expires, revoked")
    ls.add_argument("--all", action="store_true", help="include revoked tokens")
    client.add_json_flag(ls)
    ls.set_defaults(func=cmd_list)

    revoke = cmds.add_parser("revoke", help="revoke a token by id, or every live token with a name")
    revoke.add_argument("token", metavar="NAME_OR_ID")
    client.add_json_flag(revoke)
    revoke.set_defaults(func=cmd_revoke)

    whoami = cmds.add_parser("whoami", help="the name and roles the CLI's credentials authenticate as")
    client.add_json_flag(whoami)
    whoami.set_defaults(func=cmd_whoami)
