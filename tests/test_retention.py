"""The retention policy under a controlled clock (pure: no disk, no wall clock)."""

from __future__ import annotations

import time

from prefetchd.ops.gc import gc
from prefetchd.retention import Item, plan

H = 3600.0
NOW = 1_800_000_000.0


def item(fid, *, age_h=0.0, size=100, wanted=True, pin=False, ttl=None,  # noqa: PLR0913
         sha=None):  # one keyword per field of the Item it builds
    return Item(fid, sha or f"sha-{fid}", size, wanted, pin, NOW - age_h * H, ttl)


def ids(decisions):
    return [d.file_id for d in decisions]


def test_ttl_since_last_use():
    items = [item("fresh", age_h=1), item("old", age_h=25), item("own-ttl", age_h=2, ttl=H)]
    out = plan(items, now=NOW, default_ttl=24 * H)
    assert ids(out) == ["old", "own-ttl"]
    assert out[0].kind == "expired" and "ttl 1d" in out[0].reason


def test_pin_never_expires_or_evicts():
    items = [item("pinned", age_h=1000, pin=True, size=10**9)]
    assert plan(items, now=NOW, default_ttl=H, max_bytes=1, free_bytes=0,
                min_free_bytes=10**12) == []


def test_unwanted_goes_first():
    out = plan([item("u", wanted=False), item("w")], now=NOW, default_ttl=24 * H)
    assert ids(out) == ["u"] and out[0].kind == "unwanted"


def test_max_bytes_evicts_least_recently_used():
    items = [item("a", age_h=3), item("b", age_h=1), item("c", age_h=2), item("d", age_h=0)]
    out = plan(items, now=NOW, default_ttl=24 * H, max_bytes=250)
    assert ids(out) == ["a", "c"]
    assert all(d.kind == "evicted" and "max_bytes" in d.reason for d in out)


def test_min_free_reserve_and_need():
    items = [item("a", age_h=3, size=50), item("b", age_h=1, size=50)]
    assert plan(items, now=NOW, default_ttl=24 * H, free_bytes=100, min_free_bytes=100) == []
    out = plan(items, now=NOW, default_ttl=24 * H, free_bytes=100, min_free_bytes=100,
               need_bytes=40)
    assert ids(out) == ["a"] and "reserve" in out[0].reason


def test_shared_bytes_count_once():
    items = [item("a", age_h=3, sha="same", size=100), item("b", age_h=2, sha="same", size=100),
             item("c", age_h=1, size=100)]
    # 200 unique bytes; over 150 means evicting both users of "same" (only then freed).
    out = plan(items, now=NOW, default_ttl=24 * H, max_bytes=150)
    assert ids(out) == ["a", "b"]


def test_clock_stepped_backwards_deletes_nothing_early():
    items = [item("a", age_h=23), item("b", age_h=1)]
    stepped_back = NOW - 48 * H  # every last_used now lies in the "future"
    assert plan(items, now=stepped_back, default_ttl=24 * H) == []
    # and after the clock comes back, a file expires only once its real age passes the ttl
    assert plan(items, now=NOW + 0.5 * H, default_ttl=24 * H) == []
    assert ids(plan(items, now=NOW + 1.5 * H, default_ttl=24 * H)) == ["a"]


def test_gc_dry_run_prints_what_and_why(env):
    (env.src / "a").write_bytes(b"x")
    env.write_config(extra='\n[retention]\nttl = "1h"\n')
    assert env.invoke("get", "a", "--provider", "local").returncode == 0
    assert env.invoke("gc", "--dry-run").stdout == ""
    now = time.time()
    with env.prefetch() as p:
        p.manifest.update("a", requested_at=now - 10 * H, ready_at=now - 10 * H)
        with p.manifest.tx() as conn:  # the claim's own last request, 10 h ago
            conn.execute("UPDATE claims SET requested_at = ?", (now - 10 * H,))
        res = gc(p.settings, p.manifest, p.store, dry_run=True, now=now)
        assert res["deleted"][0]["kind"] == "expired"
    r = env.invoke("gc", "--dry-run")
    assert "would remove downloads/a/a (a: not requested for" in r.stdout
    assert (env.root / "downloads/a/a").exists()


def test_need_is_honoured_only_if_eviction_can_meet_it():
    """A download that would not fit even after every unpinned file went costs nobody
    their files; one that would fit evicts the least recently used only."""
    items = [item("pinned", pin=True, size=600), item("old", age_h=2, size=200),
             item("new", age_h=1, size=200)]
    assert plan(items, now=NOW, default_ttl=24 * H, free_bytes=0, need_bytes=500) == []
    assert ids(plan(items, now=NOW, default_ttl=24 * H, free_bytes=0, need_bytes=150)) == ["old"]
    assert ids(plan(items, now=NOW, default_ttl=24 * H, free_bytes=0,
                    need_bytes=400)) == ["old", "new"]


def test_bytes_shared_with_a_pinned_entry_are_not_evictable():
    items = [item("pin", pin=True, size=300, sha="same"), item("copy", size=300, sha="same"),
             item("other", age_h=1, size=100)]
    # Evicting "copy" frees nothing (the pinned entry keeps its bytes): 100 is all.
    assert plan(items, now=NOW, default_ttl=24 * H, free_bytes=0, need_bytes=200) == []
    assert ids(plan(items, now=NOW, default_ttl=24 * H, free_bytes=0,
                    need_bytes=100)) == ["other"]


def test_a_fleet_want_outlives_any_ttl_but_not_max_bytes():
    """The group's unwant ends a fleet want, never a ttl (a poll renews no last use);
    over max_bytes a fleet-wanted entry is evicted like any other (no unwant: it comes
    back when there is room)."""
    fleet = Item("fleet", "sha-fleet", 100, True, False, NOW - 1000 * H, H, fleet_want=True)
    local = item("local", age_h=1000, ttl=H)
    out = plan([fleet, local], now=NOW, default_ttl=24 * H)
    assert ids(out) == ["local"] and out[0].kind == "expired"
    out = plan([fleet], now=NOW, default_ttl=24 * H, max_bytes=50)
    assert ids(out) == ["fleet"] and out[0].kind == "evicted"
    gone = Item("gone", "sha-gone", 100, False, False, NOW, None, fleet_want=False)
    assert [d.kind for d in plan([gone], now=NOW, default_ttl=24 * H)] == ["unwanted"]
