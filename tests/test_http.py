"""The `http` provider: prefetchd's h11 client against real loopback servers.

FilesServer (http.server) covers the well-behaved protocol with faults; RawServer
scripts what servers do wrong or what only a proxy does.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import ssl
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import prefetchd.store
from prefetchd.errors import NotFoundError, PermanentError, TransientError
from prefetchd.fetch import Engine, GroupCommit
from prefetchd.providers.h1 import H1Client
from prefetchd.providers.h1 import Wire as _Wire
from prefetchd.providers.http import trust_store
from prefetchd.records import EventKind, NewEvent
from prefetchd.store import key_of
from tests.conftest import REPO, SleepRecorder, fetch, sha
from tests.servers.files_api import Fault, FilesServer
from tests.servers.raw_http import RawServer, TunnelProxy, response
from tests.support.rows import event_rows


def serve(server: FilesServer, prefix: str, n: int,
          size: int) -> tuple[dict[str, bytes], list[str]]:
    """n random files of about `size` bytes on the server; their bytes by name, and URLs."""
    files = {f"{prefix}{i}": os.urandom(size + i) for i in range(n)}
    for name, data in files.items():
        server.add(name, data)
    return files, [f"{server.url}/raw/{name}" for name in files]


@pytest.fixture
def raw():
    servers: list[RawServer] = []

    def make(answer, tls: ssl.SSLContext | None = None) -> RawServer:
        servers.append(RawServer(answer, tls))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def test_cut_body_resumes_with_range_and_if_range(env, server):
    data = os.urandom(3 * 1024 * 1024)
    server.add("big", data)
    server.fault("big", Fault(cut_after=1_000_000))
    with env.prefetch() as p:
        out = fetch(p, f"{server.url}/raw/big", sleep=SleepRecorder())
        assert out.path.read_bytes() == data and out.sha256 == sha(data)
    first, second = server.content_requests("big")
    assert "range" not in first["headers"]
    assert second["headers"]["range"] == "bytes=1000000-"
    assert second["headers"]["if-range"] == server.files["big"].etag


def test_range_ignored_chunked_stall_and_statuses(env, server):
    data = os.urandom(300_000)
    server.add("f", data)
    server.fault("f", Fault(cut_after=100_000), Fault(ignore_range=True, no_length=True))
    server.add("slow", data)
    server.fault("slow", Fault(stall_after=1000, stall_s=3))
    server.add("busy", data)
    server.fault("busy", Fault(status=429, retry_after="0"), Fault(status=503))
    sleeps = SleepRecorder()
    with env.prefetch() as p:
        # 200 to a Range request, chunked: starts over cleanly
        assert fetch(p, f"{server.url}/raw/f", sleep=sleeps).path.read_bytes() == data
        # a stall (1 s stall_timeout) is transient: retried, then the body comes whole
        assert fetch(p, f"{server.url}/raw/slow", sleep=sleeps).path.read_bytes() == data
        assert fetch(p, f"{server.url}/raw/busy", sleep=sleeps).path.read_bytes() == data
        with pytest.raises(NotFoundError, match="HTTP 404"):
            fetch(p, f"{server.url}/raw/missing", sleep=sleeps)
    assert len(server.content_requests("slow")) == 2
    assert len(server.content_requests("busy")) == 3
    assert sleeps.delays[-2] == 0.0  # Retry-After: 0 honoured


def test_keep_alive_connections_are_reused(env, server):
    env.write_config(download="per_provider_concurrency = 2")
    files, urls = serve(server, "k", 30, 2000)
    with env.prefetch() as p:
        results = p.get_many(urls)
        assert [r.path.read_bytes() for r in results] == list(files.values())
    peers = {r["peer"] for r in server.requests}
    assert 1 <= len(peers) <= 2  # 30 requests over at most the 2 lanes' connections


def test_connection_closed_silently_is_retried_on_a_new_one(env, raw):
    body = os.urandom(5000)

    def answer(conn, n, target, headers):
        # The first connection serves one request, then drops the next without a word
        # (a keep-alive timeout racing the client).
        if conn == 1 and n == 2:
            return None
        return response(200, body)

    srv = raw(answer)
    env.write_config(download="per_provider_concurrency = 1\nretries = 0")
    with env.prefetch() as p:
        results = p.get_many([f"{srv.url}/a", f"{srv.url}/b"])
        assert [r.error for r in results] == [None, None]
        assert results[1].path.read_bytes() == body
    assert srv.connections == 2
    assert [t for _, t, _ in srv.requests] == ["/a", "/b", "/b"]


def test_redirects_keep_credentials_on_their_origin(env, raw, monkeypatch):
    data = os.urandom(4000)
    other = FilesServer().start()
    try:
        other.add("moved", data)

        def answer(conn, n, target, headers):
            if target == "/start":
                return response(302, Location="/hop")  # same origin, relative
            return response(307, Location=f"{other.url}/raw/moved")

        srv = raw(answer)
        monkeypatch.setenv("WEB_TOKEN", "s3cret-token")
        cfg = env.config.read_text().replace(
            '[providers.web]\ntype = "http"',
            '[providers.web]\ntype = "http"\nbearer_token = "env:WEB_TOKEN"')
        env.config.write_text(cfg)
        with env.prefetch() as p:
            out = fetch(p, f"{srv.url}/start", provider="web")
            assert out.path.read_bytes() == data and out.path.name == "moved"
        sent = {t: h for _, t, h in srv.requests}
        assert sent["/start"]["authorization"] == "Bearer s3cret-token"
        assert sent["/hop"]["authorization"] == "Bearer s3cret-token"
        assert "authorization" not in other.content_requests("moved")[0]["headers"]
    finally:
        other.stop()


def test_redirect_loop_bad_location_and_compressed_body_are_clear_permanent_errors(env, raw):
    def answer(conn, n, target, headers):
        if target.startswith("/loop"):
            return response(302, Location=f"/loop{n}")
        if target == "/ftp":
            return response(301, Location="ftp://files.invalid/x")
        return response(200, gzip.compress(b"x" * 1000), Content_Encoding="gzip")

    srv = raw(answer)
    with env.prefetch() as p:
        with pytest.raises(PermanentError, match="too many redirects"):
            fetch(p, f"{srv.url}/loop")
        with pytest.raises(PermanentError, match="not an http"):
            fetch(p, f"{srv.url}/ftp")
        with pytest.raises(PermanentError, match="Content-Encoding gzip"):
            fetch(p, f"{srv.url}/gz")
        assert p.manifest.get(f"{srv.url}/gz").state == "failed"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_is_transient_and_says_where(env):
    port = free_port()
    env.write_config(download="retries = 1")
    url = f"http://127.0.0.1:{port}/x"
    with env.prefetch() as p:
        with pytest.raises(TransientError) as err:
            fetch(p, url, sleep=SleepRecorder())
        assert str(err.value) == f"http {url}: connection refused by 127.0.0.1:{port}"
        assert p.manifest.get(url).state == "retrying"


def test_an_unresolvable_host_is_named(env):
    """In a network namespace of its own (no interface up) the lookup fails at once and
    no packet leaves this machine."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n) to fail DNS safely")
    env.write_config(download="retries = 0")
    r = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "prefetchd.cli", "get", "http://example.invalid/x"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
        env={**os.environ, "PREFETCHD_CONFIG": str(env.config)})
    assert r.returncode != 0
    assert "http http://example.invalid/x: could not resolve host example.invalid" in r.stderr
    assert "Error" not in r.stderr and "gaierror" not in r.stderr


