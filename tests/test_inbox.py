"""Request files: parsing, the watched inbox (real inotify), hostile input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefetchd.inbox.parse import RequestError, parse_request
from prefetchd.inbox.watch import Inbox
from tests.daemon_helpers import DaemonProc, wait_until


def drop(inbox: Path, name: str, content: str | bytes) -> None:
    """The documented way: write a dotfile, then rename it into place."""
    tmp = inbox / f".{name}.writing"
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    os.rename(tmp, inbox / name)


# -- parsing (pure) ------------------------------------------------------------------------


def test_parse_text_with_comments():
    text = b"# header\nfile-a\n\n  file-b   # trailing comment\nhttps://x/y#frag\n"
    assert [e.file_id for e in parse_request("list.txt", text)] == [
        "file-a", "file-b", "https://x/y#frag"]


def test_parse_json_object_and_list():
    one = parse_request("r.json", b'{"file_id": "a", "pin": true, "ttl": "2h"}')
    assert one[0].pin and one[0].ttl == "2h"
    many = parse_request("r.json", json.dumps([{"file_id": "a"},
                                               {"file_id": "b", "action": "unwant"}]).encode())
    assert [e.action for e in many] == ["want", "unwant"]


@pytest.mark.parametrize(
    "name, data, needle",
    [
        ("r.json", b"{", "not valid JSON"),
        ("r.json", b'{"file_id": "a", "colour": "red"}', "entry 0: colour: unknown key"),
        ("r.json", b'[{"file_id": "a"}, 3]', "entry 1: expected an object"),
        ("r.json", b'{"file_id": "a", "size": "big"}', "entry 0: size"),
        ("r.json", b'{"file_id": "a", "pin": "yes"}', "entry 0: pin"),
        ("r.json", b'{"file_id": ""}', "entry 0: file_id"),
        ("r.json", b'{"file_id": "a", "action": "delete"}', "entry 0: action"),
        ("r.json", b"[]", "no entries"),
        ("r.txt", b"\xff\xfe", "not UTF-8"),
        ("r.txt", b"# only a comment\n", "no entries"),
        ("r.txt", b"x" * (1024 * 1024 + 1), "larger than"),
        ("r.txt", ("a\n" * 10_001).encode(), "more than 10000 entries"),
        ("r.json", json.dumps([{"file_id": "a"}] * 10_001).encode(), "more than 10000"),
        ("r.json", b"[" * 100_000, "not valid JSON"),
    ],
)
def test_parse_rejects(name, data, needle):
    with pytest.raises(RequestError, match=needle):
        parse_request(name, data)


# -- the inbox in process ------------------------------------------------------------------


@pytest.fixture
def inbox(env):
    p = env.prefetch()
    ib = Inbox(p, env.settings().inbox_path, lambda: None)
    yield ib
    ib.close()
    p.close()


def test_accept_writes_receipt_and_applies_all(env, inbox):
    (env.src / "a").write_bytes(b"A")
    drop(inbox.path, "req.json", json.dumps([
        {"file_id": "a", "provider": "local", "dest": "team/a.txt", "pin": True},
        {"file_id": "file-x", "sha256": "ab" * 32},
    ]))
    assert inbox.process("req.json")
    receipt = json.loads((inbox.path / "processed/req.json.receipt.json").read_text())
    assert receipt["complete"] is False
    assert [e["file_id"] for e in receipt["entries"]] == ["a", "file-x"]
    assert inbox.p.manifest.get("a").pin == 1
    assert not (inbox.path / "req.json").exists()


def test_one_bad_entry_rejects_the_whole_file(env, inbox):
    drop(inbox.path, "bad.json", json.dumps([
        {"file_id": "ok-1"}, {"file_id": "bad", "dest": "../../etc/passwd"}, {"file_id": "ok-2"},
    ]))
    inbox.process("bad.json")
    err = json.loads((inbox.path / "failed/bad.json.error.json").read_text())
    assert "entry 1 (bad)" in err["error"] and "'..'" in err["error"]
    assert (inbox.path / "failed/bad.json").exists()
    assert inbox.p.manifest.rows() == []


@pytest.mark.parametrize("entries, needle", [
    ([{"file_id": "a", "provider": "nope"}], "provider 'nope' is not configured"),
    ([{"file_id": "a", "sha256": "zz"}], "not 64 hex"),
    ([{"file_id": "a", "dest": "x"}, {"file_id": "b", "dest": "x"}], "same dest"),
    ([{"file_id": "a", "ttl": "someday"}], "ttl"),
    ([{"file_id": "a", "dest": ".prefetchd/objects/x"}], "inside .prefetchd"),
])
def test_invalid_values_are_named(env, inbox, entries, needle):
    drop(inbox.path, "r.json", json.dumps(entries))
    inbox.process("r.json")
    assert needle in json.loads((inbox.path / "failed/r.json.error.json").read_text())["error"]
    assert inbox.p.manifest.rows() == []


def test_symlink_and_fifo_request_files(env, inbox, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("file-secret\n")
    (inbox.path / "link").symlink_to(secret)
    os.mkfifo(inbox.path / "pipe")
    inbox.scan()
    assert "symlink" in json.loads((inbox.path / "failed/link.error.json").read_text())["error"]
    assert "not a regular file" in json.loads(
        (inbox.path / "failed/pipe.error.json").read_text())["error"]
    assert secret.read_text() == "file-secret\n"
    assert inbox.p.manifest.rows() == []


def test_same_name_twice_keeps_both(env, inbox):
    drop(inbox.path, "r.txt", "file-1\n")
    inbox.process("r.txt")
    drop(inbox.path, "r.txt", "file-2\n")
    inbox.process("r.txt")
    names = os.listdir(inbox.path / "processed")
    assert len([n for n in names if n.endswith(".receipt.json")]) == 2


def test_clean_removes_old_files_only(env, inbox):
    drop(inbox.path, "old.txt", "file-1\n")
    inbox.process("old.txt")
    drop(inbox.path, "bad.json", "{")
    inbox.process("bad.json")
    past = time.time() - 10 * 86400
    for d in ("processed", "failed"):
        for n in os.listdir(inbox.path / d):
            os.utime(inbox.path / d / n, (past, past))
    inbox.receipts.pending.clear()
    assert inbox.clean(keep=7 * 86400) == 4
    assert os.listdir(inbox.path / "processed") == [] and os.listdir(inbox.path / "failed") == []


request_docs = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
        | st.text(max_size=30),
        lambda c: st.lists(c, max_size=5) | st.dictionaries(
            st.sampled_from(["file_id", "provider", "sha256", "size", "dest", "pin", "ttl",
                             "action", "x"]), c, max_size=6),
        max_leaves=20,
    ).map(lambda d: json.dumps(d).encode()),
    st.lists(st.fixed_dictionaries({
        "file_id": st.text(min_size=1, max_size=40),
        "dest": st.text(max_size=40) | st.sampled_from(["../x", "/etc/x", "a/../../b",
                                                        ".prefetchd/tmp/x", "ok/file"]),
    }), min_size=1, max_size=4).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=request_docs, json_name=st.booleans())
def test_hypothesis_request_files_never_escape_or_raise(env, inbox, doc, json_name):
    name = f"h{time.monotonic_ns()}" + (".json" if json_name else ".txt")
    (inbox.path / name).write_bytes(doc)
    before = set(os.listdir(env.tmp))
    inbox.process(name)  # must not raise, whatever the bytes
    assert not (inbox.path / name).exists()
    moved = (inbox.path / "processed" / name).exists() or (inbox.path / "failed" / name).exists()
    assert moved
    assert set(os.listdir(env.tmp)) == before  # nothing written beside the root
    for row in inbox.p.manifest.rows():
        if row.dest:
            assert not row.dest.startswith(("/", ".prefetchd"))
            assert ".." not in row.dest.split("/")


# -- the daemon with real inotify ----------------------------------------------------------


def test_daemon_inbox_end_to_end(env, server):
    (env.src / "a").write_bytes(b"A" * 10)
    (env.src / "b").write_bytes(b"B" * 10)
    inbox_dir = env.root / ".prefetchd/inbox"
    inbox_dir.mkdir(parents=True)
    drop(inbox_dir, "early.txt", "# present before the daemon starts\na\n")
    env.write_config(download="")
    env.config.write_text(env.config.read_text().replace('default_provider = "files"',
                                                         'default_provider = "local"'))
    d = DaemonProc(env).ready()
    try:
        wait_until(lambda: (inbox_dir / "processed/early.txt.receipt.json").exists())
        # A dotfile is ignored until it is renamed.
        (inbox_dir / ".half.json").write_text('{"file_id": "b", "dest": "docs/b.txt"}')
        time.sleep(0.5)
        assert (inbox_dir / ".half.json").exists()
        os.rename(inbox_dir / ".half.json", inbox_dir / "late.json")
        receipt = inbox_dir / "processed/late.json.receipt.json"

        def complete():
            return receipt.exists() and json.loads(receipt.read_text())["complete"]

        wait_until(complete, timeout=10)
        doc = json.loads(receipt.read_text())
        assert doc["entries"][0]["path"] == str(env.root / "docs/b.txt")
        assert (env.root / "docs/b.txt").read_bytes() == b"B" * 10
        early = json.loads((inbox_dir / "processed/early.txt.receipt.json").read_text())
        wait_until(lambda: json.loads((inbox_dir / "processed/early.txt.receipt.json")
                                      .read_text())["complete"])
        early = json.loads((inbox_dir / "processed/early.txt.receipt.json").read_text())
        assert early["entries"][0]["path"] == str(env.root / "downloads/a/a")
        # Hostile files never take the daemon down.
        drop(inbox_dir, "huge.txt", b"x" * (1024 * 1024 + 5))
        drop(inbox_dir, "bin.json", os.urandom(3000))
        drop(inbox_dir, "deep.json", b"[" * 200_000)
        (inbox_dir / "sub").mkdir()
        wait_until(lambda: (inbox_dir / "failed/deep.json.error.json").exists())
        wait_until(lambda: (inbox_dir / "failed/huge.txt.error.json").exists())
        assert d.alive
        drop(inbox_dir, "unwant.json", '{"file_id": "a", "action": "unwant"}')
        with env.prefetch() as p:
            wait_until(lambda: p.manifest.get("a").wanted == 0)
    finally:
        assert d.stop() == 0


def test_polling_inbox(env):
    (env.src / "a").write_bytes(b"A")
    env.write_config(extra='\n[inbox]\npoll = true\npoll_interval = "100ms"\n')
    d = DaemonProc(env).ready()
    try:
        inbox_dir = env.root / ".prefetchd/inbox"
        drop(inbox_dir, "r.json", '{"file_id": "a", "provider": "local"}')
        with env.prefetch() as p:
            wait_until(lambda: getattr(p.manifest.get("a"), "state", None) == "ready", timeout=10)
    finally:
        d.stop()


def test_names_that_are_not_utf8_are_failed_with_a_safe_error_file(env, inbox):
    bad = os.fsdecode(b"req-\xff\xfe\x80.json")
    fd = os.open(os.fsencode(inbox.path) + b"/req-\xff\xfe\x80.json", os.O_CREAT | os.O_WRONLY)
    os.write(fd, b'{"file_id": "file-1"}')
    os.close(fd)
    dot = os.fsencode(inbox.path) + b"/.00202-\xff\xfe\x80.json.tmp"
    os.close(os.open(dot, os.O_CREAT | os.O_WRONLY))
    assert inbox.scan() == 1
    failed = os.listdir(inbox.path / "failed")
    assert sorted(failed) == ["req-\\xff\\xfe\\x80.json", "req-\\xff\\xfe\\x80.json.error.json"]
    doc = json.loads((inbox.path / "failed" / "req-\\xff\\xfe\\x80.json.error.json").read_text())
    assert doc["error"] == "the file name is not valid UTF-8"
    assert bad not in os.listdir(inbox.path)
    assert os.path.exists(dot)  # a dotfile is left alone
    with env.prefetch() as p:
        assert p.manifest.get("file-1") is None  # nothing applied


def test_directories_and_empty_dest_are_rejected(env, inbox):
    (inbox.path / "adir").mkdir()
    (inbox.path / "adir" / "x.txt").write_text("file-1\n")
    drop(inbox.path, "e.json", json.dumps({"file_id": "file-2", "dest": ""}))
    inbox.scan()
    failed = set(os.listdir(inbox.path / "failed"))
    assert {"adir", "adir.error.json", "e.json", "e.json.error.json"} <= failed
    err = json.loads((inbox.path / "failed/e.json.error.json").read_text())["error"]
    assert err.startswith("entry 0: dest:")
    assert "directory" in json.loads((inbox.path / "failed/adir.error.json").read_text())["error"]
    past = time.time() - 10 * 86400
    os.utime(inbox.path / "failed/adir", (past, past))
    assert inbox.clean(86400) >= 1 and not (inbox.path / "failed/adir").exists()


def test_daemon_survives_names_watchfiles_cannot_decode(env):
    from tests.daemon_helpers import DaemonProc, wait_until

    (env.src / "ok.txt").write_bytes(b"ok")
    d = DaemonProc(env).ready(60)
    try:
        inbox = os.fsencode(env.root / ".prefetchd/inbox")
        for i in range(3):  # each of these killed the watcher (and the daemon) before
            fd = os.open(inbox + b"/.%d-\xff\xfe\x80.json.tmp" % i, os.O_CREAT | os.O_WRONLY)
            os.write(fd, b'{"file_id": "ok.txt", "provider": "local"}')
            os.close(fd)
            os.rename(inbox + b"/.%d-\xff\xfe\x80.json.tmp" % i, inbox + b"/%d-\xff.json" % i)
        drop(env.root / ".prefetchd/inbox", "good.json",
             json.dumps({"file_id": "ok.txt", "provider": "local"}))
        wait_until(lambda: (env.root / ".prefetchd/inbox/processed/good.json").exists(),
                   timeout=120)
        wait_until(lambda: len([n for n in os.listdir(env.root / ".prefetchd/inbox/failed")
                                if n.endswith(".error.json")]) == 3, timeout=120)
        assert d.alive
    finally:
        assert d.stop(60) == 0


# -- one validation for every front ---------------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"dest": "../a"}, {"sha256": "zz"}, {"provider": "nope"}, {"ttl": "someday"},
    {"dest": ".prefetchd/x"},
])
def test_inbox_and_api_refuse_in_the_same_words(env, inbox, fields):
    from prefetchd.errors import UsageError

    with pytest.raises(UsageError) as api_error:
        inbox.p.specs(["file-a"], **fields)
    drop(inbox.path, "r.json", json.dumps({"file_id": "file-a", **fields}))
    inbox.process("r.json")
    err = json.loads((inbox.path / "failed/r.json.error.json").read_text())["error"]
    assert err == f"entry 0 (file-a): {api_error.value}"


def test_a_dest_in_use_is_refused_by_both(env, inbox):
    inbox.p.want(["file-a"], dest="x/a", provider="files")
    drop(inbox.path, "r.json", json.dumps({"file_id": "file-b", "dest": "x/a"}))
    inbox.process("r.json")
    err = json.loads((inbox.path / "failed/r.json.error.json").read_text())["error"]
    assert err == "entry 0 (file-b): dest x/a is already used by file_id file-a"
