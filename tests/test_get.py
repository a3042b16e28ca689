"""`prefetchd get` always ends: ready, failed, patience with retrying entries, timeout.

Through a running daemon (the CLI polls the manifest) and in-process. Deadlines in
these tests are generous; nothing asserts how long a step took.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

PATIENT = "get_patience = \"1s\""


@pytest.fixture
def dead_url() -> str:
    """A loopback URL whose port nobody listens on: every attempt is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/never.bin"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback URL whose server accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/silent.bin"


def test_get_gives_up_on_a_retrying_entry_through_the_daemon(env, daemon, dead_url):
    env.write_config(download=PATIENT)
    daemon()
    r = env.invoke("get", dead_url, timeout=120)  # before: waited forever on `retrying`
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert dead_url in lines[0] and "still retrying after 1s (download.get_patience)" in lines[0]
    assert r.stdout == ""


def test_get_json_through_the_daemon_and_timeout_zero_on_ready(env, daemon, server, dead_url):
    env.write_config(download=PATIENT)
    server.add("file-a", b"A" * 1000, "a.txt")
    daemon()
    r = env.invoke("get", "--json", "file-a", dead_url, timeout=120)
    assert r.returncode == 1
    rows = json.loads(r.stdout)
    assert [(x["file_id"], x["state"]) for x in rows] == [("file-a", "ready"),
                                                         (dead_url, "retrying")]
    assert rows[0] == {"file_id": "file-a", "state": "ready", "error": None,
                       "path": str(env.root / "downloads/file-a/a.txt")}
    assert rows[1]["path"] is None and "download.get_patience" in rows[1]["error"]
    r = env.invoke("get", "file-a", "--timeout", "0", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(env.root / "downloads/file-a/a.txt")


def test_get_gives_up_in_process_after_patience(env, dead_url):
    # So many retries with so short a backoff that only the patience can end it.
    env.write_config(download=f'{PATIENT}\nretries = 100\nbackoff_max = "50ms"')
    r = env.invoke("get", dead_url, timeout=120)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"{dead_url}: still failing after retrying for 1s (download.get_patience)" in r.stderr
    assert "partial kept" not in r.stderr  # nothing arrived, so nothing is kept


def test_get_several_in_order_one_line_each(env, server):
    server.add("file-a", b"A" * 10, "a.txt")
    server.add("file-c", b"C" * 10, "c.txt")
    r = env.invoke("get", "file-a", "file-b", "file-c")
    assert r.returncode == 1
    assert r.stdout.splitlines() == [str(env.root / "downloads/file-a/a.txt"),
                                     str(env.root / "downloads/file-c/c.txt")]
    (err,) = r.stderr.splitlines()
    assert err.startswith("prefetchd: ") and "file-b" in err and "404" in err
    r = env.invoke("get", "--json", "file-a", "file-b", "file-c")
    assert r.returncode == 1
    rows = json.loads(r.stdout)
    assert [set(x) for x in rows] == [{"file_id", "state", "path", "error"}] * 3
    assert [(x["file_id"], x["state"]) for x in rows] == [
        ("file-a", "ready"), ("file-b", "failed"), ("file-c", "ready")]
    assert rows[1]["path"] is None and "404" in rows[1]["error"]
    assert rows[2]["error"] is None and rows[2]["path"].endswith("c.txt")


def test_get_timeout_zero_on_a_ready_file_in_process(env, server):
    server.add("file-a", b"A" * 10, "a.txt")
    assert env.invoke("get", "file-a").returncode == 0
    r = env.invoke("get", "file-a", "--timeout", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(env.root / "downloads/file-a/a.txt")


def test_timeout_without_bytes_does_not_claim_a_partial(env, silent_url):
    env.write_config(download='stall_timeout = "30s"')
    r = env.invoke("get", silent_url, "--timeout", "1s", timeout=120)
    assert r.returncode == 1
    assert f"{silent_url}: not ready within 1s" in r.stderr
    assert "partial kept" not in r.stderr


def test_get_patience_is_a_config_key(env):
    env.write_config(download='get_patience = "soon"')
    r = env.invoke("ls")
    assert r.returncode == 2 and "download.get_patience: 'soon' is not a duration" in r.stderr


def test_get_reads_its_files_in_batches_not_one_by_one(env):
    """An in-process get of many ids reads their rows once for the downloads and their
    claims' views once for the results (a read per 500 ids), never a row or a claim
    per id; each id's result is its own claim's path."""
    ids = [f"b{i:03d}" for i in range(60)]
    for f in ids:
        (env.src / f).write_bytes(f.encode() * 100)
    with env.prefetch() as p:
        statements: list[str] = []
        p.manifest.conn.set_trace_callback(statements.append)
        results = p.get_many(ids, provider="local")
        p.manifest.conn.set_trace_callback(None)
    assert [r.path for r in results] == [env.root / f"downloads/{f}/{f}" for f in ids]
    assert all(r.error is None and r.state == "ready" for r in results)
    per_id = [s for s in statements if s.lstrip().upper().startswith("SELECT")
              and "file_id = '" in s]
    assert per_id == []


def test_the_wait_on_a_daemon_reads_only_when_the_manifest_changed(env):
    """get's wait on a running daemon (polling the manifest) reads the ids it still
    waits on in one batch, and reads nothing while the manifest is as it was (nothing
    committed since): an idle poll costs a PRAGMA, not a read per id."""
    from prefetchd.manifest import Manifest, WantSpec, own_holder
    from prefetchd.ops.get import _DaemonWait
    from prefetchd.ops.results import Wait
    from prefetchd.records import EventKind, NewEvent, State

    with env.prefetch() as p:
        ids = [f"w{i}" for i in range(5)]
        p.manifest.want([WantSpec(f, provider="local") for f in ids])
        waiting = _DaemonWait(p.settings, p.manifest, p.store, Wait(), own_holder())
        statements: list[str] = []
        p.manifest.conn.set_trace_callback(statements.append)
        waiting._look(ids, 0.0)
        first = [s for s in statements if s.lstrip().startswith("SELECT")]
        assert len(first) == 2  # the rows and the holder's claims, for all five
        statements.clear()
        waiting._look(ids, 0.0)  # nothing changed
        assert [s for s in statements if s.lstrip().startswith("SELECT")] == []
        other = Manifest(p.settings.db_path)  # the daemon's connection
        try:
            other.record("w3", NewEvent(EventKind.FAILURE, error="gone"), state=State.FAILED,
                         error="w3: gone")
        finally:
            other.close()
        statements.clear()
        waiting._look(ids, 0.0)
        p.manifest.conn.set_trace_callback(None)
        assert len([s for s in statements if s.lstrip().startswith("SELECT")]) == 2
        assert list(waiting.results) == ["w3"]
        assert "gone" in str(waiting.results["w3"].error)