def test_upper_case_scheme_downloads(env, server):
    data = os.urandom(5000)
    server.add("UP", data)
    url = server.url.replace("http://", "HTTP://") + "/raw/UP"
    with env.prefetch() as p:
        out = fetch(p, url)
        assert out.provider == "http" and out.path.read_bytes() == data


def read_slowly(urls: list[str], ssl_context=ssl.create_default_context) -> list[bytes]:
    """GET each URL through one H1Client, reading slower than loopback delivers (the
    socket pauses and resumes); the bodies."""

    async def go() -> list[bytes]:
        client = H1Client(connect_timeout=2, read_timeout=5, ssl_context=ssl_context,
                          max_idle=2, user_agent="t")
        out = []
        try:
            for url in urls:
                got = bytearray()
                async with client.stream(url, {}, {}) as r:
                    async for chunk in r:
                        got += chunk
                        await asyncio.sleep(0.003)
                out.append(bytes(got))
        finally:
            await client.aclose()
        return out

    return asyncio.run(go())


def test_large_bodies_to_a_slow_reader_arrive_whole_on_one_connection(server):
    """Bodies bigger than every buffer, Content-Length and chunked, then reuse."""
    data = os.urandom(6 * 1024 * 1024 + 5)
    server.add("big", data)
    server.add("chunked", data)
    server.fault("chunked", Fault(no_length=True))
    urls = [f"{server.url}/raw/{name}" for name in ("big", "chunked", "big")]
    assert read_slowly(urls) == [data, data, data]
    assert len({r["peer"] for r in server.requests}) == 1


