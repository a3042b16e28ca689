"""One way to a logger: every module takes `prefetchd.log.get_logger`, whose loggers
never print to stdout and hand their events to `logging` under the module's name,
whether or not the application configured structlog. A module calling structlog's
own `get_logger` would print to stdout until configure() ran (stdout carries
command output and the MCP protocol)."""

from __future__ import annotations

import ast
from pathlib import Path

import prefetchd

PACKAGE = Path(prefetchd.__file__).parent


def _structlog_loggers(tree: ast.AST) -> list[int]:
    """Lines that reach structlog's get_logger: `structlog.get_logger(...)`, or a name
    imported from structlog as get_logger."""
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "get_logger"
                and isinstance(node.value, ast.Name) and node.value.id == "structlog"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("structlog"):
            lines += [node.lineno for a in node.names if a.name in ("get_logger", "*")]
    return lines


def test_no_module_but_log_calls_structlogs_get_logger():
    found = {
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py")) if path.name != "log.py" or path.parent != PACKAGE
        for line in _structlog_loggers(ast.parse(path.read_text(), str(path)))
    }
    assert not found, f"use prefetchd.log.get_logger instead: {sorted(found)}"


def test_the_check_sees_both_spellings():
    """The rule would fail on either way of writing it (so the test above can fail)."""
    assert _structlog_loggers(ast.parse("import structlog\nlog = structlog.get_logger('x')"))
    assert _structlog_loggers(ast.parse("from structlog import get_logger"))
    assert not _structlog_loggers(ast.parse("from .log import get_logger"))
