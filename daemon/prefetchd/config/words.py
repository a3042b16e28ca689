"""pydantic's validation errors in prefetchd's own words.

pydantic's messages ("Input should be a valid integer, unable to parse string as an
integer", a link to errors.pydantic.dev, "(and 1 more)") describe pydantic, not the
key a user wrote. The config loader and the MCP tools both validate with pydantic and
both say what was wrong through `say`: what was expected, and what was given.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

from pydantic_core import ErrorDetails

#: what each pydantic type check expected, as a user would put it
_EXPECTED = {
    "string_type": "a string", "str_type": "a string",
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "list_type": "a list", "dict_type": "a table", "model_type": "a table",
    "model_attributes_type": "a table", "path_type": "a path",
}

_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def shown(value: Any) -> str:
    """A given value as the user wrote it (JSON/TOML-like), kept short."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if isinstance(value, str):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(choices)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean X?)` for the closest of `choices`, else ``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def say(error: ErrorDetails) -> str:
    """One pydantic error (its location aside) in prefetchd's words."""
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return "missing (required)"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {shown(given)}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"must be {words} {ctx.get(key)}, got {shown(given)}"
    if kind in ("too_short", "string_too_short"):
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"needs at least {ctx.get('min_length')} items"
    if kind in ("too_long", "string_too_long"):
        return f"may have at most {ctx.get('max_length')} items"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{shown(given)} is not one of {expected}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def say_union(errors: list[ErrorDetails]) -> str:
    """The errors of one value that matched none of a union's members: what each
    member expected, joined (`expected a list or a string, got 5`)."""
    wanted = [_EXPECTED[e["type"]] for e in errors if e["type"] in _EXPECTED]
    if len(wanted) == len(errors) and wanted:
        return f"expected {' or '.join(dict.fromkeys(wanted))}, got {shown(errors[0]['input'])}"
    return say(errors[0])
