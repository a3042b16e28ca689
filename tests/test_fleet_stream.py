# ruff: noqa: F811 - the fixtures imported from tests.test_fleet are parameters here
"""The holder's cache upload follows its download, and the waiting hosts learn when
the blob will be there (issue 22, point 4), with several daemons on one PostgreSQL
through the PostgREST and Storage stand-ins, the origin the files server.

The origin holds back the last bytes of the file until the test lets them go
(Fault.hold), so what happens while the download runs is seen without any timing:
the upload is under way, Storage holds no complete blob, and the final PATCH comes
only after the test released the last bytes (and so after the holder verified them).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from prefetchd.fleet.feed import Abandoned, Feed
from prefetchd.fleet.upload import Uploader
from tests.conftest import sha
from tests.daemon_helpers import wait_until
from tests.servers.files_api import Fault
from tests.supa_env import ANON_KEY, SERVICE_KEY, mint
from tests.test_fleet import (  # noqa: F401 - the fixtures
    CACHE,
    GROUP,
    WAIT,
    admin,
    assert_on_disk,
    history,
    holder,
    hosts,
    sb,
)

MiB = 1 << 20
# Small chunks, so a few MiB make many: the upload's and the download's writes.
STREAMING = dict(fleet='upload_chunk = "1MiB"', download='chunk_size = "256KiB"')


def blob_name(data: bytes) -> str:
    digest = sha(data)
    return f"{GROUP}/sha256/{digest[:2]}/{digest}"


def patches(sb, name: str) -> list[dict]:
    """The TUS PATCHes of uploads of `name` (the upload id carries bucket/name)."""
    import base64

    out = []
    for r in list(sb.srv.requests):
        if r["method"] != "PATCH" or "/upload/resumable/" not in r["path"]:
            continue
        upload_id = r["path"].rsplit("/", 1)[1]
        decoded = base64.urlsafe_b64decode(upload_id + "=" * (-len(upload_id) % 4)).decode()
        if decoded.startswith(f"{CACHE}/{name}/"):
            out.append(r)
    return out


def tus(sb, method: str) -> list[dict]:
    return [r for r in list(sb.srv.requests) if r["method"] == method
            and r["path"].startswith("/storage/v1/upload/resumable")]


def sent_up_to(r: dict) -> int:
    return int(r["headers"]["upload-offset"]) + int(r["headers"]["content-length"])


def stored(sb, name: str) -> bool:
    """A complete object in Storage: its row, or its bytes in place."""
    row = sb.pg.execute(f"SELECT count(*) FROM {sb.schema}.objects WHERE bucket_id = %s"
                        " AND name = %s", [CACHE, name]).fetchone()[0]
    return bool(row) or (sb.storage_dir / CACHE / name).exists()


def lease_progress(sb) -> tuple[int | None, int | None]:
    row = sb.pg.execute(f"SELECT done, size FROM {sb.schema}.fleet_claims"
                        " WHERE group_name = %s", [GROUP]).fetchone()
    return (row[0], row[1]) if row else (None, None)


def test_the_upload_follows_the_download_and_ends_after_verification(
        admin, hosts, server, sb):
    """Four hosts, one origin request: while the origin holds back the last 1000 bytes,
    the holder has already sent every whole chunk it may (all but the last), says how
    far it got in its lease, and Storage has no blob yet; the final PATCH comes after
    the last bytes went out; the three others download from the cache."""
    data = random.Random(21).randbytes(8 * MiB + 12345)
    name = blob_name(data)
    hold = threading.Event()
    server.add("file-stream", data, "stream.bin")
    server.fault("file-stream", Fault(stall_after=len(data) - 1000, hold=hold))
    four = [hosts(f"f{i}", **STREAMING).start() for i in range(1, 5)]
    try:
        for h in four:
            h.ready()
        assert admin.cli("fleet", "want", "file-stream", "--sha256", sha(data)).returncode == 0
        # Bytes on the holder's disk: at least len - 1000 - 256 KiB, so the chunks up to
        # 7 MiB at least; the one that would complete the object never.
        wait_until(lambda: max((sent_up_to(r) for r in patches(sb, name)), default=0)
                   >= 7 * MiB, WAIT, step=0.05)
        wait_until(lambda: (lease_progress(sb)[0] or 0) >= MiB, WAIT, step=0.05)
        done, size = lease_progress(sb)
        assert size == len(data) and done < len(data)
        assert not stored(sb, name)
        assert all(sent_up_to(r) < len(data) for r in patches(sb, name))
        assert not any("file-stream" in h.ready_ids() for h in four)
    finally:
        released = time.time()
        hold.set()
    wait_until(lambda: all("file-stream" in h.ready_ids() for h in four), WAIT, step=0.1)
    for h in four:
        assert_on_disk(h, {"file-stream": data})
    assert len(server.content_requests("file-stream")) == 1
    assert sb.object_bytes(name, CACHE) == data
    sent = patches(sb, name)
    final = [r for r in sent if sent_up_to(r) == len(data)]
    assert len(final) == 1 and final[0]["at"] > released
    assert sum(1 for r in sent if r["at"] < released) >= 7  # under way before the end
    assert len(tus(sb, "POST")) == 1 and tus(sb, "DELETE") == []
    wait_until(lambda: len(history(sb)) == 4, WAIT, step=0.2)
    assert sorted(s for *_x, s in history(sb)) == ["origin", "storage", "storage", "storage"]
    # The waiting hosts read the lease (prefetchd_fleet_lease) rather than polling blind.
    assert any(r["path"].endswith("/rpc/prefetchd_fleet_lease") for r in sb.srv.requests)
    wait_until(lambda: holder(sb) is None, WAIT, step=0.1)


def test_a_large_http_body_is_followed_too(admin, hosts, server, sb):
    """The `http` provider's large bodies go through threads of their own (fetch.pump),
    which may write past the page cache; the upload that follows reads the same file
    back. Four hosts, one origin request, the blob streamed while the body arrives and
    complete in Storage, the three others from the cache."""
    from prefetchd.fetch.download import PUMP_MIN

    data = random.Random(25).randbytes(2 * PUMP_MIN + 12345)
    url = f"{server.url}/raw/file-pumped"
    name = blob_name(data)
    server.add("file-pumped", data, "pumped.bin")
    four = [hosts(f"p{i}", **STREAMING).start() for i in range(1, 5)]
    for h in four:
        h.ready()
    assert admin.cli("fleet", "want", url, "--sha256", sha(data)).returncode == 0
    wait_until(lambda: all(url in h.ready_ids() for h in four), WAIT, step=0.1)
    for h in four:
        assert_on_disk(h, {url: data})
    assert len(server.content_requests("file-pumped")) == 1
    assert sb.object_bytes(name, CACHE) == data
    assert len(tus(sb, "POST")) == 1 and tus(sb, "DELETE") == []
    wait_until(lambda: len(history(sb)) == 4, WAIT, step=0.2)
    assert sorted(s for *_x, s in history(sb)) == ["origin", "storage", "storage", "storage"]


def test_a_file_that_fails_its_sha256_never_completes_a_blob(admin, hosts, server, sb):
    """The origin sends wrong bytes (twice: the holder gives up on the file). The upload
    that followed the first try is under way before the end, and is terminated, never
    completed: no object in Storage, no blob recorded, nothing left of the upload."""
    data = random.Random(22).randbytes(4 * MiB + 777)
    name = blob_name(data)
    hold = threading.Event()
    server.add("file-bad", data, "bad.bin")
    server.fault("file-bad", Fault(corrupt=True, stall_after=len(data) - 1000, hold=hold),
                 Fault(corrupt=True))
    h = hosts("x1", **STREAMING).start().ready()
    try:
        assert admin.cli("fleet", "want", "file-bad", "--sha256", sha(data)).returncode == 0
        wait_until(lambda: len(patches(sb, name)) >= 3, WAIT, step=0.05)
    finally:
        hold.set()
    wait_until(lambda: h.rows().get("file-bad", ("",))[0] == "failed", WAIT, step=0.1)
    wait_until(lambda: holder(sb) is None, WAIT, step=0.1)
    wait_until(lambda: len(tus(sb, "DELETE")) == 1, WAIT, step=0.1)
    assert len(server.content_requests("file-bad")) == 2
    assert all(sent_up_to(r) < len(data) for r in patches(sb, name))
    assert not stored(sb, name)
    assert sb.one("SELECT count(*) FROM {s}.fleet_blobs")[0] == 0
    assert list((sb.storage_dir / ".tus").glob("*.bin")) == []  # terminated
    assert "Traceback" not in h.proc.logtext()


# -- the uploader and its feed, without daemons ---------------------------------------------


class _Part:
    """A temp file as the download writes it (store.Partial's fd and size)."""

    def __init__(self, path: Path) -> None:
        import os

        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.size = 0

    def write(self, data: bytes) -> None:
        import os

        os.write(self.fd, data)
        self.size += len(data)


@pytest.mark.parametrize("changed", [False, True])
def test_the_last_chunk_goes_only_for_the_verified_bytes(tmp_path, sb, changed):
    """Uploader.follow: whole chunks go as the bytes come, the last one only after
    `verified`; and only when what Storage holds plus that chunk hash to the verified
    sha256. Bytes changed in the file after they were sent (a download that rewrote
    its file in place) end the upload unfinished (terminated)."""
    import os

    data = random.Random(23).randbytes(3 * MiB + 5)
    name = f"{GROUP}/t/{int(changed)}"
    part = _Part(tmp_path / "part")
    feed = Feed(sha(data))
    up = Uploader(sb.srv.url, ANON_KEY, mint(GROUP, "t1"), chunk=MiB, timeout=10)
    result: dict = {}

    def run() -> None:
        try:
            result["sent"] = up.follow(feed, CACHE, name)
        except Abandoned as e:
            result["abandoned"] = e.reason

    t = threading.Thread(target=run)
    t.start()
    first = (b"X" * 10 + data[10:2 * MiB + 100]) if changed else data[:2 * MiB + 100]
    try:
        part.write(first)
        feed.written(part, len(data))
        wait_until(lambda: len(patches(sb, name)) == 2, 60, step=0.02)
        if changed:  # rewritten in place, after it went up: the file is right now
            os.pwrite(part.fd, data[:10], 0)
        part.write(data[2 * MiB + 100:])
        feed.written(part, len(data))
        # Everything is on disk, but nothing completes the object before `verified`.
        assert [sent_up_to(r) for r in patches(sb, name)] == [MiB, 2 * MiB]
        assert not stored(sb, name)
        feed.verified(sha(data), len(data))
        t.join(60)
    finally:
        feed.fail("test over")
        t.join(60)
        feed.close()
        os.close(part.fd)
        up.close()
    if not changed:
        assert result == {"sent": len(data)}
        assert sb.object_bytes(name, CACHE) == data
    else:
        # Storage holds the first bytes as they were sent: with the last chunk they do
        # not hash to the verified sha256, so it is never sent; the upload is terminated.
        assert "abandoned" in result and "do not hash" in result["abandoned"]
        assert not stored(sb, name)
        assert len(tus(sb, "DELETE")) == 1
    assert all(sent_up_to(r) < len(data) for r in patches(sb, name)[:2])


def test_a_download_that_starts_over_abandons_the_followed_upload(tmp_path, sb):
    """The download's file shrinks (a restart from zero) after chunks were sent: the
    followed upload ends unfinished and is terminated."""
    import os

    data = random.Random(24).randbytes(3 * MiB)
    name = f"{GROUP}/t/over"
    part = _Part(tmp_path / "part")
    feed = Feed(sha(data))
    up = Uploader(sb.srv.url, ANON_KEY, mint(GROUP, "t2"), chunk=MiB, timeout=10)
    result: dict = {}

    def run() -> None:
        try:
            result["sent"] = up.follow(feed, CACHE, name)
        except Abandoned as e:
            result["abandoned"] = e.reason

    t = threading.Thread(target=run)
    t.start()
    try:
        part.write(data[:2 * MiB + 1])
        feed.written(part, len(data))
        wait_until(lambda: len(patches(sb, name)) == 2, 60, step=0.02)
        os.ftruncate(part.fd, 0)
        os.lseek(part.fd, 0, os.SEEK_SET)
        part.size = 0
        part.write(data[:MiB])
        feed.written(part, len(data))
        t.join(60)
    finally:
        feed.fail("test over")
        t.join(60)
        feed.close()
        os.close(part.fd)
        up.close()
    assert result == {"abandoned": "the download started over"}
    assert not stored(sb, name) and len(tus(sb, "DELETE")) == 1
    assert list((sb.storage_dir / ".tus").glob("*.bin")) == []


def test_termination_as_storage_answers_it(tmp_path, sb):
    """The stand-in's TUS DELETE: an unfinished upload is removed (204, then 404); a
    finished one is refused (400 `Cannot terminate an already completed upload`;
    @tus/server with disableTerminationForFinishedUploads); a HEAD on the object tells."""
    import httpx

    key = mint(GROUP, "t3")
    headers = {"apikey": ANON_KEY, "Authorization": f"Bearer {key}", "Tus-Resumable": "1.0.0"}
    from tests.servers.supabase_api import tus_metadata

    def create(name: str, length: int) -> str:
        r = httpx.post(f"{sb.srv.url}/storage/v1/upload/resumable", headers={
            **headers, "Upload-Length": str(length),
            "Upload-Metadata": tus_metadata(bucketName=CACHE, objectName=name)})
        assert r.status_code == 201, r.text
        return r.headers["location"]

    loc = create(f"{GROUP}/t/del", 10)
    r = httpx.patch(loc, content=b"12345", headers={
        **headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 204
    assert httpx.delete(loc, headers=headers).status_code == 204
    assert httpx.head(loc, headers=headers).status_code == 404
    assert httpx.delete(loc, headers=headers).status_code == 404
    done = create(f"{GROUP}/t/done", 3)
    assert httpx.patch(done, content=b"abc", headers={
        **headers, "Upload-Offset": "0",
        "Content-Type": "application/offset+octet-stream"}).status_code == 204
    service = {**headers, "apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"}
    r = httpx.delete(done, headers={**service, "x-upsert": "true"})  # may replace it
    assert (r.status_code, r.text) == (400, "Cannot terminate an already completed upload")
    r = httpx.delete(done, headers=headers)  # authorized first: the object exists
    assert r.status_code == 409 and "already exists" in r.text
    assert sb.object_bytes(f"{GROUP}/t/done", CACHE) == b"abc"
    assert len(tus(sb, "DELETE")) == 4  # logged like every request


def test_a_waiting_host_comes_back_when_the_holder_says():
    """The deferral policy: halfway to the blob's expected completion when the holder
    said lately, never under wait_poll, never over a third of the lease; the old
    backoff when it said nothing (or too long ago)."""
    from prefetchd.fleet.remote import Lease
    from prefetchd.fleet.tier import FRESH, deferral

    def said(eta: float | None, age: float | None = 0.5) -> Lease:
        return Lease("h1", 100.0, 10.0, 100.0, age, eta)

    assert deferral(0.5, 120, 0, None) == 0.5
    assert deferral(0.5, 120, 3, None) == 0.5 * 1.5 ** 3
    assert deferral(0.5, 120, 30, None) == 40.0
    assert deferral(0.5, 120, 3, said(10.0)) == 5.0
    assert deferral(0.5, 120, 3, said(4.0)) == 2.0
    assert deferral(0.5, 120, 3, said(0.2)) == 0.5
    assert deferral(0.5, 120, 0, said(1000.0)) == 40.0
    assert deferral(0.5, 120, 3, said(10.0, age=FRESH + 1)) == 0.5 * 1.5 ** 3  # stale
    assert deferral(0.5, 120, 3, said(None)) == 0.5 * 1.5 ** 3


def test_a_deferred_entry_wakes_the_daemon_when_it_is_due(tmp_path):
    """A deferral says when the entry is due again, and the daemon's loop is woken then
    (not at its next look at timers, up to RETRY_CHECK later); a deferral that says
    nothing wakes nothing."""
    import asyncio

    from prefetchd.config import load_settings
    from prefetchd.fetch.context import Deferred
    from prefetchd.service.daemon import Daemon

    settings = load_settings(None, root=tmp_path / "root", state_dir=tmp_path / "state",
                             environ={})

    class Elsewhere:
        def __init__(self, due_in):
            self.due_in = due_in

        async def fetch(self, file_id):
            raise Deferred(f"{file_id}: elsewhere", file_id=file_id, due_in=self.due_in)

    class Waits:
        def touch(self, file_id):
            pass

    async def woken(due_in):
        d = Daemon(settings)
        d.engine, d.waits = Elsewhere(due_in), Waits()
        await d._fetch_one("a")
        assert not d._wake.is_set()
        if due_in is None:
            await asyncio.sleep(0.3)
            return d._wake.is_set()
        await asyncio.wait_for(d._wake.wait(), timeout=30)
        return True

    assert asyncio.run(woken(0.05)) is True
    assert asyncio.run(woken(None)) is False


def test_the_holder_estimates_from_its_recent_pace():
    """The end a holder announces: from the pace since its last estimate, or since the
    upload was created when that is sooner; the first acknowledged chunk is said at
    once (measured from the upload's creation, not from the download's start), the
    next ones every PROGRESS_EVERY."""
    from prefetchd.fleet.tier import PROGRESS_EVERY, Pace

    size = 1024 * MiB
    pace = Pace()
    assert pace.eta(10.0, 0, size) is None  # created: the clock starts
    assert pace.eta(10.05, 6 * MiB, size) == pytest.approx(0.05 * 1018 / 6)
    assert pace.eta(10.5, 100 * MiB, size) is None  # said less than PROGRESS_EVERY ago
    later = 10.05 + PROGRESS_EVERY
    # 400 MiB in PROGRESS_EVERY: the rest at that pace, whatever came before
    assert pace.eta(later, 406 * MiB, size) == pytest.approx(618 / 400 * PROGRESS_EVERY)
    assert pace.eta(later + 2 * PROGRESS_EVERY, 406 * MiB, size) is None  # no progress
    # A slow spell (6 MiB in 3 PROGRESS_EVERY): the pace since the start says sooner
    slow = later + 3 * PROGRESS_EVERY
    assert pace.eta(slow, 412 * MiB, size) == pytest.approx(
        612 * (slow - 10.0) / 412)
    assert pace.eta(slow + PROGRESS_EVERY, size, size) is None  # complete: nothing


def test_the_hash_of_what_storage_holds_is_exact_through_cuts():
    """Each chunk is hashed while it is sent; that hash counts only when Storage
    acknowledges exactly that chunk. After a cut (Storage holds part of it) only the
    part it holds is hashed, and the last chunk goes only if all of it is the file."""
    import hashlib

    from prefetchd.fleet.upload import _Reader

    data = random.Random(3).randbytes(10 * MiB)
    view = memoryview(data)

    def part(a: int, b: int) -> memoryview:
        return view[a * MiB:b * MiB]

    def ready(_offset: int) -> tuple[int, bool]:
        raise AssertionError("not read here")

    reader = _Reader(ready, lambda _buf, _at: 0, hashlib.sha256(), sha(data))
    try:
        reader.sending(part(0, 4), 0)
        reader.acknowledged(part(0, 4), 0, 4 * MiB, len(data))
        reader.sending(part(4, 8), 4 * MiB)  # cut: Storage holds up to 5 MiB
        reader.acknowledged(part(4, 8), 4 * MiB, 5 * MiB, len(data))
        reader.sending(part(5, 8), 5 * MiB)
        reader.acknowledged(part(5, 8), 5 * MiB, 8 * MiB, len(data))
        with pytest.raises(Abandoned):
            reader.check_last(memoryview(bytes(2 * MiB)), 8 * MiB)  # not the file's end
        reader.check_last(part(8, 10), 8 * MiB)  # what Storage holds + this: the file
    finally:
        reader.close()