def test_bytes_waiting_in_the_spare_buffer_come_out_in_order():
    """Bytes that arrived with no body buffer posted are handed over first, in order,
    to buffers smaller than what waits."""
    data = os.urandom(1000)

    async def go() -> bytes:
        wire = _Wire()
        for i in range(0, len(data), 100):
            wire.get_buffer(-1)[:100] = data[i:i + 100]
            wire.buffer_updated(100)
        wire.eof_received()
        out = bytearray()
        while n := await wire.fill(memoryview(buf := bytearray(64)), 1):
            out += buf[:n]
        return bytes(out)

    assert asyncio.run(go()) == data


def make_cert(tmp_path, name: str, san: str) -> tuple[str, ssl.SSLContext]:
    """A self-signed certificate for `san` (openssl CLI): its PEM path and a server
    context that presents it."""
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    return str(cert), tls


def test_https_with_a_private_ca(env, raw, tmp_path, monkeypatch):
    """TLS through h1: large bodies (also to a slow reader) and keep-alive with a CA from
    SSL_CERT_FILE."""
    cert, tls = make_cert(tmp_path, "loopback", "IP:127.0.0.1")
    body = os.urandom(5 * 1024 * 1024 + 3)
    srv = raw(lambda conn, n, target, headers: response(200, body), tls)
    env.write_config(download="per_provider_concurrency = 1\nretries = 0")
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    with env.prefetch() as p:
        results = p.get_many([f"{srv.url}/a", f"{srv.url}/b"])
        assert [r.error for r in results] == [None, None]
        assert all(r.path.read_bytes() == body for r in results)
    assert srv.connections == 1
    assert read_slowly([f"{srv.url}/d", f"{srv.url}/e"], trust_store) == [body, body]
    assert srv.connections == 2


def test_an_untrusted_certificate_fails_at_once_and_says_why(env, raw, tmp_path):
    """Self-signed and not trusted: one handshake, no retry, curl's words and the fix."""
    _, tls = make_cert(tmp_path, "loopback", "IP:127.0.0.1")
    srv = raw(lambda conn, n, target, headers: response(200, b"never"), tls)
    url = f"{srv.url}/c"
    with env.prefetch() as p:
        with pytest.raises(PermanentError) as err:
            fetch(p, url, sleep=SleepRecorder())
        assert str(err.value) == (
            f"http {url}: certificate verify failed: self-signed certificate "
            "(set SSL_CERT_FILE to trust a private CA)")
        row = p.manifest.get(url)
        assert row.state == "failed" and row.error == str(err.value)
    assert srv.accepted == 1 and srv.connections == 0


def test_a_certificate_for_another_host_fails_at_once(env, raw, tmp_path, monkeypatch):
    cert, tls = make_cert(tmp_path, "elsewhere", "DNS:elsewhere.test")
    srv = raw(lambda conn, n, target, headers: response(200, b"never"), tls)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # trusted, but not for these names
    port = srv.server_address[1]
    with env.prefetch() as p:
        with pytest.raises(PermanentError, match=r"certificate verify failed: Hostname "
                           r"mismatch, certificate is not valid for 'localhost'$"):
            fetch(p, f"https://localhost:{port}/c", sleep=SleepRecorder())
        with pytest.raises(PermanentError, match=r"certificate verify failed: IP address "
                           r"mismatch, certificate is not valid for '127\.0\.0\.1'$"):
            fetch(p, f"https://127.0.0.1:{port}/c", sleep=SleepRecorder())
    assert srv.accepted == 2


def test_an_untrusted_certificate_through_a_proxy(env, raw, tmp_path, monkeypatch):
    _, tls = make_cert(tmp_path, "loopback", "IP:127.0.0.1")
    srv = raw(lambda conn, n, target, headers: response(200, b"never"), tls)
    proxy = TunnelProxy()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        with env.prefetch() as p:
            with pytest.raises(PermanentError, match=r"certificate verify failed: self-signed "
                               r"certificate \(set SSL_CERT_FILE to trust a private CA\)$"):
                fetch(p, f"{srv.url}/c", sleep=SleepRecorder())
        assert proxy.targets == [f"127.0.0.1:{srv.server_address[1]}"]
        assert srv.accepted == 1
    finally:
        proxy.stop()


