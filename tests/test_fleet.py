"""The fleet as a fleet: several daemons, each with its own root and state dir, on one
PostgreSQL through the PostgREST and Storage stand-ins, the origin an OpenAI-compatible
files server that counts the content requests of each file.

What is asserted is what happened (origin requests per file, bytes on every host's
disk, rows in file_download_history), never how long it took; the waits are generous
bounds for a loaded machine.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import get_type_hints

import pytest

from prefetchd.errors import PermanentError
from prefetchd.shapes import FleetInfo
from tests.conftest import Env, sha
from tests.daemon_helpers import DaemonProc, wait_until
from tests.servers.files_api import Fault, FilesServer
from tests.supa_env import ANON_KEY, SERVICE_KEY, mint

GROUP = "g1"
CACHE = "fleet-cache"
WAIT = 180.0  # a bound for a busy machine, not a measurement


class Host:
    """One fleet member: its own tmp dir, root, state dir, config and host key."""

    def __init__(self, tmp: Path, name: str, server: FilesServer, sb, *,  # noqa: PLR0913
                 group: str = GROUP,
                 key: str | None = None, lease: str = "10s", download: str = "",
                 fleet: str = "") -> None:
        d = tmp / name
        (d / "src").mkdir(parents=True)
        self.name = name
        self.env = Env(d, server, d / "prefetchd.toml", d / "root", d / "state", d / "src")
        # As on hosted Supabase: the anon key as apikey, the host's JWT as bearer.
        self.env.environ["ANON_KEY"] = ANON_KEY
        self.env.environ["FLEET_KEY"] = key if key is not None else mint(group, name)
        self.env.write_config(download=download, extra=f"""
[supabase]
url = "{sb.srv.url}"
key = "env:ANON_KEY"
token = "env:FLEET_KEY"
schema = "{sb.schema}"
push_interval = "300ms"

[fleet]
group = "{group}"
host = "{name}"
poll_interval = "200ms"
report_interval = "300ms"
cache_bucket = "{CACHE}"
lease = "{lease}"
wait_poll = "200ms"
{fleet}
""")
        self.proc: DaemonProc | None = None

    def start(self) -> Host:
        self.proc = DaemonProc(self.env)
        return self

    def ready(self) -> Host:
        assert self.proc is not None
        self.proc.ready(60)
        return self

    def rows(self) -> dict[str, tuple[str, str | None, str | None]]:
        """file_id -> (state, path, sha256), read-only (never creates the database)."""
        db = self.env.state / "prefetchd.db"
        if not db.exists():
            return {}
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
                "SELECT file_id, state, path, sha256 FROM files")}
        finally:
            conn.close()

    def ready_ids(self) -> set[str]:
        return {fid for fid, (state, _p, _s) in self.rows().items() if state == "ready"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.alive:
            self.proc.stop()


@pytest.fixture
def sb(supa_server):
    """The PostgREST and Storage stand-ins on this test's schema."""
    return supa_server


@pytest.fixture
def hosts(tmp_path, server, sb):
    made: list[Host] = []

    def make(name: str, **kw) -> Host:
        h = Host(tmp_path, name, server, sb, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


@pytest.fixture
def admin(tmp_path, server, sb) -> Env:
    """A machine with the service key: it writes the group's wanted-set."""
    d = tmp_path / "admin"
    (d / "src").mkdir(parents=True)
    e = Env(d, server, d / "prefetchd.toml", d / "root", d / "state", d / "src")
    e.environ["ADMIN_KEY"] = SERVICE_KEY
    e.write_config(extra=f"""
[supabase]
url = "{sb.srv.url}"
key = "env:ADMIN_KEY"
schema = "{sb.schema}"

[fleet]
group = "{GROUP}"
cache_bucket = "{CACHE}"
""")
    return e


def add_files(server: FilesServer, n: int, prefix: str = "file-fleet") -> dict[str, bytes]:
    rng = random.Random(n)
    files = {f"{prefix}-{i:02d}": rng.randbytes(rng.randint(1, 40_000)) for i in range(n)}
    for fid, data in files.items():
        server.add(fid, data, f"{fid}.bin")
    return files


def assert_on_disk(host: Host, files: dict[str, bytes]) -> None:
    rows = host.rows()
    for fid, data in files.items():
        state, path, digest = rows[fid]
        assert state == "ready" and digest == sha(data), (host.name, fid, state)
        assert (host.env.root / path).read_bytes() == data, (host.name, fid)


def origin_counts(server: FilesServer, files) -> dict[str, int]:
    return {fid: len(server.content_requests(fid)) for fid in files}


def history(sb) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in sb.pg.execute(
        f"SELECT host, file_id, source FROM {sb.schema}.file_download_history").fetchall()]


