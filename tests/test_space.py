"""Which waiting entries get the free space first (manifest queries, real SQLite), and
the free-space reserve that refuses downloads (alone, on a fake statvfs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from prefetchd.errors import NoSpaceError, TooLargeError
from prefetchd.fetch import SpaceReserve
from prefetchd.manifest import Manifest, WantSpec


def _manifest(tmp_path) -> Manifest:
    return Manifest(tmp_path / "m.db")


def test_entries_that_fit_go_first_and_one_big_one_at_a_time(tmp_path):
    m = _manifest(tmp_path)
    m.want([WantSpec(f) for f in ("fits", "big1", "big2")])
    m.update("fits", state="waiting_space")
    m.update("big1", state="waiting_space", min_size=50)
    m.update("big2", state="waiting_space", min_size=20)
    assert m.requeue_waiting_space() == 1          # only the one without a known minimum
    assert m.get("fits").state == "queued"
    assert m.get("big2").state == "waiting_space"
    m.update("fits", state="ready")
    assert m.requeue_waiting_space() == 1          # now the smallest big one, alone
    assert m.get("big2").state == "queued" and m.get("big1").state == "waiting_space"


def test_an_entry_backing_off_is_not_requeued_before_its_time(tmp_path):
    m = _manifest(tmp_path)
    m.want([WantSpec("a")])
    m.update("a", state="waiting_space", next_attempt_at=time.time() + 3600)
    assert m.requeue_waiting_space() == 0
    assert m.requeue_waiting_space(now=time.time() + 7200) == 1


def test_evicted_entries_come_back_only_into_free_room_and_only_when_idle(tmp_path):
    m = _manifest(tmp_path)
    m.want([WantSpec(f) for f in ("a", "b", "c", "busy")])
    for f, size in (("a", 30), ("b", 50), ("c", 10)):
        m.update(f, state="evicted", size=size)
    assert m.requeue_evicted(100) == 0             # "busy" is still queued: it goes first
    m.update("busy", state="ready")
    assert m.requeue_evicted(45) == 2              # a (30) and c (10) fit; b does not
    assert [m.get(f).state for f in "abc"] == ["queued", "evicted", "queued"]
    m.unwant(["b"])
    m.update("a", state="ready")
    m.update("c", state="ready")
    assert m.requeue_evicted(1000) == 0            # not wanted any more: stays evicted


def test_migration_adds_min_size_to_an_existing_v5_database(tmp_path):
    import sqlite3

    from prefetchd import manifest as mf

    path = tmp_path / "old.db"
    m = Manifest(path)
    m.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE files DROP COLUMN min_size")
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()
    m = Manifest(path)
    assert m.conn.execute("PRAGMA user_version").fetchone()[0] == len(mf.MIGRATIONS) == 10
    m.want([WantSpec("x")])
    assert m.get("x").min_size is None


# -- the free-space reserve, alone (no engine, no filesystem) -----------------------------


class FakeFs:
    """statvfs answers from numbers the test sets, and a clock the test moves."""

    def __init__(self, size: int, free: int) -> None:
        self.size, self.free, self.now, self.calls = size, free, 0.0, 0

    def statvfs(self, _root):
        self.calls += 1
        return os.statvfs_result((4096, 1, self.size, self.free, self.free, 0, 0, 0, 0, 255))


def _reserve(fs: FakeFs, reserve: int = 0):
    return SpaceReserve(Path("/nowhere"), reserve, statvfs=fs.statvfs, clock=lambda: fs.now)


def test_reserve_counts_what_it_let_through_until_it_asks_again():
    fs = FakeFs(size=100, free=10)
    space = _reserve(fs, reserve=2)
    space.claim("a", 5)
    with pytest.raises(NoSpaceError, match="^b: needs 5 bytes, 5 bytes free, "
                       "reserve min_free_bytes 2 bytes$") as e:
        space.claim("b", 5)  # 10 - 5 already claimed - 5 < the reserve of 2
    assert (e.value.need_bytes, e.value.free, e.value.limit, e.value.file_id) == (5, 5, 2, "b")
    assert fs.calls == 1
    fs.free = 100
    space.claim("b", 5)  # a refusal makes the next claim ask the filesystem again
    assert fs.calls == 2
    space.claim("c", 5)
    assert fs.calls == 2  # within FREE_SPACE_TTL: the cached answer, less what was claimed
    fs.now += 1.0
    space.claim("d", 5)
    assert fs.calls == 3


def test_reserve_refuses_at_once_what_cannot_fit_on_an_empty_filesystem():
    space = _reserve(FakeFs(size=100, free=100), reserve=10)
    with pytest.raises(TooLargeError, match="^big: needs 91 bytes, the filesystem holds 100 bytes"
                       " and min_free_bytes keeps 10 bytes free$") as e:
        space.claim("big", 91)
    assert (e.value.need_bytes, e.value.capacity, e.value.limit) == (91, 90, 10)
    space.claim("fits", 90)


def test_known_minimum_waits_for_more_than_it_reached_before():
    fs = FakeFs(size=1000, free=50)
    space = _reserve(fs)
    space.known_minimum("none", None)  # no minimum known: no statvfs at all
    assert fs.calls == 0
    with pytest.raises(NoSpaceError, match="^m: filled the disk at 59 bytes before; needs more "
                       "than that, 50 bytes free$") as e:
        space.known_minimum("m", 60)
    assert e.value.at_least and e.value.need_bytes == 60
    fs.free = 60
    space.known_minimum("m", 60)
    space.claim("other", 60)  # fits exactly: 60 free, no reserve
