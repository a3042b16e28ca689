"""The fetch engine through the real `openai` SDK (and httpx) against a loopback server."""

from __future__ import annotations

import asyncio
import json
import os
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from prefetchd.errors import (
    HashMismatchError,
    LimitError,
    NotFoundError,
    PermanentError,
    UsageError,
)
from prefetchd.fetch import Engine, backoff_delay
from prefetchd.manifest import WantSpec
from prefetchd.providers import build_provider
from prefetchd.providers.base import parse_retry_after
from tests.conftest import SleepRecorder, fetch, sha
from tests.servers.files_api import Fault
from tests.servers.raw_http import RawServer, response
from tests.support.rows import event_rows

FID = "file-abc123"


def blob(n: int, seed: int = 1) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n] if seed == 1 else os.urandom(n)


def test_download_through_openai_sdk(env, server):
    data = os.urandom(3 * 1024 * 1024 + 17)
    server.add(FID, data, "report.pdf")
    with env.prefetch() as p:
        out = fetch(p, FID)
        assert out.path == env.root / "downloads" / FID / "report.pdf"
        assert out.path.read_bytes() == data
        assert out.sha256 == sha(data)
        assert oct(out.path.stat().st_mode & 0o777) == "0o444"
        row = p.manifest.get(FID)
        assert row.state == "ready" and row.size == len(data)
        ev = event_rows(p.manifest, FID)
        assert [e.kind for e in ev] == ["download"]
        assert ev[0].bytes == len(data) and ev[0].sha256 == sha(data)
    # The SDK was used as a streaming call: one retrieve, one content request.
    kinds = [r["kind"] for r in server.requests]
    assert kinds == ["retrieve", "content"]
    # Nothing left in tmp/.
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []


def test_openai_sdk_requests_share_h1_connections(env, server):
    """The SDK's requests travel over prefetchd's h1 client: its headers as sent, one
    kept-alive connection for the retrieve and content requests of several files."""
    env.write_config(download="per_provider_concurrency = 1")
    files = {f"file-k{i}": os.urandom(300_000 + i) for i in range(3)}
    for fid, data in files.items():
        server.add(fid, data)
    assert build_provider("files", env.settings()).h1 is not None
    with env.prefetch() as p:
        results = p.get_many(list(files))
        assert [r.path.read_bytes() for r in results] == list(files.values())
    assert [r["kind"] for r in server.requests] == ["retrieve", "content"] * 3
    assert len({r["peer"] for r in server.requests}) == 1
    assert all(r["headers"]["user-agent"].startswith("AsyncOpenAI/Python")
               for r in server.requests)


def test_openai_through_a_proxy_from_the_environment(env, monkeypatch):
    """With a proxy for its base_url, the SDK keeps its own transport, which uses it."""
    data = os.urandom(5000)

    def answer(conn, n, target, headers):
        if target == "http://files.invalid/v1/files/file-p":
            return response(200, json.dumps({
                "id": "file-p", "object": "file", "bytes": len(data), "created_at": 0,
                "filename": "p.bin", "purpose": "assistants"}).encode(),
                Content_Type="application/json")
        if target == "http://files.invalid/v1/files/file-p/content":
            return response(200, data)
        return None

    proxy = RawServer(answer)
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        env.write_config(extra='[providers.far]\ntype = "openai"\n'
                               'base_url = "http://files.invalid/v1"\n')
        assert build_provider("far", env.settings()).h1 is None
        with env.prefetch() as p:
            out = fetch(p, "file-p", provider="far")
            assert out.path.read_bytes() == data and out.path.name == "p.bin"
    finally:
        proxy.stop()
    assert [t for _, t, _ in proxy.requests] == ["http://files.invalid/v1/files/file-p",
                                                "http://files.invalid/v1/files/file-p/content"]


def test_cut_mid_body_resumes_with_range_and_if_range(env, server):
    data = os.urandom(2 * 1024 * 1024)
    server.add(FID, data)
    server.fault(FID, Fault(cut_after=700_000))
    with env.prefetch() as p:
        out = fetch(p, FID, sleep=SleepRecorder())
        assert out.path.read_bytes() == data
    reqs = server.content_requests(FID)
    assert len(reqs) == 2
    assert "range" not in reqs[0]["headers"]
    assert reqs[1]["headers"]["range"] == "bytes=700000-"
    assert reqs[1]["headers"]["if-range"] == server.files[FID].etag


