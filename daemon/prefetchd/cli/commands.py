"""Command line: one function per command, its docstring its help, over one library call.

The CLI mirrors the library the way sqlite-utils does: `@command(...)` registers a
function under its own name with the arguments it takes; the function opens the
library (`io.prefetch()`), makes its call and prints. No logic of its own.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad config, 130
interrupted (Ctrl-C). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import sqlite3
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import NotReadyError, PrefetchError, human_size
from ..records import Removal, State
from ..redact import RedactingWriter
from .base import (
    COMMANDS,
    EVERY,
    FILE_IDS,
    HOLDER,
    PROG,
    REQUEST,
    DaemonCarriesOn,
    Io,
    arg,
    command,
    duration_arg,
    want_options,
)
from .show import (
    Downloads,
    done_line,
    gc_line,
    get_error,
    get_json,
    ls_lines,
    os_error,
    print_json_rows,
    status_lines,
)

if TYPE_CHECKING:
    from ..api import Prefetch
    from .show import Stream

SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a writer its reader left
INTERRUPTED_EXIT = 130  # 128 + SIGINT: what a shell reports for a command Ctrl-C ended


# -- the commands, in the order of `prefetchd --help` -----------------------------------


@command(example="prefetchd --config /etc/prefetchd/config.toml run")
def run(a: argparse.Namespace, io: Io) -> int:
    """Run the daemon in the foreground (systemd runs this): keep the root in step with
    the manifest, watch the inbox, clean up on schedule. SIGTERM stops it gracefully,
    SIGHUP reloads the config."""
    from ..service.daemon import run_daemon

    return run_daemon(io.config, io.root, io.state_dir)


@command(*REQUEST, example="prefetchd want file-abc file-def --ttl 24h")
def want(a: argparse.Namespace, io: Io) -> int:
    """Claim file_ids: the daemon fetches each once, whoever else wants it. The options
    are your claim's own (another user's never apply to yours): one given replaces
    your claim's earlier one, one left out keeps it (release or forget clear them)."""
    with io.prefetch() as p:
        wanted = p.want(a.file_ids, holder=a.holder, options=want_options(a))
    if io.err.isatty():
        print(done_line("want", len(wanted)), file=io.err)
    return 0


@command(FILE_IDS, HOLDER, example="prefetchd unwant file-abc")
def unwant(a: argparse.Namespace, io: Io) -> int:
    """Your claims no longer want these file_ids (retention removes a file no claim
    wants, later)."""
    with io.prefetch() as p:
        p.unwant(a.file_ids, holder=a.holder)
    return 0


@command(
    *REQUEST,
    arg("--timeout", metavar="DURATION", type=duration_arg,
        help="give up after this long (exit 1; partials are kept). Without it, get still "
             "gives up on an id that keeps failing transiently for download.get_patience "
             "(default 2m)"),
    arg("--json", action="store_true",
        help="a JSON array, one object per id given: file_id, state, path, error"),
    example="prefetchd get file-abc --dest reports/q3.pdf",
)
def get(a: argparse.Namespace, io: Io) -> int:
    """Want file_ids, wait until each is ready or has failed, print one absolute path a
    line (errors on stderr). Without a running daemon the download happens in this
    process."""
    shown = Downloads(io.err) if io.err.isatty() else None
    p: Prefetch | None = None
    try:
        p = io.prefetch()
        with p:
            results = p.get_many(a.file_ids, timeout=a.timeout, watch=shown,
                                 notice=shown.tell if shown else None, holder=a.holder,
                                 options=want_options(a))
    except KeyboardInterrupt:
        # Asked at the moment of Ctrl-C: a get whose daemon stopped carries on here.
        if p is not None and p.through_daemon:
            raise DaemonCarriesOn from None
        raise
    finally:
        if shown:
            shown.close()
    if a.json:
        io.json([get_json(r) for r in results])
    for r in results:
        if r.error is not None:
            io.tell(get_error(r.file_id, r.error))
        elif not a.json:
            io.say(r.path)
    return 1 if any(r.error is not None for r in results) else 0


@command(arg("file_id", metavar="FILE_ID"), HOLDER, example="prefetchd path file-abc")
def path(a: argparse.Namespace, io: Io) -> int:
    """Print the absolute path of your claim on a ready file (its --dest, or the
    shared downloads/<id>/<name>); exit 1 if it is not ready, saying why."""
    try:
        with io.prefetch(read_only=True) as p:
            found = p.locate(a.file_id, holder=a.holder)
    except NotReadyError as e:
        io.tell(str(e))
        return 1
    io.say(found)
    return 0