def test_a_refused_proxy_is_named(env, monkeypatch):
    port = free_port()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "")
    env.write_config(download="retries = 0")
    with env.prefetch() as p:
        with pytest.raises(TransientError, match=f"connection refused by proxy 127.0.0.1:{port}$"):
            fetch(p, "http://files.invalid/x", sleep=SleepRecorder())


def test_proxy_from_the_environment_is_used(env, raw, monkeypatch):
    body = os.urandom(3000)

    def answer(conn, n, target, headers):
        # A proxy gets the absolute URL as the request target.
        return response(200, body) if target.startswith("http://files.invalid/") else None

    proxy = raw(answer)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "")
    with env.prefetch() as p:
        out = fetch(p, "http://files.invalid/data.bin")
        assert out.path.read_bytes() == body
    assert proxy.requests[0][1] == "http://files.invalid/data.bin"


def test_many_small_files_share_disk_flushes(env, server, monkeypatch):
    """Group commit: 60 files, far fewer syncfs calls than files, all recorded ready."""
    calls = []
    real = prefetchd.store._call_syncfs

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(prefetchd.store, "_call_syncfs", counting)
    files, urls = serve(server, "s", 60, 1000)
    with env.prefetch() as p:
        results = p.get_many(urls)
        assert [r.path.read_bytes() for r in results] == list(files.values())
        assert {r.state for r in p.manifest.rows()} == {"ready"}
        assert len([e for e in event_rows(p.manifest) if e.kind == "download"]) == 60
    assert 2 <= len(calls) <= 2 * 60  # files trickle in here; never worse than 2 a file
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []


def test_files_finishing_together_cost_two_flushes_in_all(env, monkeypatch):
    calls = []
    real = prefetchd.store._call_syncfs
    monkeypatch.setattr(prefetchd.store, "_call_syncfs", lambda fd: (calls.append(fd), real(fd)))
    blobs = [os.urandom(300 + i) for i in range(40)]
    ids = [f"g{i}" for i in range(40)]
    with env.prefetch() as p:
        p.want(ids, provider="local")
        commits = GroupCommit(p.manifest, p.store, ThreadPoolExecutor(2))

        async def finish(fid: str, data: bytes) -> None:
            part = p.store.new_partial(key_of(fid))
            part.write(data)
            digest = part.finish(sync=False)
            await commits.commit((part, digest, f"g/{fid}"), fid, NewEvent(EventKind.DOWNLOAD),
                                 {"state": "ready", "sha256": digest, "path": f"g/{fid}"})

        async def all_at_once() -> None:
            await asyncio.gather(*(finish(f, b) for f, b in zip(ids, blobs, strict=True)))

        asyncio.run(all_at_once())
        assert len(calls) == 2  # one before linking all 40, one before recording them
        assert [(env.root / "g" / f).read_bytes() for f in ids] == blobs
        assert {p.manifest.get(f).state for f in ids} == {"ready"}


def test_one_bad_file_in_a_batch_fails_alone(env, server):
    for i in range(8):
        server.add(f"b{i}", os.urandom(500 + i))
    (env.root / "taken").mkdir(parents=True)
    (env.root / "taken" / "b3.bin").write_bytes(b"someone else's file")
    urls = [f"{server.url}/raw/b{i}" for i in range(8)]
    with env.prefetch() as p:
        p.want(urls[3:4], dest="taken/b3.bin")
        results = p.get_many(urls)
        errors = {r.file_id: r.error for r in results if r.error is not None}
        assert list(errors) == [urls[3]]
        assert "not a file prefetchd placed" in str(errors[urls[3]])
        assert all(r.path.exists() for r in results if r.error is None)
    assert (env.root / "taken" / "b3.bin").read_bytes() == b"someone else's file"
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []


def test_without_syncfs_each_file_is_published_on_its_own(env, server, monkeypatch):
    monkeypatch.setattr(prefetchd.store, "_syncfs", None)
    for i in range(5):
        server.add(f"n{i}", os.urandom(700 + i))
    with env.prefetch() as p:
        assert not p.store.batches
        results = p.get_many([f"{server.url}/raw/n{i}" for i in range(5)])
        assert all(r.error is None and r.path.exists() for r in results)