def test_fifty_files_one_origin_download_each_and_a_late_host_none(admin, hosts, server, sb):
    files = add_files(server, 50)
    r = admin.cli("fleet", "want", *files)
    assert r.returncode == 0, r.stderr
    four = [hosts(f"h{i}").start() for i in range(1, 5)]
    for h in four:
        h.ready()
    wait_until(lambda: all(h.ready_ids() >= set(files) for h in four), WAIT, step=0.2)
    for h in four:
        assert_on_disk(h, files)
        # Host keys read provider_file_uploads (resolution) like the service key does.
        assert "lookup_failed" not in h.proc.logtext()
    assert origin_counts(server, files) == dict.fromkeys(files, 1)

    late = hosts("h5").start().ready()
    wait_until(lambda: late.ready_ids() >= set(files), WAIT, step=0.2)
    assert_on_disk(late, files)
    assert origin_counts(server, files) == dict.fromkeys(files, 1)  # zero from the late host

    # The history: every (host, file) once; 50 from the origin, the rest from Storage.
    wait_until(lambda: len(history(sb)) >= 250, WAIT, step=0.2)
    rows = history(sb)
    assert len(rows) == 250 and len({(h, f) for h, f, _s in rows}) == 250
    assert sum(1 for *_x, s in rows if s == "origin") == 50
    assert sum(1 for *_x, s in rows if s == "storage") == 200
    assert {h for h, _f, s in rows if s == "storage"} <= {"h1", "h2", "h3", "h4", "h5"}

    # fleet status: every host reported 50 ready; a file_id shows its holders.
    def reported() -> dict:
        out = admin.cli("fleet", "status", "--json")
        assert out.returncode == 0, out.stderr
        return {h["host"]: h for h in json.loads(out.stdout)["hosts"]}

    wait_until(lambda: all((reported().get(f"h{i}") or {}).get("ready") == 50
                           for i in range(1, 6)), WAIT, step=0.5)
    one = next(iter(files))
    out = json.loads(admin.cli("fleet", "status", one, "--json").stdout)
    assert sorted(h["host"] for h in out["file"]["hosts"] if h["state"] == "ready") == [
        "h1", "h2", "h3", "h4", "h5"]
    text = admin.cli("fleet", "status", one).stdout.splitlines()
    assert text[0] == f"group {GROUP}: 5 host(s)"
    assert all(any(line.startswith(f"  h{i}: seen ") and "ready 50," in line for line in text)
               for i in range(1, 6))
    assert f"{one}: on 5 host(s)" in text and "  h3: ready" in text


def holder(sb) -> str | None:
    row = sb.pg.execute(f"SELECT host FROM {sb.schema}.fleet_claims WHERE group_name = %s",
                        [GROUP]).fetchone()
    return row[0] if row else None


def partial_bytes(host: Host) -> int:
    tmp = host.env.root / ".prefetchd" / "tmp"
    return sum(p.stat().st_size for p in tmp.glob("*.part")) if tmp.exists() else 0


def test_kill9_of_the_claim_holder_costs_one_more_origin_download(admin, hosts, server, sb):
    data = random.Random(7).randbytes(6 << 20)
    server.add("file-big", data, "big.bin")
    server.fault("file-big", Fault(rate=1 << 20))  # the first download is slow
    three = {f"k{i}": hosts(f"k{i}", lease="6s").start() for i in range(1, 4)}
    for h in three.values():
        h.ready()
    assert admin.cli("fleet", "want", "file-big", "--sha256", sha(data)).returncode == 0
    name = wait_until(lambda: holder(sb), WAIT, step=0.05)
    victim = three[name]
    wait_until(lambda: partial_bytes(victim) > 0, WAIT, step=0.05)  # mid-download
    victim.proc.kill9()
    others = [h for n, h in three.items() if n != name]
    wait_until(lambda: all("file-big" in h.ready_ids() for h in others), WAIT, step=0.2)
    for h in others:
        assert_on_disk(h, {"file-big": data})
    assert len(server.content_requests("file-big")) == 2
    # Nothing partial at the killed host's destinations: no row is ready, no file there.
    assert victim.rows()["file-big"][0] != "ready"
    assert not list((victim.env.root / "downloads").rglob("*.bin"))
    # Back up, it takes the blob from the cache, not the origin.
    victim.start().ready()
    wait_until(lambda: "file-big" in victim.ready_ids(), WAIT, step=0.2)
    assert_on_disk(victim, {"file-big": data})
    assert len(server.content_requests("file-big")) == 2


