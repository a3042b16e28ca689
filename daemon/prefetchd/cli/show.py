"""How the command line shows things: JSON, status, download progress (sizes for
people: errors.human_size, which the socket path loads anyway).

Apart from commands.py so that the command functions stay a few lines each over one
library call; nothing here calls the library.
"""

from __future__ import annotations

import json

from ..errors import human_size

TYPE_CHECKING = False
if TYPE_CHECKING:  # nothing of these loads at run time: the socket path (quick.py)
    # prints with this module without typing, the API or the shapes; rich loads when a
    # progress display is first needed
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, Protocol

    from rich.progress import ProgressColumn, TaskID

    from ..api import GetResult, Transfer
    from ..errors import PrefetchError
    from ..shapes import ClaimRow, LsRow, Status

    class Stream(Protocol):
        """What the CLI writes to: a text stream (in practice a RedactingWriter)."""

        def write(self, s: str, /) -> int: ...

        def flush(self) -> None: ...

        def isatty(self) -> bool: ...


def files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def done_line(command: str, count: int) -> str:
    """What `want`/`unwant`/`forget` did, for a person at a terminal (stderr): a script
    reads the exit code, and `--json` where there is one."""
    verb = {"want": "wanted", "unwant": "unwanted", "forget": "forgot"}[command]
    return f"{verb} {files(count)}"


def gc_line(res: Any, dry_run: bool) -> str:
    """A gc pass summed up for a person at a terminal."""
    counts = [(len(res["deleted"]), "file"), (len(res["objects_removed"]), "object"),
              (len(res["strays_removed"]), "stray link")]
    parts = [f"{n} {what}{'' if n == 1 else 's'}" for n, what in counts if n]
    if not parts:
        return "gc: nothing to remove"
    return f"gc: {'would remove' if dry_run else 'removed'} {', '.join(parts)}"


def print_json(obj: Any, out: Stream) -> None:
    """The --json output: indented, one trailing newline."""
    json.dump(obj, out, indent=2)
    out.write("\n")


def print_json_rows(rows: Iterable[Any], out: Stream) -> None:
    """print_json of a list, a row at a time as `rows` come (`ls` of a million files is
    never held whole): the same text, one write per row."""
    sep = "[\n  "
    for row in rows:
        out.write(sep + json.dumps(row, indent=2).replace("\n", "\n  "))
        sep = ",\n  "
    out.write("[]\n" if sep == "[\n  " else "\n]\n")


def ls_lines(r: LsRow) -> Iterator[str]:
    """One file of `ls` (state, size, id, path, the error of one not ready), then its
    claims, indented."""
    size = human_size(r["size"], column=True) if r["size"] is not None else "-"
    error = f"  [{r['error']}]" if r["error"] and r["state"] != "ready" else ""
    yield f"{r['state']:<13} {size:>10}  {r['file_id']}  {r['path'] or ''}{error}"
    for c in r.get("claims") or ():
        yield "    " + claim_line(c)