def test_which_validators_a_resume_may_trust():
    """Content ETags are trusted; Last-Modified and ETags made of mtime and size (nginx,
    Apache, lighttpd) only date the file, and only when Date is 1 s later (RFC 9110)."""
    from prefetchd.providers.base import resume_validator

    lm, later = "Sun, 13 Sep 2020 12:26:40 GMT", "Sun, 13 Sep 2020 12:26:41 GMT"
    dated = {"last-modified": lm, "date": later}
    assert resume_validator({"etag": '"9f86d081884c7d65"', **dated}, 4096) == (
        '"9f86d081884c7d65"', False)
    assert resume_validator({"etag": '"5f5e1000-1000"', **dated}, 4096) == (
        '"5f5e1000-1000"', True)  # nginx: mtime-size
    assert resume_validator({"etag": '"1000-5af3b2e4a1c40"', **dated}, 4096)[1]  # Apache
    assert resume_validator({"etag": '"2a-1000-5af3b2e4a1c40"', **dated}, 4096)[1]
    assert resume_validator({"etag": '"3735928559"', **dated}, 4096)[1]  # lighttpd
    assert resume_validator(dated, 4096) == (lm, True)
    assert resume_validator({"last-modified": lm, "date": lm}, 4096) == (None, False)
    assert resume_validator({"last-modified": lm}, 4096) == (None, False)
    assert resume_validator({"etag": '"5f5e1000-1000"', "last-modified": lm}, 4096) == (
        None, False)
    assert resume_validator({"etag": 'W/"abc"', **dated}, 4096) == (lm, True)
    assert resume_validator({"etag": 'W/"abc"'}, 4096) == (None, False)


def test_openai_provider_transport_errors_are_in_words(env):
    port = free_port()
    env.write_config(extra=f'[providers.dead]\ntype = "openai"\n'
                           f'base_url = "http://127.0.0.1:{port}/v1"\n',
                     download="retries = 0")
    with env.prefetch() as p:
        with pytest.raises(TransientError) as err:
            fetch(p, "file-1", provider="dead", sleep=SleepRecorder())
    assert str(err.value) == f"dead file file-1: connection refused by 127.0.0.1:{port}"


STRICT = '[providers.http]\ntype = "http"\nallow_private_networks = true\n'


def without_private_networks(env) -> None:
    """The built-in `http` provider as shipped: no [providers.http] in the config."""
    cfg = env.config.read_text()
    assert STRICT in cfg
    env.config.write_text(cfg.replace(STRICT, ""))


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://2852039166/latest/meta-data/",
    "http://0xa9fea9fe/latest/meta-data/",
    "https://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
])
def test_cloud_metadata_is_refused_even_with_private_networks_allowed(env, url):
    """Decided from the address alone, before any connection (none is attempted)."""
    with env.prefetch() as p:
        with pytest.raises(PermanentError, match="link-local or cloud metadata address$"):
            fetch(p, url, sleep=SleepRecorder())
        row = p.manifest.get(url)
        assert row.state == "failed" and "refusing to connect to" in row.error
        assert not (env.root / "downloads").exists()


def test_loopback_is_refused_by_default_and_allowed_by_the_flag(env, raw):
    body = os.urandom(2000)
    srv = raw(lambda conn, n, target, headers: response(200, body))
    port = srv.server_address[1]
    without_private_networks(env)
    with env.prefetch() as p:
        with pytest.raises(PermanentError) as err:
            fetch(p, f"{srv.url}/a", sleep=SleepRecorder())
        assert str(err.value) == (
            f"http {srv.url}/a: refusing to connect to 127.0.0.1: a loopback or private "
            "address; set allow_private_networks = true in [providers.http] (with "
            'type = "http") to allow it')
        # a name is checked on the addresses it resolves to (/etc/hosts here, no DNS)
        with pytest.raises(PermanentError, match=r"refusing to connect to (127\.0\.0\.1|::1) "
                           r"\(localhost\): a loopback or private address"):
            fetch(p, f"http://localhost:{port}/b", sleep=SleepRecorder())
    assert srv.accepted == 0
    env.write_config()  # conftest's: allow_private_networks = true
    with env.prefetch() as p:
        assert fetch(p, f"{srv.url}/c").path.read_bytes() == body
        assert fetch(p, f"http://localhost:{port}/d").path.read_bytes() == body


