"""On a terminal, `want`, `forget`, `gc` and `gc --dry-run` say what they did; a
script (no terminal) gets exactly what it got before: nothing more on stderr, the
same exit codes. Run as real processes with stderr on a real pseudo-terminal, both
in-process (no daemon) and over a running daemon's socket (prefetchd.cli.quick)."""

from __future__ import annotations

import errno
import os
import pty
import subprocess
import sys

from tests.conftest import _OWN_ENV, REPO, Env


def on_terminal(env: Env, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal on stderr showed)."""
    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "prefetchd.cli", *args], stdout=subprocess.PIPE,
                           stderr=slave, stdin=subprocess.DEVNULL, text=True, cwd=REPO,
                           env={**_OWN_ENV, **env.environ, "PREFETCHD_CONFIG": str(env.config)},
                           timeout=60, check=False)
    finally:
        os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError as e:  # EIO: the terminal's other end is closed and drained
            assert e.errno == errno.EIO
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return r.returncode, r.stdout, shown.decode().replace("\r\n", "\n")


def check_words(env: Env) -> None:
    assert on_terminal(env, "want", "file-a", "file-b", "file-c") == (0, "", "wanted 3 files\n")
    assert on_terminal(env, "want", "file-a") == (0, "", "wanted 1 file\n")
    code, out, shown = on_terminal(env, "forget", "file-c", "file-b")
    assert (code, shown) == (0, "forgot 2 files\n"), shown
    # A script: nothing more on stderr, the same exit codes.
    r = env.cli("want", "file-b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = env.cli("forget", "file-b")
    assert (r.returncode, r.stderr) == (0, "")


def test_want_and_forget_say_what_they_did_in_process(env):
    check_words(env)
    assert not env.settings().api_socket.exists()  # no daemon: the full CLI did it


def test_want_and_forget_say_what_they_did_through_a_daemon(env, daemon):
    daemon()
    check_words(env)
    log = (env.tmp / "daemon.log").read_text()
    assert "/v1/want" in log and "/v1/forget" in log  # through the socket


def test_gc_says_what_it_did(env, server):
    assert on_terminal(env, "gc", "--dry-run") == (0, "", "gc: nothing to remove\n")
    assert on_terminal(env, "gc") == (0, "", "gc: nothing to remove\n")
    server.add("file-a", b"A", "a.txt")
    r = env.cli("get", "file-a")
    assert r.returncode == 0, r.stderr
    assert env.cli("unwant", "file-a").returncode == 0
    env.write_config(extra="[retention]\nttl = 0\n")
    code, out, shown = on_terminal(env, "gc", "--dry-run")
    assert (code, shown) == (0, "gc: would remove 1 file\n"), shown
    assert out.startswith("would remove downloads/file-a/")
    code, out, shown = on_terminal(env, "gc")
    assert (code, shown) == (0, "gc: removed 1 file\n"), (out, shown)
    r = env.cli("gc")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
