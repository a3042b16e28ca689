"""`prefetchd run` as a real subprocess: sd_notify, lock, pick-up latency, signals, crash."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import urllib.request

from prefetchd.manifest import Manifest, WantSpec
from tests.conftest import sha
from tests.daemon_helpers import wait_until
from tests.servers.files_api import Fault


def state(env, fid):
    with env.prefetch() as p:
        row = p.manifest.get(fid)
        return row.state if row else None


def test_ready_status_watchdog_and_clean_stop(env, daemon):
    d = daemon(extra_env={"WATCHDOG_USEC": "200000"})
    assert d.notify.wait_for("STATUS=").startswith("STATUS=")
    d.notify.drain(1.0)
    assert d.notify.count("WATCHDOG=1") >= 5  # every 0.1 s for WatchdogSec=0.2 s
    d.proc.send_signal(signal.SIGTERM)
    d.notify.wait_for("STOPPING=1")
    assert d.proc.wait(10) == 0


def test_one_daemon_per_state_dir(env, daemon):
    d = daemon()
    r = env.cli("run", timeout=20)
    assert r.returncode == 1
    assert f"another prefetchd (pid {d.proc.pid}) holds" in r.stderr
    st = json.loads(env.invoke("status", "--json").stdout)
    assert st["daemon"] == {"running": True, "pid": d.proc.pid}


def test_want_from_another_process_is_picked_up(env, daemon):
    """The daemon notices another process's want (WAL watch + data_version) and makes
    it ready; how fast is a benchmark row (bench/run.py), not a test."""
    (env.src / "a.txt").write_bytes(b"a" * 1000)
    daemon()
    # Straight into the manifest, as a process that does not use the socket would (a
    # SQL client, an older prefetchd): only the WAL watch can tell the daemon.
    m = Manifest(env.settings().db_path)
    try:
        m.want([WantSpec("a.txt", provider="local")])
        wait_until(lambda: m.get("a.txt").state == "ready", timeout=60, step=0.05)
    finally:
        m.close()
    assert (env.root / "downloads/a.txt/a.txt").read_bytes() == b"a" * 1000


def test_idle_daemon_uses_next_to_no_cpu(env, daemon):
    d = daemon()
    time.sleep(1.0)

    def cpu() -> float:
        fields = open(f"/proc/{d.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    c0, t0 = cpu(), time.monotonic()
    time.sleep(3.0)
    share = (cpu() - c0) / (time.monotonic() - t0)
    assert share < 0.05, f"idle daemon used {share:.1%} of a core"


def test_cli_get_waits_for_the_daemon(env, daemon, server):
    server.add("file-a", os.urandom(200_000), "a.bin")
    d = daemon()
    r = env.invoke("get", "file-a", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(env.root / "downloads/file-a/a.bin")
    assert "download" in d.logtext()  # the daemon did it, not the CLI


def test_kill_9_during_downloads_then_restart_completes(env, daemon, server):
    files = {f"file-{i}": os.urandom(3 * 1024 * 1024) for i in range(3)}
    for fid, data in files.items():
        server.add(fid, data, f"{fid}.bin")
        server.fault(fid, Fault(rate=3_000_000))
    d = daemon()
    with env.prefetch() as p:
        p.want(list(files))
    tmp = env.root / ".prefetchd/tmp"

    def progressed():
        parts = [tmp / n for n in os.listdir(tmp) if n.endswith(".part")]
        return sum(x.stat().st_size for x in parts if x.exists()) > 2 * 1024 * 1024

    deadline = time.monotonic() + 20
    while not progressed():
        for fid in files:
            assert not (env.root / f"downloads/{fid}/{fid}.bin").exists()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    d.kill9()
    for fid in files:  # no partial at any destination
        assert not (env.root / f"downloads/{fid}/{fid}.bin").exists()
    d2 = daemon()
    with env.prefetch() as p:
        wait_until(lambda: all(p.manifest.get(f).state == "ready" for f in files), timeout=30)
    for fid, data in files.items():
        got = (env.root / f"downloads/{fid}/{fid}.bin").read_bytes()
        assert hashlib.sha256(got).hexdigest() == sha(data)
    left = {n: (tmp / n).stat().st_size for n in os.listdir(tmp)}
    assert left == {}, (left, d2.logtext())
    assert any("range" in r["headers"] for r in server.requests if r["kind"] == "content")
    assert d2.alive


def test_sigterm_keeps_partial_after_grace_then_resumes(env, daemon, server):
    env.write_config(download='shutdown_grace = "300ms"')
    data = os.urandom(4 * 1024 * 1024)
    server.add("file-slow", data)
    server.fault("file-slow", Fault(rate=2_000_000))
    d = daemon()
    with env.prefetch() as p:
        p.want(["file-slow"])
    tmp = env.root / ".prefetchd/tmp"
    wait_until(lambda: any(n.endswith(".part") and (tmp / n).stat().st_size > 1_000_000
                           for n in os.listdir(tmp)), timeout=10)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert state(env, "file-slow") != "ready"
    assert any(n.endswith(".part") for n in os.listdir(tmp))
    daemon()
    with env.prefetch() as p:
        wait_until(lambda: p.manifest.get("file-slow").state == "ready", timeout=20)
    assert int(server.content_requests("file-slow")[-1]["headers"]["range"][6:-1]) > 1_000_000


def test_sighup_reloads_config(env, daemon, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_bytes(b"from the new provider")
    d = daemon()
    env.write_config(extra=f'\n[providers.fresh]\ntype = "dir"\npath = "{other}"\n')
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in d.logtext(), timeout=10)
    r = env.invoke("get", "x.txt", "--provider", "fresh", timeout=30)
    assert r.returncode == 0, r.stderr
    assert "reloaded" in d.logtext()


def test_bad_config_on_sighup_keeps_running(env, daemon):
    d = daemon()
    env.config.write_text(env.config.read_text() + "\nbogus = 1\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload_failed" in d.logtext(), timeout=10)
    assert d.alive


def test_scheduled_retention_and_scrub(env, daemon):
    env.write_config(extra='\n[retention]\nttl = "2s"\ninterval = "1s"\n'
                           '[verify]\ninterval = "1s"\n')
    (env.src / "keep").write_bytes(b"pinned")
    (env.src / "drop").write_bytes(b"dropped")
    (env.src / "rot").write_bytes(b"will rot")
    daemon()
    with env.prefetch() as p:
        p.want(["keep"], provider="local", pin=True)
        p.want(["drop"], provider="local")
        p.want(["rot"], provider="local", ttl="1h")
        wait_until(lambda: all(p.manifest.get(f).state == "ready"
                               for f in ("keep", "drop", "rot")))
        rot = p.manifest.get("rot").sha256
        obj = p.store.object_path(rot)
        os.chmod(obj, 0o644)
        obj.write_bytes(b"ROTTEN!!")
        wait_until(lambda: p.manifest.get("drop").state == "evicted", timeout=15)
        assert not (env.root / "downloads/drop/drop").exists()
        assert (env.root / "downloads/keep/keep").read_bytes() == b"pinned"
        wait_until(lambda: os.listdir(env.root / ".prefetchd/quarantine"), timeout=15)
        wait_until(lambda: p.manifest.get("rot").state == "ready"
                   and (env.root / "downloads/rot/rot").read_bytes() == b"will rot", timeout=15)


def test_metrics_endpoint(env, daemon, server):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.write_config(extra=f"\n[metrics]\nenabled = true\nport = {port}\n")
    server.add("file-m", b"m" * 1234)
    daemon()
    assert env.invoke("get", "file-m").returncode == 0

    def scraped():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = text.decode()
        return text if 'prefetchd_downloaded_bytes_total{provider="files"} 1234.0' in text else ""

    text = wait_until(scraped, timeout=10)
    assert 'prefetchd_downloads_total{outcome="download",provider="files"} 1.0' in text
    assert "prefetchd_queue_depth" in text and "prefetchd_store_bytes" in text


def test_job_threads_keep_one_manifest_each(env):
    """Scheduled passes reuse their thread's connection instead of opening one a job."""
    import asyncio

    from prefetchd.manifest.threads import JobThreads

    env.prefetch().close()  # creates the database

    async def go():
        jobs = JobThreads(env.settings().db_path, size=1)
        try:
            return [await jobs.run(lambda m: (id(m), m.data_version())) for _ in range(3)]
        finally:
            jobs.close()

    seen = asyncio.run(go())
    assert len({ident for ident, _ in seen}) == 1
