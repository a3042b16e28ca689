#!/usr/bin/env python3
"""Hostile input, the long run (issue 11): many hostile and good request files and
random `kill -9`/restart rounds of a real daemon, then every invariant checked.

    .venv/bin/python bench/hostile.py                            # 10,000 files, 200 rounds
    .venv/bin/python bench/hostile.py --files 500 --rounds 10    # a smoke run

It builds its own config in a temp directory (a `dir` provider, and `http` providers
against a local http.server for the SSRF cases), plants symlinks in the root, drops the
request files a chunk per round while the daemon runs, kills the daemon with SIGKILL at
a random moment of each round (during start-up, once some more files are ready, or after
a random delay) and starts it again. Run as root, the root is a small tmpfs
(`--tmpfs-mib`, 0 for none). It prints a table of figures and exits 1 if any invariant
broke, each named. tests/test_hostile.py runs the same cases at a small size in the
suite; this is not collected by pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFETCHD = [sys.executable, "-m", "prefetchd.cli.launch"]
MiB = 1 << 20
META = ".prefetchd"
SENTINEL = ".prefetchd-watching-"  # the inbox watcher's own dotfile, one per daemon pid


# -- what is dropped, and what each drop must become ---------------------------------------


def _j(doc: object) -> bytes:
    return json.dumps(doc).encode()


#: Request files rejected whole: (name, content, at most this many copies). `never-*` ids
#: must never reach the manifest, not even from a good entry beside the bad one.
BAD: list[tuple[str, bytes, int]] = [
    ("brace.json", b"{", 0), ("deep.json", b"[" * 200_000, 3),
    ("binary.json", bytes(range(256)) * 8, 0), ("empty.json", b"[]", 0),
    ("not-object.json", b'[{"file_id": "never-1"}, 3]', 0),
    ("fid-number.json", b'{"file_id": 3}', 0), ("latin1.txt", b"never-2\n\xff\xfe\n", 0),
    ("comments.txt", b"# nothing\n", 0), ("huge.txt", b"never-3\n" + b"x" * MiB, 3),
    ("many.json", _j([{"file_id": f"never-m{i}"} for i in range(10_001)]), 3),
    ("many.txt", "".join(f"never-t{i}\n" for i in range(10_001)).encode(), 3),
    ("long-id.json", _j({"file_id": "never-" + "x" * 3000}), 0),
    ("nul-id.json", _j({"file_id": "never-\u0000"}), 0),
    ("up.json", _j([{"file_id": "never-4"}, {"file_id": "never-5", "dest": "../x"}]), 0),
    ("abs.json", _j({"file_id": "never-6", "dest": "/etc/x"}), 0),
    ("meta.json", _j({"file_id": "never-7", "dest": ".prefetchd/x"}), 0),
    ("nul-dest.json", _j({"file_id": "never-9", "dest": "a/\u0000b"}), 0),
    ("mid-up.json", _j({"file_id": "never-10", "dest": "a/../../b"}), 0),
    ("empty-dest.json", _j({"file_id": "never-11", "dest": ""}), 0),
    ("long-part.json", _j({"file_id": "never-12", "dest": "a" * 300}), 0),
    ("kimi-dot.json", _j({"file_id": ".", "provider": "kimi"}), 0),
    ("kimi-up.json", _j([{"file_id": "never-13"}, {"file_id": "..", "provider": "kimi"}]), 0),
    ("no-provider.json", _j({"file_id": "never-14", "provider": "nope"}), 0),
    ("bad-sha.json", _j({"file_id": "never-15", "sha256": "zz"}), 0),
    ("unknown-key.json", _j({"file_id": "never-16", "colour": "red"}), 0),
    ("same-dest.json", _j([{"file_id": "never-17", "dest": "s/x"},
                           {"file_id": "never-18", "dest": "s/x"}]), 0),
    ("forget-pin.json", _j({"file_id": "never-19", "action": "forget", "pin": True}), 0),
    ("pin-text.json", _j({"file_id": "never-21", "pin": "yes"}), 0),
]
SSRF_HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "2130706433:{port}",
              "0x7f000001:{port}", "[::ffff:127.0.0.1]:{port}", "127.1:{port}", "10.0.0.1",
              "169.254.169.254", "[fd00:ec2::254]"]


@dataclass
class Drop:
    name: str | bytes
    content: bytes = b""
    kind: str = "file"  # file | dir | fifo | symlink
    target: Path | None = None

    def place(self, inbox: Path) -> None:
        path = os.fsencode(inbox) + b"/" + os.fsencode(self.name)
        if self.kind == "dir":
            os.mkdir(path)
            (Path(os.fsdecode(path)) / "x.txt").write_text("never-dir\n")
        elif self.kind == "fifo":
            os.mkfifo(path)
        elif self.kind == "symlink":
            os.symlink(self.target or "/", path)
        else:  # the documented way: a dotfile renamed into place
            tmp = os.fsencode(inbox) + b"/." + os.urandom(6).hex().encode() + b".writing"
            with open(tmp, "wb") as f:
                f.write(self.content)
            os.rename(tmp, path)


def shown(name: str | bytes) -> str:
    """The name the daemon gives a request in processed/ and failed/."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


