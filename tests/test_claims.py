"""Claims: many requesters, one file (issue 19).

Each holder's options are its own claim's: one requester's --size, --sha256 or --dest
never fails or moves another's; the file is downloaded once for every claim, linked
once per place the claims name, and goes with its last claim. These tests act as
several holders through the Python API in one process (sub-holders and, for another
user, `holder="uid:N"` as root); tests/test_claims_users.py does the same with real
Unix users through every front.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest
import sqlite_utils

from prefetchd.errors import PrefetchError
from prefetchd.manifest import Manifest, schema
from prefetchd.records import State
from tests.conftest import sha
from tests.daemon_helpers import wait_until
from tests.servers.files_api import Fault

DATA = b"thirteen byte"  # 13 bytes
BIG = DATA * 400_000  # 5.2 MB: streamed in several buffers (a small body is one)
ME = f"uid:{os.getuid()}"


def _get(p, fid, **kw):
    (r,) = p.get_many(fid, timeout=60, **kw)
    return r


def test_a_wrong_size_or_hash_fails_only_its_own_claim(env):
    env.server.add("f1", DATA, "q3.pdf")
    with env.prefetch() as p:
        ok = p.get("f1", dest="ops/report.pdf", pin=True, timeout=60)
        assert ok.read_bytes() == DATA
        # Another requester's wrong --size on a ready file: checked at once, its own
        # claim fails with its own words; the file and the first claim stay ready.
        bad = _get(p, "f1", holder="b", size=12)
        assert bad.path is None and "--size 12" in str(bad.error)
        assert f"{ME} (b)".replace(":", " ") in str(bad.error)
        assert "13 bytes" in str(bad.error)
        assert p.locate("f1") == ok
        # Later plain requests by anybody are not poisoned by it.
        assert _get(p, "f1", holder="c").error is None
        assert _get(p, "f1").path == ok
        # A wrong --sha256: the same, and nothing is downloaded again.
        wrong = "0" * 64
        bad = _get(p, "f1", holder="d", sha256=wrong)
        assert "--sha256 0000000000000000" in str(bad.error)
        assert p.manifest.get("f1").state == State.READY
        assert p.path("f1", holder="d") is None
        assert p.path("f1") == ok
        # Giving the right value again repairs that claim.
        fixed = _get(p, "f1", holder="b", size=13)
        assert fixed.error is None and fixed.path is not None
        rows = {c["holder"]: c for c in p.ls()[0]["claims"]}
        assert rows[f"{ME}/d"]["error"] and rows[f"{ME}/b"]["error"] is None
    assert len(env.server.content_requests("f1")) == 1


def test_three_claims_three_dests_one_object_one_download(env):
    env.server.add("f2", DATA * 100, "big.bin")
    with env.prefetch() as p:
        paths = [p.get("f2", holder=h, dest=d, timeout=60)
                 for h, d in (("a", "team/a/x.bin"), ("b", "team/b/y.bin"),
                              ("c", "c/z.bin"))]
        inodes = {path.stat().st_ino for path in paths}
        assert len(inodes) == 1 and paths[0].stat().st_nlink == 4  # 3 links + the object
        assert len(env.server.content_requests("f2")) == 1
        root = p.store.root
        # Releasing two claims leaves the third; their links and the empty
        # directories prefetchd made for them go.
        p.release("f2", holder="a")
        p.release("f2", holder="b")
        assert not paths[0].exists() and not paths[1].exists()
        assert not (root / "team").exists()
        assert paths[2].read_bytes() == DATA * 100
        assert p.manifest.get("f2").state == State.READY
        # The last one takes the object, its link and the directory with it.
        p.release("f2", holder="c")
        assert not paths[2].exists() and not (root / "c").exists()
        assert p.store.object_stat(sha(DATA * 100)) is None
        assert p.manifest.get("f2").state == State.EVICTED


def test_a_directory_prefetchd_did_not_make_stays(env):
    env.server.add("f3", DATA)
    (env.root / "mine").mkdir(parents=True)
    with env.prefetch() as p:
        got = p.get("f3", dest="mine/f3.bin", timeout=60)
        p.release("f3")
    assert not got.exists() and (env.root / "mine").is_dir()


def test_a_changed_dest_moves_only_its_own_claims_link(env):
    env.server.add("f4", DATA)
    with env.prefetch() as p:
        a = p.get("f4", dest="ops/pinned.bin", pin=True, timeout=60)
        b = p.get("f4", holder="b", dest="agent/mine.txt", timeout=60)
        b2 = p.get("f4", holder="b", dest="moved/elsewhere.txt", timeout=60)
        assert a.read_bytes() == DATA and b2.read_bytes() == DATA
        assert not b.exists()  # b's old link moved; a's did not
        assert not (p.store.root / "agent").exists()  # nor is its empty directory left
        assert p.locate("f4") == a
        rows = p.ls()[0]["claims"]
        assert [c["pin"] for c in rows] == [True, False]


def test_release_and_forget_touch_only_the_callers_claim(env):
    env.server.add("f5", DATA)
    with env.prefetch() as p:
        a = p.get("f5", dest="keep/a.bin", pin=True, timeout=60)
        with pytest.raises(PrefetchError, match="no claim of"):
            p.release("f5", holder="b")  # b holds no claim on it: nothing changes
        p.get("f5", holder="b", timeout=60)
        out = p.forget("f5", holder="b")
        assert out.kept == {"f5": "local"}
        assert a.read_bytes() == DATA and p.manifest.get("f5").pin
        # An admin (root here) may act on every local claim at once.
        out = p.release("f5", every=True)
        assert not a.exists()
        assert p.manifest.claims_of("f5") == []


def test_local_and_fleet_claims_are_independent(env):
    env.server.add("f6", DATA)
    from prefetchd.manifest import WantSpec
    from prefetchd.ops.forget import apply_fleet
    with env.prefetch() as p:
        local = p.get("f6", dest="local/f6.bin", pin=True, timeout=60)
        apply_fleet(p.manifest, p.store, [WantSpec("f6", dest="fleet/f6.bin", ttl=60.0)],
                    [], [], None, "fleet:g1")
        fleet_path = p.store.root / "fleet/f6.bin"
        assert fleet_path.read_bytes() == DATA
        # The fleet's unwant and forget keep the local pin and dest...
        apply_fleet(p.manifest, p.store, [], ["f6"], [], None, "fleet:g1")
        assert p.manifest.get("f6").pin and local.exists()
        apply_fleet(p.manifest, p.store, [], [], ["f6"], None, "fleet:g1")
        assert local.exists() and not fleet_path.exists()
        mine = p.manifest.claim("f6", ME)
        assert mine.pin and mine.dest == "local/f6.bin"
        # ...and the reverse: a local release keeps the fleet's claim and its link.
        apply_fleet(p.manifest, p.store, [WantSpec("f6", dest="fleet/f6.bin")],
                    [], [], None, "fleet:g1")
        wait_until(fleet_path.exists)
        out = p.release("f6")
        assert out.kept == {"f6": "fleet"}
        assert fleet_path.read_bytes() == DATA and not local.exists()
        assert p.manifest.get("f6").fleet_want


def test_release_while_downloading_stops_the_download(env, daemon):
    env.server.add("slow", BIG, "slow.bin")
    # 5.2 MB at 100 kB/s: 52 s, so a busy machine cannot finish it before the release
    env.server.fault("slow", Fault(rate=100_000))
    d = daemon()
    assert env.cli("want", "slow").returncode == 0
    with env.prefetch() as p:
        wait_until(lambda: p.manifest.get("slow").state == State.DOWNLOADING, timeout=30)
    r = env.cli("release", "slow")
    assert r.returncode == 0, r.stderr
    with env.prefetch() as p:
        wait_until(lambda: "download_cancelled" in d.logtext(), timeout=30)
        wait_until(lambda: env.server.client_closed == 1, timeout=30)  # the origin saw it
        time.sleep(0.5)  # let a wrongly surviving download publish, if it would
        e = p.manifest.get("slow")
        assert e.state == State.EVICTED and not e.wanted
        assert p.store.object_stat(sha(BIG)) is None
        assert not (env.root / "downloads/slow").exists()
        assert [f.name for f in (env.root / ".prefetchd/tmp").iterdir()] == []


def test_an_interrupted_get_leaves_the_file_queued(env):
    env.server.add("cut", BIG, "cut.bin")
    # 52 s at this rate: bytes are on disk long before the timeout, even on a busy machine
    env.server.fault("cut", Fault(rate=100_000))
    r = env.cli("get", "cut", "--timeout", "10s")
    assert r.returncode == 1 and "not ready within 10s" in r.stderr
    assert "partial kept for resume" in r.stderr  # bytes were on disk: it was downloading
    with env.prefetch() as p:
        assert p.manifest.get("cut").state == State.QUEUED
        assert p.status()["stalled"] == 0


def test_a_downloading_file_nobody_downloads_is_reported_stalled(env):
    env.server.add("st", DATA)
    with env.prefetch() as p:
        p.want("st")
        p.manifest.update("st", state=State.DOWNLOADING)  # as a kill -9 of a get leaves it
        assert p.status()["stalled"] == 1
        assert p.get("st", timeout=60).read_bytes() == DATA  # the next get repairs it
        assert p.status()["stalled"] == 0


def test_a_database_of_the_last_release_migrates_to_claims(tmp_path):
    """A v8 manifest (wanted entries with requested_by, a fleet want) gets claims."""
    db = tmp_path / "prefetchd.db"
    conn = sqlite3.connect(db, isolation_level=None)
    sdb = sqlite_utils.Database(conn)
    for step in schema.MIGRATIONS[:8]:
        step(sdb)
    conn.execute("PRAGMA user_version = 8")
    now = time.time()
    rows = [("a", 1, 1, 0, 1000, "d/a.bin", 1, None, "ready"),
            ("b", 1, 0, 1, None, None, 0, None, "queued"),
            ("c", 1, 1, 1, None, "c.bin", 0, 3600.0, "queued"),
            ("gone", 0, 0, 0, 1000, None, 0, None, "evicted")]
    for fid, wanted, local, fleet, uid, dest, pin, ttl, state in rows:
        conn.execute("INSERT INTO files (file_id, wanted, local_want, fleet_want,"
                     " requested_by, dest, pin, ttl, state, attempts, requested_at,"
                     " updated_at, expected_size) VALUES (?,?,?,?,?,?,?,?,?,0,?,?,13)",
                     (fid, wanted, local, fleet, uid, dest, pin, ttl, state, now, now))
    conn.execute("INSERT INTO fleet_marks VALUES ('group', 'g1')")
    conn.close()
    m = Manifest(db)
    try:
        got = {(c.file_id, c.holder): c for c in m.all_claims()}
        assert set(got) == {("a", "uid:1000"), ("b", "fleet:g1"), ("c", "uid:0"),
                            ("c", "fleet:g1")}
        a = got[("a", "uid:1000")]
        assert (a.dest, a.pin, a.size, a.wanted) == ("d/a.bin", True, 13, True)
        assert got[("c", "uid:0")].ttl == 3600.0
        assert m.get("gone").state == State.EVICTED and not m.get("gone").wanted
    finally:
        m.close()


def test_concurrent_holders_never_lose_a_claim(env):
    """Several threads (their own connections) claim one file at once: every claim
    lands, the file row is one."""
    env.server.add("many", DATA)
    errors: list[BaseException] = []

    def claim(i: int) -> None:
        try:
            with env.prefetch() as p:
                p.want("many", holder=f"job-{i}", dest=f"jobs/{i}.bin")
        except BaseException as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with env.prefetch() as p:
        assert len(p.manifest.claims_of("many")) == 8
        assert len(p.ls()) == 1


def test_a_bad_object_loses_every_claims_link_and_comes_back(env):
    env.server.add("v1", DATA * 10, "v.bin")
    with env.prefetch() as p:
        a = p.get("v1", dest="a/v.bin", timeout=60)
        b = p.get("v1", holder="b", dest="b/v.bin", timeout=60)
        obj = p.store.object_path(sha(DATA * 10))
        os.chmod(obj, 0o644)
        obj.write_bytes(b"x" * len(DATA * 10))  # the disk rotted: same size, other bytes
        report = p.verify(["v1"])
        assert report[0]["ok"] is False and report[0]["refetched"] is True
        # Fetched again, every claim's link back, none of them ever the rotten bytes.
        assert a.read_bytes() == DATA * 10 and b.read_bytes() == DATA * 10
    assert len(env.server.content_requests("v1")) == 2


def test_a_crash_between_a_claims_change_and_its_links_is_repaired_at_start(env):
    """The writer died after the manifest transaction (the claim's new dest, another
    holder's claim) and before the links followed: start-up reconciliation makes the
    links the claims name and removes the old place."""
    from prefetchd.manifest import WantSpec
    from prefetchd.ops.reconcile import reconcile

    env.server.add("cr", DATA)
    with env.prefetch() as p:
        old = p.get("cr", dest="old/cr.bin", timeout=60)
        # Only the manifest's half of `want` (ops.want would link right after).
        p.manifest.want([WantSpec("cr", dest="new/cr.bin"),
                         WantSpec("cr", holder="uid:4242", dest="other/cr.bin")])
        assert old.exists() and not (env.root / "new/cr.bin").exists()
        counts = reconcile(p.settings, p.manifest, p.store)
        assert counts["relinked"] == 1
        assert (env.root / "new/cr.bin").read_bytes() == DATA
        assert (env.root / "other/cr.bin").read_bytes() == DATA
        assert not old.exists() and not (env.root / "old").exists()
        assert p.manifest.get("cr").path == "new/cr.bin"
