"""Hostile conditions at a small size (issue 11): a real `kill -9` at random moments while
many small files are published and moved, then a mixed batch of hostile request files
dropped into a running daemon's inbox. The long run at full size is bench/hostile.py.

Every assertion is about what happened (states, links, bytes, files moved), never about
how long it took: the kills are placed by progress (how many files are ready), not by
the clock, so the suite passes on a machine whose cores are both busy.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from prefetchd.api import Prefetch
from prefetchd.manifest import WantSpec
from prefetchd.ops.strays import remove_stray_links
from prefetchd.ops.want import want as want_op
from prefetchd.records import State
from prefetchd.store import key_of
from tests.conftest import Env, sha
from tests.daemon_helpers import DaemonProc, wait_until

META = ".prefetchd"


# -- invariants after a crash ---------------------------------------------------------------


def files_under_root(root: Path) -> dict[str, os.stat_result]:
    """Every non-directory below the root, outside .prefetchd, by relative path."""
    found: dict[str, os.stat_result] = {}
    for top, dirs, names, dfd in os.fwalk(root, follow_symlinks=False):
        if Path(top) == root:
            dirs[:] = [d for d in dirs if d != META]
        for name in names + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            rel = os.path.relpath(os.path.join(top, name), root)
            found[rel] = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    return found


def assert_store_consistent(env: Env, p: Prefetch, want: dict[str, tuple[str, bytes]]) -> None:
    """`want`: file_id -> (dest, bytes). The checks issue 11 lists after kill -9 rounds."""
    rows = {r.file_id: r for r in p.manifest.rows()}
    for fid, (dest, data) in want.items():
        r = rows[fid]
        assert (r.state, r.path, r.sha256) == (State.READY, dest, sha(data)), (fid, r)
        got = (env.root / dest).read_bytes()
        assert got == data and hashlib.sha256(got).hexdigest() == r.sha256, fid
    ready_paths = {r.path: r.sha256 for r in rows.values()
                   if r.state == State.READY and r.sha256}
    # Each link under the root is an entry's path, or absent: nothing partial, no temp
    # link, no old place of a moved file, no symlink.
    on_disk = files_under_root(env.root)
    assert sorted(set(on_disk) - set(ready_paths)) == []
    for rel, st in on_disk.items():
        assert stat.S_ISREG(st.st_mode), rel
        obj = p.store.object_stat(ready_paths[rel])
        assert obj is not None and (obj.st_ino, obj.st_dev) == (st.st_ino, st.st_dev), rel
    # No object has more links than entries account for (+1: its own name in objects/).
    links = p.manifest.accounted_links()
    over = {s: (st.st_nlink, len(links.get(s, ()))) for s, st in p.store.objects()
            if st.st_nlink > len(links.get(s, ())) + 1}
    assert over == {}
    # No partial of a ready entry is left in tmp/.
    tmp = os.listdir(env.root / META / "tmp")
    ready_keys = {key_of(fid) for fid, r in rows.items() if r.state == State.READY}
    assert [n for n in tmp if n.split(".", 1)[0] in ready_keys] == []
    # Nothing a sweep without the age guard would call stray (gc's guard hides young ones).
    assert remove_stray_links(p.manifest, p.store, min_age=0, dry_run=True) == []
    with sqlite3.connect(env.state / "prefetchd.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_kill9_rounds_leave_no_stray_link_and_no_partial(env):
    """Five rounds: new files wanted and earlier ones moved to another dest, the daemon
    started and killed with SIGKILL once a random share of the round's files is ready
    (or at once, during its start-up reconciliation). After the last restart every
    file is ready and verified at its path and nothing else is left anywhere."""
    rng = random.Random(11)
    per_round, rounds = 60, 5
    want: dict[str, tuple[str, bytes]] = {}
    contents: list[bytes] = []
    for rnd in range(rounds):
        batch: list[WantSpec] = []
        for i in range(per_round):
            fid = f"r{rnd}f{i:03d}"
            if contents and rng.random() < 0.15:  # same bytes as an earlier file: one object
                data = rng.choice(contents)
            else:  # mostly small; a few of some MiB, so that a kill may find a partial
                size = rng.randint(1, 48 * 1024) if i % 20 else rng.randint(2, 4) * 1024 * 1024
                data = rng.randbytes(size)
                contents.append(data)
            (env.src / fid).write_bytes(data)
            want[fid] = (f"r{rnd}/d{i % 4}/{fid}.bin", data)
            batch.append(WantSpec(fid, provider="local", dest=want[fid][0]))
        for fid in rng.sample(sorted(f for f in want if not f.startswith(f"r{rnd}f")),
                              min(12, rnd * per_round)):
            dest = f"moved/{rnd}/{fid}.bin"  # a ready file moves: link new, record, unlink old
            want[fid] = (dest, want[fid][1])
            batch.append(WantSpec(fid, provider="local", dest=dest))
        with env.prefetch() as p:
            want_op(p.manifest, p.store, batch)  # claims; a ready file's link moves now
        d = DaemonProc(env)
        if rnd == 2:  # any moment of start-up: reconciliation, the first downloads
            time.sleep(rng.uniform(0.05, 1.5))
        else:
            target = rng.randint(1, len(batch) - 1)
            goal = {s.file_id: want[s.file_id][0] for s in batch}
            wait_until(partial(_ready_at_least, env, goal, target), timeout=300, step=0.005)
        d.kill9()
    d = DaemonProc(env).ready(120)
    try:
        goal = {fid: dest for fid, (dest, _) in want.items()}
        wait_until(lambda: _ready_count(env, goal) == len(want), timeout=300)
    finally:
        assert d.stop(60) == 0
    with env.prefetch() as p:
        assert_store_consistent(env, p, want)
    r = env.invoke("gc", "--dry-run")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def _ready_at_least(env: Env, goal: dict[str, str], n: int) -> bool:
    return _ready_count(env, goal) >= n


def _ready_count(env: Env, goal: dict[str, str]) -> int:
    """How many of `goal` (file_id -> dest) are ready at their dest."""
    with env.prefetch() as p:
        ready = {r.file_id: r.path for r in p.manifest.rows(State.READY)}
    return sum(1 for fid, dest in goal.items() if ready.get(fid) == dest)


# -- a mixed hostile inbox batch ------------------------------------------------------------


def _drop(inbox: Path, name: str | bytes, content: bytes) -> None:
    """The documented way (a dotfile renamed into place); `name` may be bytes that are
    not UTF-8."""
    base = os.fsencode(inbox)
    tmp = base + b"/." + os.urandom(6).hex().encode() + b".writing"
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    os.rename(tmp, base + b"/" + os.fsencode(name))


def _j(doc: object) -> bytes:
    return json.dumps(doc).encode()


#: Request files that must be rejected whole: (name, content). `never-*` ids must never
#: reach the manifest, not even from an entry beside the bad one.
BAD_FILES: list[tuple[str, bytes]] = [
    ("brace.json", b"{"),
    ("deep.json", b"[" * 200_000),
    ("binary.json", bytes(range(256)) * 8),
    ("empty-list.json", b"[]"),
    ("not-object.json", b'[{"file_id": "never-1"}, 3]'),
    ("fid-number.json", b'{"file_id": 3}'),
    ("latin1.txt", b"never-2\n\xff\xfe\n"),
    ("comments-only.txt", b"# nothing here\n"),
    ("huge.txt", b"never-3\n" + b"x" * (1 << 20)),
    ("many.json", _j([{"file_id": f"never-m{i}"} for i in range(10_001)])),
    ("many.txt", "".join(f"never-t{i}\n" for i in range(10_001)).encode()),
    ("long-id.json", _j({"file_id": "never-" + "x" * 3000})),
    ("nul-id.json", _j({"file_id": "never-\u0000x"})),
    ("up.json", _j([{"file_id": "never-4", "provider": "local"},
                    {"file_id": "never-5", "provider": "local", "dest": "../x"}])),
    ("abs.json", _j({"file_id": "never-6", "provider": "local", "dest": "/etc/x"})),
    ("meta.json", _j({"file_id": "never-7", "provider": "local", "dest": ".prefetchd/x"})),
    ("meta-objects.json", _j({"file_id": "never-8", "dest": ".prefetchd/objects/sha256/x"})),
    ("nul-dest.json", _j({"file_id": "never-9", "provider": "local", "dest": "a/\u0000b"})),
    ("dotdot-mid.json", _j({"file_id": "never-10", "provider": "local", "dest": "a/../../b"})),
    ("empty-dest.json", _j({"file_id": "never-11", "provider": "local", "dest": ""})),
    ("long-comp.json", _j({"file_id": "never-12", "provider": "local", "dest": "a" * 300})),
    ("kimi-dot.json", _j({"file_id": ".", "provider": "kimi"})),
    ("kimi-dotdot.json", _j([{"file_id": "never-13"}, {"file_id": "..", "provider": "kimi"}])),
    ("kimi-slash.json", _j({"file_id": "a/../b", "provider": "kimi"})),
    ("no-provider.json", _j({"file_id": "never-14", "provider": "nope"})),
    ("bad-sha.json", _j({"file_id": "never-15", "sha256": "zz"})),
    ("unknown-key.json", _j({"file_id": "never-16", "colour": "red"})),
    ("same-dest.json", _j([{"file_id": "never-17", "dest": "same/x"},
                           {"file_id": "never-18", "dest": "same/x"}])),
    ("forget-extra.json", _j({"file_id": "never-19", "action": "forget", "pin": True})),
    ("neg-size.json", _j({"file_id": "never-20", "size": -1})),
    ("pin-string.json", _j({"file_id": "never-21", "pin": "yes"})),
]


def _plant(env: Env, outside: Path) -> list[tuple[str, str]]:
    """Symlinks planted in the root where requests will put files: (file_id, dest) of
    requests that are valid, accepted, and must fail at publish without writing through."""
    env.root.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, env.root / "planted")                    # a directory in the dest
    (env.root / "good").mkdir()
    os.symlink(outside / "target.bin", env.root / "good/evil.bin")  # the dest itself
    (env.root / "downloads").mkdir()
    os.symlink(outside, env.root / "downloads/planted-dl")        # downloads/<id>
    for fid in ("planted-a", "planted-b", "planted-dl"):
        (env.src / fid).write_bytes(b"must not reach outside " + fid.encode())
    return [("planted-a", "planted/a.bin"), ("planted-b", "good/evil.bin"),
            ("planted-dl", "")]


def _snapshot(top: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirs, names in os.walk(top):
        for n in dirs + names:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_size if not stat.S_ISDIR(
                st.st_mode) else 0)
    return out


@dataclass
class Batch:
    """What is dropped, and what each drop must become."""

    good: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # fid -> (dest, bytes)
    drops: list[tuple[str | bytes, bytes]] = field(default_factory=list)  # (name, content)
    bad: list[str | bytes] = field(default_factory=list)  # names that must be rejected
    failing: dict[str, str] = field(default_factory=dict)  # fid -> words of its error
    ignored: list[str] = field(default_factory=list)


def _batch(env: Env, server, rng: random.Random, outside: Path) -> Batch:
    b = Batch()
    for i in range(150):
        fid, data = f"g{i:03d}", rng.randbytes(rng.randint(1, 20_000))
        if i % 3 == 0:  # a text request file: the default provider, downloads/<id>/<name>
            fid = f"file-g{i:03d}"
            server.add(fid, data, f"g{i:03d}.dat")
            b.good[fid] = (f"downloads/{fid}/g{i:03d}.dat", data)
            b.drops.append((f"text-{i:03d}", f"# good\n{fid}\n".encode()))
        else:
            (env.src / fid).write_bytes(data)
            b.good[fid] = (f"good/{i % 7}/{fid}.bin", data)
            b.drops.append((f"good-{i:03d}.json", _j({"file_id": fid, "provider": "local",
                                                      "dest": b.good[fid][0]})))
    for copy in range(3):
        for name, content in BAD_FILES:
            b.bad.append(f"{copy}-{name}")
            b.drops.append((b.bad[-1], content))
        raw = b"%d-name-\xff\xfe\x80.json" % copy    # not UTF-8: rejected, unread
        b.bad.append(raw)
        b.drops.append((raw, _j({"file_id": "never-raw", "provider": "local"})))
    planted = _plant(env, outside)
    b.drops.append(("planted.json", _j([{"file_id": f, "provider": "local", **(
        {"dest": d} if d else {})} for f, d in planted])))
    b.failing = {f: f"dest {d or 'downloads/' + f}: " for f, d in planted}
    for i, fid in enumerate(["../../etc/passwd", "/etc/passwd", "a/../../../etc/hostname"]):
        b.bad.append(f"traversal-id-{i}.json")  # outside the dir provider's folder
        b.drops.append((b.bad[-1], _j({"file_id": fid, "provider": "local"})))
    rng.shuffle(b.drops)
    b.ignored = [".dot.json", "later.json.tmp", "half.part"]
    return b


def _non_regular(inbox: Path, outside: Path) -> list[str]:
    """Directories, FIFOs and symlinks as request files; their names."""
    names = []
    for i in range(3):
        (inbox / f"dir-{i}").mkdir()
        (inbox / f"dir-{i}" / "x.txt").write_text("never-dir\n")
        os.mkfifo(inbox / f"fifo-{i}")
        os.symlink(outside / "secret.json", inbox / f"link-{i}.json")
        names += [f"dir-{i}", f"fifo-{i}", f"link-{i}.json"]
    return names


def _shown(name: str | bytes) -> str:
    """The name a request gets in failed/: bytes that are not UTF-8 written as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _assert_inbox_outcome(inbox: Path, b: Batch) -> None:
    for n in map(_shown, b.bad):
        assert os.path.lexists(inbox / "failed" / n), n
        assert json.loads((inbox / "failed" / f"{n}.error.json").read_text())["error"], n
    for name in (_shown(n) for n, _ in b.drops if n not in b.bad):
        receipt = inbox / "processed" / f"{name}.receipt.json"
        assert (inbox / "processed" / name).exists() and receipt.exists(), name
    left = sorted(n for n in os.listdir(inbox) if n not in ("failed", "processed"))
    assert left == sorted(b.ignored)


