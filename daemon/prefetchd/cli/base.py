"""What every command shares: its Io (global options, the two output streams, the
library), the registry that `@command` fills, and the arguments several take.

Apart from cli.py so that it holds only the commands and the entry point.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import log as logsetup
from ..api import Prefetch
from ..config import Settings, load_settings, parse_duration, parse_size
from .show import print_json

if TYPE_CHECKING:
    from .show import Stream

PROG = "prefetchd"

Arg = Callable[[argparse.ArgumentParser], object]
Handler = Callable[[argparse.Namespace, "Io"], int]


@dataclass(frozen=True)
class Io:
    """What every command shares: the global options and the two output streams."""

    out: Stream
    err: Stream
    config: str | None = None
    root: str | None = None
    state_dir: str | None = None
    verbose: bool = False

    @classmethod
    def of(cls, args: argparse.Namespace, out: Stream, err: Stream) -> Io:
        # Global options default to SUPPRESS, so that one given before the command is
        # not reset by the subcommand's parser: an absent one is an absent attribute.
        return cls(out, err, getattr(args, "config", None), getattr(args, "root", None),
                   getattr(args, "state_dir", None), getattr(args, "verbose", False))

    def settings(self) -> Settings:
        """The configured settings; the CLI's logs go to stderr from here on."""
        settings = load_settings(self.config, root=self.root, state_dir=self.state_dir,
                                 warn=lambda msg: self.tell(f"warning: {msg}"))
        # The CLI prints failures itself; logs are for -v (and for the daemon).
        logsetup.configure("info" if self.verbose else "error")
        return settings

    def prefetch(self, *, read_only: bool = False) -> Prefetch:
        """The library over the configured settings: through the daemon when one runs.
        Read-only commands create nothing (no root, state dir or database)."""
        return Prefetch(self.settings(), read_only=read_only)

    def say(self, line: object) -> None:
        print(line, file=self.out)

    def tell(self, message: str) -> None:
        print(f"{PROG}: {message}", file=self.err, flush=True)

    def json(self, obj: Any) -> None:
        print_json(obj, self.out)


class DaemonCarriesOn(KeyboardInterrupt):
    """Ctrl-C while the daemon serves the command: what was asked goes on there (a
    get's download is the daemon's, not this process's)."""


@dataclass(frozen=True)
class Command:
    func: Handler
    args: tuple[Arg, ...]
    example: str  # one command line, shown as "example:" under the command's --help


COMMANDS: dict[str, Command] = {}


def command(*args: Arg, example: str) -> Callable[[Handler], Handler]:
    """Register a function as the command of its name, taking these arguments;
    `example` is one command line using it (`prefetchd get file-abc --dest r/q3.pdf`)."""

    def register(func: Handler) -> Handler:
        COMMANDS[func.__name__] = Command(func, args, example)
        return func

    return register


def arg(*names: str, **kw: Any) -> Arg:
    return lambda parser: parser.add_argument(*names, **kw)


def size_arg(value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def duration_arg(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


FILE_IDS = arg("file_ids", nargs="+", metavar="FILE_ID")
HOLDER = arg("--holder", metavar="NAME",
             help="act on a claim of your own job (job-42: uid:<you>/job-42) instead of "
                  "your own; an admin may name another user's (uid:1000)")
EVERY = arg("--all", action="store_true", dest="every",
            help="every local holder's claim on these files (root, the daemon's user or "
                 "[api] admin_group only)")
REQUEST = (
    FILE_IDS,
    HOLDER,
    arg("--provider", metavar="NAME",
        help="provider that holds the file (default: by id pattern, then default_provider)"),
    arg("--sha256", metavar="HEX", help="expected SHA-256; a mismatch fails"),
    arg("--size", metavar="N", type=size_arg,
        help="expected size: bytes, or with a unit (500MB = 500,000,000 bytes, "
             "500MiB = 524,288,000)"),
    arg("--dest", metavar="REL", help="path below the root (default downloads/<id>/<name>)"),
    arg("--pin", action="store_true", help="never delete by retention"),
    arg("--ttl", metavar="DURATION", type=duration_arg,
        help="keep this long after the last request (e.g. 24h)"),
)


def request_opts(a: argparse.Namespace) -> dict[str, Any]:
    return {"provider": a.provider, "sha256": a.sha256, "size": a.size, "dest": a.dest,
            "pin": a.pin, "ttl": a.ttl, "holder": a.holder}
