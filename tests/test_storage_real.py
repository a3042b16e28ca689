"""prefetchd against Supabase Storage as it really behaves (the stand-in models each
behaviour after supabase/storage's source; see tests/servers/supabase_api.py):
If-Range ignored, errors as HTTP 400 with the real status in the body, a 0-byte TUS
upload complete at creation, every PATCH authorized again, host keys limited to the
cache bucket, and the fleet's blob names."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
from collections import deque

import httpx
import pytest

from prefetchd.errors import PrefetchError
from prefetchd.fleet.upload import Uploader
from prefetchd.providers.base import resume_validator
from tests.conftest import fetch, sha
from tests.supa_env import ANON_KEY, BUCKET, CACHE_BUCKET, ROLE_NAMES, SERVICE_KEY, mint
from tests.support.rows import event_rows

psycopg = pytest.importorskip("psycopg")
GROUP = "g1"


def gets(supa, name: str) -> list[dict]:
    return [r for r in supa.srv.requests if r["method"] == "GET"
            and r["path"].endswith(f"/object/authenticated/{BUCKET}/{name}")]


class ReplaceOnRetry:
    """The engine's sleep before a retry: replaces the object meanwhile (as a writer
    would between a killed download and its resume)."""

    def __init__(self, replace) -> None:
        self.replace = replace

    async def __call__(self, _delay: float) -> None:
        if self.replace is not None:
            self.replace()
            self.replace = None


# -- point 1: a 206 that is not the partial's content is never appended -------------------


def test_object_replaced_before_the_resume_is_downloaded_again_whole(env, supa):
    """Storage answers the resume's Range with a 206 from the *new* object (it ignores
    If-Range); prefetchd sees the changed ETag, drops the partial and starts over."""
    old, new = os.urandom(3 << 20), os.urandom(3 << 20)
    supa.put_object("r/obj.bin", old)
    supa.srv.storage_faults[f"{BUCKET}/r/obj.bin"] = deque([{"cut_after": 1_200_000}])
    with env.prefetch() as p:
        out = fetch(p, f"{BUCKET}/r/obj.bin",
                    sleep=ReplaceOnRetry(lambda: supa.put_object("r/obj.bin", new)))
        got = out.path.read_bytes()
    assert hashlib.sha256(got).hexdigest() == sha(new)  # never old prefix + new suffix
    g = gets(supa, "r/obj.bin")
    assert len(g) == 3
    assert g[1]["headers"]["range"] == "bytes=1200000-"  # the resume was tried...
    assert g[1]["headers"]["if-range"] == '"' + hashlib.md5(old).hexdigest() + '"'  # noqa: S324
    assert "range" not in g[2]["headers"]  # ...refused on its 206, and the file restarted


def test_unchanged_object_resumes_and_says_from_where(env, supa, caplog):
    """Point 8: a resume is visible: the `download` line carries resumed_from."""
    data = os.urandom(3 << 20)
    supa.put_object("r/same.bin", data)
    supa.srv.storage_faults[f"{BUCKET}/r/same.bin"] = deque([{"cut_after": 1_200_000}])
    caplog.set_level(logging.INFO)
    with env.prefetch() as p:
        out = fetch(p, f"{BUCKET}/r/same.bin", sleep=ReplaceOnRetry(None))
        assert out.path.read_bytes() == data
        (ev,) = [e for e in event_rows(p.manifest, f"{BUCKET}/r/same.bin") if e.kind == "download"]
        assert ev.resumed_from == 1_200_000  # the download event row says so too
    g = gets(supa, "r/same.bin")
    assert len(g) == 2 and g[1]["headers"]["range"] == "bytes=1200000-"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("download ")]
    assert any("resumed_from=1200000" in line for line in lines), lines


def test_a_multipart_etag_names_the_content():
    """An S3 backend's ETag `"<md5>-<parts>"` is not made of mtime and size: strong."""
    tag = '"' + "0123456789abcdef" * 2 + '-4"'
    assert resume_validator({"etag": tag}, 20 << 20) == (tag, False)