def test_a_stopping_holder_releases_its_claim(admin, hosts, server, sb):
    """SIGTERM while the holder downloads: after the shutdown grace the download is
    cancelled (its partial kept) and the claim released, so no other host has to wait
    for the lease (a minute here) to run out."""
    data = random.Random(8).randbytes(4 << 20)
    server.add("file-stop", data, "stop.bin")
    server.fault("file-stop", Fault(rate=256 << 10))  # 16 s at least
    h = hosts("s1", lease="60s", download='shutdown_grace = "500ms"').start().ready()
    assert admin.cli("fleet", "want", "file-stop").returncode == 0
    wait_until(lambda: holder(sb) == "s1", WAIT, step=0.05)
    wait_until(lambda: partial_bytes(h) > 0, WAIT, step=0.05)
    assert h.proc.stop() == 0
    assert holder(sb) is None
    assert "fleet_release_failed" not in h.proc.logtext()


def test_the_lease_outlives_a_slow_upload(admin, hosts, server, sb):
    """The holder keeps renewing its lease until it releases it, upload included: an
    upload that takes almost three leases (a slow Storage) costs no second origin download."""
    data = random.Random(9).randbytes(4 << 20)
    server.add("file-slowup", data, "slowup.bin")
    digest = sha(data)
    blob = f"{GROUP}/sha256/{digest[:2]}/{digest}"
    sb.srv.upload_faults[f"{CACHE}/{blob}"] = deque([{"stall_s": 4.0}] * 4)  # 16 s
    two = [hosts(f"r{i}", lease="6s", fleet='upload_chunk = "1MiB"').start() for i in (1, 2)]
    for h in two:
        h.ready()
    assert admin.cli("fleet", "want", "file-slowup", "--sha256", digest).returncode == 0
    wait_until(lambda: all("file-slowup" in h.ready_ids() for h in two), WAIT, step=0.2)
    for h in two:
        assert_on_disk(h, {"file-slowup": data})
    assert len(server.content_requests("file-slowup")) == 1
    wait_until(lambda: len(history(sb)) == 2, WAIT, step=0.2)
    rows = history(sb)
    assert sorted(s for *_x, s in rows) == ["origin", "storage"]


def test_a_lying_cache_is_never_published(admin, hosts, server, sb):
    """A blob whose bytes do not hash to its name: the host refuses it and goes to the
    origin (once), and publishes the right bytes."""
    data = b"the right bytes" * 1000
    server.add("file-lie", data, "lie.bin")
    digest = sha(data)
    path = f"{GROUP}/sha256/{digest[:2]}/{digest}"
    sb.put_object(path, b"X" * len(data), bucket=CACHE)
    sb.pg.execute(f"INSERT INTO {sb.schema}.fleet_blobs (group_name, sha256, size,"
                    " object_path, uploaded_by) VALUES (%s, %s, %s, %s, 'liar')",
                    [GROUP, digest, len(data), path])
    h = hosts("l1").start().ready()
    assert admin.cli("fleet", "want", "file-lie", "--sha256", digest).returncode == 0
    wait_until(lambda: "file-lie" in h.ready_ids(), WAIT, step=0.2)
    assert_on_disk(h, {"file-lie": data})
    assert len(server.content_requests("file-lie")) == 1


