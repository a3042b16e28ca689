"""Logging: the library hands its events to `logging`; the CLI and the daemon call
`configure()` to write them on stderr.

Importing prefetchd or calling its API configures nothing and never writes to stdout
(stdout carries command output). Each module's logger (`get_logger`) is a structlog
logger with its own processors whose last step passes the event to the standard
`logging` logger of the same name: an application that embeds prefetchd sees its
events wherever it sends its own, and one that configures nothing gets only warnings
and errors, on stderr, from Python's last-resort handler. A record's message is the
event in logfmt (`download bytes=3 file_id=a ...`), so any handler shows it whole;
the event itself rides along for the handler that `configure()` installs.

`configure()` is the application's logging set-up: one handler on the root logger
(so asyncio's, aiohttp's and APScheduler's warnings come out the same way) that
writes JSON lines when stderr is not a terminal and readable lines when it is.
Under systemd (`$JOURNAL_STREAM` names stderr's device and inode) each line starts
with `<N>`, its syslog priority, which journald turns into the entry's PRIORITY
(`SyslogLevelPrefix=`, on by default), so `journalctl -p warning` works.

Two redaction processors run on every event, after exceptions are formatted and
before anything leaves the process: one rewrites each URL to its display form (a
file_id may carry a password or a presigned query, see redact.py), the other
replaces any known secret value that slips in, as a last line of defence behind the
rule that messages never carry secrets.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from .redact import redact_value

_secrets: set[str] = set()

#: the attribute of a LogRecord that carries a prefetchd event (a dict)
EVENT_ATTR = "prefetchd_event"


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


_logfmt = structlog.processors.LogfmtRenderer(sort_keys=True, bool_as_flag=False)


def to_record(logger: Any, name: str, event: EventDict) -> tuple[tuple[str], dict[str, Any]]:
    """The last processor: the arguments of the `logging` call. The message is the
    event in logfmt for any handler; the event itself goes along as EVENT_ATTR."""
    rest = {k: v for k, v in event.items() if k not in ("event", "level")}
    text = _logfmt(logger, name, rest) if rest else ""
    message = f"{event.get('event', '')} {text}".rstrip()
    return (message,), {"extra": {EVENT_ATTR: dict(event)}}


#: what every prefetchd event goes through, in the caller's thread
PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,  # first: a disabled level costs next to nothing
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.format_exc_info,
    redact_urls,
    redact_secrets,
    to_record,
]


def get_logger(name: str) -> Any:
    """The logger of a prefetchd module (`get_logger("prefetchd.fetch")`): independent
    of structlog's global configuration, so an embedding application's is untouched
    and an unconfigured structlog never prints to stdout."""
    return structlog.wrap_logger(logging.getLogger(name), processors=PROCESSORS,
                                 wrapper_class=structlog.stdlib.BoundLogger,
                                 cache_logger_on_first_use=True)


# -- the application's side: configure() ----------------------------------------------

#: syslog priorities by logging level, highest level first (sd-daemon(3))
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """A logging level as a syslog priority: critical 2, error 3, warning 4, info 6,
    debug 7."""
    return next((p for at, p in _PRIORITIES if levelno >= at), 7)


def under_journald(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal stream systemd connected: `$JOURNAL_STREAM` is
    `<device>:<inode>` of it (systemd.exec(5)); a stream redirected elsewhere by the
    user, or inherited by a child that writes to a file, does not match."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError, AttributeError):  # unset or garbled; no file behind
        return False


class EventFormatter(logging.Formatter):
    """A record as one rendered line: a prefetchd event as it was logged, any other
    record as `event` (its message), `logger` and `level`; each with a `timestamp`,
    redacted, and with `<N>` in front when journald reads the stream."""

    def __init__(self, renderer: Any, *, journald: bool) -> None:
        super().__init__()
        self.renderer = renderer
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, EVENT_ATTR, None)
        if isinstance(event, dict):
            event = dict(event)
        else:
            event = self._foreign(record)
        stamp = datetime.fromtimestamp(record.created, tz=UTC).isoformat()
        event["timestamp"] = stamp.replace("+00:00", "Z")
        line = str(self.renderer(None, record.levelname.lower(), event))
        if self.journald:
            return f"<{syslog_priority(record.levelno)}>{line}"
        return line

    def _foreign(self, record: logging.LogRecord) -> dict[str, Any]:
        event: dict[str, Any] = {"event": record.getMessage(), "logger": record.name,
                                 "level": record.levelname.lower()}
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return dict(redact_secrets(None, "", redact_urls(None, "", event)))


_handler: logging.Handler | None = None


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None,
              *, journald: bool | None = None) -> None:
    """Log to `stream` (stderr by default: stdout carries command output): prefetchd's
    events from `level` up, other libraries' from warning up. Called by the CLI and
    the daemon, never by the library; calling it again replaces the earlier set-up.

    `json` None: JSON when the stream is not a terminal. `journald` None: the `<N>`
    priority prefix when `$JOURNAL_STREAM` names the stream.
    """
    global _handler  # noqa: PLW0603 - the one handler this process installed
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    if journald is None:
        journald = under_journald(stream)
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=False))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EventFormatter(renderer, journald=journald))
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    _handler = handler
    root.setLevel(logging.WARNING)
    logging.getLogger("prefetchd").setLevel(getattr(logging, level.upper(), logging.INFO))
    # An application's own structlog.get_logger() loggers take the same way through
    # `logging` (prefetchd's modules use get_logger: tests/test_one_logger.py).
    structlog.configure(processors=PROCESSORS, logger_factory=structlog.stdlib.LoggerFactory(),
                        wrapper_class=structlog.stdlib.BoundLogger,
                        cache_logger_on_first_use=False)