def test_resume_across_processes_keeps_partial(env, server):
    """A transient failure after all retries keeps the partial; a later run resumes."""
    data = os.urandom(1024 * 1024)
    server.add(FID, data)
    env.write_config(download="retries = 0")
    server.fault(FID, Fault(cut_after=400_000))
    with env.prefetch() as p:
        with pytest.raises(Exception, match="connection"):
            fetch(p, FID)
        assert p.manifest.get(FID).state == "retrying"
        parts = [n for n in os.listdir(env.root / ".prefetchd/tmp") if n.endswith(".part")]
        assert len(parts) == 1
        assert (env.root / ".prefetchd/tmp" / parts[0]).stat().st_size == 400_000
        assert not (env.root / "downloads" / FID).exists()
    with env.prefetch() as p:
        out = fetch(p, FID)
        assert out.path.read_bytes() == data
    assert server.content_requests(FID)[-1]["headers"]["range"] == "bytes=400000-"


def test_wrong_bytes_right_length_retried_then_permanent(env, server):
    data = blob(300_000)
    server.add(FID, data)
    server.fault(FID, Fault(corrupt=True))
    with env.prefetch() as p:
        out = fetch(p, FID, sleep=SleepRecorder(), sha256=sha(data))
        assert out.path.read_bytes() == data  # second attempt got good bytes
    other = blob(300_000, seed=2)
    server.add("file-bad", other)
    server.fault("file-bad", Fault(corrupt=True), Fault(corrupt=True), Fault(corrupt=True))
    with env.prefetch() as p:
        with pytest.raises(PermanentError, match="twice"):
            fetch(p, "file-bad", sleep=SleepRecorder(), sha256=sha(other))
        row = p.manifest.get("file-bad")
        assert row.state == "failed" and "does not match" in row.error
        assert not (env.root / "downloads" / "file-bad").exists()
        assert [n for n in os.listdir(env.root / ".prefetchd/tmp") if n.endswith(".part")] == []
        assert event_rows(p.manifest, "file-bad")[-1].kind == "failure"


def test_first_download_hash_is_no_promise_about_later_content(env, server):
    """With no expected hash, the first download's hash checks the stored object only:
    after release, a changed file at the provider is downloaded as it is now (issue 10)."""
    data = blob(10_000)
    server.add(FID, data)
    changed = b"changed" + data[7:]
    with env.prefetch() as p:
        fetch(p, FID)
        p.release([FID])
        server.add(FID, changed)
        out = fetch(p, FID, sleep=SleepRecorder())
        assert out.path.read_bytes() == changed and out.sha256 == sha(changed)


def test_429_retry_after_seconds_and_http_date_are_honoured(env, server):
    data = blob(50_000)
    server.add(FID, data)
    future = formatdate(time.time() + 30, usegmt=True)
    server.fault(FID, Fault(status=429, retry_after="1"), Fault(status=503, retry_after=future),
                 Fault(status=503))
    rec = SleepRecorder()
    env.write_config(download='backoff_max = "60s"')
    with env.prefetch() as p:
        out = fetch(p, FID, sleep=rec)
        assert out.path.read_bytes() == data
    assert rec.delays[0] == 1.0
    assert 25 < rec.delays[1] <= 30
    assert 0 <= rec.delays[2] <= 0.04  # full jitter under base 10ms * 2**2
    assert len(server.content_requests(FID)) == 4


def test_retry_after_longer_than_backoff_max_defers(env, server):
    server.add(FID, b"x" * 100)
    server.fault(FID, Fault(status=429, retry_after="3600"))
    with env.prefetch() as p:
        with pytest.raises(Exception, match="429"):
            fetch(p, FID, sleep=SleepRecorder())
        row = p.manifest.get(FID)
        assert row.state == "retrying"
        assert row.next_attempt_at > time.time() + 3000


def test_404_is_permanent_without_retries(env, server):
    with env.prefetch() as p:
        rec = SleepRecorder()
        with pytest.raises(NotFoundError, match="404"):
            fetch(p, "file-missing", sleep=rec)
        assert rec.delays == []
        assert p.manifest.get("file-missing").state == "failed"


def test_401_names_credentials_not_the_key(env, server, monkeypatch):
    server.api_key = "sk-right"
    monkeypatch.setenv("FILES_KEY", "sk-wrong-secret-value")
    text = env.config.read_text().replace(
        '[providers.files]\ntype = "openai"',
        '[providers.files]\ntype = "openai"\napi_key = "env:FILES_KEY"')
    env.config.write_text(text)
    server.add(FID, b"data")
    with env.prefetch() as p:
        with pytest.raises(PermanentError) as ei:
            fetch(p, FID)
        assert "401" in str(ei.value) and "credentials" in str(ei.value)
        assert "sk-wrong" not in str(ei.value)
        assert "sk-wrong" not in str(p.manifest.get(FID))
    r = env.invoke("get", FID)
    assert r.returncode == 1 and "sk-wrong" not in r.stderr + r.stdout


def test_range_ignored_restarts_cleanly(env, server):
    data = os.urandom(1024 * 1024)
    server.add(FID, data)
    server.fault(FID, Fault(cut_after=300_000), Fault(ignore_range=True))
    with env.prefetch() as p:
        out = fetch(p, FID, sleep=SleepRecorder(), sha256=sha(data))
        assert out.path.read_bytes() == data


