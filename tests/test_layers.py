"""The direction of imports: no room imports a room above it.

Rooms, lowest first. Data flows one way (requests -> manifest -> fetch -> store ->
events); the fronts (api, service, cli) sit on the operations, and the consumers of
events (receipts, stats) and the inbox never reach the fetch engine or the fronts.
Every module is parsed (ast), lazy imports inside functions included.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "prefetchd"

ROOMS: list[set[str]] = [
    {"__init__", "records", "shapes", "retention"},  # typed records, JSON shapes, pure policy
    {"errors"},
    {"config", "log", "redact"},
    {"store", "limits", "runtime"},
    {"providers", "supa"},
    {"manifest"},
    {"links"},  # a ready file's links, one per claim (fetch, ops and retention use it)
    {"resolve"},
    {"requests"},
    {"fetch"},
    {"ops"},  # want, get, gc, verify, status, release, forget, reconcile, strays
    {"inbox", "mirror", "fleet"},  # consumers of the manifest and its events
    {"api", "service", "server", "mcp_server"},  # api/ holds the facade, its backends, the client
    {"cli"},
]
RANK = {room: i for i, rooms in enumerate(ROOMS) for room in rooms}

# Beyond the order: who must not reach whom at all, even through other modules.
NEVER = {
    "inbox": {"fetch", "api", "service"},
    "mirror": {"fetch", "api", "service", "inbox"},
    "inbox.receipts": {"fetch", "api", "service"},
    "inbox.parse": {"fetch", "ops", "fleet", "api", "service"},  # parsing does no work
    "requests": {"fetch", "ops"},
    "server": {"service", "cli"},  # the daemon wires the server, never the other way
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    """`prefetchd.ops.get` -> `ops`; `prefetchd` -> `__init__`. A room is a folder (or,
    for the small ones, one module): there is no grouping by name prefix."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    if parts[1] in RANK:
        return parts[1]
    raise AssertionError(f"{module}: no room; add it to ROOMS in tests/test_layers.py")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports_of(module: str) -> frozenset[str]:
    """The prefetchd modules `module` imports (at any depth of its code)."""
    path = modules()[module]
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    if module == "prefetchd":
        # The package's public names load on first use (PEP 562 `__getattr__`): that
        # is the facade handing out the top rooms' names, not the lowest room
        # importing them; `import prefetchd` alone imports nothing of prefetchd.
        # Type-only imports (`if TYPE_CHECKING:`) are for the type checker alone.
        tree.body = [n for n in tree.body
                     if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__")
                     and not (isinstance(n, ast.If) and isinstance(n.test, ast.Name)
                              and n.test.id == "TYPE_CHECKING")]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "prefetchd"}
        elif isinstance(node, ast.ImportFrom):
            found |= _from_import(module, is_package, node)
    return frozenset(found)


def _from_import(module: str, is_package: bool, node: ast.ImportFrom) -> set[str]:
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != "prefetchd":
            return set()
    else:
        anchor = module.split(".")
        if not is_package:
            anchor = anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    known = modules()
    out = {base}
    out |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return out


def reach(module: str) -> set[str]:
    """Every prefetchd module importing `module` runs, parent packages included."""
    seen: set[str] = set()
    todo = [module]
    known = modules()
    while todo:
        m = todo.pop()
        if m in seen or m not in known:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += list(imports_of(m))
    return seen


def test_every_module_has_a_room():
    for module in modules():
        room_of(module)


def test_no_import_goes_up():
    upward = []
    for module in modules():
        here = RANK[room_of(module)]
        for target in imports_of(module):
            if RANK[room_of(target)] > here:
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_rooms_that_never_reach_each_other():
    found = []
    for low, banned in NEVER.items():
        room = f"prefetchd.{low}"
        members = [m for m in modules() if m == room or m.startswith(room + ".")]
        assert members, f"{room}: no such module or folder"
        for m in set().union(*(reach(m) for m in members)):
            if room_of(m) in banned:
                found.append(f"prefetchd.{low} reaches {m}")
    assert found == []


def test_the_checker_sees_relative_and_lazy_imports():
    assert "prefetchd.ops.want" in imports_of("prefetchd.inbox.watch")
    assert "prefetchd.log" in imports_of("prefetchd.service.daemon")  # from .. import log
    assert "prefetchd.service.daemon" in imports_of("prefetchd.cli.commands")  # in a function
    assert "prefetchd" in imports_of("prefetchd.providers.http")  # from .. import
    assert room_of("prefetchd.cli.show") == "cli"