@command(
    arg("--state", choices=[s.value for s in State], help="only files in this state"),
    arg("--mine", action="store_true", help="only the files you claim, with your claims"),
    arg("--json", action="store_true", help="a JSON array (stable keys), claims included"),
    example="prefetchd ls --state failed",
)
def ls(a: argparse.Namespace, io: Io) -> int:
    """List files, one line each, with their claims (holder, pin, dest) below."""
    with io.prefetch(read_only=True) as p:
        rows = p.iter_ls(a.state, mine=a.mine)  # printed as they come, never held whole
        if a.json:
            print_json_rows(rows, io.out)
            return 0
        for r in rows:
            for line in ls_lines(r):
                io.say(line)
    return 0


@command(arg("--json", action="store_true", help="a JSON object (stable keys)"),
         example="prefetchd status --json")
def status(a: argparse.Namespace, io: Io) -> int:
    """Daemon, queue, states, bytes, outbox backlog, last errors."""
    with io.prefetch(read_only=True) as p:
        report = p.status()
    if a.json:
        io.json(report)
    else:
        for line in status_lines(report):
            io.say(line)
    return 0


def _say_removed(io: Io, removed: Removal) -> None:
    """What a release or forget removed (one line a link), then what it kept and why."""
    for rel in removed:
        io.say(f"removed {rel}")
    for line in removed.kept_lines():
        io.say(line)


@command(FILE_IDS, HOLDER, EVERY, example="prefetchd release file-abc")
def release(a: argparse.Namespace, io: Io) -> int:
    """Done with these: drop your claims and their links now (their options go with
    them). A file goes with its last claim; another user's claims are never touched
    (an admin's --holder uid:N or --all)."""
    with io.prefetch() as p:
        removed = p.release(a.file_ids, holder=a.holder, every=a.every)
    _say_removed(io, removed)
    return 0


@command(FILE_IDS, HOLDER, EVERY, example="prefetchd forget file-abc --holder job-42")
def forget(a: argparse.Namespace, io: Io) -> int:
    """Remove your claims entirely (as release); a file's row goes with its last claim.
    Its download history stays."""
    with io.prefetch() as p:
        removed = p.forget(a.file_ids, holder=a.holder, every=a.every)
    _say_removed(io, removed)
    if io.err.isatty():
        print(done_line("forget", len(dict.fromkeys(a.file_ids))), file=io.err)
    return 0


@command(arg("file_ids", nargs="*", metavar="FILE_ID"), arg("--json", action="store_true"),
         example="prefetchd verify file-abc")
def verify(a: argparse.Namespace, io: Io) -> int:
    """Re-hash ready files now; quarantine and re-fetch what is bad."""
    with io.prefetch() as p:
        report = p.verify(a.file_ids or None)
    if a.json:
        io.json(report)
    else:
        for r in report:
            refetched = ", re-fetched" if r.get("refetched") else ""
            extra = "" if r["ok"] else f" (quarantined{refetched})"
            io.say(f"{'ok ' if r['ok'] else 'BAD'} {r['file_id']}{extra}")
    return 0 if all(r["ok"] for r in report) else 1


@command(arg("--dry-run", action="store_true", help="print what would go and why"),
         example="prefetchd gc --dry-run")
def gc(a: argparse.Namespace, io: Io) -> int:
    """One retention pass now: remove files no longer wanted, past their TTL, or over
    the size limits (LRU), then objects nothing links to."""
    with io.prefetch() as p:
        res = p.gc(dry_run=a.dry_run)
    verb = "would remove" if a.dry_run else "removed"
    for d in res["deleted"]:
        io.say(f"{verb} {d['path']} ({d['file_id']}: {d['reason']})")
    for sha in res["objects_removed"]:
        io.say(f"{verb} object {sha} (nothing links to it)")
    for rel in res["strays_removed"]:
        io.say(f"{verb} {rel} (a link no entry accounts for)")
    if io.err.isatty():
        print(gc_line(res, a.dry_run), file=io.err)
    return 0


@command(
    arg("--json", action="store_true"),
    arg("--push", action="store_true", help="mirror the outbox to Supabase now (needs [supabase])"),
    example="prefetchd stats --json",
)
def stats(a: argparse.Namespace, io: Io) -> int:
    """Local download statistics per provider (downloads, cache hits, failures, bytes,
    hit rate)."""
    with io.prefetch(read_only=not a.push) as p:
        if a.push:
            print(f"pushed {p.push_stats()} event(s) to Supabase", file=io.err)
        rows = p.stats()
    if a.json:
        io.json(rows)
        return 0
    io.say(f"{'provider':<16} {'downloads':>9} {'hits':>6} {'failures':>8} "
           f"{'bytes':>12} {'hit rate':>8}")
    for r in rows:
        rate = f"{r['hit_rate']:.0%}" if r["hit_rate"] is not None else "-"
        io.say(f"{r['provider'] or '-':<16} {r['downloads']:>9} {r['cache_hits']:>6} "
               f"{r['failures']:>8} {human_size(r['bytes'], column=True):>12} {rate:>8}")
    return 0