def test_mixed_hostile_inbox_batch(env, server, tmp_path):
    """A few hundred request files, good and hostile, dropped before and while the daemon
    runs. The daemon stays up; each good file ends ready; each bad request file is in
    failed/ with its error file and nothing of it applied (no `never-*` id); ignored
    names stay; accepted entries that cannot be served (symlinks planted in the root, ids
    leaving the dir provider's folder) end failed; nothing is written outside the root;
    no entry is left queued or downloading."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.bin").write_bytes(b"do not touch")
    (outside / "secret.json").write_bytes(_j({"file_id": "never-secret", "provider": "local"}))
    b = _batch(env, server, random.Random(1111), outside)
    outside_before = _snapshot(outside)
    inbox = env.root / META / "inbox"
    inbox.mkdir(parents=True)
    half = len(b.drops) // 2
    for name, content in b.drops[:half]:     # present before the daemon starts
        _drop(inbox, name, content)
    d = DaemonProc(env).ready(120)
    try:
        for name in b.ignored:
            _drop(inbox, name, _j({"file_id": "never-ignored", "provider": "local"}))
        b.bad += _non_regular(inbox, outside)
        for name, content in b.drops[half:]:
            _drop(inbox, name, content)
        wait_until(lambda: all((inbox / "failed" / f"{_shown(n)}.error.json").exists()
                               for n in b.bad), timeout=300, step=0.1)
        goal = {fid: dest for fid, (dest, _) in b.good.items()}
        wait_until(lambda: _ready_count(env, goal) == len(b.good), timeout=300, step=0.1)
        wait_until(lambda: _settled(env), timeout=300, step=0.1)
        assert d.alive
    finally:
        assert d.stop(60) == 0
    _assert_inbox_outcome(inbox, b)
    with env.prefetch() as p:
        rows = {r.file_id: r for r in p.manifest.rows()}
    assert sorted(rows) == sorted([*b.good, *b.failing])  # no never-*, no dotfile's id
    for fid, (dest, data) in b.good.items():
        assert rows[fid].state == State.READY and (env.root / dest).read_bytes() == data
    for fid, why in b.failing.items():
        assert rows[fid].state == State.FAILED and why in (rows[fid].error or ""), rows[fid]
    # Nothing written outside the root: the symlinks' targets are as they were.
    assert _snapshot(outside) == outside_before
    assert (outside / "target.bin").read_bytes() == b"do not touch"
    assert not Path("/etc/x").exists()
    beside = {n for n in os.listdir(env.tmp) if not n.startswith("notify-")}
    assert beside == {"prefetchd.toml", "root", "state", "src", "outside", "daemon.log"}


def _settled(env: Env) -> bool:
    """No entry left queued, downloading, retrying or waiting for space."""
    with env.prefetch() as p:
        return all(r.state in (State.READY, State.FAILED) for r in p.manifest.rows())


# -- a kill between moving a request file and writing what it says -------------------------

_KILLED_AFTER_MOVE = """
import os, sys
from prefetchd.api import Prefetch
from prefetchd.config import load_settings
from prefetchd.inbox.watch import Inbox