def test_supabase_down_hosts_carry_on_and_catch_up_exactly(hosts, server, sb):
    files = add_files(server, 5, prefix="file-out")
    two = [hosts(f"o{i}").start() for i in (1, 2)]
    for h in two:
        h.ready()
    # Down as a real server goes down: the hosts' kept-alive connections drop too (the
    # stand-in's stop() closes them; before it did, a host could go on polling through
    # one and never see the outage).
    stopped = sb.srv
    stopped.stop()
    for h in two:  # local wants, through each daemon's socket
        r = h.env.cli("get", *files, "--timeout", "120s")
        assert r.returncode == 0, r.stderr
        assert_on_disk(h, files)
    assert origin_counts(server, files) == dict.fromkeys(files, 2)  # alone: no claims

    def fleet_status(h: Host) -> dict:
        r = h.env.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["fleet"]

    down = wait_until(lambda: fleet_status(two[0])["last_error"], WAIT, step=0.2)
    assert "supabase" in down and "FLEET_KEY" not in down
    answered = len(stopped.requests)
    wait_until(lambda: fleet_status(two[1])["last_error"], WAIT, step=0.2)
    assert len(stopped.requests) == answered  # nothing answered by the stopped server
    sb.restart()
    wait_until(lambda: len(history(sb)) >= 10, WAIT, step=0.2)

    def states() -> int:
        return sb.pg.execute(f"SELECT count(*) FROM {sb.schema}.fleet_states"
                               " WHERE state = 'ready'").fetchone()[0]

    wait_until(lambda: states() == 10, WAIT, step=0.2)
    seen = sb.pg.execute(f"SELECT max(last_seen) FROM {sb.schema}.fleet_hosts").fetchone()[0]
    wait_until(lambda: sb.pg.execute(f"SELECT min(last_seen) FROM {sb.schema}.fleet_hosts"
                                       ).fetchone()[0] > seen, WAIT, step=0.2)
    wait_until(lambda: not fleet_status(two[0])["last_error"], WAIT, step=0.2)
    shown = fleet_status(two[0])
    assert set(shown) == set(get_type_hints(FleetInfo))  # the documented shape
    assert shown["group"] == GROUP and shown["host"] == "o1" and shown["revision"] == 0
    rows = history(sb)
    assert len(rows) == 10 and {(h, f) for h, f, _s in rows} == {
        (h.name, f) for h in two for f in files}
    assert {s for *_x, s in rows} == {"origin"}


def test_local_and_fleet_wants_are_kept_apart(admin, hosts, server, sb):
    files = add_files(server, 2, prefix="file-apart")
    a, b = files
    h = hosts("p1").start().ready()
    assert h.env.cli("want", a).returncode == 0  # a local user wants a
    assert admin.cli("fleet", "want", a, b).returncode == 0
    wait_until(lambda: h.ready_ids() >= {a, b}, WAIT, step=0.2)
    # A local forget or release of what only the fleet claims is refused (the local
    # user holds no claim on it): the fleet's claim and its file stay.
    for cmd in ("forget", "release"):
        r = h.env.cli(cmd, b)
        assert r.returncode == 1 and (f"no claim of uid {os.getuid()} to {cmd}: {b} "
                                      "(held by fleet group") in r.stderr, (cmd, r.stderr)
        assert h.rows()[b][0] == "ready"
    assert admin.cli("fleet", "forget", a, b).returncode == 0
    wait_until(lambda: b not in h.rows(), WAIT, step=0.2)
    assert h.rows()[a][0] == "ready"  # the local want keeps it
    assert_on_disk(h, {a: files[a]})
    assert not list((h.env.root / "downloads").rglob(f"{b}.bin"))


def test_upload_is_chunked_and_resumes_after_a_cut(tmp_path, sb):
    """The blob upload: TUS in chunks (1 MiB here), a PATCH cut mid-chunk resumes from
    the offset the server reports; an object already there is success, not an error."""
    from collections import deque

    from prefetchd.fleet.upload import Uploader

    data = random.Random(3).randbytes((3 << 20) + 12345)
    src = tmp_path / "blob"
    src.write_bytes(data)
    key = mint(GROUP, "u1")
    name = f"{GROUP}/sha256/{sha(data)[:2]}/{sha(data)}"
    sb.srv.upload_faults[f"{CACHE}/{name}"] = deque([{}, {"cut_after": 300_000}])
    up = Uploader(sb.srv.url, ANON_KEY, key, chunk=1 << 20, timeout=10)
    try:
        assert up.upload(src, CACHE, name) == len(data)
        assert sb.object_bytes(name, CACHE) == data
        # Chunk 2 is cut after 300,000 bytes; a HEAD on the object says it is not there
        # yet, a HEAD on the upload says where it got to; the rest (1.7 MiB) follows
        # from there in two chunks: nothing sent twice.
        methods = [r["method"] for r in sb.srv.requests]
        assert methods == ["POST", "PATCH", "PATCH", "HEAD", "HEAD", "PATCH", "PATCH"]
        assert up.upload(src, CACHE, name) == 0  # already there
        other = mint("g2", "u2")  # another group's key may not write under g1/
        refused = Uploader(sb.srv.url, ANON_KEY, other, chunk=1 << 20, timeout=10)
        with pytest.raises(PermanentError, match="403"):
            refused.upload(src, CACHE, f"{GROUP}/x")
        refused.close()
    finally:
        up.close()


