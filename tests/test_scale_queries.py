"""What the daemon asks SQLite for, at any size: a page of `ls`, what the daemon's loop
asks every second and every few seconds, and what gc, reconciliation and the scrub
ask per object walk an index from where they are (EXPLAIN QUERY PLAN of the very
statements they ran, captured with a trace callback); an idle daemon counts
nothing; `ls` through the daemon is a stream, printed as it arrives."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading

from prefetchd.cli import quick
from prefetchd.manifest import Manifest
from prefetchd.manifest.threads import JobThreads
from prefetchd.ops import gc as gc_op
from prefetchd.ops import status as status_op
from prefetchd.ops import verify as verify_op
from prefetchd.ops.reconcile import reap_temps
from prefetchd.ops.strays import remove_stray_links
from prefetchd.redact import RedactingWriter
from prefetchd.service.status import StatusLoop
from prefetchd.service.workers import Workers
from prefetchd.shapes import array_rows
from tests.daemon_helpers import wait_until
from tests.test_scale_memory import fill, settings_for, statements

N = 1200  # more than two pages of ls (500 files a page)


def plans(m: Manifest, sql: list[str]) -> dict[str, list[str]]:
    """The plan of each SELECT a trace captured (expanded: its values inlined)."""
    out = {}
    for q in sql:
        if q.lstrip().upper().startswith(("SELECT", "WITH")):
            out[q] = [r[3] for r in m.conn.execute(f"EXPLAIN QUERY PLAN {q}")]
    return out


def whole_walks(plan: list[str]) -> list[str]:
    """Plan lines that read a whole table or index, or sort a whole result."""
    return [line for line in plan
            if line.startswith("SCAN ") or line == "USE TEMP B-TREE FOR ORDER BY"
            or line.startswith("USE TEMP B-TREE FOR GROUP BY")]


def test_an_ls_page_walks_the_primary_keys_from_where_the_last_one_ended(tmp_path):
    m, store = fill(tmp_path / "state", tmp_path / "root", N)
    for state in (None, "ready"):
        with statements(m.conn) as sql:
            rows, after = status_op.ls_page(m, store.root, state, None, "f0000600")
        assert [r["file_id"] for r in rows][:1] == ["f0000601"] and after == "f0001100"
        found = plans(m, sql)
        assert len(found) == 2  # the files of the page, and their claims
        for q, plan in found.items():
            assert plan and all(line.startswith("SEARCH ") or "RIGHT PART" in line
                                for line in plan), (q, plan)


def test_what_the_daemon_asks_every_second_walks_an_index(tmp_path):
    """The loop's timers (space retry, the workers' refill from the queue) with every
    entry ready: index searches, never a walk of the entries."""
    m, _ = fill(tmp_path / "state", tmp_path / "root", N)

    async def tick() -> list[str]:
        workers = Workers(m, _nothing, 2)
        try:
            with statements(m.conn) as sql:
                m.requeue_waiting_space()
                workers.refill()
                m.requeue_evicted(10**9)
            return sql
        finally:
            await workers.close(0)

    found = plans(m, asyncio.run(tick()))
    assert len(found) >= 3
    for q, plan in found.items():
        assert not whole_walks(plan), (q, plan)


async def _nothing(_file_id: str) -> None:
    return None


def test_an_idle_status_loop_counts_nothing(tmp_path):
    """STATUS= is counted again only when the manifest changed: an idle round asks
    SQLite for PRAGMA data_version alone; a want by another process brings a count."""
    m, _ = fill(tmp_path / "state", tmp_path / "root", 50)
    jobs = JobThreads(m.path)

    async def rounds() -> tuple[list[str], list[str], list[str]]:
        workers = Workers(m, _nothing, 1)
        loop = StatusLoop(m, jobs, workers, None, None)  # type: ignore[arg-type]
        try:
            with statements(m.conn) as first:
                await loop.tick()
            with statements(m.conn) as idle:
                await loop.tick()
                await loop.tick()
            other = Manifest(m.path)
            other.update("f0000001", note="changed by another process")
            other.close()
            with statements(m.conn) as changed:
                await loop.tick()
            return first, idle, changed
        finally:
            await workers.close(0)

    try:
        first, idle, changed = asyncio.run(rounds())
    finally:
        jobs.close()
    counting = "SELECT state, count(*) FROM files GROUP BY state"
    assert counting in first and counting in changed
    assert set(idle) == {"PRAGMA data_version"}


def test_gc_reconcile_and_scrub_ask_per_object_through_indexes(tmp_path):
    """A pass walks the entries once (or twice); what it asks per object directory,
    per bad object or per unreferenced object is an index search."""
    s = settings_for(tmp_path)
    m, store = fill(s.state_dir, s.root, N)
    e = m.get("f0000007")
    assert e is not None and e.sha256 is not None
    with statements(m.conn) as sql:
        gc_op.gc(s, m, store, dry_run=True)
        remove_stray_links(m, store, min_age=0)
        reap_temps(s, m, store)
        m.ready_on([e.sha256])
        m.ready_hashes_among([e.sha256])
        verify_op.scrub(m, store, budget_bytes=64, budget_seconds=60)
    found = plans(m, sql)
    per_object = {q: p for q, p in found.items()
                  if "sha256 >=" in q or "sha256 IN" in q or "state IN" in q}
    assert len(per_object) >= 4
    for q, plan in per_object.items():
        assert not whole_walks(plan), (q, plan)
        if "sha256 >=" in q or "sha256 IN" in q:  # by hash: the hash's index, not the state's
            assert "USING INDEX idx_files_sha256 (sha256" in plan[0], (q, plan)
    # the passes' own walks: the primary key (no sort) for the first read of the
    # ready entries, each claim subquery a primary key search
    first_read = [p for q, p in found.items() if "ORDER BY file_id" in q and "last_used" in q]
    assert first_read and all("USE TEMP B-TREE FOR ORDER BY" not in p for p in first_read)
    assert all(any("SEARCH c USING PRIMARY KEY" in line for line in p) for p in first_read)


# -- ls through the daemon: a stream ------------------------------------------------------


def test_ls_through_the_daemon_is_the_in_process_listing_a_row_per_line(env, daemon):
    """Three pages of files: the socket's answer is one JSON array, a row per line,
    chunked; `ls --json` through the daemon prints exactly what json.dumps(indent=2)
    of the in-process listing prints."""
    s = env.settings()
    m, store = fill(s.state_dir, s.root, N)
    local = list(status_op.ls(m, store.root))
    m.close()
    store.close()
    daemon()
    raw = subprocess.run(["curl", "-sS", "-i", "--unix-socket", str(s.api_socket),
                          "http://prefetchd/v1/ls"], capture_output=True, text=True,
                         check=True).stdout
    head, _, body = raw.partition("\n\n")  # text mode: CRLF read as LF
    assert "transfer-encoding: chunked" in head.lower()
    lines = body.splitlines()
    assert len(lines) == N + 2 and lines[0] == "[" and lines[-1] == "]"
    assert json.loads(body) == local
    assert list(array_rows(lines)) == local
    out = env.cli("ls", "--json")
    assert out.returncode == 0, out.stderr
    assert out.stdout == json.dumps(local, indent=2) + "\n"
    with env.prefetch() as p:
        assert p.client is not None  # through the daemon
        rows = p.iter_ls()
        assert next(rows) == local[0]  # a row before the rest is read
        assert [local[0], *rows] == local


def test_the_socket_path_prints_each_row_as_it_arrives(tmp_path):
    """quick.py's `ls --json` prints a row before the daemon has sent the next one:
    the answer is never held whole. A stand-in daemon on a socketpair sends the first
    row, waits until it is printed, then sends the rest."""
    ours, theirs = socket.socketpair()
    ours.settimeout(60)
    out_path = tmp_path / "out.json"
    printed = threading.Event()
    rows = [{"file_id": f"f{i}", "state": "ready", "claims": []} for i in range(3)]

    def daemon_side() -> None:
        theirs.recv(65536)  # the request
        theirs.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        first = f"[\n{json.dumps(rows[0])}\n".encode()
        theirs.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        try:
            wait_until(lambda: json.dumps(rows[0], indent=2).splitlines()[1].strip()
                       in out_path.read_text(), timeout=30)
        except AssertionError:
            theirs.close()  # the reader fails (a cut listing) instead of waiting for ever
            return
        printed.set()
        rest = "".join(f",{json.dumps(r)}\n" for r in rows[1:]).encode() + b"]\n"
        theirs.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))

    t = threading.Thread(target=daemon_side)
    t.start()
    with open(out_path, "w", buffering=1) as f:
        out = _LineFlushed(f)
        call = quick.parse(["ls", "--json"])
        assert call is not None
        quick._ls(call, quick.Http(ours), out)  # type: ignore[arg-type]
        out.close()
    t.join(30)
    assert printed.is_set()
    assert json.loads(out_path.read_text()) == rows


def test_a_listing_cut_short_is_an_error_not_a_shorter_list():
    lines = ["[", '{"a": 1}', ',{"a": 2}']
    got = array_rows(lines)
    assert next(got) == {"a": 1} and next(got) == {"a": 2}
    try:
        next(got)
    except ValueError as e:
        assert "ended before" in str(e)
    else:
        raise AssertionError("a cut listing passed for a whole one")
    assert list(quick.array_rows(["[]"])) == [] and list(quick.array_rows(["[", "]"])) == []


class _LineFlushed(RedactingWriter):
    """The CLI's writer over a file, flushed after every write (a terminal's pace)."""

    def write(self, s: str) -> int:
        n = super().write(s)
        self.flush()
        return n
