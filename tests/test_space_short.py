"""A near-full disk serves what fits (issue 22, point 3), on a real 64 MiB tmpfs.

Downloads of unknown length (chunked, no Content-Length) cannot claim their size
before they start. When space is short they run one at a time, so one that cannot
fit never fills the disk under one that can; one that hit ENOSPC knows its minimum
and is not fetched again until that much is free (or fails at once when even the
empty filesystem is smaller).

What is asserted is what happened (origin requests, states, the order of events),
never how long it took.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.daemon_helpers import DaemonProc, wait_until
from tests.servers.files_api import Fault
from tests.support.rows import event_rows

MiB = 1024 * 1024
WAIT = 120.0  # a bound for a busy machine, not a measurement


@pytest.fixture
def root64(env):
    mnt = env.tmp / "t64"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        if os.environ.get("CI") == "true" and os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs as root: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    env.root = mnt / "root"
    env.write_config(download="concurrency = 4")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill_to(mnt, free: int) -> None:
    """Someone else's file, so that `free` bytes are left on the filesystem."""
    st = os.statvfs(mnt)
    have = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as f:
        left = have - free
        while left > 0:
            n = min(left, 4 * MiB)
            f.write(b"\0" * n)
            left -= n


def _chunked(server, fid: str, size: int, *first: Fault, times: int = 40) -> str:
    """A file served without Content-Length (chunked): `first` faults, then plain."""
    server.add(fid, os.urandom(size))
    server.fault(fid, *first, *[Fault(no_length=True) for _ in range(times)])
    return f"{server.url}/raw/{fid}"


def _partial_bytes(env) -> int:
    tmp = env.root / ".prefetchd" / "tmp"
    return sum(f.stat().st_size for f in tmp.glob("*.part")) if tmp.exists() else 0


def _kinds(p, fid: str) -> list[str]:
    return [e.kind for e in event_rows(p.manifest, fid)]


def test_a_file_that_fits_alone_is_never_starved_by_one_that_cannot(env, root64, server):
    """22 MiB free, a 45 MiB and a 20 MiB file of unknown length wanted together, with
    the one that cannot fit first in line: the 20 MiB file is downloaded with one
    request and no ENOSPC; the 45 MiB file learns its minimum and then waits without
    another request while that much is not free."""
    _fill_to(root64, 22 * MiB)
    # The big one comes slowly the first time, so the small one is wanted while it
    # streams (with both streaming, the small one ran out of room under the big one).
    big = _chunked(server, "big45", 45 * MiB, Fault(no_length=True, rate=8 * MiB))
    small = _chunked(server, "small20", 20 * MiB)
    d = DaemonProc(env, extra_env={"_PREFETCHD_SPACE_RETRY": "0.2"}).ready()
    try:
        with env.prefetch() as p:
            p.want([big])
            wait_until(lambda: _partial_bytes(env) >= 4 * MiB, WAIT, step=0.02)
            p.want([small])
            wait_until(lambda: p.manifest.get(small).state == "ready", WAIT, step=0.1)
            assert _kinds(p, small) == ["download"], _kinds(p, small)
            assert len(server.content_requests("small20")) == 1
            # It waited for its turn: one download of unknown length at a time.
            assert f'"file_id": "{small}", "note": "space is short' in d.logtext()
            # The big one filled the disk once, learned its minimum, and is refused
            # from it from then on: no second request while less than that is free.
            wait_until(lambda: "filled the disk at" in (p.manifest.get(big).error or ""),
                       WAIT, step=0.1)
            row = p.manifest.get(big)
            assert row.min_size is not None and row.min_size > 2 * MiB
            assert row.state in ("waiting_space", "queued")
            asked = len(server.content_requests("big45"))
            # Several space-retry rounds (0.2 s each): each refusal is recorded on
            # the entry (attempts grows) without asking the origin again.
            before = p.manifest.get(big).attempts
            wait_until(lambda: p.manifest.get(big).attempts >= before + 2, WAIT, step=0.1)
            assert len(server.content_requests("big45")) == asked == 1
            assert p.manifest.get(small).state == "ready"
            # Room for it (the filler and the small file go): fetched, it completes.
            (root64 / "filler").unlink()
            p.release([small])
            wait_until(lambda: p.manifest.get(big).state == "ready", WAIT, step=0.1)
        assert os.listdir(env.root / ".prefetchd/tmp") == []
    finally:
        assert d.stop() == 0


def test_unknown_length_larger_than_the_empty_filesystem_fails_at_once(env, root64, server):
    """70 MiB of unknown length on a 64 MiB filesystem that holds nothing else: it fills
    the disk once, and then fails for good (no waiting for space that can never come)."""
    huge = _chunked(server, "huge70", 70 * MiB)
    d = DaemonProc(env, extra_env={"_PREFETCHD_SPACE_RETRY": "0.2"}).ready()
    try:
        with env.prefetch() as p:
            p.want([huge])
            wait_until(lambda: p.manifest.get(huge).state == "failed", WAIT, step=0.1)
            assert "the filesystem holds 64 MiB" in p.manifest.get(huge).error
            assert len(server.content_requests("huge70")) == 1
            # At once: its one failure is the final one (it never waited for space).
            events = event_rows(p.manifest, huge)
            assert [e.kind for e in events] == ["failure"], events
            assert "the filesystem holds 64 MiB" in (events[0].error or "")
        assert os.listdir(env.root / ".prefetchd/tmp") == []
    finally:
        assert d.stop() == 0
