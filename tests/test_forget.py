"""Request options can be changed and forgotten: `release` clears them, `forget` removes
the entry (CLI, request files, Python API); events stay."""

from __future__ import annotations

import json
import os

from prefetchd import api
from prefetchd.inbox.watch import Inbox
from tests.conftest import sha
from tests.support.rows import event_rows


def kinds(env, fid):
    with env.prefetch() as p:
        return [e.kind for e in event_rows(p.manifest, fid)]


def test_an_option_left_out_keeps_the_old_one_until_release(env, server):
    server.add("file-a", b"A" * 100, "a.txt")
    wrong = sha(b"not these bytes")
    r = env.invoke("get", "file-a", "--sha256", wrong)
    assert r.returncode == 1 and "does not match" in r.stderr
    r = env.invoke("get", "file-a")  # --sha256 left out: the wrong one still applies
    assert r.returncode == 1 and "does not match" in r.stderr
    assert env.invoke("release", "file-a").returncode == 0
    r = env.invoke("get", "file-a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(env.root / "downloads/file-a/a.txt")


def test_an_option_given_replaces_the_old_one(env, server):
    server.add("file-a", b"A" * 100, "a.txt")
    assert env.invoke("get", "file-a", "--sha256", sha(b"nope")).returncode == 1
    r = env.invoke("get", "file-a", "--sha256", sha(b"A" * 100))
    assert r.returncode == 0, r.stderr


def test_release_clears_dest_and_pin(env, server):
    server.add("file-a", b"A" * 100, "a.txt")
    assert env.invoke("get", "file-a", "--dest", "wrong/a.txt", "--pin").returncode == 0
    assert env.invoke("release", "file-a").returncode == 0
    assert not (env.root / "wrong/a.txt").exists()
    r = env.invoke("get", "file-a")
    assert r.stdout.strip() == str(env.root / "downloads/file-a/a.txt")
    (row,) = json.loads(env.invoke("ls", "--json").stdout)
    assert row["pin"] is False and row["state"] == "ready"


def test_forget_removes_entry_file_and_options_but_not_events(env, server):
    server.add("file-a", b"A" * 100, "a.txt")
    assert env.invoke("get", "file-a", "--dest", "wrong/a.txt", "--ttl", "1h").returncode == 0
    r = env.invoke("forget", "file-a")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "removed wrong/a.txt"
    assert not (env.root / "wrong/a.txt").exists()
    assert json.loads(env.invoke("ls", "--json").stdout) == []
    assert kinds(env, "file-a") == ["download", "forget"]
    with env.prefetch() as p:
        assert list(p.store.objects()) == []  # nothing else linked it
    r = env.invoke("get", "file-a")  # starts afresh: default dest
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(env.root / "downloads/file-a/a.txt")
    assert kinds(env, "file-a") == ["download", "forget", "download"]


def test_forget_keeps_an_object_another_entry_links(env, server):
    data = os.urandom(1000)
    server.add("file-a", data, "a.bin")
    server.add("file-b", data, "b.bin")
    assert env.invoke("get", "file-a", "file-b").returncode == 0
    assert env.invoke("forget", "file-a").returncode == 0
    b = env.root / "downloads/file-b/b.bin"
    assert b.read_bytes() == data and b.stat().st_nlink == 2  # b and its object
    assert env.invoke("verify", "file-b").returncode == 0


def test_forget_unknown_is_exit_1_and_changes_nothing(env, server):
    server.add("file-a", b"A", "a.txt")
    assert env.invoke("get", "file-a").returncode == 0
    r = env.invoke("forget", "file-a", "file-nope")
    assert r.returncode == 1
    assert r.stderr.strip() == "prefetchd: error: not in the manifest: file-nope"
    assert (env.root / "downloads/file-a/a.txt").exists()
    assert [x["file_id"] for x in json.loads(env.invoke("ls", "--json").stdout)] == ["file-a"]


def test_a_learned_hash_is_no_promise_after_release_or_forget(env, server):
    """The hash of a first download checks the stored object, not what the id serves
    later: after release (or forget) a changed file is downloaded as it now is."""
    server.add("file-a", b"old bytes", "a.txt")
    assert env.invoke("get", "file-a").returncode == 0
    server.add("file-a", b"new bytes", "a.txt")
    assert env.invoke("release", "file-a").returncode == 0
    r = env.invoke("get", "file-a")
    assert r.returncode == 0, r.stderr
    assert (env.root / "downloads/file-a/a.txt").read_bytes() == b"new bytes"
    server.add("file-a", b"newer bytes", "a.txt")
    assert env.invoke("forget", "file-a").returncode == 0
    r = env.invoke("get", "file-a")
    assert r.returncode == 0, r.stderr
    assert (env.root / "downloads/file-a/a.txt").read_bytes() == b"newer bytes"


def test_python_api_forget(env, server, monkeypatch):
    server.add("file-a", b"A", "a.txt")
    monkeypatch.setenv("PREFETCHD_CONFIG", str(env.config))
    path = api.get("file-a")
    assert path.read_bytes() == b"A"
    assert api.forget("file-a") == ["downloads/file-a/a.txt"]
    assert api.path("file-a") is None and not path.exists()


def test_request_file_forget_then_want_starts_afresh(env, server):
    server.add("file-a", b"A" * 10, "a.txt")
    assert env.invoke("get", "file-a", "--dest", "wrong/a.txt", "--sha256",
                   sha(b"A" * 10)).returncode == 0
    with env.prefetch() as p:
        inbox = Inbox(p, env.tmp / "inbox", lambda: None)
        try:
            (inbox.path / "r.json").write_text(json.dumps(
                [{"file_id": "file-a", "action": "forget"}, {"file_id": "file-a"}]))
            assert inbox.process("r.json")
            assert (inbox.path / "processed/r.json").exists()
            row = p.manifest.get("file-a")
            assert row.state == "queued" and row.dest is None
            assert row.expected_sha256 is None
            assert not (env.root / "wrong/a.txt").exists()
            (inbox.path / "bad.json").write_text(json.dumps(
                {"file_id": "file-a", "action": "forget", "dest": "x"}))
            assert inbox.process("bad.json")
            err = json.loads((inbox.path / "failed/bad.json.error.json").read_text())
            assert "forget takes only file_id" in err["error"]
        finally:
            inbox.close()
    assert [k for k in kinds(env, "file-a")] == ["download", "forget"]