@dataclass
class Plan:
    drops: list[Drop] = field(default_factory=list)
    good: dict[str, tuple[str, str]] = field(default_factory=dict)  # fid -> (dest, sha256)
    failing: dict[str, str] = field(default_factory=dict)  # fid -> words of its error
    ssrf: set[str] = field(default_factory=set)
    accepted: list[str] = field(default_factory=list)
    rejected: list[str | bytes] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    movable: dict[str, str] = field(default_factory=dict)  # fid -> its request's name
    planted: list[str] = field(default_factory=list)


def _good(plan: Plan, i: int, rng: random.Random, src: Path, port: int, big: int) -> None:
    data = rng.randbytes(big if big and i % 300 == 7 else rng.randint(1, 4000))
    kind = rng.choices(["json", "text", "http"], [7, 2, 1])[0]
    name = f"good-{i:05d}" + (".txt" if kind == "text" else ".json")
    fid = f"G{i:05d}"
    (src / fid).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    if kind == "text":
        plan.good[fid] = (f"downloads/{fid}/{fid}", sha)
        content = f"# good\n{fid}\n".encode()
    elif kind == "http":
        fid = f"http://127.0.0.1:{port}/{fid}"
        plan.good[fid] = (f"web/{i % 50}/{i:05d}.bin", sha)
        content = _j({"file_id": fid, "provider": "lan", "dest": plan.good[fid][0]})
    else:
        plan.good[fid] = (f"good/{i % 97}/{fid}.bin", sha)
        content = _j({"file_id": fid, "provider": "local", "dest": plan.good[fid][0]})
        plan.movable[fid] = name
    plan.accepted.append(name)
    plan.drops.append(Drop(name, content))


def _bad(plan: Plan, i: int, copies: dict[str, int], outside: Path) -> None:
    kinds = len(BAD) + 4
    k = i % kinds
    if k < len(BAD):
        name, content, cap = BAD[k]
        copies[name] = copies.get(name, 0) + 1
        if cap and copies[name] > cap:  # a few are enough; more only fill the disk
            name, content = BAD[0][0], BAD[0][1]
        plan.drops.append(Drop(f"bad-{i:05d}-{name}", content))
    elif k == len(BAD):  # not UTF-8: rejected unread, shown with \xNN
        plan.drops.append(Drop(b"bad-%05d-\xff\xfe\x80.json" % i, _j({"file_id": "never-x"})))
    else:
        kind = ["dir", "fifo", "symlink"][k - len(BAD) - 1]
        plan.drops.append(Drop(f"bad-{i:05d}-{kind}", kind=kind, target=outside / "secret"))
    plan.rejected.append(plan.drops[-1].name)


