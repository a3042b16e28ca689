"""The local manifest's side of the fleet: local and fleet wants kept apart, batches of
the group's changes applied with their revision, deferral, where bytes came from, and
the reporter's watermark queries. Real SQLite, a real store, the real engine."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

import pytest

from prefetchd.fetch import Engine
from prefetchd.manifest import MIGRATIONS, Manifest, WantSpec
from prefetchd.mirror import payload
from prefetchd.ops.forget import apply_fleet, forget
from prefetchd.ops.release import release
from prefetchd.records import BytesSource, EventKind, Removal, State, WantSource
from tests.conftest import sha
from tests.support.rows import event_rows

LOCAL, FLEET = WantSource.LOCAL, WantSource.FLEET
FG = "fleet:g"  # the fleet group's holder


def make_ready(p, fid: str, source: WantSource = LOCAL, **opts) -> None:
    """`source` wants `fid` (a file of the dir provider) and the engine fetches it."""
    p.manifest.want([WantSpec(fid, provider="local", **opts)],
                    holder=FG if source is FLEET else None)

    async def go() -> None:
        eng = Engine(p.settings, p.manifest, p.store)
        try:
            await eng.fetch(fid)
        finally:
            await eng.aclose()

    asyncio.run(go())
    assert p.manifest.get(fid).state == State.READY


@pytest.fixture
def p(env):
    for name, data in {"a": b"A" * 100, "b": b"B" * 200, "c": b"C" * 300}.items():
        (env.src / name).write_bytes(data)
    with env.prefetch() as pf:
        yield pf


def flags(p, fid):
    e = p.manifest.get(fid)
    return None if e is None else (e.wanted, e.local_want, e.fleet_want)


# -- wants from two sources -----------------------------------------------------------------


def test_a_fleet_unwant_keeps_a_local_want_and_the_reverse(p):
    m = p.manifest
    m.want([WantSpec("a", pin=True)])
    m.want([WantSpec("a")], holder=FG)
    assert flags(p, "a") == (True, True, True)
    assert m.unwant(["a"], holder=FG) == []
    assert flags(p, "a") == (True, True, False) and m.get("a").pin  # still wanted: pinned
    m.want([WantSpec("a")], holder=FG)
    assert m.unwant(["a"]) == []  # local: the local claim's pin goes with its want
    assert flags(p, "a") == (True, False, True) and not m.get("a").pin
    m.unwant(["a"], holder=FG)  # the last want goes
    assert flags(p, "a") == (False, False, False) and not m.get("a").pin
    assert m.unwant(["nope"], holder=FG) == ["nope"]


def test_each_asker_holds_its_own_claim(p):
    m = p.manifest
    m.want([WantSpec("a")], holder=FG)
    m.want([WantSpec("a", holder="uid:4321")])
    m.want([WantSpec("a", dest="x/a")], holder="uid:1234")
    assert [c.holder for c in m.claims_of("a")] == [FG, "uid:4321", "uid:1234"]
    assert m.claim("a", "uid:1234").dest == "x/a" and m.claim("a", FG).dest is None


def test_forget_from_one_side_keeps_row_options_and_file_the_other_wants(p):
    make_ready(p, "a", LOCAL)
    p.manifest.want([WantSpec("a", ttl=3600.0)], holder=FG)
    path = p.store.root / p.manifest.get("a").path
    out = forget(p.manifest, p.store, ["a"])  # a local user forgets it
    assert out == [] and out.kept == {"a": FLEET}
    assert out.kept_lines() == ["kept a: the fleet still wants it"]
    e = p.manifest.get("a")
    assert (e.state, e.wanted, e.local_want, e.fleet_want, e.ttl) == (
        State.READY, True, False, True, 3600.0)
    assert path.read_bytes() == b"A" * 100
    assert EventKind.FORGET not in [ev.kind for ev in event_rows(p.manifest, "a")]

    # The reverse: a local user wants it again, the fleet forgets it.
    p.manifest.want([WantSpec("a")])
    out = apply_fleet(p.manifest, p.store, [], [], ["a", "never-seen"], None, FG)
    assert out == [] and out.kept == {"a": LOCAL}
    assert out.kept_lines() == ["kept a: another holder's claim still holds it"]
    assert flags(p, "a") == (True, True, False) and path.read_bytes() == b"A" * 100


def test_forget_from_the_last_side_removes_row_and_file(p):
    make_ready(p, "a", FLEET)
    e = p.manifest.get("a")
    path = p.store.root / e.path
    out = apply_fleet(p.manifest, p.store, [], [], ["a"], None, FG)
    assert out == [e.path] and out.kept == {}
    assert p.manifest.get("a") is None and not path.exists()
    assert list(p.store.objects()) == []
    assert [ev.kind for ev in event_rows(p.manifest, "a")][-1] == EventKind.FORGET

    make_ready(p, "b", LOCAL)
    rel = p.manifest.get("b").path
    assert forget(p.manifest, p.store, ["b"]) == [rel]
    assert p.manifest.get("b") is None and not (p.store.root / rel).exists()


def test_a_local_forget_of_a_fleet_only_entry_is_refused(p):
    from prefetchd.errors import PrefetchError

    make_ready(p, "a", FLEET)
    path = p.store.root / p.manifest.get("a").path
    with pytest.raises(PrefetchError, match="no claim of uid .* to forget: a "
                                            r"\(held by fleet group g\)"):
        forget(p.manifest, p.store, ["a"])
    assert path.exists() and flags(p, "a") == (True, False, True)


def test_release_from_local_keeps_a_fleet_wanted_file(p):
    make_ready(p, "a", LOCAL)
    p.manifest.want([WantSpec("a", dest="fleet/a.txt")], holder=FG)
    # The fleet's dest moved it: make it ready at its new place.
    make_ready(p, "a", FLEET)
    out = release(p.manifest, p.store, ["a"])
    # Only the local claim's own link (the shared default) went; the fleet's stays.
    assert out == ["downloads/a/a"] and out.kept == {"a": FLEET}
    e2 = p.manifest.get("a")
    assert (e2.state, e2.wanted, e2.local_want, e2.dest, e2.path) == (
        State.READY, True, False, "fleet/a.txt", "fleet/a.txt")
    assert (p.store.root / "fleet/a.txt").read_bytes() == b"A" * 100
    assert not (p.store.root / "downloads/a").exists()
    # Nothing else wants b: release deletes it now.
    make_ready(p, "b", LOCAL)
    rel = p.manifest.get("b").path
    out = release(p.manifest, p.store, ["b"])
    assert out == [rel] and out.kept == {}
    assert p.manifest.get("b").state == State.EVICTED and not (p.store.root / rel).exists()


def test_a_fleet_want_between_release_read_and_evict_is_kept(p):
    """release's steps in order, with the fleet's want applied between the read of
    the entry and its eviction: the eviction never wipes that want or its options."""
    from prefetchd.ops.release import evict

    make_ready(p, "a", LOCAL, dest="mine/a.txt", ttl=60.0)
    claims = p.manifest.claims_of("a")
    p.manifest.drop_claims([("a", c.holder) for c in claims])  # release's drop
    e = p.manifest.get("a")  # release's read: nobody wants it
    assert not e.fleet_want
    p.manifest.want([WantSpec("a", pin=True)], holder=FG)  # the fleet poll, just then
    out = evict(p.manifest, p.store, e, "release", claims=claims)
    assert out == [] and out.kept == {"a": FLEET}
    e2 = p.manifest.get("a")
    # The fleet's claim and its own options; the released claim's are gone.
    assert (e2.wanted, e2.fleet_want, e2.pin, e2.dest, e2.ttl) == (
        True, True, True, None, None)
    assert not (p.store.root / "mine").exists()
    # Its file went before the row was written: queued, so the engine puts it back.
    assert (e2.state, e2.path) == (State.QUEUED, None)
    make_ready(p, "a", FLEET)
    assert (p.store.root / p.manifest.get("a").path).read_bytes() == b"A" * 100

    # Forgotten between the read and the eviction: nothing is kept, nothing recorded.
    make_ready(p, "c", LOCAL)
    c, cc = p.manifest.get("c"), p.manifest.claims_of("c")
    p.manifest.forget(["c"])
    out = evict(p.manifest, p.store, c, "release", claims=cc)
    assert out == [c.path] and out.kept == {} and p.manifest.get("c") is None
    assert [ev.kind for ev in event_rows(p.manifest, "c")][-1] == EventKind.FORGET

    # Without the race, release still clears everything.
    make_ready(p, "b", LOCAL, dest="mine/b.txt")
    release(p.manifest, p.store, ["b"])
    b = p.manifest.get("b")
    assert (b.state, b.dest, b.provider, flags(p, "b")) == (
        State.EVICTED, None, None, (False, False, False))


def test_a_request_forget_is_a_local_forget(p):
    from prefetchd.ops.want import apply
    from prefetchd.requests import Request

    make_ready(p, "a", FLEET)
    out = apply(p.manifest, p.store, Request(forgets=["a"]))
    # This holder held no claim: nothing is forgotten, nothing removed; the fleet's
    # claim and the file stay.
    assert isinstance(out, Removal) and out == [] and out.kept == {}
    assert p.manifest.get("a").state == State.READY


def test_a_ttl_never_ends_a_fleet_want(p):
    """A fleet poll never renews requested_at: a ttl would end the group's want a day
    after the file is ready, for good. Only the group's unwant ends it; then the ttl
    applies as to any entry."""
    from prefetchd.ops.gc import gc

    make_ready(p, "a", FLEET, ttl=1.0)
    path = p.store.root / p.manifest.get("a").path
    later = time.time() + 3600
    assert gc(p.settings, p.manifest, p.store, now=later)["deleted"] == []
    e = p.manifest.get("a")
    assert (e.state, flags(p, "a")) == (State.READY, (True, False, True))
    assert path.read_bytes() == b"A" * 100
    assert EventKind.EVICT not in [ev.kind for ev in event_rows(p.manifest, "a")]

    p.manifest.want([WantSpec("a", ttl=1.0)])  # a local claim too, also past its ttl
    assert gc(p.settings, p.manifest, p.store, now=later + 3600)["deleted"] == []
    assert flags(p, "a") == (True, True, True) and path.exists()

    p.manifest.unwant(["a"], holder=FG)  # the group is done: the ttl applies again
    out = gc(p.settings, p.manifest, p.store, now=later + 7200)
    assert [(d["file_id"], d["kind"]) for d in out["deleted"]] == [("a", "expired")]
    e = p.manifest.get("a")
    assert (e.state, flags(p, "a")) == (State.EVICTED, (False, False, False))
    assert not path.exists()


def test_a_ttl_expiry_of_a_local_only_entry_is_as_before(p):
    from prefetchd.ops.gc import gc

    make_ready(p, "b", LOCAL, ttl=1.0)
    out = gc(p.settings, p.manifest, p.store, now=time.time() + 3600)
    assert [(d["file_id"], d["kind"]) for d in out["deleted"]] == [("b", "expired")]
    assert p.manifest.get("b").state == State.EVICTED and flags(p, "b") == (False,) * 3


def test_an_expiry_racing_a_fleet_want_keeps_the_want(p):
    """gc decided on an entry nobody in the fleet wanted; the group wants it before
    the eviction is written: the want stays and the entry is queued to come back."""
    from prefetchd.ops.release import evict

    make_ready(p, "a", LOCAL, ttl=1.0)
    e = p.manifest.get("a")  # what gc read
    p.manifest.want([WantSpec("a")], holder=FG)  # the fleet poll, just then
    out = evict(p.manifest, p.store, e, "expired", unwant=True)
    assert out == [] and out.kept == {"a": FLEET}
    e2 = p.manifest.get("a")
    assert (e2.state, e2.path, flags(p, "a")) == (State.QUEUED, None, (True, False, True))
    assert p.manifest.claim("a", f"uid:{os.getuid()}").ttl == 1.0  # expired, kept
    assert EventKind.EVICT not in [ev.kind for ev in event_rows(p.manifest, "a")]


# -- a batch of the group's changes and its revision -------------------------------------------


def test_apply_fleet_stores_its_revision_with_the_batch(p):
    m = p.manifest
    assert m.fleet_mark("revision") is None
    out = m.apply_fleet([WantSpec("a"), WantSpec("b", pin=True)], [], [], revision=7, holder=FG)
    assert out == [] and m.fleet_mark("revision") == "7"
    assert flags(p, "a") == (True, False, True) and m.get("b").pin
    m.apply_fleet([], ["b"], ["a", "zz"], revision=9, holder=FG)
    assert m.fleet_mark("revision") == "9"
    assert m.get("a") is None and flags(p, "b") == (False, False, False)
    m.set_fleet_mark("reported_at", "1700000000.5")
    assert m.fleet_mark("reported_at") == "1700000000.5" and m.fleet_mark("revision") == "9"


def test_apply_fleet_is_all_or_nothing_with_its_revision(p):
    m = p.manifest
    m.apply_fleet([WantSpec("a")], [], [], revision=3, holder=FG)
    bad = WantSpec("c", ttl=object())  # type: ignore[arg-type]  # SQLite cannot store it
    with pytest.raises(sqlite3.Error):
        m.apply_fleet([WantSpec("b"), bad], [], ["a"], revision=4, holder=FG)
    assert m.get("b") is None and flags(p, "a") == (True, False, True)
    assert m.fleet_mark("revision") == "3"


def test_ops_apply_fleet_removes_files_then_rows_with_the_revision(p):
    make_ready(p, "a", FLEET)
    make_ready(p, "b", FLEET)
    p.manifest.want([WantSpec("b")])
    pa = p.manifest.get("a").path
    out = apply_fleet(p.manifest, p.store, [WantSpec("c", provider="local")], [], ["a", "b"],
                      revision=12, holder=FG)
    assert out == [pa] and out.kept == {"b": LOCAL}
    assert p.manifest.get("a") is None and not (p.store.root / pa).exists()
    assert (p.store.root / p.manifest.get("b").path).exists()
    assert flags(p, "c") == (True, False, True)
    assert p.manifest.fleet_mark("revision") == "12"


# -- migration -------------------------------------------------------------------------------


def test_migration_of_a_v7_database_keeps_wanted_rows_as_local_wants(tmp_path):
    path = tmp_path / "v7.db"
    conn = sqlite3.connect(path)
    conn.isolation_level = None
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    for step in MIGRATIONS[:7]:
        step(db)
    conn.execute("PRAGMA user_version = 7")
    conn.execute("INSERT INTO files (file_id, wanted, pin, state, attempts, requested_at,"
                 " updated_at) VALUES ('w', 1, 1, 'ready', 0, 1, 1), ('u', 0, 0, 'evicted',"
                 " 0, 1, 1)")
    conn.execute("INSERT INTO events (event_id, kind, file_id, cache_hit, at) VALUES"
                 " ('e1', 'download', 'w', 0, 1), ('e2', 'cache_hit', 'w', 1, 2),"
                 " ('e3', 'failure', 'w', 0, 3)")
    conn.close()
    m = Manifest(path)
    assert m.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 10
    w, u = m.get("w"), m.get("u")
    assert (w.wanted, w.local_want, w.fleet_want, w.pin) == (True, True, False, True)
    assert (u.wanted, u.local_want, u.fleet_want) == (False, False, False)
    assert [e.source for e in event_rows(m, "w")] == ["origin", "local", None]
    m.unwant(["w"], holder=FG)  # the fleet never wanted it: a local want stays
    assert m.get("w").wanted
    m.close()


# -- deferral --------------------------------------------------------------------------------


def test_defer_hides_a_queued_entry_from_due_until_its_time(p):
    m = p.manifest
    m.want([WantSpec("a"), WantSpec("b")], now=100.0)
    assert m.defer("a", until=500.0, note="waiting for host h2", now=101.0)
    a = m.get("a")
    assert (a.state, a.next_attempt_at, a.note) == (State.QUEUED, 500.0, "waiting for host h2")
    assert [e.file_id for e in m.due(now=200.0)] == ["b"]
    assert [e.file_id for e in m.due(now=200.0, limit=1)] == ["b"]
    assert [e.file_id for e in m.due(now=500.0)] == ["a", "b"]
    assert event_rows(m, "a") == []  # no event: nothing happened to it
    m.defer("a", until=900.0, note="waiting for host h2")
    m.want([WantSpec("a")])  # a want resets it, as today
    a = m.get("a")
    assert a.next_attempt_at is None and a.note is None
    assert "a" in [e.file_id for e in m.due(now=200.0)]
    assert not m.defer("nope", until=1.0)


def test_a_deferred_entry_made_ready_loses_its_note(p):
    p.manifest.want([WantSpec("a", provider="local")])
    p.manifest.defer("a", until=time.time() - 1, note="waiting for host h2")
    make_ready(p, "a")
    e = p.manifest.get("a")
    assert e.note is None and e.next_attempt_at is None
    assert not p.manifest.defer("a", until=time.time() + 60)  # ready: nothing to wait for


# -- where the bytes came from -----------------------------------------------------------------


def test_events_carry_their_source_and_the_payload_sends_it(p):
    make_ready(p, "a")  # from the dir provider: the origin
    make_ready(p, "b", sha256=sha(b"A" * 100))  # the same bytes, stored: a cache hit
    evs = [e for e in event_rows(p.manifest) if e.kind in (EventKind.DOWNLOAD,
                                                       EventKind.CACHE_HIT)]
    assert [(e.kind, e.source) for e in evs] == [(EventKind.DOWNLOAD, "origin"),
                                                 (EventKind.CACHE_HIT, "local")]
    sent = payload(p.manifest.outbox(10), "h1", p.store.root)
    assert [s["source"] for s in sent] == ["origin", "local"]
    assert sent[0]["sha256"] == sha(b"A" * 100)


def test_ready_change_takes_storage_as_the_source(p):
    from prefetchd.fetch.ledger import Ledger, Placed

    p.manifest.want([WantSpec("a")])
    row = p.manifest.get("a")
    ledger = Ledger(p.manifest, p.store, lambda *a: None)
    placed = Placed(sha(b"x"), 1, "a", "downloads/a/a")
    event, _ = ledger.ready_change(row, "files", placed, cache_hit=False, started=0.0,
                                   source=BytesSource.STORAGE)
    assert event.source is BytesSource.STORAGE
    event, _ = ledger.ready_change(row, "files", placed, cache_hit=False, started=0.0)
    assert event.source is BytesSource.ORIGIN
    event, _ = ledger.ready_change(row, "files", placed, cache_hit=True, started=0.0)
    assert event.source is BytesSource.LOCAL
    p.manifest.record("a", event)
    assert event_rows(p.manifest, "a")[-1].source == "local"


# -- the reporter's watermark queries ----------------------------------------------------------


def test_changed_since_pages_by_updated_at_then_file_id(p):
    m = p.manifest
    m.want([WantSpec("c"), WantSpec("a"), WantSpec("b")], now=10.0)  # one timestamp
    m.want([WantSpec("d")], now=20.0)
    page = m.changed_since(0.0, 2)
    assert [e.file_id for e in page] == ["a", "b"]
    last = page[-1]
    page = m.changed_since(last.updated_at, 2, after_id=last.file_id)
    assert [e.file_id for e in page] == ["c", "d"]
    assert m.changed_since(20.0, 10, after_id="d") == []
    assert [e.file_id for e in m.changed_since(10.0, 10)] == ["a", "b", "c", "d"]
    m.want([WantSpec("a")], holder=FG, now=30.0)  # even another claim moves the entry
    assert [e.file_id for e in m.changed_since(20.0, 10, after_id="d")] == ["a"]
    plan = " ".join(r[-1] for r in m.conn.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM files WHERE (updated_at, file_id) > (?, ?)"
        " ORDER BY updated_at, file_id LIMIT 5", (0, "")))
    assert "idx_files_updated_at_file_id" in plan


def test_forgotten_since_names_ids_whose_row_is_gone(p):
    m = p.manifest
    m.want([WantSpec("a"), WantSpec("b"), WantSpec("c")], now=1.0)
    m.forget(["a"], now=10.0)
    m.forget(["b"], now=11.0)
    m.want([WantSpec("b")], now=12.0)  # wanted again: its row is back
    m.forget(["c"], now=13.0)
    assert m.forgotten_since(0.0, 10) == [("a", 10.0), ("c", 13.0)]
    assert m.forgotten_since(10.0, 10) == [("a", 10.0), ("c", 13.0)]  # at ts: again
    assert m.forgotten_since(10.0, 10, after_id="a") == [("c", 13.0)]
    assert m.forgotten_since(0.0, 1) == [("a", 10.0)]
    assert m.forgotten_since(10.0, 1, after_id="a") == [("c", 13.0)]
    m.want([WantSpec("a")], now=14.0)
    m.forget(["a"], now=15.0)  # forgotten twice: named once, at its last forget
    assert m.forgotten_since(0.0, 10) == [("c", 13.0), ("a", 15.0)]
    assert m.forgotten_since(15.0, 10, after_id="a") == []


def test_forgotten_since_pages_through_many_forgets_at_one_time(p):
    """2,500 forgets, most at one timestamp, read 1,000 at a time from the last page's
    last (at, file_id): every id exactly once, and the walk ends."""
    m = p.manifest
    ids = [f"f{i:05d}" for i in range(2500)]
    m.want([WantSpec(f) for f in ids], now=1.0)
    m.forget(ids[:2000], now=50.0)  # one timestamp for 2,000 of them
    m.forget(ids[2000:], now=60.0)
    m.want([WantSpec("f00007")], now=61.0)
    m.forget(["f00007"], now=70.0)  # forgotten again later: read at 70.0, once
    seen: list[str] = []
    ts, after, pages = 0.0, "", 0
    while page := m.forgotten_since(ts, 1000, after):
        pages += 1
        assert pages <= 3, "the same page came again"
        seen += [fid for fid, _ in page]
        ts, after = page[-1][1], page[-1][0]
    assert pages == 3 and len(seen) == 2500
    assert sorted(seen) == ids and seen[-1] == "f00007"
    plan = " ".join(r[-1] for r in m.conn.execute(
        "EXPLAIN QUERY PLAN SELECT file_id FROM events WHERE kind = 'forget' AND at >= 1"))
    assert "idx_events_kind_at" in plan


def test_requeues_move_updated_at_so_the_state_report_sees_them(p):
    m = p.manifest
    m.want([WantSpec("w"), WantSpec("e")], now=100.0)
    m.update("w", now=100.0, state=State.WAITING_SPACE)
    m.update("e", now=100.0, state=State.EVICTED, size=10)
    assert m.requeue_waiting_space(now=200.0) == 1
    assert (m.get("w").state, m.get("w").updated_at) == (State.QUEUED, 200.0)
    assert [e.file_id for e in m.changed_since(100.0, 10, after_id="w")] == ["w"]
    m.update("w", now=201.0, state=State.READY)
    assert m.requeue_evicted(1000, now=300.0) == 1
    assert (m.get("e").state, m.get("e").updated_at) == (State.QUEUED, 300.0)
    assert [e.file_id for e in m.changed_since(201.0, 10, after_id="w")] == ["e"]
    before = time.time()
    m.update("e", now=301.0, state=State.EVICTED)
    m.requeue_evicted(1000)  # stamped with the clock when no time is given
    assert m.get("e").updated_at >= before


def test_holder_ids_for_a_move_to_another_group(p):
    m = p.manifest
    assert m.holder_ids(FG) == []
    m.want([WantSpec("c"), WantSpec("a")], holder=FG)
    m.want([WantSpec("a"), WantSpec("b")])
    m.want([WantSpec("d")], holder="fleet:other")
    assert m.holder_ids(FG) == ["a", "c"]
    assert m.unwant(m.holder_ids(FG), holder=FG) == []  # the move: old wants go
    assert m.holder_ids(FG) == [] and m.holder_ids("fleet:other") == ["d"]
    assert flags(p, "a") == (True, True, False) and flags(p, "c") == (False, False, False)
    assert flags(p, "b") == (True, True, False)


def test_counts_for_the_heartbeat(p):
    make_ready(p, "a")
    p.manifest.want([WantSpec("b")])
    counts = p.manifest.state_counts()
    assert (counts["ready"], counts["queued"], counts["failed"]) == (1, 1, 0)
    assert p.manifest.ready_bytes() == 100
