"""The store: safe paths, atomic publish, dedupe, reconciliation at start."""

from __future__ import annotations

import os

import pytest

from prefetchd.errors import PermanentError, UnsafePathError
from prefetchd.ops.reconcile import reconcile
from prefetchd.store import Store, id_component, key_of, safe_name, validate_dest
from tests.conftest import fetch, sha
from tests.support.rows import delete_rows, event_rows


@pytest.mark.parametrize(
    "dest, why",
    [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\x00b", "NUL"),
        ("a//b", "empty"),
        ("./a", "'.'"),
        ("", "empty"),
        ("a/" + "x" * 256, "longer than 255"),
        (".prefetchd/objects/x", "inside .prefetchd"),
    ],
)
def test_validate_dest_refuses(dest, why):
    with pytest.raises(UnsafePathError, match=why):
        validate_dest(dest)


def test_validate_dest_accepts_normal_paths():
    assert validate_dest("reports/q3.pdf") == ("reports", "q3.pdf")
    assert validate_dest(".hidden/ok") == (".hidden", "ok")


def test_id_component_and_safe_name():
    assert id_component("file-abc") == "file-abc"
    url = "https://x/y?z=1"
    assert id_component(url) == key_of(url)[:16]
    assert id_component("..") != ".."
    assert safe_name("../../etc/passwd", "f") == "passwd"
    assert safe_name(".bashrc", "f") == "f"
    assert safe_name(None, "fallback") == "fallback"


def test_symlink_planted_inside_root_is_not_followed(env, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (env.src / "a.txt").write_bytes(b"payload")
    with env.prefetch() as p:
        (env.root / "reports").symlink_to(outside)
        # Recorded on the entry as a permanent failure naming the dest (no retry loop).
        with pytest.raises(PermanentError, match="^dest reports/a.txt: .*symlink"):
            fetch(p, "a.txt", provider="local", dest="reports/a.txt")
        assert os.listdir(outside) == []
        # A symlink as the final component is not replaced or written through either.
        target = outside / "victim"
        target.write_text("keep me")
        (env.root / "b.txt").symlink_to(target)
        (env.src / "b-src").write_bytes(b"other")
        with pytest.raises(PermanentError, match="^dest b.txt: .*already exists"):
            fetch(p, "b-src", provider="local", dest="b.txt")
        assert target.read_text() == "keep me"
        assert (env.root / "b.txt").is_symlink()


def test_symlinked_meta_dir_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / ".prefetchd").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError):
        Store(root)


def test_foreign_file_at_dest_is_never_replaced(env):
    (env.src / "a.txt").write_bytes(b"new bytes")
    (env.root / "docs").mkdir(parents=True)
    (env.root / "docs" / "a.txt").write_bytes(b"user's own file")
    with env.prefetch() as p:
        with pytest.raises(PermanentError,
                           match="^dest docs/a.txt: .*not a file prefetchd placed"):
            fetch(p, "a.txt", provider="local", dest="docs/a.txt")
    assert (env.root / "docs" / "a.txt").read_bytes() == b"user's own file"


def test_changing_dest_moves_the_link(env):
    (env.src / "a.txt").write_bytes(b"A")
    with env.prefetch() as p:
        first = fetch(p, "a.txt", provider="local", dest="one/a.txt")
        second = fetch(p, "a.txt", provider="local", dest="two/a.txt")
        assert not first.path.exists()
        assert second.path.read_bytes() == b"A"


def test_same_dest_for_two_ids_is_refused(env):
    from prefetchd.errors import UsageError

    (env.src / "a").write_bytes(b"A")
    (env.src / "b").write_bytes(b"B")
    with env.prefetch() as p:
        fetch(p, "a", provider="local", dest="x")
        with pytest.raises(UsageError, match="already used by file_id a"):
            p.want(["b"], provider="local", dest="x")


def test_reconcile_relinks_requeues_and_reaps(env):
    (env.src / "a").write_bytes(b"AAAA")
    (env.src / "b").write_bytes(b"BBBB")
    with env.prefetch() as p:
        a = fetch(p, "a", provider="local")
        b = fetch(p, "b", provider="local")
        a.path.unlink()                                      # link lost
        os.unlink(p.store.object_path(b.sha256))             # object lost
        b.path.unlink()
        stale = env.root / ".prefetchd/tmp" / f"{key_of('gone')}.0123456789ab.part"
        stale.write_bytes(b"junk")
        p.manifest.update("a", state="ready")
        res = reconcile(p.settings, p.manifest, p.store)
        assert res["relinked"] == 1 and res["requeued"] == 1 and res["temps_removed"] == 1
        assert a.path.read_bytes() == b"AAAA"
        assert p.manifest.get("b").state == "queued"
        assert not stale.exists()


def test_reconcile_keeps_partials_of_wanted_files(env, server):
    with env.prefetch() as p:
        p.want(["file-keep"])
        keep = env.root / ".prefetchd/tmp" / f"{key_of('file-keep')}.0123456789ab.part"
        keep.write_bytes(b"partial")
        p.manifest.update("file-keep", state="downloading")  # as after a crash
        res = reconcile(p.settings, p.manifest, p.store)
        assert res["reset"] == 1 and res["temps_removed"] == 0
        assert keep.exists()
        assert p.manifest.get("file-keep").state == "queued"


