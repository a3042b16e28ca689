"""`wait_until`: poll a condition; on a timeout, say which condition and what it last gave."""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 15.0, step: float = 0.02, *,
               what: str | None = None) -> T:
    """Call `pred` until it returns something true and return that.

    After `timeout` seconds it fails with an AssertionError that names what it waited
    for: `what` when given, else the predicate's own source line (a lambda) or name,
    and the last value it returned.
    """
    deadline = time.monotonic() + timeout
    value: Any = None
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    raise AssertionError(f"waited {timeout:g}s for {what or describe(pred)}; "
                         f"it last gave {value!r}")


def describe(pred: Callable[[], Any]) -> str:
    """The predicate as its source says it (`lambda: ...`), else its qualified name."""
    name = getattr(pred, "__qualname__", None) or repr(pred)
    if name.endswith("<lambda>"):
        try:
            lines, _ = inspect.getsourcelines(pred)
        except (OSError, TypeError):
            return name
        text = " ".join(line.strip() for line in lines)
        start = text.find("lambda")
        return _expression(text[start:]) if start >= 0 else text
    self = getattr(pred, "__self__", None)
    return f"{self!r}.{pred.__name__}" if self is not None else name


def _expression(text: str) -> str:
    """The longest start of `text` that is one whole expression (the lambda, without
    the rest of the call it was written in)."""
    for end in range(len(text), 0, -1):
        try:
            tree = ast.parse(text[:end], mode="eval")
        except SyntaxError:
            continue
        if isinstance(tree.body, ast.Lambda):  # not `lambda: x, timeout` (a tuple)
            return text[:end].strip()
    return text