def test_multipart_etag_resume_through_the_stand_in(env, supa):
    supa.srv.multipart_etags = True
    data = os.urandom(3 << 20)
    etag = supa.put_object("r/mp.bin", data)
    assert etag.endswith('-1"')
    supa.srv.storage_faults[f"{BUCKET}/r/mp.bin"] = deque([{"cut_after": 1_000_000}])
    with env.prefetch() as p:
        assert fetch(p, f"{BUCKET}/r/mp.bin", sleep=ReplaceOnRetry(None)).path.read_bytes() == data
    g = gets(supa, "r/mp.bin")
    assert len(g) == 2 and g[1]["headers"]["if-range"] == etag


# -- point 4 / 6: errors say what they are ------------------------------------------------


def test_a_missing_object_is_not_found_not_http_400(env, supa):
    with env.prefetch() as p, pytest.raises(PrefetchError) as e:
        fetch(p, f"{BUCKET}/no/such.bin")
    assert "404" in str(e.value) and "not found at the provider" in str(e.value)


def test_an_expired_key_says_check_the_credentials(env, supa, monkeypatch):
    supa.put_object("r/k.bin", b"k" * 100)
    expired = mint(None, None, role="service_role", expires_in=-60)
    env.environ["SUPA_TOKEN"] = expired
    monkeypatch.setenv("SUPA_TOKEN", expired)
    cfg = env.config.read_text().replace('key = "env:SUPA_KEY"',
                                         'key = "env:SUPA_KEY"\ntoken = "env:SUPA_TOKEN"')
    env.config.write_text(cfg)
    with env.prefetch() as p, pytest.raises(PrefetchError) as e:
        fetch(p, f"{BUCKET}/r/k.bin")
    assert "403" in str(e.value) and "credentials" in str(e.value)


