"""The house rules, checked on the source so they stay true (DESIGN "Layout", STYLE 1-2, 6).

Import arrows point down: `api/` -> `pipeline/` -> `runtime/` and `store/` -> `settings.py`;
`billing/` stands apart like a vendor's package; only `normalize.py` touches the Rust module.
SQL and database calls live in `store/`; loop-agnostic bookkeeping imports no event loop; no
module grows past ~400 lines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "py" / "analytics"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))

#: Layer -> the layers of ours it must never import.
FORBIDDEN = {
    "runtime": ("analytics.api", "analytics.pipeline", "analytics.store", "asyncpg"),
    "store": ("analytics.api", "analytics.pipeline", "analytics.runtime"),
    "pipeline": ("analytics.api",),
    "billing": ("analytics.api", "analytics.pipeline", "analytics.runtime", "analytics.store"),
    "settings": ("analytics.",),
}

#: Bookkeeping that must run anywhere (tested with fake clocks, usable from threads).
LOOP_AGNOSTIC = (
    "runtime/deadline_timer.py",
    "runtime/frames.py",
    "runtime/histogram.py",
    "runtime/lru.py",
    "runtime/querycache.py",
    "runtime/ratelimit.py",
    "runtime/request_context.py",
    "runtime/stalls.py",
    "runtime/ttlcache.py",
    "store/dimensions.py",
    "workers.py",
)
LOOPS = ("anyio", "asyncio", "trio", "uvloop", "sniffio")

SQL = re.compile(r"\b(SELECT|INSERT INTO|DELETE FROM|CREATE (TEMP )?TABLE|UPDATE \w+ SET)\b")
DB_CALLS = {"fetch", "fetchrow", "fetchval", "execute", "executemany", "copy_to_table"}
MAX_LINES = 420


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _layer(path: Path) -> str:
    rel = _rel(path)
    return rel.split("/")[0] if "/" in rel else rel.removesuffix(".py")


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_imports_point_down(path: Path) -> None:
    forbidden = FORBIDDEN.get(_layer(path), ())
    bad = sorted(i for i in _imports(_tree(path)) if i.startswith(forbidden))
    assert not bad, f"{_rel(path)} imports {bad} across the layering"


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_only_the_public_face_imports_the_rust_module(path: Path) -> None:
    if _rel(path) == "normalize.py":
        return
    assert not any(i.startswith("analytics._normalize") for i in _imports(_tree(path)))


@pytest.mark.parametrize("rel", LOOP_AGNOSTIC)
def test_loop_agnostic_modules_import_no_event_loop(rel: str) -> None:
    bad = sorted(i for i in _imports(_tree(PACKAGE / rel)) if i.split(".")[0] in LOOPS)
    assert not bad, f"{rel} imports {bad}"


def _outside_store(path: Path) -> bool:
    return _layer(path) != "store"


@pytest.mark.parametrize("path", [p for p in MODULES if _outside_store(p)], ids=_rel)
def test_sql_lives_in_store(path: Path) -> None:
    tree = _tree(path)
    strings = [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and not _is_doc(n, tree)
    ]
    sql = [s for s in strings if SQL.search(s)]
    assert not sql, f"{_rel(path)} holds SQL: {sql[0][:80]!r}"
    calls = sorted(
        n.func.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in DB_CALLS
    )
    assert not calls, f"{_rel(path)} calls the database directly: {calls}"


def _is_doc(node: ast.Constant, tree: ast.AST) -> bool:
    for parent in ast.walk(tree):
        body = getattr(parent, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if body[0].value is node:
                return True
    return False


@pytest.mark.parametrize("path", MODULES, ids=_rel)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_rel(path)} has {lines} lines: split it by concept"


def test_no_module_name_means_two_concepts() -> None:
    stems: dict[str, list[str]] = {}
    for path in MODULES:
        if path.stem != "__init__":
            stems.setdefault(path.stem, []).append(_rel(path))
    for package in PACKAGE.rglob("__init__.py"):
        if package.parent != PACKAGE:
            stems.setdefault(package.parent.name, []).append(_rel(package.parent) + "/")
    assert {s: p for s, p in stems.items() if len(p) > 1} == {}