def test_stray_meta_files_are_cleared_by_the_next_attempt(env):
    """What a crash can leave of a key in tmp/ without a partial (a .meta, an unfinished
    .meta.new) is found by the next attempt and cleared; nothing is left once the file
    is published. A temp is created before its .meta is written."""
    (env.src / "m").write_bytes(b"MMMM")
    tmp = env.root / ".prefetchd/tmp"
    key = key_of("m")
    with env.prefetch() as p:
        part = p.store.new_partial(key)
        part.save_meta({"file_id": "m"})
        assert sorted(n.rsplit(".", 1)[1] for n in os.listdir(tmp)) == ["meta", "part"]
        part.discard()
        (tmp / f"{key}.0123456789ab.meta").write_text('{"file_id": "m"}')
        (tmp / f"{key}.ba9876543210.meta.new").write_text("{")
        (tmp / f"{key_of('other')}.0123456789ab.meta").write_text("{}")
        assert key in p.store.partial_keys()
        assert fetch(p, "m", provider="local").path.read_bytes() == b"MMMM"
    assert os.listdir(tmp) == [f"{key_of('other')}.0123456789ab.meta"]


def test_gc_removes_unwanted_links_and_unreferenced_objects(env):
    (env.src / "a").write_bytes(b"AAAA")
    with env.prefetch() as p:
        a = fetch(p, "a", provider="local")
        p.unwant(["a"])
        res = p.gc(dry_run=True)
        assert res["deleted"] == [{"file_id": "a", "path": "downloads/a/a", "kind": "unwanted",
                                   "reason": "no longer wanted"}]
        assert a.path.exists()
        p.gc()
        assert not a.path.exists()
        assert p.manifest.get("a").state == "evicted"
        assert p.store.object_stat(a.sha256) is None  # its only user is gone
        # An orphan object (no link, no row) waits out the safety age, which protects
        # an object a concurrent fetch has published but not linked yet.
        (env.src / "b").write_bytes(b"BBBB")
        b = fetch(p, "b", provider="local")
        b.path.unlink()
        delete_rows(p.manifest, ["b"])
        assert p.gc()["objects_removed"] == []
        assert p.store.unreferenced(min_age=0) == [b.sha256]
        assert p.store.remove_object(b.sha256)
        assert p.store.object_stat(b.sha256) is None


def test_release_deletes_now_but_keeps_shared_objects(env):
    (env.src / "a").write_bytes(b"same")
    (env.src / "b").write_bytes(b"same")
    with env.prefetch() as p:
        a = fetch(p, "a", provider="local")
        b = fetch(p, "b", provider="local")
        assert p.release(["a"]) == ["downloads/a/a"]
        assert not a.path.exists()
        assert b.path.read_bytes() == b"same"
        assert p.store.object_stat(sha(b"same")) is not None
        p.release(["b"])
        assert p.store.object_stat(sha(b"same")) is None
        assert not (env.root / "downloads" / "b").exists()


def test_verify_quarantines_and_refetches(env):
    (env.src / "a").write_bytes(b"good bytes")
    with env.prefetch() as p:
        a = fetch(p, "a", provider="local")
        obj = p.store.object_path(a.sha256)
        os.chmod(obj, 0o644)
        obj.write_bytes(b"rotten!!!!")  # same inode, so the link shows the rot too
        report = p.verify()
        assert report[0]["ok"] is False and report[0]["refetched"] is True
        assert a.path.read_bytes() == b"good bytes"
        q = os.listdir(env.root / ".prefetchd/quarantine")
        assert len(q) == 1 and q[0].startswith(a.sha256)
        assert "quarantine" in [e.kind for e in event_rows(p.manifest, "a")]


_OTHER_PROCESS_LOCKS = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]), os.SEEK_SET)
print("locked", flush=True)
sys.stdin.readline()
"""


def test_a_key_lock_is_seen_by_another_process_and_freed(tmp_path):
    """The per-key lock (Store.lock_key, taken with the GIL held on 64-bit Linux) is a
    POSIX record lock like fcntl.lockf's: another process holding the key's byte makes
    lock_key fail until it lets go; a key this process holds, another cannot take;
    other keys stay free."""
    import subprocess
    import sys

    from prefetchd.store import lock_offset

    store = Store(tmp_path / "root")
    locks = str(tmp_path / "root" / ".prefetchd" / "locks")
    other = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS_LOCKS, locks,
                              str(lock_offset(key_of("held")))],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdin is not None
        assert other.stdout.readline().strip() == "locked"
        assert not store.lock_key(key_of("held"))
        assert not store.idle(key_of("held"))
        assert store.lock_key(key_of("mine"))
        assert store.idle(key_of("free"))
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(30) == 0
        assert store.lock_key(key_of("held"))
        store.unlock_key(key_of("held"))
        # This process holds "mine": another process cannot take its byte.
        probe = subprocess.run(
            [sys.executable, "-c", "import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))\n"
             "except OSError:\n print('busy')\nelse:\n print('free')",
             locks, str(lock_offset(key_of("mine")))], capture_output=True, text=True,
            check=True)
        assert probe.stdout.strip() == "busy"
        store.unlock_key(key_of("mine"))
        probe2 = subprocess.run(probe.args, capture_output=True, text=True, check=True)
        assert probe2.stdout.strip() == "free"
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
        store.close()