class Downloads:
    """What `get` shows on a terminal while it waits: one line per file downloading
    (its name, a bar, bytes, rate, time left), drawn by rich on stderr and fitted to
    the terminal's width; notices print above the lines.

    The rate counts only bytes that arrive while this `get` watches: a file's line
    starts at the bytes it already had (a resumed partial, or what the daemon fetched
    before this `get` asked), so resumed bytes never pass for speed.
    """

    def __init__(self, stream: Stream, *, clock: Callable[[], float] | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bars
        from rich.table import Column

        self.bars = Bars(
            TextColumn("{task.description}", table_column=Column(
                ratio=1, no_wrap=True, overflow="ellipsis", min_width=8)),
            BarColumn(bar_width=None, table_column=Column(ratio=1)),
            DownloadColumn(binary_units=True), _rate_column(), TimeRemainingColumn(),
            console=Console(file=stream),  # type: ignore[arg-type] # a text stream
            expand=True, redirect_stdout=False, redirect_stderr=False, get_time=clock,
        )
        self.lines: dict[str, TaskID] = {}

    def __call__(self, t: Transfer) -> None:
        line = self.lines.get(t.file_id)
        if line is None:
            if not self.lines:
                self.bars.start()
            self.lines[t.file_id] = self.bars.add_task(t.name or t.file_id, total=t.total,
                                                       completed=t.done)
        else:
            self.bars.update(line, total=t.total, completed=t.done)

    def tell(self, message: str) -> None:
        """A notice (`prefetchd: ...`) above the progress lines."""
        self.bars.console.print(f"prefetchd: {message}", markup=False, highlight=False,
                                soft_wrap=True)

    def close(self) -> None:
        if self.lines:
            self.bars.stop()


def _rate_column() -> ProgressColumn:
    """Bytes per second in binary units, like every size the CLI prints."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{human_size(speed, column=True)}/s" if speed is not None else "?/s",
                        style="progress.data.speed")

    return Rate()


def status_lines(s: Status) -> Iterator[str]:
    """`status` for people; `status --json` prints `s` itself."""
    d = s["daemon"]
    yield f"daemon:   {'running, pid ' + str(d['pid']) if d['running'] else 'not running'}"
    yield f"root:     {s['root']}"
    yield f"queue:    {s['queue']}"
    states = ", ".join(f"{k} {v}" for k, v in s["states"].items() if v)
    yield f"states:   {states or 'empty'}"
    c = s["claims"]
    failed = f", {c['failed']} failed (their own sha256/size)" if c["failed"] else ""
    yield f"claims:   {c['total']} ({c['wanted']} wanted){failed}"
    if s["stalled"]:
        yield (f"stalled:  {s['stalled']} left downloading by an interrupted get; the next "
               "get or the daemon's start takes them up")
    stored = human_size(s["store"]["bytes"], column=True)
    yield f"store:    {s['store']['objects']} objects, {stored}"
    m = s["mirror"]
    mirror = "Supabase" if m["configured"] else "not configured (statistics stay local)"
    yield f"outbox:   {s['outbox_backlog']} events not yet mirrored; mirror: {mirror}"
    if m["last_error"]:
        yield f"mirror:   last error: {m['last_error']}"
    if "fleet" in s:
        f = s["fleet"]
        yield (f"fleet:    group {f['group']} as {f['host']}, revision {f['revision']}"
               f"{'' if f['polled_at'] else ', never polled'}")
        if f["last_error"]:
            yield f"fleet:    last error: {f['last_error']}"
    for e in s["last_errors"]:
        yield f"error:    {e['file_id']} ({e['state']}): {e['error']}"


def claim_line(c: ClaimRow) -> str:
    """One claim under its file in `ls`: holder, pin, where, and why it failed."""
    bits = [c["holder"], "pinned" if c["pin"] else "", "" if c["wanted"] else "unwanted",
            f"-> {c['path'] or c['dest'] or 'downloads/'}",
            f"[{c['error']}]" if c["error"] else ""]
    return "  ".join(b for b in bits if b)


def get_json(r: GetResult) -> dict[str, Any]:
    """The stable `get --json` shape (documented in the README)."""
    return {"file_id": r.file_id, "state": r.state,
            "path": str(r.path) if r.path is not None else None,
            "error": str(r.error) if r.error is not None else None}


def get_error(file_id: str, error: PrefetchError) -> str:
    """`get`'s message for an id that is not ready, naming the id once.

    An error that carries its `file_id` names it in its message already; one without
    the attribute (not every error carries it yet) is searched for the id instead.
    """
    message = str(error)
    about = getattr(error, "file_id", None)
    if about is None and file_id in message:
        about = file_id
    return message if about == file_id else f"{file_id}: {message}"


def os_error(e: BaseException) -> str:
    """An OSError as `path: reason`, else the error's message (or its class)."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or e}"
    return str(e) or type(e).__name__