def test_a_redirect_to_a_refused_address_is_refused(env, raw):
    def answer(conn, n, target, headers):
        if target == "/meta":
            return response(302, Location="http://169.254.169.254/latest/meta-data/")
        return response(302, Location="http://2852039166/")

    srv = raw(answer)
    with env.prefetch() as p:
        for path in ("/meta", "/decimal"):
            with pytest.raises(PermanentError, match=r"refusing to connect to 169\.254\.169\.254"):
                fetch(p, f"{srv.url}{path}", sleep=SleepRecorder())
    assert [t for _, t, _ in srv.requests] == ["/meta", "/decimal"]


def test_the_proxy_is_chosen_for_each_redirect_hop(env, raw, monkeypatch):
    """A redirect from a host NO_PROXY exempts to one it does not goes through the proxy;
    through the proxy, a literal refused address is refused before the proxy sees it."""
    body = os.urandom(3000)

    def via_proxy(conn, n, target, headers):
        if target == "http://files.invalid/data.bin":
            return response(200, body)
        if target == "http://files.invalid/to-metadata":
            return response(302, Location="http://[::ffff:169.254.169.254]/")
        return response(404)

    proxy = raw(via_proxy)
    origin = raw(lambda conn, n, target, headers: response(
        302, Location="http://files.invalid/data.bin"))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with env.prefetch() as p:
        out = fetch(p, f"{origin.url}/start")
        assert out.path.read_bytes() == body and out.path.name == "data.bin"
        with pytest.raises(PermanentError, match=r"refusing to connect to 169\.254\.169\.254"):
            fetch(p, "http://files.invalid/to-metadata", sleep=SleepRecorder())
    assert [t for _, t, _ in origin.requests] == ["/start"]
    assert [t for _, t, _ in proxy.requests] == [
        "http://files.invalid/data.bin", "http://files.invalid/to-metadata"]


def test_through_a_proxy_loopback_is_refused_by_default(env, raw, monkeypatch):
    proxy = raw(lambda conn, n, target, headers: response(200, b"from the proxy"))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "")
    without_private_networks(env)
    with env.prefetch() as p:
        for url in ("http://127.0.0.1:8080/x", "http://localhost:8080/x"):
            with pytest.raises(PermanentError, match="a loopback or private address"):
                fetch(p, url, sleep=SleepRecorder())
    assert proxy.accepted == 0


# -- large bodies: received, written and hashed by threads of their own (fetch.pump) ----

MiB = 1 << 20
BIG = 9 * MiB + 7  # over fetch.download.PUMP_MIN


@pytest.fixture
def pumps(monkeypatch) -> list[int]:
    """How many bodies went through fetch.pump (the list grows by one per body)."""
    from prefetchd.fetch.pump import Pump

    seen: list[int] = []
    run = Pump.run

    async def counted(self, body):  # type: ignore[no-untyped-def]
        seen.append(body.left)
        return await run(self, body)

    monkeypatch.setattr(Pump, "run", counted)
    return seen


def parts_in(env) -> list:  # type: ignore[no-untyped-def]
    tmp = env.root / ".prefetchd/tmp"
    return [tmp / n for n in os.listdir(tmp) if n.endswith(".part")] if tmp.exists() else []


def test_a_large_body_cut_twice_resumes_after_every_byte_kept(env, server, pumps):
    data = os.urandom(BIG)
    server.add("big", data)
    server.fault("big", Fault(cut_after=3_000_001), Fault(cut_after=6_000_002))
    with env.prefetch() as p:
        out = fetch(p, f"{server.url}/raw/big", sleep=SleepRecorder())
        assert out.path.read_bytes() == data and out.sha256 == sha(data)
    reqs = server.content_requests("big")
    assert [r["headers"].get("range") for r in reqs] == [
        None, "bytes=3000001-", "bytes=9000003-"]
    assert {r["headers"].get("if-range") for r in reqs[1:]} == {server.files["big"].etag}
    # the first two bodies through the threads, the last 437,752 bytes on the loop
    assert pumps == [BIG, BIG - 3_000_001]


def test_connections_of_large_bodies_are_reused(env, server, pumps):
    files, urls = serve(server, "big", 3, BIG)
    env.write_config(download="per_provider_concurrency = 1")
    with env.prefetch() as p:
        results = p.get_many(urls)
        assert [r.path.read_bytes() for r in results] == list(files.values())
    assert len({r["peer"] for r in server.requests}) == 1
    assert len(pumps) == 3


