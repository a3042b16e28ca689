"""At a million entries nothing may hold every entry: `ls`, a retention pass (gc),
start-up reconciliation and the scrub hold a page (or a cursor), whatever the size
of the manifest, and pending receipts hold none of their entries. Each test measures
the same operation at two sizes (a manifest of 1,000 and of 4,000 ready files, with
their objects and links on disk; receipts of 1,000 and 10,000 entries, or two and
eight receipts) and asserts that the peak (or what stays held) of Python allocations
(tracemalloc) does not grow with them: an operation that holds the entries would need
four or ten times as much. Speed is bench/scale.py's."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sqlite3
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefetchd.config import Settings, load_settings
from prefetchd.inbox import receipts as receipts_mod
from prefetchd.inbox.receipts import Receipts
from prefetchd.manifest import Manifest, WantSpec
from prefetchd.ops import gc as gc_op
from prefetchd.ops import status as status_op
from prefetchd.ops import verify as verify_op
from prefetchd.ops.reconcile import PAGE, reconcile
from prefetchd.ops.strays import remove_stray_links
from prefetchd.records import EventKind, NewEvent, State
from prefetchd.store import Store, default_link


def fill(state: Path, root: Path, n: int, *, start: int = 0) -> tuple[Manifest, Store]:
    """n ready files `f0000000`.. (32 bytes each, all different), wanted by uid:0: each
    object stored (mode 0444) and linked at its default place, as a download leaves it."""
    m = Manifest(state / "prefetchd.db")
    store = Store(root)
    ids = [f"f{i:07d}" for i in range(start, start + n)]
    m.want([WantSpec(f) for f in ids], holder="uid:0")
    changes = []
    for fid in ids:
        data = f"{fid:>31}\n".encode()
        sha = hashlib.sha256(data).hexdigest()
        obj = store.object_path(sha)
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        os.chmod(obj, 0o444)
        rel = default_link(fid, fid)
        store.link(sha, rel, sync=False)
        changes.append((fid, None, {"state": State.READY, "sha256": sha, "size": len(data),
                                    "name": fid, "path": rel, "resolved_provider": "src",
                                    "ready_at": 1.0}))
    m.record_many(changes)
    return m, store


@contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Python allocations while the block runs: yields a function giving the peak
    (bytes) above what was allocated when the block began."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@contextmanager
def statements(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """The SQL statements a connection runs while the block runs."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def plan_of(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[str]:
    """SQLite's plan for a query, one detail line each ("SEARCH files USING ...")."""
    return [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def full_scans(plan: list[str]) -> list[str]:
    """Plan lines that read a whole table or sort a whole result (a sort of the right
    part of an ORDER BY, within an index's order, is not one)."""
    return [line for line in plan
            if (line.startswith("SCAN ") and " USING " not in line)
            or line == "USE TEMP B-TREE FOR ORDER BY"
            or line.startswith("USE TEMP B-TREE FOR GROUP BY")]


SMALL, LARGE = 1000, 4000


def settings_for(tmp: Path, **retention: Any) -> Settings:
    extra = "".join(f"{k} = {v}\n" for k, v in retention.items())
    cfg = tmp / "c.toml"
    tmp.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f"[retention]\n{extra}")
    return load_settings(cfg, root=tmp / "root", state_dir=tmp / "state")


def peaks(tmp_path: Path, run: Callable[[Settings, Manifest, Store], Any],
          **retention: Any) -> tuple[int, int]:
    """`run`'s peak allocations over SMALL and over LARGE ready files."""
    out = []
    for n in (SMALL, LARGE):
        tmp = tmp_path / str(n)
        s = settings_for(tmp, **retention)
        m, store = fill(s.state_dir, s.root, n)
        try:
            with traced() as peak:
                run(s, m, store)
                out.append(peak())
        finally:
            m.close()
            store.close()
    return out[0], out[1]


def assert_flat(small: int, large: int) -> None:
    """Four times the entries, at most 1.5 times the memory (a page is a few hundred
    entries; holding them all would take four times)."""
    assert large < 1.5 * small + 256 * 1024, (small, large)


def test_ls_holds_a_page_not_the_manifest(tmp_path):
    def run(s: Settings, m: Manifest, store: Store) -> None:
        n = 0
        for row in status_op.ls(m, store.root):
            n += 1
            assert row["state"] == "ready" and len(row["claims"]) == 1
        assert n == m.state_counts()["ready"]

    assert_flat(*peaks(tmp_path, run))