def test_stall_is_transient(env, server):
    data = blob(400_000)
    server.add(FID, data)
    server.fault(FID, Fault(stall_after=100_000, stall_s=3))
    with env.prefetch() as p:
        out = fetch(p, FID, sleep=SleepRecorder())
        assert out.path.read_bytes() == data
    # Gave up on the stalled response (stall_timeout 1 s < the 3 s stall) and resumed:
    # had it waited the stall out, the first response would have been the only one.
    reqs = server.content_requests(FID)
    assert len(reqs) == 2 and reqs[1]["headers"]["range"] == "bytes=100000-"


def test_416_on_complete_partial_verifies_it(env, server):
    data = blob(200_000)
    server.add(FID, data)
    # First attempt: the whole body arrives, then the connection is cut before the end
    # is seen as complete... simulate with a partial equal to the whole file.
    with env.prefetch() as p:
        key_part = None
        from prefetchd.store import key_of

        part = p.store.open_partial(key_of(FID))
        part.write(data)
        part.save_meta({"file_id": FID, "provider": "files", "validator": server.files[FID].etag,
                        "name": None})
        key_part = part.name
        part.close()
        assert key_part
        out = fetch(p, FID, sha256=sha(data))
        assert out.path.read_bytes() == data
    assert server.content_requests(FID)[0]["headers"]["range"] == "bytes=200000-"


