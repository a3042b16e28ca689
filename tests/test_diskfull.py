"""Disk full on a real tiny tmpfs: waiting_space, a cleanup pass, no partial, recovery."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from tests.daemon_helpers import DaemonProc, wait_until

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
        assert p.manifest.get("big")["state"] == "waiting_space"


def test_size_pressure_evicts_least_recently_used(env, tiny_root):
    for name in ("a", "b", "c"):
        (env.src / name).write_bytes(os.urandom(3 * MiB))
    d = DaemonProc(env).ready()
    try:
        with env.prefetch() as p:
            p.want(["a"], provider="local")
            wait_until(lambda: p.manifest.get("a")["state"] == "ready")
            p.want(["b"], provider="local")
            wait_until(lambda: p.manifest.get("b")["state"] == "ready")
            p.want(["c"], provider="local")
            wait_until(lambda: p.manifest.get("c")["state"] == "ready", timeout=30)
            assert p.manifest.get("a")["state"] == "evicted"  # least recently used
            assert p.manifest.get("b")["state"] == "ready"
    finally:
        assert d.stop() == 0


def test_daemon_waits_for_space_cleans_up_and_finishes(env, tiny_root, server):
    for name in ("a", "b", "c"):
        (env.src / name).write_bytes(os.urandom(3 * MiB))
    d = DaemonProc(env).ready()
    try:
        with env.prefetch() as p:
            p.want(["a", "b"], provider="local", pin=True)  # pinned: never evicted
            wait_until(lambda: all(p.manifest.get(f)["state"] == "ready" for f in "ab"))
            # c does not fit (8 MiB tmpfs, 6 MiB used): it waits, nothing partial lands.
            p.want(["c"], provider="local")
            wait_until(lambda: p.manifest.get("c")["state"] == "waiting_space")
            time.sleep(6)  # past one retry round: still waiting, daemon still up
            assert p.manifest.get("c")["state"] in ("waiting_space", "queued")
            assert not (env.root / "downloads/c/c").exists()
            assert d.alive
            # Once a ready file is no longer wanted, the cleanup pass (triggered by the
            # full disk) removes it and c completes without anyone stepping in.
            p.unwant(["a"])
            wait_until(lambda: p.manifest.get("c")["state"] == "ready", timeout=30)
            assert p.manifest.get("a")["state"] == "evicted"
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
    assert r.returncode == 1 and "no space left" in r.stderr
    assert not (env.root / "downloads").exists() or os.listdir(env.root / "downloads") == []
    assert [n for n in os.listdir(env.root / ".prefetchd/tmp")] == []


def test_space_checks_between_statvfs_calls_count_what_they_let_through(env, tiny_root):
    """Between two statvfs calls, downloads already let through are counted as used:
    two that fit only one at a time are not both started; after a refusal the next
    check asks the filesystem again (space may have come back)."""
    from daemon.errors import NoSpaceError
    from daemon.fetch import Engine

    with env.prefetch() as p:
        engine = Engine(p.settings, p.manifest, p.store)
        try:
            engine._check_space("a", 5 * MiB)
            with pytest.raises(NoSpaceError, match="b: needs"):
                engine._check_space("b", 5 * MiB)
            filler = env.root / "filler"
            filler.write_bytes(b"x" * 4 * MiB)  # another writer takes space meanwhile
            with pytest.raises(NoSpaceError):
                engine._check_space("c", 5 * MiB)
            filler.unlink()
            engine._check_space("c", 5 * MiB)  # asked again: the space is back
        finally:
            asyncio.run(engine.aclose())