real = os.rename
def rename(src, dst, *a, **kw):  # SIGKILL's effect, at this exact point: nothing after it
    real(src, dst, *a, **kw)
    if src == sys.argv[2]:
        os._exit(137)
os.rename = rename
with Prefetch(load_settings(sys.argv[1], environ={})) as p:
    Inbox(p, p.settings.inbox_path, lambda: None).process(sys.argv[2])
"""


@pytest.mark.parametrize("name, content, where, sidecar", [
    ("req.json", b'{"file_id": "a", "provider": "local"}', "processed", "receipt"),
    ("bad.json", b"{", "failed", "error"),
])
def test_a_kill_right_after_moving_a_request_leaves_it_its_sidecar(env, name, content, where,
                                                                   sidecar):
    """A kill right after the request was renamed into processed/ (failed/), made exact
    by stopping the process there: its receipt (error file) is already written, since
    the inbox writes it before the move (once the other order lost it for ever)."""
    (env.src / "a").write_bytes(b"A")
    inbox = env.root / META / "inbox"
    inbox.mkdir(parents=True)
    _drop(inbox, name, content)
    r = subprocess.run([sys.executable, "-c", _KILLED_AFTER_MOVE, str(env.config), name],
                       env={**os.environ, **env.environ}, check=False, timeout=120)
    assert r.returncode == 137 and (inbox / where / name).exists()
    d = DaemonProc(env).ready(120)
    try:
        _drop(inbox, "after.json", b'{"file_id": "a", "provider": "local"}')
        wait_until(lambda: (inbox / "processed/after.json.receipt.json").exists(), timeout=120)
    finally:
        assert d.stop(60) == 0
    assert (inbox / where / f"{name}.{sidecar}.json").exists()


def _sentinels(inbox: Path) -> list[str]:
    try:
        return [n for n in os.listdir(inbox) if n.startswith(".prefetchd-watching-")]
    except FileNotFoundError:
        return []


def test_a_kill_during_start_up_leaves_no_watcher_sentinel(env):
    """The watcher touches `.prefetchd-watching-<pid>` until it sees it, then removes it;
    a daemon killed in between leaves it, and the next start removes it."""
    inbox = env.root / META / "inbox"
    d = DaemonProc(env)
    left = wait_until(lambda: _sentinels(inbox), timeout=120, step=0.001)
    d.kill9()
    d = DaemonProc(env).ready(120)
    try:
        assert d.alive
    finally:
        assert d.stop(60) == 0
    assert [n for n in _sentinels(inbox) if n in left] == []