def test_a_large_body_that_stalls_is_retried_from_where_it_stopped(env, server, pumps):
    data = os.urandom(BIG)
    server.add("slow", data)
    server.fault("slow", Fault(stall_after=5_000_000, stall_s=3))
    with env.prefetch() as p:
        out = fetch(p, f"{server.url}/raw/slow", sleep=SleepRecorder())
        assert out.path.read_bytes() == data
    reqs = server.content_requests("slow")
    assert [r["headers"].get("range") for r in reqs] == [None, "bytes=5000000-"]
    assert pumps == [BIG, BIG - 5_000_000]


def test_a_large_body_is_verified_before_it_is_published(env, server, pumps):
    data = os.urandom(BIG)
    server.add("bad", data)
    server.fault("bad", Fault(corrupt=True), Fault(corrupt=True))
    server.add("fake.png", data)
    env.write_config(extra="\n[limits]\ncheck_magic = true\n")
    url = f"{server.url}/raw/bad"
    with env.prefetch() as p:
        with pytest.raises(PermanentError, match="twice"):
            fetch(p, url, sleep=SleepRecorder(), sha256=sha(data))
        assert p.manifest.get(url).state == "failed"
        with pytest.raises(PermanentError, match=r"not a \.png"):
            fetch(p, f"{server.url}/raw/fake.png")
        assert p.manifest.get(f"{server.url}/raw/fake.png").state == "failed"
    assert not (env.root / "downloads").exists() or list((env.root / "downloads").iterdir()) == []
    assert parts_in(env) == []
    assert pumps == [BIG, BIG, BIG]


@pytest.mark.parametrize("how", ["shutdown", "release"])
def test_a_cancelled_large_download_stops_its_threads(env, server, pumps, how):
    """Stopped mid-body: the threads end before the temp is closed. A shutdown keeps
    every byte that arrived (the next run resumes after them); a release drops them."""
    data = os.urandom(BIG)
    hold = threading.Event()
    server.add("big", data)
    server.fault("big", Fault(stall_after=5_000_000, hold=hold))
    env.write_config(download='stall_timeout = "60s"')
    url = f"{server.url}/raw/big"

    def kept() -> int:
        return sum(part.stat().st_size for part in parts_in(env))

    async def stop_midway(p) -> None:  # type: ignore[no-untyped-def]
        eng = Engine(p.settings, p.manifest, p.store)
        task = asyncio.ensure_future(eng.fetch(url))
        try:
            for _ in range(3000):  # the first 4 MiB are written (4 buffers), not 5 MB
                if kept() >= 4 * MiB or task.done():
                    break
                await asyncio.sleep(0.01)
            if how == "release":
                await eng.cancel([url])  # what release does to a download nobody wants
            else:
                await eng.cancel_all()  # what a daemon's stop or get's timeout does
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await eng.aclose()

    try:
        with env.prefetch() as p:
            p.want([url])
            asyncio.run(stop_midway(p))
            assert not [t for t in threading.enumerate() if t.name.startswith("prefetchd-pump")]
            assert p.manifest.get(url).state != "ready"
            if how == "release":
                assert parts_in(env) == []
                return
            (part,) = parts_in(env)
            size = part.stat().st_size
            assert 4 * MiB <= size <= 5_000_000 and part.read_bytes() == data[:size]
    finally:
        hold.set()
    with env.prefetch() as p:
        assert fetch(p, url).path.read_bytes() == data
    assert server.content_requests("big")[-1]["headers"]["range"] == f"bytes={size}-"
    assert pumps == [BIG, BIG - size]


def test_bytes_past_a_large_body_are_never_read_as_the_next_answer(env, raw, pumps):
    """The thread reads exactly Content-Length bytes; what a server sends past them
    keeps that connection out of the pool, so the next request opens another."""
    bodies = {"/a": os.urandom(BIG), "/b": os.urandom(BIG)}

    def answer(conn, n, target, headers):
        return response(200, bodies[target]) + b"HTTP/1.1 200 X\r\nContent-Length: 3\r\n\r\nbad"

    srv = raw(answer)
    env.write_config(download="per_provider_concurrency = 1")
    with env.prefetch() as p:
        results = p.get_many([f"{srv.url}/a", f"{srv.url}/b"])
        assert [r.path.read_bytes() for r in results] == [bodies["/a"], bodies["/b"]]
    assert srv.connections == 2
    assert len(pumps) == 2
