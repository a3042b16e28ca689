"""structlog set-up: JSON lines when the log stream is not a terminal, console otherwise.

Two redaction processors run on every event, after exceptions are formatted and
before either renderer: one rewrites each URL to its display form (a file_id may
carry a password or a presigned query, see redact.py), the other replaces any known
secret value that slips in, as a last line of defence behind the rule that messages
never carry secrets.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from .redact import redact_value

_secrets: set[str] = set()


def add_secrets(values: Iterable[str]) -> None:
    """Register secret values that must never appear in a log line."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        for s in _secrets:
            if s in value:
                value = value.replace(s, "***")
        return value
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v) for v in value)
    return value


# structlog hands a processor the event as a MutableMapping (a dict in practice).
EventDict = MutableMapping[str, Any]


def redact_secrets(_logger: Any, _name: str, event: EventDict) -> EventDict:
    if not _secrets:
        return event
    return {k: _redact(v) for k, v in event.items()}


def redact_urls(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """Every URL in every value (the message, error strings, a formatted traceback,
    nested dicts and lists) in its display form; a `file_id` through display_id."""
    redacted: EventDict = redact_value(dict(event))
    return redacted


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Log to `stream` (stderr by default: stdout carries command output)."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_urls,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