def test_host_keys_read_the_wanted_set_but_cannot_write_it(hosts, server, sb):
    h = hosts("w1")
    r = h.env.cli("fleet", "want", "file-x")
    assert r.returncode == 1
    assert r.stderr == ("prefetchd: error: supabase prefetchd_fleet_want: a host key cannot"
                        " write the wanted-set (42501)\n"), r.stderr
    assert "Traceback" not in r.stderr and mint(GROUP, "w1") not in r.stderr


def test_fleet_command_without_fleet_config_is_a_usage_error(env):
    r = env.cli("fleet", "status")
    assert r.returncode == 2 and "needs [fleet] and [supabase]" in r.stderr, r.stderr


def test_upload_memory_does_not_grow_with_the_file(tmp_path, sb):
    """A 256 MiB upload in a fresh process: its peak RSS grows by well under the file
    (one 6 MiB chunk buffer; fresh 6 MiB bytes per chunk grew it by ~120 MiB)."""
    blob = tmp_path / "blob"
    with open(blob, "wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    script = f"""
import asyncio
from pathlib import Path
from prefetchd.fleet.upload import Uploader
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
up = Uploader({sb.srv.url!r}, {ANON_KEY!r}, {mint(GROUP, "m1")!r}, chunk=6 << 20, timeout=60)
before = hwm()
asyncio.run(asyncio.to_thread(up.upload, Path({str(blob)!r}), {CACHE!r}, "{GROUP}/m/blob"))
print(hwm() - before)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) < 48 * 1024, f"peak RSS grew by {int(r.stdout) // 1024} MiB"
    assert (sb.storage_dir / CACHE / GROUP / "m" / "blob").stat().st_size == 256 << 20


def test_a_cache_hit_keeps_the_file_name(admin, hosts, server, sb):
    """A file wanted with its sha256 and served from the Storage cache is published
    under the origin's name (carried by fleet_blobs.name), not as its 64-hex hash."""
    data = b"named bytes " * 1000
    server.add("file-named", data, "o1.bin")
    digest = sha(data)
    path = f"{GROUP}/sha256/{digest[:2]}/{digest}"
    sb.put_object(path, data, bucket=CACHE)
    sb.pg.execute(f"INSERT INTO {sb.schema}.fleet_blobs (group_name, sha256, size,"
                  " object_path, uploaded_by, name) VALUES (%s, %s, %s, %s, 'other', 'o1.bin')",
                  [GROUP, digest, len(data), path])
    h = hosts("n1").start().ready()
    assert admin.cli("fleet", "want", "file-named", "--sha256", digest).returncode == 0
    wait_until(lambda: "file-named" in h.ready_ids(), WAIT, step=0.2)
    assert (h.env.root / "downloads" / "file-named" / "o1.bin").read_bytes() == data
    assert server.content_requests("file-named") == []  # it came from the cache


def _tus(sb, method: str) -> list[dict]:
    return [r for r in sb.srv.requests if r["method"] == method
            and r["path"].startswith("/storage/v1/upload/resumable")]


def _lines(h: Host, event: str, level: str | None = None) -> list[str]:
    return [line for line in h.proc.logtext().splitlines() if f'"event": "{event}"' in line
            and (level is None or f'"level": "{level}"' in line)]