def test_ls_pages_are_exact_at_their_edges(tmp_path):
    """Every file once, in file_id order, with its own claims, across page edges and
    with a state and a holder picked."""
    m, store = fill(tmp_path / "state", tmp_path / "root", 7)
    m.want([WantSpec("f0000003", holder="uid:1000/job")], holder="uid:0")
    m.update("f0000005", state=State.FAILED, error="gone")
    rows = []
    after: str | None = ""
    while after is not None:
        page, after = status_op.ls_page(m, store.root, None, None, after, limit=2)
        rows += page
    assert [r["file_id"] for r in rows] == [f"f{i:07d}" for i in range(7)]
    assert rows == list(status_op.ls(m, store.root))
    assert [c["holder"] for c in rows[3]["claims"]] == ["uid:0", "uid:1000/job"]
    failed = [r["file_id"] for r in status_op.ls(m, store.root, "failed")]
    assert failed == ["f0000005"]
    mine = list(status_op.ls(m, store.root, None, 1000))
    assert [(r["file_id"], [c["holder"] for c in r["claims"]]) for r in mine] == [
        ("f0000003", ["uid:1000/job"])]


def test_a_retention_pass_holds_its_decisions_not_the_entries(tmp_path):
    def run(s: Settings, m: Manifest, store: Store) -> None:
        res = gc_op.gc(s, m, store, dry_run=True)
        assert res["deleted"] == [] and res["objects_removed"] == []

    assert_flat(*peaks(tmp_path, run))


def test_eviction_reads_least_recently_used_first_without_holding_the_entries(tmp_path):
    """Over max_bytes: the pass reads the entries a second time, least recently used
    first, and evicts just enough (the ten used longest ago); its memory is its
    decisions, the same ten at either size."""
    evicted: list[list[str]] = []

    def run(s: Settings, m: Manifest, store: Store) -> None:
        n = m.state_counts()["ready"]
        with m.tx() as conn:  # f0000000 used last, the highest id longest ago
            conn.execute("UPDATE files SET ready_at = 2e9 + ? - CAST(substr(file_id, 2)"
                         " AS INTEGER)", (n,))
        limited = s.model_copy(update={"retention": s.retention.model_copy(
            update={"max_bytes": 32 * (n - 10)})})
        res = gc_op.gc(limited, m, store, dry_run=True, now=2e9 + n)
        assert {d["kind"] for d in res["deleted"]} == {"evicted"}
        evicted.append([d["file_id"] for d in res["deleted"]])

    small, large = peaks(tmp_path, run)
    assert evicted == [[f"f{i:07d}" for i in range(n - 1, n - 11, -1)]
                       for n in (SMALL, LARGE)]
    assert_flat(small, large)


def test_reconciliation_holds_a_page_not_the_manifest(tmp_path):
    def run(s: Settings, m: Manifest, store: Store) -> None:
        counts = reconcile(s, m, store)
        assert counts["relinked"] == counts["requeued"] == counts["stray_links_removed"] == 0

    assert_flat(*peaks(tmp_path, run))


def test_reconciliation_still_repairs_across_pages(tmp_path):
    """A missing link is made again and a missing object queued again, on either side
    of a page's edge (PAGE entries a page)."""
    s = settings_for(tmp_path)
    m, store = fill(s.state_dir, s.root, PAGE + 2)
    gone_link = f"f{PAGE - 1:07d}"
    gone_object = f"f{PAGE:07d}"
    (s.root / default_link(gone_link, gone_link)).unlink()
    e = m.get(gone_object)
    assert e is not None and e.sha256 is not None
    store.object_path(e.sha256).unlink()
    (s.root / default_link(gone_object, gone_object)).unlink()
    counts = reconcile(s, m, store)
    assert counts["relinked"] == 1 and counts["requeued"] == 1
    assert (s.root / default_link(gone_link, gone_link)).is_file()
    requeued = m.get(gone_object)
    assert requeued is not None and requeued.state == State.QUEUED


def test_scrub_within_its_budget_holds_no_list_of_every_object(tmp_path):
    def run(s: Settings, m: Manifest, store: Store) -> None:
        res = verify_op.scrub(m, store, budget_bytes=10 * 32, budget_seconds=3600)
        assert res["objects"] == 10 and res["bad"] == []

    assert_flat(*peaks(tmp_path, run))


