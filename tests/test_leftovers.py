"""Nothing is left behind: partials of an entry made ready by a cache hit, the name a
cache hit gives, and links no entry accounts for (real kill -9, real hard links)."""

from __future__ import annotations

import os
import time

from prefetchd.ops.reconcile import reconcile
from prefetchd.ops.strays import remove_stray_links
from prefetchd.store import key_of
from tests.conftest import fetch, sha
from tests.daemon_helpers import wait_until
from tests.servers.files_api import Fault
from tests.support.rows import delete_rows, event_rows

MiB = 1024 * 1024


def _tmp(env) -> list[str]:
    return sorted(os.listdir(env.root / ".prefetchd/tmp"))


def test_cache_hit_removes_a_killed_downloads_partial_and_keeps_its_name(env, server):
    """`get` killed mid-download leaves doc.pdf's extracted text half there; the same
    bytes then arrive under another id; the next `get` with the hash is a cache hit
    that names the file as the download would and removes the partial at once."""
    data = os.urandom(4 * MiB)
    server.add("kimifile01", data, "doc.pdf", purpose="file-extract")
    server.fault("kimifile01", Fault(rate=256 * 1024))
    proc = env.popen("get", "kimifile01", "--provider", "kimi")
    try:
        wait_until(lambda: any(n.endswith(".meta") for n in _tmp(env))
                   if (env.root / ".prefetchd/tmp").exists() else False, timeout=60)
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.wait()
    assert any(n.endswith(".part") for n in _tmp(env))
    (env.src / "copy").write_bytes(data)
    assert env.invoke("get", "copy", "--provider", "local").returncode == 0
    r = env.invoke("get", "kimifile01", "--provider", "kimi", "--sha256", sha(data))
    assert r.returncode == 0, r.stderr
    path = env.root / "downloads/kimifile01/doc.pdf.extracted.txt"
    assert r.stdout.strip() == str(path)
    assert path.read_bytes() == data
    assert _tmp(env) == []
    assert len(server.content_requests("kimifile01")) == 1  # only the killed one
    with env.prefetch() as p:
        assert [e.kind for e in event_rows(p.manifest, "kimifile01")] == ["cache_hit"]


def test_cache_hit_without_a_row_name_uses_the_earlier_downloads_name(env, server):
    """forget, then want again: the row's name is gone, the download's history is not."""
    data = b"text extracted from the pdf" * 100
    server.add("kimifile02", data, "report.pdf", purpose="file-extract")
    with env.prefetch() as p:
        first = fetch(p, "kimifile02", provider="kimi")
        assert first.path.name == "report.pdf.extracted.txt"
        delete_rows(p.manifest, ["kimifile02"])  # the row goes, objects and events stay
        again = fetch(p, "kimifile02", provider="kimi", sha256=first.sha256)
        assert again.cache_hit and again.path == first.path
    assert len(server.content_requests("kimifile02")) == 1


def _stray_setup(p, env):
    """A ready file plus the links a crash can leave: a link temp beside it, a link of a
    forgotten entry, and an old place deep in a tree no entry names any more."""
    (env.src / "a").write_bytes(b"AAAA")
    (env.src / "b").write_bytes(b"BBBB")
    a = fetch(p, "a", provider="local")
    b = fetch(p, "b", provider="local")
    obj_a, obj_b = p.store.object_path(a.sha256), p.store.object_path(b.sha256)
    temp = env.root / "downloads/a/.a.prefetchd-0badc0de"
    os.link(obj_a, temp)
    delete_rows(p.manifest, ["b"])  # forgotten, but its link is still there (crash before unlink)
    deep = env.root / "old/place/deep"
    deep.mkdir(parents=True)
    os.link(obj_a, deep / "a")
    return a, b, obj_a, obj_b, [temp, b.path, deep / "a"]


def test_reconcile_removes_links_no_entry_accounts_for(env):
    with env.prefetch() as p:
        a, b, obj_a, obj_b, strays = _stray_setup(p, env)
        assert os.stat(obj_a).st_nlink == 4 and os.stat(obj_b).st_nlink == 2
        res = reconcile(p.settings, p.manifest, p.store)
        assert res["stray_links_removed"] == 3
        assert [s.exists() for s in strays] == [False, False, False]
        assert a.path.read_bytes() == b"AAAA"            # the accounted link stays
        assert os.stat(obj_a).st_nlink == 2 and os.stat(obj_b).st_nlink == 1
        # Now only the object of the forgotten entry is left, unreferenced: gc's job.
        assert b.sha256 in p.store.unreferenced(min_age=0)
        again = reconcile(p.settings, p.manifest, p.store)
        assert again["stray_links_removed"] == 0


def test_stray_sweep_spares_links_made_just_now(env):
    """gc runs beside downloads that link before they record: a link whose object
    changed link count within min_age is left alone; an old one goes."""
    with env.prefetch() as p:
        _a, _b, obj_a, _obj_b, strays = _stray_setup(p, env)
        assert remove_stray_links(p.manifest, p.store) == []  # all just made
        future = time.time() + 3600
        found = p.store.stray_links(p.manifest.accounted_links(), p.manifest.named_dirs(),
                                    min_age=600, now=future)
        assert sorted(rel for rel, _ in found) == sorted(
            str(s.relative_to(env.root)) for s in strays)
        assert remove_stray_links(p.manifest, p.store, min_age=0, dry_run=True) != []
        assert all(s.exists() for s in strays)              # dry run removes nothing
        assert len(remove_stray_links(p.manifest, p.store, min_age=0)) == 3
        assert os.stat(obj_a).st_nlink == 2


def test_reconcile_drops_partials_of_ready_entries(env, server):
    """Partials of an entry that is ready go at start (kept only for wanted, unready ones)."""
    data = os.urandom(MiB)
    server.add("file-r", data)
    with env.prefetch() as p:
        fetch(p, "file-r")
        stale = env.root / ".prefetchd/tmp" / f"{key_of('file-r')}.0123456789ab.part"
        stale.write_bytes(b"half")
        res = reconcile(p.settings, p.manifest, p.store)
        assert res["temps_removed"] == 1 and _tmp(env) == []
