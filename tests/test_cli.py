"""The CLI as users run it: exit codes, one-line errors, output; in this process through
the runner (tests/support/cli.py), and as real processes for kill -9, concurrency, locks
and a reader that closes the pipe."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import sha
from tests.servers.files_api import Fault


def test_help_explains_commands(env):
    r = env.invoke("--help")
    assert r.returncode == 0
    for word in ("want", "get", "path", "ls", "status", "release", "verify", "gc", "stats",
                 "Exit codes"):
        assert word in r.stdout
    r = env.invoke("get", "--help")
    assert "--timeout" in r.stdout and "--sha256" in r.stdout


def test_get_prints_paths_and_path_command(env, server):
    server.add("file-a", b"A" * 1000, "a.txt")
    server.add("file-b", b"B" * 2000, "b.txt")
    r = env.invoke("get", "file-a", "file-b")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines == [str(env.root / "downloads/file-a/a.txt"),
                     str(env.root / "downloads/file-b/b.txt")]
    assert r.stderr == ""
    r = env.invoke("path", "file-a")
    assert r.returncode == 0 and r.stdout.strip() == lines[0]
    r = env.invoke("get", "file-b", "file-a", "file-b")  # one line per id given, in order
    assert r.stdout.splitlines() == [lines[1], lines[0], lines[1]]
    r = env.invoke("path", "file-zzz")
    assert r.returncode == 1 and "not ready (not in the manifest)" in r.stderr


def test_get_downloads_several_ids_concurrently(env, server):
    for i in range(4):
        server.add(f"file-{i}", os.urandom(400_000))
        server.fault(f"file-{i}", Fault(rate=400_000))  # 1 s each when alone
    r = env.invoke("get", *(f"file-{i}" for i in range(4)))
    assert r.returncode == 0, r.stderr
    # Bodies of 1 s each were sent at the same time, not one after another.
    assert server.peak_active >= 2


def test_get_failure_is_one_line_exit_1(env, server):
    r = env.invoke("get", "file-nope")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert "file-nope" in r.stderr and "404" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["want", "x", "--dest", "../etc/passwd"], "contains '..'"),
        (["want", "x", "--dest", "/abs"], "absolute"),
        (["want", "x", "--sha256", "xyz"], "not 64 hex"),
        (["want", "x", "--provider", "nope"], "provider 'nope' is not configured"),
        (["want", "x", "--ttl", "forever"], "not a duration"),
        (["want", "a", "b", "--dest", "d"], "one file_id at a time"),
        (["ls", "--state", "bogus"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_usage_exit_2(env, args, needle):
    r = env.invoke(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert entries(env) == []  # nothing half-applied


def entries(env) -> list[dict]:
    """`ls --json`, or [] when no state exists at all (ls then says so and exits 1)."""
    r = env.invoke("ls", "--json")
    if r.returncode == 1 and "no prefetchd state" in r.stderr:
        return []
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_ls_status_stats_json(env, server):
    data = b"x" * 5000
    server.add("file-a", data, "a.bin")
    assert env.invoke("get", "file-a").returncode == 0
    assert env.invoke("want", "file-b", "--provider", "files").returncode == 0
    rows = json.loads(env.invoke("ls", "--json").stdout)
    assert [r["file_id"] for r in rows] == ["file-a", "file-b"]
    a = rows[0]
    assert set(a) == {"file_id", "state", "wanted", "pin", "provider", "size", "sha256", "path",
                      "error", "updated_at", "claims"}
    assert a["state"] == "ready" and a["sha256"] == sha(data) and a["size"] == 5000
    (claim,) = a["claims"]
    assert claim == {"holder": f"uid:{os.getuid()}", "wanted": True, "pin": False,
                     "dest": None, "path": a["path"], "sha256": None, "size": None,
                     "ttl": None, "error": None}
    assert rows[1]["state"] == "queued"
    ready = json.loads(env.invoke("ls", "--state", "ready", "--json").stdout)
    assert ready[0]["file_id"] == "file-a"
    st = json.loads(env.invoke("status", "--json").stdout)
    assert st["daemon"]["running"] is False
    assert st["states"]["ready"] == 1 and st["queue"] == 1
    assert st["store"] == {"objects": 1, "bytes": 5000}
    assert st["claims"] == {"total": 2, "wanted": 2, "failed": 0} and st["stalled"] == 0
    assert st["outbox_backlog"] == 1
    stats = json.loads(env.invoke("stats", "--json").stdout)
    assert stats == [{"provider": "files", "downloads": 1, "cache_hits": 0, "failures": 0,
                      "bytes": 5000, "hit_rate": 0.0}]
    assert env.invoke("get", "file-a").returncode == 0  # now a cache hit
    stats = json.loads(env.invoke("stats", "--json").stdout)
    assert stats[0]["cache_hits"] == 1 and stats[0]["hit_rate"] == 0.5
    assert "hit rate" in env.invoke("stats").stdout
    assert "ready 1" in env.invoke("status").stdout


def test_release_unwant_gc_verify_cli(env, server):
    server.add("file-a", b"a" * 100, "a.txt")
    server.add("file-b", b"b" * 100, "b.txt")
    assert env.invoke("get", "file-a", "file-b").returncode == 0
    r = env.invoke("release", "file-a")
    assert r.returncode == 0 and "downloads/file-a/a.txt" in r.stdout
    assert not (env.root / "downloads/file-a").exists()
    assert env.invoke("unwant", "file-b").returncode == 0
    r = env.invoke("gc", "--dry-run")
    assert "would remove downloads/file-b/b.txt (file-b: no longer wanted)" in r.stdout
    assert (env.root / "downloads/file-b/b.txt").exists()
    assert env.invoke("gc").returncode == 0
    assert not (env.root / "downloads/file-b/b.txt").exists()
    r = env.invoke("unwant", "file-zzz")
    assert r.returncode == 1 and "not in the manifest: file-zzz" in r.stderr
    server.add("file-c", b"c" * 100)
    assert env.invoke("get", "file-c").returncode == 0
    r = env.invoke("verify")
    assert r.returncode == 0 and "ok  file-c" in r.stdout


def test_get_timeout_keeps_partial(env, server):
    # The timeout also covers loading the SDK (about 1 s on a busy machine): 3 s leaves
    # time for bytes to arrive.
    server.add("file-slow", os.urandom(8_000_000))
    server.fault("file-slow", Fault(rate=2_000_000))
    r = env.invoke("get", "file-slow", "--timeout", "3s")
    assert r.returncode == 1 and "not ready within 3s" in r.stderr
    parts = [n for n in os.listdir(env.root / ".prefetchd/tmp") if n.endswith(".part")]
    assert len(parts) == 1
    r = env.invoke("get", "file-slow")
    assert r.returncode == 0
    assert int(server.content_requests("file-slow")[-1]["headers"]["range"][6:-1]) > 0


def test_kill_9_mid_download_then_complete(env, server):
    data = os.urandom(16 * 1024 * 1024)
    server.add("file-big", data, "big.bin")
    server.fault("file-big", Fault(rate=4_000_000))
    dest = env.root / "downloads/file-big/big.bin"
    tmp = env.root / ".prefetchd/tmp"
    proc = env.popen("get", "file-big")
    deadline = time.monotonic() + 20
    seen = 0
    while time.monotonic() < deadline:
        # At no moment may the destination exist while incomplete.
        assert not dest.exists()
        parts = [tmp / n for n in os.listdir(tmp) if n.endswith(".part")] if tmp.exists() else []
        seen = max([p.stat().st_size for p in parts if p.exists()] + [0])
        if seen >= 4 * 1024 * 1024:
            break
        time.sleep(0.02)
    assert seen >= 4 * 1024 * 1024, "download did not progress"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not dest.exists()
    r = env.invoke("get", "file-big")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha(data)
    resumed = server.content_requests("file-big")[-1]["headers"]
    assert int(resumed["range"][6:-1]) >= 4 * 1024 * 1024
    assert [n for n in os.listdir(tmp)] == []


def test_concurrent_cli_processes_never_see_locked(env, server):
    for i in range(10):
        (env.src / f"f{i}").write_bytes(os.urandom(1000))
    with env.prefetch():
        pass  # the state exists: `status` only reads and never creates it
    procs = []
    for i in range(10):
        procs.append(env.popen("get", f"f{i}", "--provider", "local"))
        procs.append(env.popen("want", f"w{i}", "--provider", "local"))
        procs.append(env.popen("status", "--json"))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "locked" not in err
    rows = json.loads(env.invoke("ls", "--json").stdout)
    assert len(rows) == 20


def test_two_processes_one_download(env, server):
    data = os.urandom(2_000_000)
    server.add("file-shared", data)
    server.fault("file-shared", Fault(rate=2_000_000))
    a = env.popen("get", "file-shared")
    time.sleep(0.3)
    b = env.popen("get", "file-shared")
    out_a, err_a = a.communicate(timeout=60)
    out_b, err_b = b.communicate(timeout=60)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    assert out_a == out_b
    assert len(server.content_requests("file-shared")) == 1


def test_json_logs_when_not_a_terminal(env, server):
    server.add("file-a", b"x" * 10)
    r = env.invoke("-v", "get", "file-a")
    events = [json.loads(line) for line in r.stderr.splitlines()]
    dl = [e for e in events if e["event"] == "download"]
    assert len(dl) == 1
    assert {"file_id", "provider", "bytes", "duration_ms", "outcome"} <= set(dl[0])
    assert dl[0]["outcome"] == "downloaded" and dl[0]["bytes"] == 10


def test_cancelled_wait_for_a_busy_key_gives_the_lock_back(env, server):
    """A get that times out while another process downloads the same file must not
    keep the file's lock after the other process is done."""
    import subprocess
    import sys

    data = os.urandom(4_000_000)
    server.add("file-busy", data)
    server.fault("file-busy", Fault(rate=500_000))
    holder = env.popen("get", "file-busy")  # downloads for ~8 s, holding the key lock
    deadline = time.monotonic() + 60  # the holder has the lock once its body is coming
    while not server.content_requests("file-busy") and time.monotonic() < deadline:
        time.sleep(0.05)
    script = f"""
import os, sys, time
sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
from prefetchd.api import Prefetch
from prefetchd.config import load_settings
p = Prefetch(load_settings({str(env.config)!r}))
r = p.get_many(["file-busy"], timeout=0.3)
assert r[0].error is not None, r  # timed out while the holder still downloads
holder_done = time.monotonic() + 20
while time.monotonic() < holder_done and not p.path("file-busy"):
    time.sleep(0.05)
time.sleep(0.3)
# POSIX locks are per process, so ask the kernel what this process still holds on
# .prefetchd/locks (SQLite's own locks on the database are other inodes).
ino = os.stat({str(env.root / ".prefetchd" / "locks")!r}).st_ino
mine = [l for l in open("/proc/locks")
        if f" {{os.getpid()}} " in l and l.split()[5].endswith(f":{{ino}}")]
print(len(mine))
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, check=False)
    holder.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0", f"still holding {r.stdout} lock(s)"


# -- the command table (in process: no server, no subprocess) ---------------------------


def test_each_command_is_one_function_whose_docstring_is_its_help():
    import inspect

    from prefetchd.cli import commands as cli

    assert list(cli.COMMANDS) == ["run", "want", "unwant", "get", "path", "ls", "status",
                                  "release", "forget", "verify", "gc", "stats", "mcp",
                                  "completion", "fleet"]
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, cmd in cli.COMMANDS.items():
        doc = inspect.getdoc(cmd.func)
        assert doc and cmd.func.__name__ == name
        assert sub.choices[name].description == doc


def test_bad_state_choice_names_plain_states(capsys):
    from prefetchd.cli import commands as cli

    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["ls", "--state", "bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "(choose from 'queued', 'downloading', 'ready'," in err
    assert "State." not in err


def test_get_error_names_the_file_id_once():
    from prefetchd.cli.show import get_error
    from prefetchd.errors import PrefetchError

    assert get_error("file-a", PrefetchError("404 not found")) == "file-a: 404 not found"
    assert get_error("file-a", PrefetchError("file-a: gone")) == "file-a: gone"
    carried = PrefetchError("still failing")
    carried.file_id = "file-a"  # type: ignore[attr-defined]
    assert get_error("file-a", carried) == "still failing"


def test_version(env):
    from prefetchd import __version__

    r = env.invoke("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"prefetchd {__version__}\n", "")


def test_a_reader_that_stops_early_ends_ls_quietly(env):
    import subprocess
    import sys

    from tests.conftest import _OWN_ENV, REPO

    with env.prefetch() as p:
        p.want([f"f{i:05}" for i in range(3000)], provider="local")
    environ = {**_OWN_ENV, **env.environ, "PREFETCHD_CONFIG": str(env.config)}
    for args in ("ls", "ls --json"):
        r = subprocess.run(
            ["bash", "-o", "pipefail", "-c",
             f"{sys.executable} -m prefetchd.cli {args} | head -1"],
            capture_output=True, text=True, env=environ, cwd=REPO, timeout=60, check=False)
        assert r.stderr == ""  # no traceback, no "Exception ignored", no error line
        assert len(r.stdout.splitlines()) == 1
        assert r.returncode == 141  # as a writer killed by SIGPIPE