def test_a_file_over_the_cache_limit_comes_from_the_origin_and_is_said_once(
        admin, hosts, server, sb):
    """Storage refuses the blob (413 `Maximum size exceeded`: the cache bucket's
    file_size_limit): the holder's file is ready anyway, the claim is released, the
    group records the file as too big (one warning in the whole group), and every host,
    again after a forget and a new want, fetches it from the origin without a lease and
    without trying the upload again."""
    sb.pg.execute(f"UPDATE {sb.schema}.buckets SET file_size_limit = %s WHERE id = %s",
                  [64 << 10, CACHE])
    data = random.Random(14).randbytes(300_000)
    server.add("file-toobig", data, "toobig.bin")
    two = [hosts(f"t{i}", lease="600s").start() for i in (1, 2)]
    for h in two:
        h.ready()
    assert admin.cli("fleet", "want", "file-toobig").returncode == 0
    wait_until(lambda: all("file-toobig" in h.ready_ids() for h in two), WAIT, step=0.2)
    for h in two:
        assert_on_disk(h, {"file-toobig": data})
    wait_until(lambda: sb.one("SELECT count(*) FROM {s}.fleet_uncacheable")[0] == 1,
               WAIT, step=0.1)
    wait_until(lambda: holder(sb) is None, WAIT, step=0.1)  # released (the lease is 600 s)
    assert len(server.content_requests("file-toobig")) == 2  # each host from the origin
    row = sb.one("SELECT sha256, size, recorded_by, reason FROM {s}.fleet_uncacheable")
    assert row[:2] == (sha(data), len(data)) and "413 Maximum size exceeded" in row[3]
    assert sb.one("SELECT count(*) FROM {s}.fleet_blobs")[0] == 0
    said = [line for h in two for line in _lines(h, "fleet_too_big_for_cache", "warning")]
    assert len(said) == 1 and row[2] in {h.name for h in two}
    assert not [line for h in two for line in _lines(h, "fleet_share_failed")]
    assert len(_tus(sb, "POST")) == 1 and _tus(sb, "PATCH") == []  # refused at creation

    # Once more, from scratch on both hosts: origin again, no upload, nothing said again.
    assert admin.cli("fleet", "forget", "file-toobig").returncode == 0
    wait_until(lambda: all("file-toobig" not in h.rows() for h in two), WAIT, step=0.2)
    assert admin.cli("fleet", "want", "file-toobig").returncode == 0
    wait_until(lambda: all("file-toobig" in h.ready_ids() for h in two), WAIT, step=0.2)
    assert len(server.content_requests("file-toobig")) == 4
    assert len(_tus(sb, "POST")) == 1
    assert len([line for h in two for line in _lines(h, "fleet_too_big_for_cache", "warning")]
               ) == 1
    out = json.loads(admin.cli("fleet", "status", "--json").stdout)
    assert [(u["file_id"], u["sha256"]) for u in out["uncacheable"]] == [
        ("file-toobig", sha(data))]


def test_a_missing_cache_bucket_is_one_clear_error_and_the_claim_is_released(
        admin, hosts, server, sb):
    """`Bucket not found` on the TUS create (404, text): one warning that names the
    bucket, no PATCH, the upload ends and the claim is released at once (the lease is
    600 s), the file ready from the origin."""
    data = random.Random(15).randbytes(50_000)
    server.add("file-nobucket", data, "nobucket.bin")
    h = hosts("b1", lease="600s")
    h.env.config.write_text(h.env.config.read_text().replace(
        f'cache_bucket = "{CACHE}"', 'cache_bucket = "no-such-cache"'))
    h.start().ready()
    assert admin.cli("fleet", "want", "file-nobucket").returncode == 0
    wait_until(lambda: "file-nobucket" in h.ready_ids(), WAIT, step=0.2)
    assert_on_disk(h, {"file-nobucket": data})
    wait_until(lambda: _lines(h, "fleet_share_failed"), WAIT, step=0.1)
    wait_until(lambda: holder(sb) is None, 60, step=0.1)  # released, not expired
    lines = _lines(h, "fleet_share_failed")
    assert len(lines) == 1, lines
    assert "404 Bucket not found" in lines[0] and "no-such-cache" in lines[0], lines[0]
    assert "Traceback" not in h.proc.logtext()
    assert len(_tus(sb, "POST")) == 1 and _tus(sb, "PATCH") == []
    assert sb.one("SELECT count(*) FROM {s}.fleet_blobs")[0] == 0