def test_storage_wire_behaviour(supa):
    """416 as JSON without Content-Range; GET/HEAD headers as stored; errors' texts."""
    supa.put_object("r/h.txt", b"hello", content_type="text/plain", cache_control="max-age=60")
    base = f"{supa.srv.url}/storage/v1/object/authenticated"
    auth = {"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"}
    r = httpx.get(f"{base}/{BUCKET}/r/h.txt", headers={**auth, "Range": "bytes=9-"})
    assert r.status_code == 416 and "content-range" not in r.headers
    assert r.json()["statusCode"] == "416"
    r = httpx.head(f"{base}/{BUCKET}/r/h.txt", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain"
    assert r.headers["cache-control"] == "max-age=60" and r.headers["last-modified"]
    assert r.headers["etag"] == '"' + hashlib.md5(b"hello").hexdigest() + '"'  # noqa: S324
    r = httpx.get(f"{base}/nobucket/x", headers=auth)
    assert r.status_code == 400 and r.json()["error"] == "Bucket not found"
    assert r.json()["code"] == "NoSuchBucket"


def test_a_replaced_smaller_object_is_416_then_a_fresh_download(env, supa):
    """The partial is longer than the new object: Storage's 416 (no Content-Range)."""
    old, new = os.urandom(3 << 20), os.urandom(1 << 20)
    supa.put_object("r/shrink.bin", old)
    supa.srv.storage_faults[f"{BUCKET}/r/shrink.bin"] = deque([{"cut_after": 2_000_000}])
    with env.prefetch() as p:
        out = fetch(p, f"{BUCKET}/r/shrink.bin",
                    sleep=ReplaceOnRetry(lambda: supa.put_object("r/shrink.bin", new)))
        assert out.path.read_bytes() == new


# -- point 2: a TUS upload always ends ------------------------------------------------------


def _bounded(fn, *args):
    """Run `fn` on a thread; the old uploader looped forever on these cases."""
    result: list = []

    def run() -> None:
        try:
            result.append((True, fn(*args)))
        except PrefetchError as e:
            result.append((False, e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the upload never ended"
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _uploader(supa, host: str = "u1") -> Uploader:
    return Uploader(supa.srv.url, ANON_KEY, mint(GROUP, host), chunk=1 << 20, timeout=10)


def test_a_zero_byte_blob_upload_ends(tmp_path, supa):
    src = tmp_path / "empty"
    src.write_bytes(b"")
    name = f"{GROUP}/sha256/{sha(b'')[:2]}/{sha(b'')}"
    up = _uploader(supa)
    try:
        assert _bounded(up.upload, src, CACHE_BUCKET, name) == 0
    finally:
        up.close()
    assert supa.object_bytes(name, CACHE_BUCKET) == b""
    assert len(supa.srv.requests) < 10


def test_two_uploaders_of_one_blob_both_end(tmp_path, supa):
    """B created its upload, then A's upload of the same blob finished: B's next PATCH
    is 409 `The resource already exists` (not an offset conflict): success."""
    data = random.Random(5).randbytes(3 << 20)
    src = tmp_path / "blob"
    src.write_bytes(data)
    name = f"{GROUP}/sha256/{sha(data)[:2]}/{sha(data)}"
    a, b = _uploader(supa, "ua"), _uploader(supa, "ub")
    try:
        location = b._create(CACHE_BUCKET, name, len(data))
        assert location is not None
        assert a.upload(src, CACHE_BUCKET, name) == len(data)
        fd = os.open(src, os.O_RDONLY)
        try:
            assert _bounded(b._send_file, fd, len(data), location, CACHE_BUCKET, name) == 0
        finally:
            os.close(fd)
    finally:
        a.close()
        b.close()
    assert supa.object_bytes(name, CACHE_BUCKET) == data
    assert len([r for r in supa.srv.requests if r["method"] == "PATCH"]) < 10


def test_a_patch_refused_mid_body_ends(tmp_path, supa):
    """A 6 MiB chunk refused before its body is read (the object appeared meanwhile):
    the server answers and closes while the client still sends."""
    data = random.Random(6).randbytes(8 << 20)
    src = tmp_path / "blob"
    src.write_bytes(data)
    name = f"{GROUP}/sha256/{sha(data)[:2]}/{sha(data)}"
    up = Uploader(supa.srv.url, ANON_KEY, mint(GROUP, "u1"), chunk=6 << 20, timeout=10)
    try:
        location = up._create(CACHE_BUCKET, name, len(data))
        assert location is not None
        supa.put_object(name, data, bucket=CACHE_BUCKET)
        fd = os.open(src, os.O_RDONLY)
        try:
            assert _bounded(up._send_file, fd, len(data), location, CACHE_BUCKET, name) == 0
        finally:
            os.close(fd)
    finally:
        up.close()


def test_an_upload_that_cannot_progress_gives_up(tmp_path, supa):
    """Cut every time: bounded attempts, then a clear error (the claim is released)."""
    data = random.Random(7).randbytes(2 << 20)
    src = tmp_path / "blob"
    src.write_bytes(data)
    name = f"{GROUP}/sha256/{sha(data)[:2]}/{sha(data)}"
    supa.srv.upload_faults[f"{CACHE_BUCKET}/{name}"] = deque([{"cut_after": 0}] * 50)
    up = _uploader(supa)
    try:
        with pytest.raises(PrefetchError, match="giving up"):
            _bounded(up.upload, src, CACHE_BUCKET, name)
    finally:
        up.close()


def test_big_chunks_in_and_ranges_out_are_the_bytes(tmp_path, supa):
    """The stand-in's fast paths keep the wire: 6 MiB PATCHes (more than its body
    buffer) store exactly the bytes with the md5 ETag; GETs (sendfile) answer any
    range with exactly its bytes, and a cut GET sends what it says, then drops."""
    data = random.Random(8).randbytes((13 << 20) + 4321)
    src = tmp_path / "blob"
    src.write_bytes(data)
    name = f"{GROUP}/sha256/{sha(data)[:2]}/{sha(data)}"
    up = Uploader(supa.srv.url, ANON_KEY, mint(GROUP, "u1"), chunk=6 << 20, timeout=10)
    try:
        assert _bounded(up.upload, src, CACHE_BUCKET, name) == len(data)
    finally:
        up.close()
    assert supa.object_bytes(name, CACHE_BUCKET) == data
    assert len([r for r in supa.srv.requests if r["method"] == "PATCH"]) == 3
    url = f"{supa.srv.url}/storage/v1/object/authenticated/{CACHE_BUCKET}/{name}"
    auth = {"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"}
    r = httpx.get(url, headers=auth)
    assert r.status_code == 200 and r.content == data
    assert r.headers["etag"] == '"' + hashlib.md5(data).hexdigest() + '"'  # noqa: S324
    for first, last in ((0, 0), (5, 5 << 20), (7 << 20, None), (len(data) - 1, None)):
        spec = f"bytes={first}-{'' if last is None else last}"
        r = httpx.get(url, headers={**auth, "Range": spec})
        end = len(data) - 1 if last is None else last
        assert r.status_code == 206 and r.content == data[first:end + 1]
        assert r.headers["content-range"] == f"bytes {first}-{end}/{len(data)}"
    supa.srv.storage_faults[f"{CACHE_BUCKET}/{name}"] = deque([{"cut_after": 1_000_000}])
    got = bytearray()
    with pytest.raises(httpx.TransportError), httpx.stream("GET", url, headers={
            **auth, "Range": "bytes=100-"}) as r:
        for piece in r.iter_bytes():
            got += piece
    assert bytes(got) == data[100:1_000_100]


def test_the_file_backend_mtime_etag_is_a_dated_validator(supa):
    """STORAGE_FILE_ETAG_ALGORITHM=mtime (the stand-in's `etag_algorithm`): the ETag is
    `"<mtime ms hex>-<size hex>"`, which prefetchd takes for a date, not a content
    name (resume only with an expected hash)."""
    supa.srv.etag_algorithm = "mtime"
    etag = supa.put_object("r/m.bin", b"x" * 1000)
    path = supa.storage_dir / BUCKET / "r/m.bin"
    assert etag == f'"{path.stat().st_mtime_ns // 1_000_000:x}-{1000:x}"'
    r = httpx.head(f"{supa.srv.url}/storage/v1/object/authenticated/{BUCKET}/r/m.bin",
                   headers={"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"})
    assert r.headers["etag"] == etag
    headers = {**r.headers, "date": "Sun, 06 Dec 2099 00:00:00 GMT"}
    assert resume_validator(headers, 1000) == (etag, True)  # dated


# -- point 5: the SQL and the roles match Supabase ---------------------------------------------


def test_host_keys_create_only_in_the_cache_bucket(tmp_path, supa):
    src = tmp_path / "planted"
    src.write_bytes(b"planted")
    up = _uploader(supa)
    try:
        with pytest.raises(PrefetchError, match="403 new row violates row-level security"):
            up.upload(src, BUCKET, f"{GROUP}/planted.txt")
        assert up.upload(src, CACHE_BUCKET, f"{GROUP}/planted.txt") == 7
    finally:
        up.close()
    r = httpx.get(f"{supa.srv.url}/storage/v1/object/authenticated/{BUCKET}/{GROUP}/x",
                  headers={"apikey": ANON_KEY, "Authorization": f"Bearer {mint(GROUP, 'u1')}"})
    assert r.status_code == 400 and r.json()["statusCode"] == "404"


def test_the_service_key_bypasses_row_level_security_as_on_supabase(supa):
    role = ROLE_NAMES["service_role"]
    assert supa.pg.execute("SELECT rolbypassrls FROM pg_roles WHERE rolname = %s",
                           [role]).fetchone() == (True,)
    # fleet_ids has no policy for it: only BYPASSRLS lets it see the row.
    supa.pg.execute(f"INSERT INTO {supa.schema}.fleet_ids (group_name, provider, id_key,"
                    " file_id, sha256, size, recorded_by) VALUES ('g9', 'p', 'k', 'f', %s, 1,"
                    " 'h')", ["ab" * 32])
    rows = supa.client().table("fleet_ids").select("id_key").execute().data
    assert rows == [{"id_key": "k"}]


# -- point 6: the stand-in's TUS behaviours, each met by prefetchd ------------------------------


class Gateway:
    """nginx in front of the stand-in as a self-hosted Supabase gateway under a path
    prefix (/gw/): it strips the prefix and forwards X-Forwarded-Host/Proto/Prefix, and
    routes nothing else, so a request that loses the prefix is a 404 from nginx."""

    def __init__(self, base, upstream_port: int) -> None:
        import socket
        import subprocess

        from tests.test_nginx import nginx_binary

        self.base = base
        self.log = base / "access.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/gw"
        conf = base / "nginx.conf"
        conf.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format gw escape=json
        '{{"method":"$request_method","uri":"$request_uri","status":$status}}';
    access_log {self.log} gw;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{self.port};
        location /gw/ {{
            proxy_pass http://127.0.0.1:{upstream_port}/;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Prefix /gw/storage/v1;
        }}
        location / {{ return 404; }}
    }}
}}
""")
        self.proc = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", str(base),
                                      "-g", "daemon off;"], stderr=subprocess.DEVNULL)
        import time

        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, \
                    "nginx did not start"
                time.sleep(0.05)

    def requests(self) -> list[dict]:
        import json

        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def test_uploads_follow_the_location_through_a_gateway_prefix(tmp_path, supa):
    """Storage builds the TUS Location from X-Forwarded-Host/Proto/Prefix (lifecycle.ts
    generateUrl): behind a gateway at /gw/ it points under /gw/storage/v1/, and every
    PATCH and HEAD of the upload must go there, through the gateway."""
    base = tmp_path / "gw"
    base.mkdir()
    gw = Gateway(base, supa.srv.server_address[1])
    data = random.Random(12).randbytes((2 << 20) + 777)
    src = tmp_path / "blob"
    src.write_bytes(data)
    name = f"{GROUP}/sha256/{sha(data)[:2]}/{sha(data)}"
    supa.srv.upload_faults[f"{CACHE_BUCKET}/{name}"] = deque([{}, {"cut_after": 100_000}])
    up = Uploader(gw.url, ANON_KEY, mint(GROUP, "u1"), chunk=1 << 20, timeout=10)
    try:
        assert _bounded(up.upload, src, CACHE_BUCKET, name) == len(data)
    finally:
        up.close()
        gw.stop()
    assert supa.object_bytes(name, CACHE_BUCKET) == data
    create = [r for r in supa.srv.requests if r["method"] == "POST"]
    assert len(create) == 1 and create[0]["headers"]["x-forwarded-prefix"] == "/gw/storage/v1"
    seen = gw.requests()
    assert all(r["status"] != 404 for r in seen), seen  # nothing left the gateway's route
    tus = [r for r in seen if r["method"] in ("PATCH", "HEAD")
           and r["uri"].startswith("/gw/storage/v1/upload/resumable/")]
    # The second chunk is cut at Storage (the gateway says 502): the upload asks the
    # Location where it got to (HEAD) and sends the rest there.
    assert [r["method"] for r in tus] == ["PATCH", "PATCH", "HEAD", "PATCH"], seen
    assert [r["status"] for r in tus] == [204, 502, 200, 204], seen
    assert [r["status"] for r in seen if r["uri"].startswith("/gw/storage/v1/object/")] == [
        400]  # the object HEAD through the gateway: not there yet (Storage's 400/404)
    assert len({r["uri"] for r in tus}) == 1  # all at the one Location


def test_a_blob_finished_meanwhile_is_never_overwritten(tmp_path, supa):
    """Storage reads `x-upsert` on every request, PATCHes included (index.ts; lifecycle.ts
    onIncomingRequest -> canUpload): the uploader asks for no upsert anywhere, so a blob
    another host finished between our create and our PATCH is kept as it is (the PATCH's
    409 `The resource already exists` is success), never replaced by ours."""
    data = random.Random(13).randbytes(2 << 20)
    src = tmp_path / "blob"
    src.write_bytes(data)
    name = f"{GROUP}/sha256/{sha(data)[:2]}/{sha(data)}"
    up = _uploader(supa)
    try:
        location = up._create(CACHE_BUCKET, name, len(data))
        assert location is not None
        supa.put_object(name, data, bucket=CACHE_BUCKET, content_type="application/x-first")
        q = ("SELECT created_at, metadata FROM {s}.objects WHERE bucket_id = %s AND name = %s")
        before = supa.one(q, [CACHE_BUCKET, name])
        fd = os.open(src, os.O_RDONLY)
        try:
            assert _bounded(up._send_file, fd, len(data), location, CACHE_BUCKET, name) == 0
        finally:
            os.close(fd)
    finally:
        up.close()
    assert supa.one(q, [CACHE_BUCKET, name]) == before  # the first host's object, untouched
    sent = [r for r in supa.srv.requests if r["method"] in ("POST", "PATCH")]
    assert [r["headers"].get("x-upsert") for r in sent if r["method"] == "POST"] == ["false"]
    assert all(r["headers"].get("x-upsert") != "true" for r in sent)
