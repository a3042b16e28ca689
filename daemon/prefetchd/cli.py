"""Command line: parses, calls the library API, prints. No logic of its own.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or bad config. Errors
are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from . import log as logsetup
from .api import GetResult, Prefetch
from .config import load_settings, parse_duration, parse_size
from .errors import PrefetchError
from .manifest import STATES
from .redact import RedactingWriter

PROG = "prefetchd"


class Progress:
    """A one-line progress bar on a terminal (stderr), redrawn at most 10 times a second."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.files: dict[str, tuple[int, int | None]] = {}
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, file_id: str, done: int, total: int | None) -> None:
        self.files[file_id] = (done, total)
        now = time.monotonic()
        if now - self.last < 0.1 and not (total is not None and done >= total):
            return
        self.last = now
        got = sum(d for d, _ in self.files.values())
        totals = [t for _, t in self.files.values()]
        rate = got / max(now - self.started, 1e-6)
        if None not in totals and sum(totals):  # type: ignore[arg-type]
            frac = got / sum(totals)  # type: ignore[arg-type]
            bar = "#" * int(frac * 30)
            line = f"[{bar:<30}] {frac:6.1%} {_human(got)}/{_human(sum(totals))}"  # type: ignore[arg-type]
        else:
            line = f"{_human(got)}"
        self.stream.write(f"\r{line} {_human(rate)}/s  {len(self.files)} file(s) ")
        self.stream.flush()

    def close(self) -> None:
        if self.files:
            self.stream.write("\n")
            self.stream.flush()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _size_arg(value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _duration_arg(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
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

    p = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Keep a local directory filled with verified copies of the files agents "
                    "need: request file_ids, prefetchd downloads, checks SHA-256 and publishes "
                    "them atomically under the root.",
        epilog="Exit codes: 0 success, 1 the operation failed, 2 bad usage or config. "
               "See `prefetchd COMMAND --help`.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    def request_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("file_ids", nargs="+", metavar="FILE_ID")
        sp.add_argument("--provider", metavar="NAME",
                        help="provider that holds the file (default: by id pattern, then "
                             "default_provider)")
        sp.add_argument("--sha256", metavar="HEX", help="expected SHA-256; a mismatch fails")
        sp.add_argument("--size", metavar="N", type=_size_arg,
                        help="expected size: bytes, or with a unit (500MB = 500,000,000 bytes, "
                             "500MiB = 524,288,000)")
        sp.add_argument("--dest", metavar="REL",
                        help="path below the root (default downloads/<id>/<name>)")
        sp.add_argument("--pin", action="store_true", help="never delete by retention")
        sp.add_argument("--ttl", metavar="DURATION", type=_duration_arg,
                        help="keep this long after the last request (e.g. 24h)")

    cmd("run", "Run the daemon in the foreground (systemd runs this): keep the root in "
               "step with the manifest, watch the inbox, clean up on schedule. SIGTERM stops "
               "it gracefully, SIGHUP reloads the config.")
    request_opts(cmd("want", "Add file_ids to the manifest; the daemon fetches them. An "
                             "option given replaces the entry's earlier one; an option left "
                             "out keeps it (release or forget clear them)."))
    cmd("unwant", "Mark file_ids as no longer wanted (retention removes them later)."
        ).add_argument("file_ids", nargs="+", metavar="FILE_ID")
    g_ = cmd("get", "Want file_ids, wait until each is ready or has failed, print one "
                    "absolute path a line (errors on stderr). Without a running daemon the "
                    "download happens in this process.")
    request_opts(g_)
    g_.add_argument("--timeout", metavar="DURATION", type=_duration_arg,
                    help="give up after this long (exit 1; partials are kept). Without it, "
                         "get still gives up on an id that keeps failing transiently for "
                         "download.get_patience (default 2m)")
    g_.add_argument("--json", action="store_true",
                    help="a JSON array, one object per id given: file_id, state, path, error")
    cmd("path", "Print the absolute path of a ready file; exit 1 if it is not ready."
        ).add_argument("file_id", metavar="FILE_ID")
    ls = cmd("ls", "List manifest entries.")
    ls.add_argument("--state", choices=STATES, help="only entries in this state")
    ls.add_argument("--json", action="store_true", help="a JSON array (stable keys)")
    st = cmd("status", "Daemon, queue, states, bytes, outbox backlog, last errors.")
    st.add_argument("--json", action="store_true", help="a JSON object (stable keys)")
    cmd("release", "Done with these: unwant and delete them now; their request options "
                   "(--provider, --sha256, --size, --dest, --ttl, --pin) are cleared."
        ).add_argument("file_ids", nargs="+", metavar="FILE_ID")
    cmd("forget", "Remove entries entirely: their options, their state and a ready file "
                  "at its destination. Their download history stays."
        ).add_argument("file_ids", nargs="+", metavar="FILE_ID")
    vf = cmd("verify", "Re-hash ready files now; quarantine and re-fetch what is bad.")
    vf.add_argument("file_ids", nargs="*", metavar="FILE_ID")
    vf.add_argument("--json", action="store_true")
    gc = cmd("gc", "One retention pass now: remove files no longer wanted, past their TTL, "
                   "or over the size limits (LRU), then objects nothing links to.")
    gc.add_argument("--dry-run", action="store_true", help="print what would go and why")
    stt = cmd("stats", "Local download statistics per provider (downloads, cache hits, "
                       "failures, bytes, hit rate).")
    stt.add_argument("--json", action="store_true")
    stt.add_argument("--push", action="store_true",
                     help="mirror the outbox to Supabase now (needs [supabase])")
    return p


def _request_opts(a: argparse.Namespace) -> dict[str, Any]:
    return {"provider": a.provider, "sha256": a.sha256, "size": a.size, "dest": a.dest,
            "pin": a.pin, "ttl": a.ttl}


def run(args: argparse.Namespace, out: Any, err: Any) -> int:
    if args.command == "run":
        from .service import run_daemon

        return run_daemon(getattr(args, "config", None), getattr(args, "root", None),
                          getattr(args, "state_dir", None))
    settings = load_settings(
        getattr(args, "config", None),
        root=getattr(args, "root", None),
        state_dir=getattr(args, "state_dir", None),
        warn=lambda msg: print(f"{PROG}: warning: {msg}", file=err),
    )
    verbose = getattr(args, "verbose", False)
    # The CLI prints failures itself; logs are for -v (and for the daemon).
    logsetup.configure("info" if verbose else "error")
    c = args.command
    # Read-only commands create nothing (no root, state dir or database).
    read_only = c in ("path", "ls", "status") or (c == "stats" and not args.push)
    with Prefetch(settings, read_only=read_only) as p:
        if c == "want":
            p.want(args.file_ids, **_request_opts(args))
        elif c == "unwant":
            p.unwant(args.file_ids)
        elif c == "get":
            return _get(p, args, out, err)
        elif c == "path":
            path = p.path(args.file_id)
            if path is None:
                row = p.manifest.get(args.file_id)
                why = f"state {row['state']}" if row else "not in the manifest"
                print(f"{PROG}: {args.file_id} is not ready ({why})", file=err)
                return 1
            print(path, file=out)
        elif c == "ls":
            rows = p.ls(args.state)
            if args.json:
                _print_json(rows, out)
            else:
                for r in rows:
                    size = _human(r["size"]) if r["size"] is not None else "-"
                    print(f"{r['state']:<13} {size:>10}  {r['file_id']}  {r['path'] or ''}"
                          + (f"  [{r['error']}]" if r["error"] and r["state"] != "ready" else ""),
                          file=out)
        elif c == "status":
            s = p.status()
            if args.json:
                _print_json(s, out)
            else:
                _print_status(s, out)
        elif c in ("release", "forget"):
            removed = p.release(args.file_ids) if c == "release" else p.forget(args.file_ids)
            for path in removed:
                print(f"removed {path}", file=out)
        elif c == "verify":
            report = p.verify(args.file_ids or None)
            if args.json:
                _print_json(report, out)
            else:
                for r in report:
                    extra = ""
                    if not r["ok"]:
                        extra = " (quarantined" + (
                            ", re-fetched" if r.get("refetched") else "") + ")"
                    print(f"{'ok ' if r['ok'] else 'BAD'} {r['file_id']}{extra}", file=out)
            return 0 if all(r["ok"] for r in report) else 1
        elif c == "gc":
            res = p.gc(dry_run=args.dry_run)
            verb = "would remove" if args.dry_run else "removed"
            for d in res["deleted"]:
                print(f"{verb} {d['path']} ({d['file_id']}: {d['reason']})", file=out)
            for sha in res["objects_removed"]:
                print(f"{verb} object {sha} (nothing links to it)", file=out)
            for rel in res["strays_removed"]:
                print(f"{verb} {rel} (a link no entry accounts for)", file=out)
        elif c == "stats":
            if args.push:
                sent = p.push_stats()
                print(f"pushed {sent} event(s) to Supabase", file=err)
            rows = p.stats()
            if args.json:
                _print_json(rows, out)
            else:
                print(f"{'provider':<16} {'downloads':>9} {'hits':>6} {'failures':>8} "
                      f"{'bytes':>12} {'hit rate':>8}", file=out)
                for r in rows:
                    rate = f"{r['hit_rate']:.0%}" if r["hit_rate"] is not None else "-"
                    print(f"{r['provider'] or '-':<16} {r['downloads']:>9} {r['cache_hits']:>6} "
                          f"{r['failures']:>8} {_human(r['bytes']):>12} {rate:>8}", file=out)
    return 0


def _get(p: Prefetch, args: argparse.Namespace, out: Any, err: Any) -> int:
    """`get`: one line per id given, in order (the path on stdout, or the error on
    stderr), or with --json one object per id; exit 1 if any id is not ready."""
    tty = err.isatty()
    bar = Progress(err) if tty else None

    def notice(msg: str) -> None:
        print(f"{PROG}: {msg}", file=err, flush=True)

    try:
        results = p.get_many(args.file_ids, timeout=args.timeout, progress=bar,
                             notice=notice if tty else None, **_request_opts(args))
    finally:
        if bar:
            bar.close()
    if args.json:
        _print_json([_get_json(r) for r in results], out)
    for r in results:
        if r.error is None:
            if not args.json:
                print(r.path, file=out)
            continue
        msg = str(r.error)
        print(f"{PROG}: {msg if r.file_id in msg else f'{r.file_id}: {msg}'}", file=err)
    return 1 if any(r.error is not None for r in results) else 0


def _get_json(r: GetResult) -> dict[str, Any]:
    """The stable `get --json` shape (documented in the README)."""
    return {"file_id": r.file_id, "state": r.state,
            "path": str(r.path) if r.path is not None else None,
            "error": str(r.error) if r.error is not None else None}


def _print_json(obj: Any, out: Any) -> None:
    json.dump(obj, out, indent=2)
    out.write("\n")


def _print_status(s: dict[str, Any], out: Any) -> None:
    d = s["daemon"]
    print(f"daemon:   {'running, pid ' + str(d['pid']) if d['running'] else 'not running'}",
          file=out)
    print(f"root:     {s['root']}", file=out)
    print(f"queue:    {s['queue']}", file=out)
    states = ", ".join(f"{k} {v}" for k, v in s["states"].items() if v)
    print(f"states:   {states or 'empty'}", file=out)
    print(f"store:    {s['store']['objects']} objects, {_human(s['store']['bytes'])}", file=out)
    m = s["mirror"]
    mirror = "Supabase" if m["configured"] else "not configured (statistics stay local)"
    print(f"outbox:   {s['outbox_backlog']} events not yet mirrored; mirror: {mirror}", file=out)
    if m["last_error"]:
        print(f"mirror:   last error: {m['last_error']}", file=out)
    for e in s["last_errors"]:
        print(f"error:    {e['file_id']} ({e['state']}): {e['error']}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and run a command with stdout and stderr behind redaction.

    Every byte the CLI writes (output, errors, argparse's messages, progress, logs of
    -v and of `run`) passes through RedactingWriter, so a URL file_id shows in its
    display form: no password or presigned query leaves the process that way. An
    unexpected exception is printed as a (redacted) traceback, exit code 1.
    """
    out, err = RedactingWriter(sys.stdout), RedactingWriter(sys.stderr)
    try:
        with (contextlib.redirect_stdout(out),  # type: ignore[type-var]
              contextlib.redirect_stderr(err)):  # type: ignore[type-var]
            return _main(argv, out, err)
    finally:
        out.close()
        err.close()


def _main(argv: Sequence[str] | None, out: RedactingWriter, err: RedactingWriter) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return run(args, out, err)
    except PrefetchError as e:
        print(f"{PROG}: error: {e}", file=err)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (partial downloads are kept for resume)", file=err)
        return 130
    except (OSError, sqlite3.Error) as e:
        print(f"{PROG}: error: {_os_error(e)}", file=err)
        return 1
    except Exception:  # a bug: shown in full, but not its URLs' secrets
        traceback.print_exc(file=err)
        return 1


def _os_error(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return str(e) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