def _failing(plan: Plan, i: int, work: Path, root: Path, port: int) -> None:
    """Valid requests whose entries must end `failed`: SSRF URLs, a redirect to cloud
    metadata, dests through planted symlinks (and, rejected whole instead, ids that
    leave the dir provider's folder)."""
    k = i % (len(SSRF_HOSTS) + 4)
    if k < len(SSRF_HOSTS):
        fid = f"http://{SSRF_HOSTS[k].format(port=port)}/ssrf/{i}"
        entry, why = {"file_id": fid, "provider": "web"}, "refusing to connect"
        plan.ssrf.add(fid)
    elif k == len(SSRF_HOSTS):
        fid = f"http://127.0.0.1:{port}/redirect/{i}"
        entry, why = {"file_id": fid, "provider": "lan"}, "refusing to connect to 169.254"
        plan.ssrf.add(fid)
    elif k == len(SSRF_HOSTS) + 1:  # leaves the dir provider's folder: refused as a request
        name = f"bad-{i:05d}-traversal-id.json"
        plan.drops.append(Drop(name, _j({"file_id": f"../../etc/{i}/passwd",
                                         "provider": "local"})))
        plan.rejected.append(name)
        return
    else:
        fid = f"P{i:05d}"
        if k == len(SSRF_HOSTS) + 2:  # the dest itself is a symlink
            dest = f"planted/{fid}"
            os.symlink(work / "outside" / fid, root / dest)
            plan.planted.append(dest)
        else:  # a directory on the way is one
            dest = f"planted/evil/{fid}.bin"
        entry, why = {"file_id": fid, "provider": "local", "dest": dest}, f"dest {dest}: "
        (work / "src" / fid).write_bytes(b"must not leave the root")
    plan.failing[fid] = why
    plan.accepted.append(f"failing-{i:05d}.json")
    plan.drops.append(Drop(plan.accepted[-1], _j(entry)))


