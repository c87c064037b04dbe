"""The registry's layering holds: its servicer speaks gRPC and nothing else (no SQL, no database
calls), and the modules under it (catalog, promoter, store, rules) import no gRPC."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "services" / "registry"
SERVICER = REGISTRY / "service.py"
TRANSPORT_FREE = ["catalog.py", "promoter.py", "store.py", "rules.py", "promotion.py"]

SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b[\s\S]*\b(FROM|INTO|SET)\b", re.IGNORECASE)
DB_CALLS = re.compile(r"^(fetch\w*|execute\w*|acquire|transaction|copy_\w+)$")


def _strings(tree: ast.AST) -> list[str]:
    """Every string literal; an f-string as its literal parts with {} for each value."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            found.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return found


def _imports(tree: ast.AST) -> list[str]:
    """Dotted names of every imported module, and of every name imported from one."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]
    return names


def servicer_violations(source: str) -> list[str]:
    tree = ast.parse(source)
    found = [f"imports {n}" for n in _imports(tree) if n.split(".")[0] == "asyncpg"]
    found += [f"imports {n}" for n in _imports(tree) if n == "services.registry.store"]
    found += [f"SQL in a string: {s[:60]!r}" for s in _strings(tree) if SQL.search(s)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and DB_CALLS.match(node.func.attr):
            found.append(f"line {node.lineno}: calls .{node.func.attr}()")
        if isinstance(node, ast.Name) and node.id == "conn":
            found.append(f"line {node.lineno}: uses a connection")
    return found


def grpc_imports(source: str) -> list[str]:
    return [
        n
        for n in _imports(ast.parse(source))
        if n == "grpc" or n.startswith("grpc.") or n.startswith("flywheel.grpc") or n.endswith("_pb2_grpc")
    ]


def test_the_registry_servicer_has_no_sql_and_no_database_calls():
    assert servicer_violations(SERVICER.read_text()) == []


def test_the_registry_core_imports_no_grpc():
    found = {name: grpc_imports((REGISTRY / name).read_text()) for name in TRANSPORT_FREE}
    assert {name: imports for name, imports in found.items() if imports} == {}


def test_the_checks_catch_what_they_are_for():
    # Guards the guards: each kind of violation, as the servicer used to have it, is reported.
    servicer = """
import asyncpg
from services.registry import store
async def f(pool, name):
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO models (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
        rows = await conn.fetch(f"SELECT {COLUMNS} FROM model_versions v WHERE v.name = $1", name)
        await conn.fetchval("DELETE FROM aliases WHERE name = $1 RETURNING version", name)
"""
    found = servicer_violations(servicer)
    assert "imports asyncpg" in found
    assert "imports services.registry.store" in found
    assert any("SELECT {} FROM" in f for f in found)
    assert sum("SQL in a string" in f for f in found) == 3
    assert {".acquire()", ".execute()", ".fetch()", ".fetchval()"} <= {f.split("calls ")[-1] for f in found}
    assert any("uses a connection" in f for f in found)
    assert servicer_violations('raise InvalidArgument("move or delete the alias first")\n') == []

    core = "import grpc\nfrom flywheel.grpc import stream_header\nfrom flywheel.v1 import registry_pb2_grpc\n"
    assert grpc_imports(core) == [
        "grpc",
        "flywheel.grpc",
        "flywheel.grpc.stream_header",
        "flywheel.v1.registry_pb2_grpc",
    ]
    assert grpc_imports("from flywheel import clients\nfrom flywheel.v1 import registry_pb2\n") == []
