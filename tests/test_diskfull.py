"""Disk full on a real tiny tmpfs: waiting_space, a cleanup pass, no partial, recovery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from tests.daemon_helpers import DaemonProc, wait_until
from tests.support.rows import event_rows

# The daemon tries waiting_space entries again every 0.2 s, not 5 s: the tests assert
# what happens, in order, never how long it took.
FAST_SPACE_RETRY = {"_PREFETCHD_SPACE_RETRY": "0.2"}

MiB = 1024 * 1024


@pytest.fixture
def tiny_root(env):
    mnt = env.tmp / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs as root: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    env.root = mnt / "root"
    env.write_config()
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_in_process_get_on_full_disk_fails_cleanly(env, tiny_root):
    (tiny_root / "filler").write_bytes(b"x" * 4 * MiB)  # someone else's file: 4 MiB left
    (env.src / "big").write_bytes(os.urandom(5 * MiB))
    r = env.cli("get", "big", "--provider", "local")
    assert r.returncode == 1
    assert "big: needs 5 MiB" in r.stderr and "free" in r.stderr
    assert not (env.root / "downloads/big/big").exists()
    assert [n for n in os.listdir(env.root / ".prefetchd/tmp")] == []
    with env.prefetch() as p:
        assert p.manifest.get("big").state == "waiting_space"


def test_size_pressure_evicts_least_recently_used(env, tiny_root):
    for name in ("a", "b", "c"):
        (env.src / name).write_bytes(os.urandom(3 * MiB))
    d = DaemonProc(env, extra_env=FAST_SPACE_RETRY).ready()
    try:
        with env.prefetch() as p:
            p.want(["a"], provider="local")
            wait_until(lambda: p.manifest.get("a").state == "ready")
            p.want(["b"], provider="local")
            wait_until(lambda: p.manifest.get("b").state == "ready")
            p.want(["c"], provider="local")
            wait_until(lambda: p.manifest.get("c").state == "ready", timeout=30)
            assert p.manifest.get("a").state == "evicted"  # least recently used
            assert p.manifest.get("b").state == "ready"
    finally:
        assert d.stop() == 0


def test_daemon_waits_for_space_cleans_up_and_finishes(env, tiny_root, server):
    for name in ("a", "b", "c"):
        (env.src / name).write_bytes(os.urandom(3 * MiB))
    d = DaemonProc(env, extra_env=FAST_SPACE_RETRY).ready()
    try:
        with env.prefetch() as p:
            p.want(["a", "b"], provider="local", pin=True)  # pinned: never evicted
            wait_until(lambda: all(p.manifest.get(f).state == "ready" for f in "ab"))
            # c does not fit (8 MiB tmpfs, 6 MiB used): it waits, nothing partial lands.
            p.want(["c"], provider="local")
            wait_until(lambda: p.manifest.get("c").state == "waiting_space")
            time.sleep(6)  # past one retry round: still waiting, daemon still up
            assert p.manifest.get("c").state in ("waiting_space", "queued")
            assert not (env.root / "downloads/c/c").exists()
            assert d.alive
            # Once a ready file is no longer wanted, the cleanup pass (triggered by the
            # full disk) removes it and c completes without anyone stepping in.
            p.unwant(["a"])
            wait_until(lambda: p.manifest.get("c").state == "ready", timeout=30)
            assert p.manifest.get("a").state == "evicted"
            assert (env.root / "downloads/c/c").read_bytes() == (env.src / "c").read_bytes()
            assert (env.root / "downloads/b/b").exists()
        assert [n for n in os.listdir(env.root / ".prefetchd/tmp")] == []
        assert "deleted" in d.logtext()
    finally:
        assert d.stop() == 0


def test_enospc_mid_stream_without_known_size(env, tiny_root, server):
    """No announced size (chunked HTTP): ENOSPC while writing is handled the same way."""
    from tests.servers.files_api import Fault

    server.add("blob", os.urandom(10 * MiB))
    server.fault("blob", Fault(no_length=True))
    r = env.cli("get", f"{server.url}/raw/blob")
    # It filled a filesystem that held nothing else: it can never fit, and says so.
    assert r.returncode == 1 and "needs more than" in r.stderr
    assert "the filesystem holds 8 MiB" in r.stderr
    assert not (env.root / "downloads").exists() or os.listdir(env.root / "downloads") == []
    assert [n for n in os.listdir(env.root / ".prefetchd/tmp")] == []


def test_space_checks_between_statvfs_calls_count_what_they_let_through(env, tiny_root):
    """Between two statvfs calls, downloads already let through are counted as used:
    two that fit only one at a time are not both started; after a refusal the next
    check asks the filesystem again (space may have come back)."""
    from prefetchd.errors import NoSpaceError
    from prefetchd.fetch import Engine

    with env.prefetch() as p:
        engine = Engine(p.settings, p.manifest, p.store)
        try:
            engine.space.claim("a", 5 * MiB)
            with pytest.raises(NoSpaceError, match="b: needs"):
                engine.space.claim("b", 5 * MiB)
            filler = env.root / "filler"
            filler.write_bytes(b"x" * 4 * MiB)  # another writer takes space meanwhile
            with pytest.raises(NoSpaceError):
                engine.space.claim("c", 5 * MiB)
            filler.unlink()
            engine.space.claim("c", 5 * MiB)  # asked again: the space is back
        finally:
            asyncio.run(engine.aclose())


def test_file_larger_than_the_filesystem_fails_at_once_and_evicts_nothing(env, tiny_root):
    """12 MiB on an 8 MiB tmpfs: failed with the sizes named; wanted files stay."""
    for name in ("a", "b"):
        (env.src / name).write_bytes(os.urandom(2 * MiB))
    (env.src / "huge").write_bytes(os.urandom(12 * MiB))
    d = DaemonProc(env, extra_env=FAST_SPACE_RETRY).ready()
    try:
        with env.prefetch() as p:
            p.want(["a", "b"], provider="local")
            wait_until(lambda: all(p.manifest.get(f).state == "ready" for f in "ab"))
            p.want(["huge"], provider="local")
            wait_until(lambda: p.manifest.get("huge").state == "failed", timeout=30)
            assert p.manifest.get("huge").error == (
                "huge: needs 12 MiB, the filesystem holds 8 MiB")
            time.sleep(6)  # past a space-retry round: nothing comes back to evict
            assert [p.manifest.get(f).state for f in "ab"] == ["ready", "ready"]
            assert not [e for e in event_rows(p.manifest) if e.kind == "evict"]
            assert p.manifest.get("huge").state == "failed"
        assert (env.root / "downloads/a/a").exists() and (env.root / "downloads/b/b").exists()
        assert "deleted" not in d.logtext()
    finally:
        assert d.stop() == 0


def test_unknown_size_that_never_fits_waits_while_a_file_that_fits_completes(
        env, tiny_root, server):
    """A chunked 10 MiB body with 5 MiB free: after ENOSPC its size reached is its known
    minimum; it is not fetched again while that much is not free, and a 3 MiB file
    that fits completes meanwhile."""
    from tests.servers.files_api import Fault

    (env.src / "pinned").write_bytes(os.urandom(3 * MiB))
    (env.src / "fits").write_bytes(os.urandom(3 * MiB))
    server.add("blob", os.urandom(10 * MiB))
    server.fault("blob", *[Fault(no_length=True) for _ in range(50)])
    blob = f"{server.url}/raw/blob"
    d = DaemonProc(env, extra_env=FAST_SPACE_RETRY).ready()
    try:
        with env.prefetch() as p:
            p.want(["pinned"], provider="local", pin=True)
            wait_until(lambda: p.manifest.get("pinned").state == "ready")
            p.want([blob])
            p.want(["fits"], provider="local")
            wait_until(lambda: p.manifest.get("fits").state == "ready", timeout=60)
            # Refused from its known minimum, without a request or a byte written.
            wait_until(lambda: "filled the disk at" in (p.manifest.get(blob).error or ""),
                       timeout=60)
            row = p.manifest.get(blob)
            assert row.min_size and row.min_size > 1 * MiB
            gets = len(server.content_requests("blob"))
            time.sleep(12)  # two space-retry rounds and more
            assert len(server.content_requests("blob")) == gets
            assert p.manifest.get(blob).state in ("waiting_space", "queued")
            assert p.manifest.get("pinned").state == "ready"
            assert p.manifest.get("fits").state == "ready"
        assert os.listdir(env.root / ".prefetchd/tmp") == []
    finally:
        assert d.stop() == 0


def test_evicted_entry_still_wanted_is_fetched_again_when_it_fits(env, tiny_root):
    """a is evicted to make room for c; once b is released, a scheduled pass queues a
    again (it fits without evicting anything) and it is downloaded a second time."""
    env.write_config(extra='[retention]\ninterval = "1s"\n')
    for name in ("a", "b", "c"):
        (env.src / name).write_bytes(os.urandom(3 * MiB))
    d = DaemonProc(env, extra_env=FAST_SPACE_RETRY).ready()
    try:
        with env.prefetch() as p:
            for name in "abc":
                p.want([name], provider="local")
                wait_until(lambda n=name: p.manifest.get(n).state == "ready", timeout=30)
            assert p.manifest.get("a").state == "evicted"
            assert p.manifest.get("a").wanted == 1
            p.release(["b"])
            wait_until(lambda: p.manifest.get("a").state == "ready", timeout=30)
            assert [e.kind for e in event_rows(p.manifest, "a")
                    if e.kind in ("download", "evict")] == ["download", "evict", "download"]
            assert p.manifest.get("c").state == "ready"  # a's return evicted nobody
        assert (env.root / "downloads/a/a").read_bytes() == (env.src / "a").read_bytes()
    finally:
        assert d.stop() == 0
