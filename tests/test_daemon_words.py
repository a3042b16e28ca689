"""What the daemon says and refuses at start, on SIGHUP and on Ctrl-C, as real
processes: a metrics port in use, a served root, a key that needs a restart, the
first and second Ctrl-C, the local API's field names, normalized paths in logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _OWN_ENV, REPO, Env
from tests.daemon_helpers import wait_until
from tests.servers.files_api import Fault


def events(env: Env, name: str) -> list[dict[str, Any]]:
    out = []
    for line in (env.tmp / "daemon.log").read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def run_once(env: Env, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefetchd.cli", "run"], capture_output=True,
                          text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=60,
                          env={**_OWN_ENV, "PREFETCHD_CONFIG": str(config or env.config)},
                          check=False)


def test_a_metrics_port_in_use_is_one_line_and_creates_nothing(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.write_config(extra=f"\n[metrics]\nenabled = true\nport = {port}\n")
        r = run_once(env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"prefetchd: error: metrics: 127.0.0.1:{port} is in use (set [metrics] port)")
    assert "Traceback" not in r.stderr
    assert not env.state.exists() and not env.root.exists()


def test_metrics_listening_is_logged_with_its_address(env, daemon):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.write_config(extra=f"\n[metrics]\nenabled = true\nport = {port}\n")
    daemon()
    (listening,) = wait_until(lambda: events(env, "metrics_listening"))
    assert listening["address"] == f"127.0.0.1:{port}"


def test_a_second_daemon_on_a_served_root_creates_nothing(env, daemon):
    first = daemon()
    other_state = env.tmp / "other-state"
    config = env.tmp / "second.toml"
    config.write_text(env.config.read_text().replace(f'state_dir = "{env.state}"',
                                                     f'state_dir = "{other_state}"'))
    r = run_once(env, config)
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"prefetchd: error: another prefetchd (pid {first.proc.pid}) holds "
        f"{env.root / '.prefetchd' / 'daemon.lock'}")
    assert not other_state.exists()


def test_sighup_warns_once_per_key_that_needs_a_restart(env, daemon):
    d = daemon()
    env.write_config(extra=f'\n[api]\ngroup = "{os.getegid()}"\n', download="concurrency = 3")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: events(env, "reloaded"), timeout=20)
    warned = {e["key"]: e["message"] for e in events(env, "reload_needs_restart")}
    assert set(warned) == {"api.group", "download.concurrency"}, warned
    assert warned["api.group"].startswith(f"[api] group changed (None -> '{os.getegid()}')")
    assert warned["download.concurrency"].startswith("[download] concurrency changed (8 -> 3)")
    assert len(events(env, "reload_needs_restart")) == 2
    d.proc.send_signal(signal.SIGHUP)  # nothing changed since: no new warning
    wait_until(lambda: len(events(env, "reloaded")) == 2, timeout=20)
    assert len(events(env, "reload_needs_restart")) == 2


def test_ctrl_c_says_how_long_it_waits_and_a_second_stops_now(env, daemon, server):
    env.write_config(download='shutdown_grace = "1h"\nchunk_size = 65536')
    data = os.urandom(4_000_000)
    server.add("file-slow", data, "slow.bin")
    server.fault("file-slow", Fault(rate=100_000))  # 40 s: still running at both Ctrl-Cs
    d = daemon()
    assert env.cli("want", "file-slow").returncode == 0
    tmp = env.root / ".prefetchd" / "tmp"
    wait_until(lambda: any(p.stat().st_size > 0 for p in tmp.rglob("*") if p.is_file()),
               timeout=30)
    d.proc.send_signal(signal.SIGINT)
    (said,) = wait_until(lambda: events(env, "stop_requested"), timeout=20)
    assert said["message"] == ("stopping: waiting up to 3600s for 1 download; "
                               "Ctrl-C again to stop now")
    assert d.alive  # it waits for the download
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(timeout=60) == 0  # long before the hour of grace
    assert events(env, "stopping_now")
    partials = [p for p in tmp.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert partials, "the partial is kept for resume"
    assert not (env.root / "downloads/file-slow").exists()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_local_api_speaks_of_its_own_fields(env, daemon):
    daemon()
    r = subprocess.run(["curl", "-sS", "--unix-socket", str(env.state / "api.sock"),
                        "http://prefetchd/v1/ls?state=bogus"], capture_output=True, text=True,
                       timeout=60, check=False)
    body = json.loads(r.stdout)
    assert body["error"].startswith("state: 'bogus' is not one of queued, "), body
    assert "--state" not in body["error"]


def test_paths_in_logs_are_normalized(env, daemon):
    (env.tmp / "config").mkdir()
    moved = env.tmp / "config" / "prefetchd.toml"
    moved.write_text(env.config.read_text()
                     .replace(f'root = "{env.root}"', 'root = "../root"')
                     .replace(f'state_dir = "{env.state}"', 'state_dir = "../state"'))
    env.config = moved
    daemon()
    (listening,) = wait_until(lambda: events(env, "api_listening"))
    assert listening["socket"] == str(env.state / "api.sock")
    (ready,) = wait_until(lambda: events(env, "ready"))
    assert ready["root"] == str(env.root) and ".." not in ready["inbox"]