def test_an_empty_partial_left_behind_is_taken_over_by_a_small_body(env, server):
    """A process killed after it made its temp and before any byte: the next `get`
    takes the empty temp over, and the small body that arrives whole is sealed in it
    (not held in memory, which is only for a body with nothing on disk)."""
    from prefetchd.store import key_of

    data = blob(3000)
    server.add(FID, data)
    with env.prefetch() as p:
        part = p.store.open_partial(key_of(FID))
        part.save_meta({"file_id": FID, "provider": "files",
                        "validator": server.files[FID].etag, "name": None})
        part.close()
    r = env.cli("get", FID, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out[0]["state"] == "ready" and Path(out[0]["path"]).read_bytes() == data


def test_416_on_oversized_partial_starts_over(env, server):
    data = blob(100_000)
    server.add(FID, data)
    with env.prefetch() as p:
        from prefetchd.store import key_of

        part = p.store.open_partial(key_of(FID))
        part.write(b"z" * 150_000)
        part.save_meta({"file_id": FID, "provider": "files", "validator": server.files[FID].etag})
        part.close()
        out = fetch(p, FID, sleep=SleepRecorder())
        assert out.path.read_bytes() == data


def test_kimi_extracted_content_is_named_and_not_checked_against_upload(env, server):
    kid = "d40qan21ol7h6f177pt0"  # a Moonshot-style id resolves to `kimi`
    extracted = b'{"content": "text of the pdf"}'
    server.add(kid, extracted, "q3.pdf", purpose="file-extract")
    with env.prefetch() as p:
        out = fetch(p, kid)
        assert out.provider == "kimi"
        assert out.path.name == "q3.pdf.extracted.txt"
        assert out.path.read_bytes() == extracted


def test_one_download_per_file_id_in_a_process(env, server):
    data = os.urandom(512 * 1024)
    server.add(FID, data)
    server.fault(FID, Fault(rate=2_000_000))
    with env.prefetch() as p:
        p.want([FID])

        async def go():
            eng = Engine(p.settings, p.manifest, p.store)
            try:
                return await asyncio.gather(*(eng.fetch(FID) for _ in range(5)))
            finally:
                await eng.aclose()

        outs = asyncio.run(go())
    assert {o.path for o in outs} == {outs[0].path}
    assert len(server.content_requests(FID)) == 1


def peak_bodies(env, server, download: str, n: int) -> int:
    """Fetch n slow files at once; return how many bodies the server sent at one time."""
    env.write_config(download=download)
    ids = [f"file-{i}" for i in range(n)]
    for fid in ids:
        server.add(fid, os.urandom(100_000))
        server.fault(fid, Fault(rate=1_000_000))
    with env.prefetch() as p:
        p.want(ids)

        async def go():
            eng = Engine(p.settings, p.manifest, p.store)
            try:
                await asyncio.gather(*(eng.fetch(i) for i in ids))
            finally:
                await eng.aclose()

        asyncio.run(go())
    return server.peak_active


def test_global_concurrency_limit(env, server):
    assert peak_bodies(env, server, "concurrency = 2\nper_provider_concurrency = 8", 6) == 2


def test_per_provider_concurrency_limit(env, server):
    assert peak_bodies(env, server, "concurrency = 8\nper_provider_concurrency = 3", 7) == 3


def test_limits_before_and_while_streaming(env, server):
    env.write_config(extra='\n[limits]\nmax_file_size = "100KiB"\n'
                           'max_size_by_type = { pdf = "10KiB" }\ncheck_magic = true\n')
    server.add("file-big", os.urandom(200 * 1024))
    server.add("file-pdf", b"%PDF-" + os.urandom(20 * 1024), "a.pdf")
    server.add("chunked", os.urandom(300 * 1024))
    server.fault("chunked", Fault(no_length=True))
    server.add("file-fake", b"MZ\x90\x00" + os.urandom(1000), "b.png")
    with env.prefetch() as p:
        with pytest.raises(LimitError, match="max_file_size"):
            fetch(p, "file-big")
        with pytest.raises(LimitError, match=r"max_size_by_type\.pdf"):
            fetch(p, "file-pdf")
        with pytest.raises(PermanentError, match="while streaming"):
            fetch(p, f"{server.url}/raw/chunked")  # http: no size known before the body
        with pytest.raises(LimitError, match="not a .png"):
            fetch(p, "file-fake")
        for fid in ("file-big", "file-pdf", f"{server.url}/raw/chunked", "file-fake"):
            assert p.manifest.get(fid).state == "failed"
    assert [n for n in os.listdir(env.root / ".prefetchd/tmp") if n.endswith(".part")] == []


def test_size_mismatch_with_request(env, server):
    server.add(FID, b"x" * 1000)
    with env.prefetch() as p:
        with pytest.raises(PermanentError, match="announces 1000"):
            fetch(p, FID, size=999)


def test_http_provider_and_dedupe(env, server):
    data = os.urandom(256 * 1024)
    server.add("same", data, "same.bin")
    (env.src / "copy.bin").write_bytes(data)
    url = f"{server.url}/raw/same"
    with env.prefetch() as p:
        a = fetch(p, url)
        assert a.provider == "http"
        assert a.path.parent.parent == env.root / "downloads"
        assert a.path.name == "same"
        b = fetch(p, "copy.bin", provider="local", dest="team/copy.bin")
        assert b.path == env.root / "team" / "copy.bin"
        assert a.sha256 == b.sha256
        obj = p.store.object_path(a.sha256)
        assert obj.stat().st_ino == a.path.stat().st_ino == b.path.stat().st_ino
        assert obj.stat().st_nlink == 3
        assert p.status()["store"]["objects"] == 1


def test_known_hash_is_a_cache_hit_without_network(env, server):
    data = os.urandom(10_000)
    (env.src / "x.bin").write_bytes(data)
    with env.prefetch() as p:
        fetch(p, "x.bin", provider="local")
        n = len(server.requests)
        out = fetch(p, "file-other", sha256=sha(data), dest="other/x.bin")
        assert out.cache_hit and out.path.read_bytes() == data
        assert len(server.requests) == n
        assert [e.kind for e in event_rows(p.manifest, "file-other")] == ["cache_hit"]


def test_glm_is_a_clear_permanent_error(env):
    with env.prefetch() as p:
        with pytest.raises(NotFoundError, match="GLM files cannot be downloaded"):
            fetch(p, "glm-file-1", provider="glm")


def test_dir_provider_refuses_escape(env, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (env.src / "link.txt").symlink_to(secret)
    (env.src / "sub").mkdir()
    (tmp_path / "outdir").mkdir()
    (env.src / "lnkdir").symlink_to(tmp_path / "outdir")
    (tmp_path / "outdir" / "f").write_text("x")
    with env.prefetch() as p:
        with pytest.raises(PermanentError, match="symlink"):
            fetch(p, "link.txt", provider="local")
        with pytest.raises(PermanentError, match="symlink"):
            fetch(p, "lnkdir/f", provider="local")
        # Refused as requests now; the provider still refuses ids that came another way.
        for fid in ("../secret.txt", "sub/../../secret.txt"):
            with pytest.raises(UsageError, match="cannot be a file of provider local"):
                p.want([fid], provider="local")
            p.manifest.want([WantSpec(fid, provider="local")])
            with pytest.raises(PermanentError, match="relative path"):
                asyncio.run(_engine_fetch(p, fid))


async def _engine_fetch(p, file_id):
    eng = Engine(p.settings, p.manifest, p.store)
    try:
        return await eng.fetch(file_id)
    finally:
        await eng.aclose()


def test_backoff_full_jitter_bounds():
    import random

    rng = random.Random(7)
    for attempt in range(10):
        d = backoff_delay(attempt, 1.0, 60.0, rng)
        assert 0 <= d <= min(60.0, 2**attempt)


def test_parse_retry_after_forms():
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(formatdate(now + 90, usegmt=True), now) == pytest.approx(90, abs=1)
    assert parse_retry_after(formatdate(now - 90, usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None


def test_hash_mismatch_error_is_transient_class():
    assert HashMismatchError("x").transient