@command(example="prefetchd --config /etc/prefetchd/config.toml mcp")
def mcp(a: argparse.Namespace, io: Io) -> int:
    """An MCP server on stdio (tools prefetch_get, prefetch_want, prefetch_path,
    prefetch_status, prefetch_release)."""
    from ..mcp_server import run as run_mcp

    settings = io.settings()
    # stdout carries the protocol itself, whole: not the redacting writer of the CLI.
    with contextlib.redirect_stdout(sys.__stdout__):
        run_mcp(settings)
    return 0


@command(arg("shell", choices=["bash", "zsh"]), example="prefetchd completion bash")
def completion(a: argparse.Namespace, io: Io) -> int:
    """Print a completion script for bash or zsh, made from this command table (commands,
    options, --state values). bash: `source <(prefetchd completion bash)`, or save it as
    /etc/bash_completion.d/prefetchd; zsh: save it as _prefetchd in a folder on $fpath."""
    from .completion import script

    io.out.write(script(a.shell, build_parser()))
    return 0


# -- the parser and the entry point -----------------------------------------------------


from . import fleet as cli_fleet  # noqa: E402, F401 - registers `fleet`, last in --help


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that an "example:" epilog keeps its lines as written (a
    command line wrapped to the terminal's width could not be pasted)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _global_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (hence SUPPRESS: the
    subcommand's parser must not reset one given before it)."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("global options (before or after the command)")
    g.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config file (env PREFETCHD_CONFIG; default /etc/prefetchd/config.toml)")
    g.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                   help="directory agents read (env PREFETCHD_ROOT; default /mnt/project)")
    g.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="where prefetchd.db lives (env PREFETCHD_STATE_DIR; "
                        "default /var/lib/prefetchd)")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log each download to stderr")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    p = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Keep a local directory filled with verified copies of the files agents "
                    "need: request file_ids, prefetchd downloads, checks SHA-256 and publishes "
                    "them atomically under the root.",
        epilog="Exit codes: 0 success, 1 the operation failed, 2 bad usage or config, "
               "130 interrupted (Ctrl-C). See `prefetchd COMMAND --help`.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        text = inspect.getdoc(cmd.func)
        sp = sub.add_parser(name, parents=[common], help=text, description=text,
                            epilog=f"example:\n  {cmd.example}",
                            formatter_class=_HelpFormatter)
        for add in cmd.args:
            add(sp)
    return p


def dispatch(args: argparse.Namespace, out: Stream, err: Stream) -> int:
    """Run the command the parsed arguments name; returns its exit code."""
    return COMMANDS[args.command].func(args, Io.of(args, out, err))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run a command with stdout and stderr behind redaction.

    Every byte the CLI writes (output, errors, argparse's messages, progress, logs of
    -v and of `run`) passes through RedactingWriter, so a URL file_id shows in its
    display form: no password or presigned query leaves the process that way. An
    unexpected exception is printed as a (redacted) traceback, exit code 1. A reader
    that closes stdout early (`prefetchd ls | head -1`) ends the command quietly,
    exit code 141 as for SIGPIPE.
    """
    out, err = RedactingWriter(sys.stdout), RedactingWriter(sys.stderr)
    try:
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return _main(argv, out, err)
        finally:
            try:
                out.close()
            finally:
                err.close()
    except BrokenPipeError:
        # What is still buffered for stdout would fail again at exit, with a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT


def _main(argv: Sequence[str] | None, out: RedactingWriter, err: RedactingWriter) -> int:
    parser = build_parser()
    try:
        return dispatch(parser.parse_args(argv), out, err)
    except PrefetchError as e:
        print(f"{PROG}: error: {e}", file=err)
        return e.exit_code
    except DaemonCarriesOn:
        print(f"{PROG}: interrupted; the daemon carries on with the download "
              f"(prefetchd status shows it)", file=err)
        return INTERRUPTED_EXIT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (partial downloads are kept for resume)", file=err)
        return INTERRUPTED_EXIT
    except BrokenPipeError:
        raise  # stdout was closed: main() ends quietly
    except (OSError, sqlite3.Error) as e:
        print(f"{PROG}: error: {os_error(e)}", file=err)
        return 1
    except Exception:  # a bug: shown in full, but not its URLs' secrets
        traceback.print_exc(file=err)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
