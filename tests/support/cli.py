"""The CLI in this process: `prefetchd.cli.main(argv)` as a process would run it.

Like click's CliRunner (which sqlite-utils' tests use), `run_cli` gives the command
its own stdin/stdout/stderr (captured, not terminals), its environment and working
directory, and returns the exit code with what it printed. A process starts with a
clean slate and its exit throws away what the command set; here `isolated()` does
both: it saves and restores what the CLI changes for the whole process (environment,
cwd, umask, signal handlers, the logging and structlog set-up, the secrets the log
redacts, warnings filters, sys.std*), so that one test's call cannot leak into the
next or into the test's own in-process code.

Nothing is swallowed: a thread the command leaves running (which would keep a
process from exiting) fails the test, an exception that escapes main() (argparse's SystemExit aside,
which is how it exits) propagates into the test, and a traceback that main() prints
for a bug fails the test unless it asked for one (`traceback_ok`). A command that has
not returned after `timeout` seconds is interrupted with CliTimeout.

What still needs a real process: `run` and `mcp` (they serve until a signal), and
what depends on the process itself (signals, exit and kill -9, POSIX locks, which are
per process, several CLIs at once, another user, the console script, the import
cost of the socket path). Those use `Env.cli` / `Env.popen`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

#: commands that serve until they are stopped: a real process only
SERVING = frozenset({"run", "mcp"})
#: global options that take a value (so their value is not read as a command name)
_VALUED = frozenset({"--config", "--root", "--state-dir"})
TRACEBACK = "Traceback (most recent call last)"


class CliTimeout(BaseException):  # noqa: N818 - a BaseException: the CLI's handlers let it by
    """The command ran past its timeout (raised into it by SIGALRM)."""


@dataclass(frozen=True)
class CliResult:
    """What a process would have shown: exit code, stdout, stderr (the names are
    CompletedProcess's, so a test reads the same either way)."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def exit_code(self) -> int:
        return self.returncode


class _Stream(io.StringIO):
    """A captured standard stream: not a terminal, no file descriptor."""

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a captured stream has no file descriptor")


def command_of(args: Sequence[str]) -> str | None:
    """The command word of an argv (skipping the global options and their values)."""
    it = iter(args)
    for a in it:
        if a in _VALUED:
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def run_cli(args: Sequence[str], environ: Mapping[str, str], *, cwd: Path,
            timeout: float = 60, stdin: str = "", traceback_ok: bool = False) -> CliResult:
    """Run `prefetchd ARGS` in this process with exactly `environ` as its environment."""
    from prefetchd.cli import commands as cli

    argv = [str(a) for a in args]
    if command_of(argv) in SERVING:
        raise ValueError(f"`{command_of(argv)}` serves until stopped: run it as a process "
                         "(env.popen / the daemon fixture)")
    out, err = _Stream(), _Stream()
    threads = set(threading.enumerate())
    with isolated(environ, cwd, stdin=io.StringIO(stdin), stdout=out, stderr=err):
        with _deadline(timeout, argv):
            code = _exit_code(cli.main, argv, err)
    _join_as_at_exit(threads, argv, timeout)
    result = CliResult(tuple(argv), code, out.getvalue(), err.getvalue())
    if TRACEBACK in result.stderr and not traceback_ok:
        raise AssertionError(f"prefetchd {' '.join(argv)} printed a traceback "
                             f"(exit {code}):\n{result.stderr}")
    return result


def _join_as_at_exit(before: set[threading.Thread], argv: list[str], timeout: float) -> None:
    """A process exits only when its non-daemon threads have ended: wait for those the
    command started, and fail if one would have kept the process from exiting."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if t not in before and not t.daemon:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise AssertionError(f"prefetchd {' '.join(argv)} left thread {t.name} "
                                     f"running: its process would not exit")


def _exit_code(main: Any, argv: list[str], err: io.StringIO) -> int:
    """main()'s return value, or the code of the SystemExit it raised (argparse exits
    this way for --help, --version and bad usage), as the interpreter would map it."""
    try:
        return int(main(argv))
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=err)
        return 1


@contextlib.contextmanager
def _deadline(timeout: float, argv: list[str]) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise CliTimeout(f"prefetchd {' '.join(argv)} still running after {timeout:g}s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def isolated(environ: Mapping[str, str], cwd: Path, *, stdin: io.StringIO,
             stdout: io.StringIO, stderr: io.StringIO) -> Iterator[None]:
    """Give the block a process's fresh state; put back everything it changed."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_environment(environ))
        stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(_umask())
        stack.enter_context(_signal_handlers())
        stack.enter_context(_logging())
        stack.enter_context(_secrets())
        stack.enter_context(_warnings())
        stack.enter_context(_std_streams(stdin, stdout, stderr))
        yield


def _print_warning(message: Warning | str, category: type[Warning], filename: str,
                   lineno: int, file: Any = None, line: str | None = None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        # A new interpreter's filters (Python's defaults; pytest adds its own to the
        # test's, and records warnings where a process prints them on stderr).
        warnings.resetwarnings()
        for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning,
                         DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = _print_warning
        yield


@contextlib.contextmanager
def _environment(environ: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _umask() -> Iterator[None]:
    saved = os.umask(0o022)
    os.umask(saved)
    try:
        yield
    finally:
        os.umask(saved)


_SIGNALS = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]


@contextlib.contextmanager
def _signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in _SIGNALS}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    try:
        yield
    finally:
        signal.set_wakeup_fd(wakeup)
        for s, handler in saved.items():
            if handler is not None and signal.getsignal(s) is not handler:
                signal.signal(s, handler)


@contextlib.contextmanager
def _logging() -> Iterator[None]:
    """The logging tree (every logger's level, handlers, propagation), prefetchd's own
    handler record, and structlog's configuration."""
    from prefetchd import log as logsetup

    manager = logging.Logger.manager
    loggers = [logging.root, *(x for x in manager.loggerDict.values()
                               if isinstance(x, logging.Logger))]
    saved = {id(x): (x, x.level, list(x.handlers), x.propagate, x.disabled) for x in loggers}
    disabled = logging.root.manager.disable
    handler = logsetup._handler
    config = structlog.get_config()
    try:
        yield
    finally:
        for x in [logging.root, *manager.loggerDict.values()]:
            if not isinstance(x, logging.Logger):
                continue
            if id(x) in saved:
                _, level, handlers, propagate, was_disabled = saved[id(x)]
            else:  # made by the command: back to a new logger's state
                level, handlers, propagate, was_disabled = logging.NOTSET, [], True, False
            x.setLevel(level)
            x.handlers[:] = handlers
            x.propagate, x.disabled = propagate, was_disabled
        logging.disable(disabled)
        logsetup._handler = handler
        structlog.reset_defaults()
        structlog.configure(**config)


@contextlib.contextmanager
def _secrets() -> Iterator[None]:
    """A process starts knowing no secret: what this one registered (the tests' own
    config loads) must not redact the command's output for it."""
    from prefetchd import log as logsetup

    saved = set(logsetup._secrets)
    logsetup._secrets.clear()
    try:
        yield
    finally:
        logsetup._secrets.clear()
        logsetup._secrets.update(saved)


@contextlib.contextmanager
def _std_streams(stdin: io.StringIO, stdout: io.StringIO,
                 stderr: io.StringIO) -> Iterator[None]:
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
