"""The `http` provider against nginx from Debian's packages (nginx-light).

nginx answers If-Range with its default ETag ("mtime-size") or Last-Modified by 206
even when a file was rewritten in place with the same size and mtime. These tests
interrupt a real download, rewrite the file that way, and check that prefetchd never
publishes the old prefix with the new suffix.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefetchd.api import Prefetch
from prefetchd.fetch import Engine
from tests.conftest import SleepRecorder, fetch, sha
from tests.support.rows import event_rows

OLD_MTIME = 1_600_000_000  # long before the first fetch: Last-Modified is strong per RFC
SIZE = 2 * 1024 * 1024


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is missing (apt-get install nginx-light); CI needs it")
        pytest.skip("nginx is missing (apt-get install nginx-light)")
    return found


class Nginx:
    """nginx on a loopback port serving `www`, logging each request's Range and If-Range.

    `rate` (nginx's limit_rate) slows responses so a test can interrupt a download; a
    restart on the same port changes it.
    """

    def __init__(self, binary: str, base: Path) -> None:
        self.binary = binary
        self.base = base
        self.www = base / "www"
        self.www.mkdir()
        self.log = base / "access.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, rate: str = "0") -> None:
        conf = self.base / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(f"""
{user}
worker_processes 1;
pid {self.base}/nginx.pid;
error_log {self.base}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format ranges escape=json
        '{{"uri":"$uri","status":$status,"range":"$http_range","if_range":"$http_if_range"}}';
    access_log {self.log} ranges;
    default_type application/octet-stream;
    limit_rate {rate};
    server {{
        listen 127.0.0.1:{self.port};
        root {self.www};
    }}
}}
""")
        self.proc = subprocess.Popen([self.binary, "-c", str(conf), "-p", str(self.base),
                                      "-g", "daemon off;"], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {self.proc.stderr.read().decode()[-500:]}"
                           if self.proc.poll() is not None else "nginx did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self.proc = None

    def requests(self, uri: str) -> list[dict]:
        """Logged requests for `uri`, oldest first (nginx writes each when it ends)."""
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in rows if r["uri"] == uri]


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    base = tmp_path / "nginx"
    base.mkdir()
    srv = Nginx(nginx_binary(), base)
    yield srv
    srv.stop()


def put(path: Path, data: bytes, mtime: float = OLD_MTIME) -> None:
    """Write `data` into the file in place (same inode) and set its mtime."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(data)
        f.truncate()
    os.utime(path, (mtime, mtime))


def interrupt(p: Prefetch, url: str, after: int) -> None:
    """Start downloading `url` and cancel once `after` bytes have arrived (the engine
    keeps the partial and its .meta for a resume)."""
    p.want([url])

    async def go() -> None:
        enough = asyncio.Event()

        def progress(_fid: str, received: int, _total: int | None) -> None:
            if received >= after:
                enough.set()

        eng = Engine(p.settings, p.manifest, p.store, progress=progress)
        task = asyncio.ensure_future(eng.fetch(url))
        waiter = asyncio.ensure_future(enough.wait())
        try:
            await asyncio.wait([task, waiter], timeout=120,
                               return_when=asyncio.FIRST_COMPLETED)
            assert not task.done(), "the slowed download finished before it was interrupted"
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            waiter.cancel()
            await eng.aclose()

    asyncio.run(go())


def partial_meta(root: Path) -> tuple[int, dict]:
    """(size, meta) of the one partial in the store's tmp/."""
    tmp = root / ".prefetchd" / "tmp"
    (part,) = [n for n in os.listdir(tmp) if n.endswith(".part")]
    meta = json.loads((tmp / part.replace(".part", ".meta")).read_text())
    return (tmp / part).stat().st_size, meta


def interrupted_then_rewritten(env, nginx: Nginx, name: str) -> tuple[str, bytes]:
    """Interrupt a slowed download of `name`, then rewrite it in place with the same size
    and mtime (nginx's ETag and Last-Modified stay the same); the new bytes."""
    env.write_config(download='chunk_size = "64KiB"')
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    put(nginx.www / name, old)
    url = f"{nginx.url}/{name}"
    nginx.start(rate="256k")
    with env.prefetch() as p:
        interrupt(p, url, after=256 * 1024)
    nginx.stop()
    size, meta = partial_meta(env.root)
    assert 0 < size < SIZE
    assert meta["validator"] == f'"{OLD_MTIME:x}-{SIZE:x}"' and meta["dated"] is True
    put(nginx.www / name, new)
    nginx.start()
    return url, new


def test_rewritten_in_place_without_a_hash_restarts_from_zero(env, nginx):
    url, new = interrupted_then_rewritten(env, nginx, "a.bin")
    with env.prefetch() as p:
        out = fetch(p, url, sleep=SleepRecorder())
        assert out.path.read_bytes() == new and out.sha256 == sha(new)
    second = nginx.requests("/a.bin")[-1]
    assert second["status"] == 200 and second["range"] == "" and second["if_range"] == ""


def test_rewritten_in_place_with_a_hash_resumes_then_restarts_on_the_mismatch(env, nginx):
    """With an expected hash a resume is tried (nginx answers 206 with the new suffix),
    the mixed file fails the hash and is discarded, and the retry starts from zero."""
    url, new = interrupted_then_rewritten(env, nginx, "b.bin")
    with env.prefetch() as p:
        out = fetch(p, url, sha256=sha(new), sleep=SleepRecorder())
        assert out.path.read_bytes() == new
        kinds = [e.kind for e in event_rows(p.manifest, url)]
        assert kinds[-1] == "download" and "failure" not in kinds
    resumed, restarted = nginx.requests("/b.bin")[-2:]
    assert resumed["status"] == 206 and resumed["if_range"] == f'"{OLD_MTIME:x}-{SIZE:x}"'
    assert restarted["status"] == 200 and restarted["range"] == ""
    assert os.listdir(env.root / ".prefetchd" / "tmp") == []


def test_an_unchanged_file_resumes_when_its_hash_is_known(env, nginx):
    env.write_config(download='chunk_size = "64KiB"')
    data = os.urandom(SIZE)
    put(nginx.www / "c.bin", data)
    url = f"{nginx.url}/c.bin"
    nginx.start(rate="256k")
    with env.prefetch() as p:
        interrupt(p, url, after=256 * 1024)
    nginx.stop()
    size, _ = partial_meta(env.root)
    nginx.start()
    with env.prefetch() as p:
        out = fetch(p, url, sha256=sha(data), sleep=SleepRecorder())
        assert out.path.read_bytes() == data
    last = nginx.requests("/c.bin")[-1]
    assert last["status"] == 206 and last["range"] == f"bytes={size}-"


def test_release_then_get_serves_the_new_file(env, nginx):
    """The hash of a first download is not a promise about the URL: after release, a
    get downloads what the server has now (same size and mtime, other bytes)."""
    first, second = os.urandom(SIZE), os.urandom(SIZE)
    put(nginx.www / "d.bin", first)
    url = f"{nginx.url}/d.bin"
    nginx.start()
    with env.prefetch() as p:
        assert fetch(p, url).path.read_bytes() == first
        put(nginx.www / "d.bin", second)
        p.release([url])
        path = p.get(url, timeout=120)
        assert path.read_bytes() == second
        assert p.manifest.get(url).sha256 == sha(second)