def make_plan(n: int, seed: int, work: Path, root: Path, port: int,
              tmpfs_bytes: int | None) -> Plan:
    """N request files: about 60 % good, 27 % rejected, 10 % accepted but failing, 3 %
    ignored names; the big good files are sized to fill at most half a tmpfs root."""
    rng, plan, copies = random.Random(seed), Plan(), dict[str, int]()
    src, outside = work / "src", work / "outside"
    src.mkdir(exist_ok=True)
    outside.mkdir()
    (outside / "secret").write_text("never-secret\n")
    (root / "planted").mkdir(parents=True)
    os.symlink(outside, root / "planted" / "evil")  # a directory of dests leads outside
    plan.planted = ["planted/evil"]
    n_big = max(1, n // 500)
    big = MiB if tmpfs_bytes is None else min(MiB, max(0, tmpfs_bytes // 2 - n * 4096) // n_big)
    for i in range(n):
        roll = rng.random()
        if roll < 0.60:
            _good(plan, i, rng, src, port, big)
        elif roll < 0.87:
            _bad(plan, i, copies, outside)
        elif roll < 0.97:
            _failing(plan, i, work, root, port)
        else:
            plan.ignored.append(rng.choice([f".dot-{i}.json", f"x-{i}.json.tmp", f"y-{i}.part"]))
            plan.drops.append(Drop(plan.ignored[-1], _j({"file_id": "never-ignored"})))
    if tmpfs_bytes:  # larger than the filesystem: fails at once, fills nothing
        (src / "too-big").write_bytes(b"\0" * (tmpfs_bytes + MiB))
        plan.failing["too-big"] = "the filesystem holds"
        plan.accepted.append("too-big.txt")
        plan.drops.append(Drop("too-big.txt", b"too-big\n"))
    rng.shuffle(plan.drops)
    return plan


# -- processes -----------------------------------------------------------------------------


class Handler(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass  # quiet: the figures say what matters


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed daemon's socket
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FilesServer:
    """The good http files and the bait for the SSRF cases, on loopback."""

    def __init__(self, src: Path) -> None:
        src.mkdir(parents=True, exist_ok=True)
        self.httpd = QuietServer(
            ("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(src)))
        self.httpd.seen = []  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[str]:
        return self.httpd.seen  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.httpd.shutdown()


class Daemon:
    """`prefetchd run` with a notify socket (to count starts that reached READY)."""

    def __init__(self, cfg: Path, work: Path) -> None:
        path = work / "notify.sock"
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        with open(work / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*PREFETCHD, "--config", str(cfg), "run"], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, env={**os.environ, "NOTIFY_SOCKET": str(path)})

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready_seen(self) -> bool:
        got = b""
        while True:
            try:
                got += self.sock.recv(4096)
            except BlockingIOError:
                return b"READY=1" in got

    def peak_rss_kib(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                return next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), 0)
        except OSError:
            return 0

    def end(self, sig_kill: bool) -> tuple[int, int, bool]:
        """Kill (SIGKILL) or stop (SIGTERM); (exit code, peak RSS KiB, reached READY)."""
        rss, ready = self.peak_rss_kib(), self.ready_seen()
        self.proc.kill() if sig_kill else self.proc.terminate()
        rc = self.proc.wait(120)
        self.sock.close()
        return rc, rss, ready


def count(db: Path, where: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM files WHERE {where}").fetchone()[0])
    except sqlite3.Error:
        return 0  # not made yet


def integrity_ok(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# -- the rounds ----------------------------------------------------------------------------


def kill_moment(d: Daemon, rng: random.Random, db: Path) -> str:
    """Wait for a random moment of this run: during start-up, once some more files are
    ready, or after a random delay; returns which."""
    mode = rng.choice(["start", "progress", "progress", "delay"])
    if mode == "start":
        time.sleep(rng.uniform(0.0, 1.0))
    elif mode == "delay":
        time.sleep(rng.uniform(0.2, 3.0))
    else:
        target = count(db, "state = 'ready'") + rng.randint(1, 40)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and d.alive and count(db, "state = 'ready'") < target:
            time.sleep(0.005)
    return mode


def drop_moves(plan: Plan, rng: random.Random, inbox: Path, rnd: int) -> None:
    """Re-want two good files already accepted at a new dest: a move (link the new
    place, record, unlink the old) is one more window for a kill."""
    movable = [f for f, name in plan.movable.items() if (inbox / "processed" / name).exists()]
    for fid in rng.sample(sorted(movable), min(2, len(movable))):
        del plan.movable[fid]
        plan.good[fid] = (f"moved/{rnd}/{fid}.bin", plan.good[fid][1])
        plan.accepted.append(f"move-{fid}.json")
        Drop(plan.accepted[-1], _j({"file_id": fid, "provider": "local",
                                    "dest": plan.good[fid][0]})).place(inbox)


def run_rounds(plan: Plan, args: argparse.Namespace, cfg: Path, work: Path, inbox: Path,
               fig: dict) -> Daemon:
    """Each round: start, drop this round's chunk, kill at a random moment, check the
    database; then the last start, left running with the last chunk."""
    rng = random.Random(args.seed + 1)
    db = work / "state" / "prefetchd.db"
    chunks = [plan.drops[i::args.rounds + 1] for i in range(args.rounds + 1)]
    for rnd in range(args.rounds):
        d = Daemon(cfg, work)
        for item in chunks[rnd]:
            item.place(inbox)
        drop_moves(plan, rng, inbox, rnd)
        mode = kill_moment(d, rng, db)
        _rc, rss, ready = d.end(sig_kill=True)
        fig["kills"] += 1
        fig["kills by moment"][mode] = fig["kills by moment"].get(mode, 0) + 1
        fig["starts that reached READY"] += ready
        fig["max RSS of the daemon (MiB)"] = max(fig["max RSS of the daemon (MiB)"], rss >> 10)
        if db.exists():
            fig["integrity checks"] += 1
            fig["integrity checks ok"] += integrity_ok(db)
        if rnd % 10 == 9:
            ready_now = count(db, "state = 'ready'")
            print(f"round {rnd + 1}/{args.rounds}: {ready_now} entries ready", flush=True)
    d = Daemon(cfg, work)
    for item in chunks[args.rounds]:
        item.place(inbox)
    return d


def settled(plan: Plan, inbox: Path, db: Path) -> bool:
    """Every request file handled, every entry ready or failed, every receipt there
    complete (a missing receipt is not waited for: check_inbox names it)."""
    left = {n for n in os.listdir(inbox) if n not in ("processed", "failed")
            and not n.startswith(SENTINEL)}  # check_inbox names those
    if left != set(plan.ignored) or count(db, "state NOT IN ('ready', 'failed')"):
        return False
    for name in os.listdir(inbox / "processed"):
        if name.endswith(".receipt.json") and not name.startswith("."):
            try:
                if not json.loads((inbox / "processed" / name).read_text()).get("complete"):
                    return False
            except (OSError, ValueError):
                return False
    return True


def finish(d: Daemon, plan: Plan, work: Path, inbox: Path, timeout: float, fig: dict) -> bool:
    """Wait until everything settled, then stop the daemon; False if it never did."""
    deadline = time.monotonic() + timeout
    ok, streak = False, 0
    while time.monotonic() < deadline and d.alive and not ok:
        time.sleep(0.5)
        streak = streak + 1 if settled(plan, inbox, work / "state" / "prefetchd.db") else 0
        ok = streak >= 3  # the same for a second: nothing in flight between two looks
    alive = d.alive
    rc, rss, ready = d.end(sig_kill=False)
    fig["starts that reached READY"] += ready
    fig["max RSS of the daemon (MiB)"] = max(fig["max RSS of the daemon (MiB)"], rss >> 10)
    fig["last stop's exit code"] = rc
    return ok and alive and rc == 0


# -- the invariants ------------------------------------------------------------------------


def files_under(root: Path) -> dict[str, os.stat_result]:
    out: dict[str, os.stat_result] = {}
    for top, dirs, names, dfd in os.fwalk(root, follow_symlinks=False):
        if Path(top) == root:
            dirs[:] = [x for x in dirs if x != META]
        for n in names + [x for x in dirs if os.path.islink(os.path.join(top, x))]:
            out[os.path.relpath(os.path.join(top, n), root)] = os.stat(
                n, dir_fd=dfd, follow_symlinks=False)
    return out


def check_entries(plan: Plan, root: Path, rows: dict[str, tuple]) -> list[str]:
    broken = []
    for fid, (dest, sha) in plan.good.items():
        state, path, got_sha, _err = rows.get(fid, (None,) * 4)
        if (state, path, got_sha) != ("ready", dest, sha):
            broken.append(f"good {fid}: {state} at {path}, wanted ready at {dest}")
        elif hashlib.sha256((root / dest).read_bytes()).hexdigest() != sha:
            broken.append(f"good {fid}: the bytes at {dest} do not match")
    for fid, why in plan.failing.items():
        state, _p, _s, err = rows.get(fid, (None,) * 4)
        if state != "failed" or why not in (err or ""):
            broken.append(f"failing {fid!r}: {state}, {err!r} (wanted failed, {why!r})")
    extra = set(rows) - set(plan.good) - set(plan.failing)
    if extra:
        broken.append(f"entries no good request made: {sorted(extra)[:5]}")
    return broken


def check_store(root: Path, rows: dict[str, tuple], planted: list[str]) -> tuple[list, int]:
    """Links, objects, partials; returns (broken, partials left)."""
    broken = []
    ready = {r[1]: r[2] for r in rows.values() if r[0] == "ready"}
    links: dict[str, int] = {}
    for r in rows.values():
        if r[1] and r[2]:
            links[r[2]] = links.get(r[2], 0) + 1
    objects = root / META / "objects" / "sha256"
    inodes = {}
    for d in objects.iterdir():
        for f in d.iterdir():
            st = f.lstat()
            inodes[d.name + f.name] = (st.st_ino, st.st_dev)
            if st.st_nlink > links.get(d.name + f.name, 0) + 1:
                broken.append(f"object {d.name + f.name}: {st.st_nlink} links, "
                              f"{links.get(d.name + f.name, 0)} accounted")
    for rel, st in files_under(root).items():
        if rel in planted:
            continue
        if rel not in ready or inodes.get(ready[rel]) != (st.st_ino, st.st_dev):
            broken.append(f"{rel}: under the root, not the link of a ready entry")
    keys = {hashlib.sha256(f.encode()).hexdigest()[:24]  # as prefetchd.store.key_of
            for f, r in rows.items() if r[0] == "ready"}
    tmp = os.listdir(root / META / "tmp")
    broken += [f"tmp/{n}: a partial of a ready entry" for n in tmp if n.split(".")[0] in keys]
    return broken, len(tmp)


def check_inbox(plan: Plan, inbox: Path) -> list[str]:
    broken = []
    sentinels = [n for n in os.listdir(inbox) if n.startswith(SENTINEL)]
    if sentinels:
        broken.append(f"inbox: {len(sentinels)} watcher sentinel(s) left by killed daemons "
                      f"({sentinels[0]}, ...)")
    for name in plan.rejected:
        err = inbox / "failed" / f"{shown(name)}.error.json"
        if not os.path.lexists(inbox / "failed" / shown(name)) or not err.exists():
            broken.append(f"rejected {shown(name)}: not in failed/ with its error file")
    for name in plan.accepted:
        receipt = inbox / "processed" / f"{name}.receipt.json"
        if not (inbox / "processed" / name).exists() or not receipt.exists():
            broken.append(f"accepted {name}: not in processed/ with its receipt")
        elif not json.loads(receipt.read_text()).get("complete"):
            broken.append(f"accepted {name}: its receipt is not complete")
    return broken


def check(plan: Plan, work: Path, root: Path, inbox: Path, server: FilesServer,
          fig: dict) -> list[str]:
    db = work / "state" / "prefetchd.db"
    with sqlite3.connect(db) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT file_id, state, path, sha256, error FROM files")}
    broken = check_entries(plan, root, rows) + check_inbox(plan, inbox)
    store_broken, fig["partials left in tmp/"] = check_store(root, rows, plan.planted)
    broken += store_broken
    if not integrity_ok(db):
        broken.append("PRAGMA integrity_check is not ok")
    gc = subprocess.run([*PREFETCHD, "--config", str(work / "prefetchd.toml"), "gc",
                         "--dry-run"], capture_output=True, text=True, check=False)
    # An object nothing links to is gc's ordinary work (a publish refused by a planted
    # symlink leaves one, removed once older than 10 minutes); anything else is wrong.
    lines = gc.stdout.splitlines()
    fig["stray links found by gc at the end"] = sum("no entry accounts for" in ln for ln in lines)
    fig["unreferenced objects gc would remove"] = sum(
        ln.endswith("(nothing links to it)") for ln in lines)
    wrong = [ln for ln in lines if not ln.endswith("(nothing links to it)")]
    if gc.returncode != 0 or wrong or gc.stderr:
        broken.append(f"gc --dry-run: exit {gc.returncode}: {wrong[:3]} {gc.stderr[:200]}")
    asked = [p for p in server.seen if p.startswith("/ssrf/")]
    if asked:
        broken.append(f"the SSRF bait was asked for: {asked[:3]}")
    fig["SSRF URLs refused"] = f"{sum(rows.get(f, ('',))[0] == 'failed' for f in plan.ssrf)}" \
        f" of {len(plan.ssrf)}, {len(asked)} reached the server"
    outside = sorted(os.listdir(work / "outside"))
    if outside != ["secret"] or (work / "outside/secret").read_text() != "never-secret\n":
        broken.append(f"written outside the root: {outside}")
    fig["entries ready"] = sum(r[0] == "ready" for r in rows.values())
    fig["entries failed (as they must)"] = sum(r[0] == "failed" for r in rows.values())
    return broken


def log_figures(work: Path, fig: dict) -> None:
    """What the daemon's log says: links and temps reconciliation removed, watcher
    restarts (a name that is not UTF-8 stops watchfiles), request files handled, and
    tracebacks other than the watcher's."""
    events: dict[str, int] = {}
    other_tracebacks = 0
    for line in (work / "daemon.log").read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            other_tracebacks += "Traceback" in line
            continue
        kind = doc.get("event", "")
        events[kind] = events.get(kind, 0) + 1
        other_tracebacks += kind != "inbox_watcher_restarting" and "Traceback" in line
        if kind == "reconciled":
            fig["stray links found at start-up"] += doc.get("stray_links_removed", 0)
            fig["temps removed at start-up"] += doc.get("temps_removed", 0)
    fig["request files accepted (log)"] = events.get("request_accepted", 0)
    fig["request files rejected (log)"] = events.get("request_rejected", 0)
    fig["inbox watcher restarts"] = events.get("inbox_watcher_restarting", 0)
    fig["other tracebacks in the log"] = other_tracebacks


# -- main ----------------------------------------------------------------------------------


def mount_tmpfs(work: Path, mib: int) -> Path | None:
    """A small tmpfs for the root when run as root; None (root on disk) otherwise."""
    if mib <= 0:
        return None
    mnt = work / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        print(f"no tmpfs ({r.stderr.strip() or 'mount failed'}): the root is on disk")
        return None
    return mnt


def write_config(work: Path, root: Path, inbox: Path) -> Path:
    cfg = work / "prefetchd.toml"
    cfg.write_text(f"""root = "{root}"
state_dir = "{work / 'state'}"
default_provider = "local"

[download]
retries = 2
backoff_base = "50ms"
backoff_max = "1s"
stall_timeout = "5s"
connect_timeout = "2s"

[inbox]
path = "{inbox}"

[providers.local]
type = "dir"
path = "{work / 'src'}"

[providers.lan]
type = "http"
allow_private_networks = true

[providers.web]
type = "http"
""")
    return cfg


def run(args: argparse.Namespace, work: Path, mnt: Path | None) -> tuple[list[str], dict]:
    root = (mnt or work) / "root"
    # On a tmpfs root the request files (kept a week) would fill it: the inbox is on disk.
    inbox = work / "inbox" if mnt else root / META / "inbox"
    server = FilesServer(work / "src")
    fig: dict = {"request files dropped": 0, "kills": 0, "restarts": 0, "kills by moment": {},
                 "starts that reached READY": 0, "stray links found at start-up": 0,
                 "temps removed at start-up": 0, "integrity checks": 0,
                 "integrity checks ok": 0, "max RSS of the daemon (MiB)": 0}
    try:
        plan = make_plan(args.files, args.seed, work, root, server.port,
                         tmpfs_bytes=args.tmpfs_mib * MiB if mnt else None)
        inbox.mkdir(parents=True, exist_ok=True)
        cfg = write_config(work, root, inbox)
        where = f"a tmpfs of {args.tmpfs_mib} MiB" if mnt else "on disk"
        print(f"{len(plan.drops)} request files, {args.rounds} rounds, root {root} ({where})",
              flush=True)
        d = run_rounds(plan, args, cfg, work, inbox, fig)
        fig["restarts"] = fig["kills"]
        done = finish(d, plan, work, inbox, max(600.0, args.files * 0.2), fig)
        broken = [] if done else ["the last run did not settle, or did not stop cleanly"]
        fig["request files dropped"] = len(plan.drops) + sum(
            n.startswith("move-") for n in plan.accepted)
        fig["request files rejected"] = len(plan.rejected)
        fig["request files accepted"] = len(plan.accepted)
        fig["request files ignored (dotfiles, *.tmp, *.part)"] = len(plan.ignored)
        broken += check(plan, work, root, inbox, server, fig)
        log_figures(work, fig)
        if fig["integrity checks ok"] != fig["integrity checks"]:
            broken.append("an integrity check after a kill was not ok")
        return broken, fig
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000, help="request files to drop")
    ap.add_argument("--rounds", type=int, default=200, help="kill -9 and restart rounds")
    ap.add_argument("--tmpfs-mib", type=int, default=64, help="tmpfs root (as root); 0: none")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="prefetchd-hostile-"))
    mnt = mount_tmpfs(work, args.tmpfs_mib)
    broken = ["did not finish"]
    try:
        broken, fig = run(args, work, mnt)
        fig["wall time (s)"] = round(time.monotonic() - started, 1)
        print("\n| figure | value |\n|---|---|")
        for k, v in fig.items():
            print(f"| {k} | {v} |")
    finally:
        if mnt:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        if broken or args.keep:
            print(f"\nwork directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for b in broken[:50]:
        print(f"BROKEN: {b}")
    print(f"{len(broken)} invariant(s) broke" if broken else "every invariant held")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