def test_stray_links_are_still_found_with_the_links_read_a_directory_at_a_time(tmp_path):
    """A link no entry accounts for, among thousands of objects: found and removed
    (accounted_links reads one objects/<ab>/ directory's links at a time)."""
    s = settings_for(tmp_path)
    m, store = fill(s.state_dir, s.root, 600)
    e = m.get("f0000042")
    assert e is not None and e.sha256 is not None and e.path is not None
    os.link(s.root / e.path, s.root / "stray-copy")
    with traced():
        found = remove_stray_links(m, store, min_age=0)
    assert found == ["stray-copy"]
    assert not (s.root / "stray-copy").exists() and (s.root / e.path).is_file()


def pending_receipts(tmp: Path, receipts: int, entries: int) -> tuple[int, int, dict[str, Any]]:
    """`receipts` request files of `entries` queued ids each, tracked as pending
    receipts, then a pass after half of the first one's files got ready and one of the
    last one's failed. Returns the Python allocations the receipts still hold after it
    (bytes), the peak above the start while adding and passing, and the first
    receipt's document."""
    m = Manifest(tmp / "prefetchd.db")
    ids = [[f"f{k * entries + i:07d}" for i in range(entries)] for k in range(receipts)]
    for part in ids:
        m.want([WantSpec(f) for f in part], holder="uid:0")
    processed = tmp / "processed"
    processed.mkdir()
    fd = os.open(processed, os.O_RDONLY | os.O_DIRECTORY)
    r = Receipts(m, tmp / "root", fd)
    try:
        with traced() as peak:
            base = tracemalloc.get_traced_memory()[0]
            for k, part in enumerate(ids):
                r.add(f"req{k}.txt.receipt.json", f"req{k}.txt", [(f, "want") for f in part])
            m.record_many([(f, NewEvent(EventKind.DOWNLOAD, sha256="0" * 64, bytes=1),
                            {"state": State.READY, "path": f"downloads/{f}/{f}",
                             "sha256": "0" * 64}) for f in ids[0][:entries // 2]])
            m.record_many([(ids[-1][0], NewEvent(EventKind.FAILURE, error="gone"),
                            {"state": State.FAILED, "error": "gone"})])
            r.refresh()
            gc.collect()  # what is still reachable, not cycles awaiting a collection
            held = tracemalloc.get_traced_memory()[0] - base
            top = peak()
        assert len(r.pending) == receipts
        doc = json.loads((processed / "req0.txt.receipt.json").read_text())
        return held, top, doc
    finally:
        r.close()
        os.close(fd)
        m.close()


def test_pending_receipts_hold_no_entry_in_memory(tmp_path, monkeypatch):
    """Pending receipts (a hundred request files of 10,000 wait at once while a
    million entries fill) keep their entries out of Python's memory: four of 10,000
    entries hold what four of 1,000 hold, and each is still exact."""
    monkeypatch.setattr(receipts_mod, "WRITE_EVERY", 0.0)
    small, _, doc = pending_receipts(tmp_path / "small", 4, 1000)
    large, _, doc_large = pending_receipts(tmp_path / "large", 4, 10_000)
    assert large < 1.5 * small + 256 * 1024, (small, large)
    for d, n in ((doc, 1000), (doc_large, 10_000)):
        assert d["complete"] is False and len(d["entries"]) == n
        assert [e["state"] for e in d["entries"]] == ["ready"] * (n // 2) + ["queued"] * (n // 2)
        assert d["entries"][0] == {"file_id": "f0000000", "action": "want", "state": "ready",
                                   "path": str(tmp_path / ("small" if n == 1000 else "large")
                                               / "root/downloads/f0000000/f0000000"),
                                   "error": None}


def test_many_pending_receipts_cost_what_one_rewrite_costs(tmp_path, monkeypatch):
    """Adding and passing over eight pending receipts peaks where two do: a receipt is
    rebuilt from the database when it is written, one at a time."""
    monkeypatch.setattr(receipts_mod, "WRITE_EVERY", 0.0)
    _, two, _ = pending_receipts(tmp_path / "two", 2, 5000)
    _, eight, _ = pending_receipts(tmp_path / "eight", 8, 5000)
    assert_flat(two, eight)
