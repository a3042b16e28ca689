"""The tests' own helpers: the in-process CLI runner gives a command a process's state
and takes back what it changed; wait_until says what it waited for; the shared files
server is handed over as new."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

import pytest
import structlog

from prefetchd import __version__
from prefetchd import log as logsetup
from prefetchd.cli.base import COMMANDS, Command, Io
from tests.support import REPO, CliTimeout, SharedFiles, wait_until
from tests.support import files as shared


def as_command(monkeypatch, name: str, func) -> None:
    """Make `prefetchd NAME` run `func(args, io)` for this test. The CLI's own commands
    register first (importing prefetchd.cli registers them; a later first import would
    put the real one back over the stand-in)."""
    import prefetchd.cli.commands  # noqa: F401
    func.__doc__ = "a stand-in for the test"
    monkeypatch.setitem(COMMANDS, name, Command(func, (), f"prefetchd {name}"))


def test_exit_codes_and_output_as_a_process_shows_them(env):
    r = env.invoke("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"prefetchd {__version__}\n", "")
    r = env.invoke("frobnicate")  # argparse's SystemExit(2)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: prefetchd") and "invalid choice" in r.stderr
    r = env.invoke("path", "file-zzz")  # main()'s own return value
    assert r.returncode == 1 and r.stderr.startswith("prefetchd: error: no prefetchd state")


def test_the_command_sees_the_environment_given_and_no_other(env, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFETCHD_TEST_PG", "host=nowhere")
    before = dict(os.environ)
    seen: dict[str, str] = {}

    def show(a: argparse.Namespace, io: Io) -> int:
        seen.update(os.environ)
        io.say(os.getcwd())
        return 0

    as_command(monkeypatch, "ls", show)
    r = env.invoke("ls", env={"EXTRA": "1"})
    assert seen["PREFETCHD_CONFIG"] == str(env.config) and seen["EXTRA"] == "1"
    assert "PREFETCHD_TEST_PG" not in seen  # the suite's own variable is not passed on
    assert r.stdout == f"{REPO}\n"  # where `python -m prefetchd.cli` ran
    assert dict(os.environ) == before
    monkeypatch.undo()
    missing = tmp_path / "nope.toml"
    r = env.invoke("ls", env={"PREFETCHD_CONFIG": str(missing)})
    assert r.returncode == 2 and str(missing) in r.stderr and "does not exist" in r.stderr


def test_a_traceback_fails_the_test_unless_asked_for(env, monkeypatch):
    def boom(a: argparse.Namespace, io: Io) -> int:
        raise RuntimeError("a bug")

    as_command(monkeypatch, "ls", boom)
    with pytest.raises(AssertionError, match="printed a traceback") as e:
        env.invoke("ls")
    assert "RuntimeError: a bug" in str(e.value)
    r = env.invoke("ls", traceback_ok=True)
    assert r.returncode == 1 and "RuntimeError: a bug" in r.stderr


def test_what_a_command_changes_in_the_process_is_put_back(env, monkeypatch):
    streams = sys.stdin, sys.stdout, sys.stderr
    handlers = list(logging.getLogger().handlers)
    prefetchd_level = logging.getLogger("prefetchd").level
    config = structlog.get_config()
    umask = os.umask(0o022)
    os.umask(umask)
    term = signal.getsignal(signal.SIGTERM)
    cwd = os.getcwd()
    logsetup.add_secrets(["test-process-secret"])
    secrets = set(logsetup._secrets)

    def meddle(a: argparse.Namespace, io: Io) -> int:
        assert logsetup._secrets == set()  # a new process knows none
        assert not sys.stdout.isatty() and sys.stdin.read() == ""
        logsetup.configure("debug")
        logsetup.add_secrets(["command-secret"])
        logging.getLogger("prefetchd.meddle").setLevel(logging.DEBUG)
        os.umask(0o077)
        signal.signal(signal.SIGTERM, lambda *_: None)
        os.environ["MEDDLED"] = "1"
        os.chdir("/")
        logsetup.get_logger("prefetchd.meddle").info("meddled", n=1)
        io.say("done")
        return 3

    as_command(monkeypatch, "ls", meddle)
    r = env.invoke("ls")
    assert r.returncode == 3 and r.stdout == "done\n"
    assert '"event": "meddled"' in r.stderr  # its logs went to its own stderr
    assert (sys.stdin, sys.stdout, sys.stderr) == streams
    assert logging.getLogger().handlers == handlers
    assert logging.getLogger("prefetchd").level == prefetchd_level
    assert logging.getLogger("prefetchd.meddle").level == logging.NOTSET
    assert structlog.get_config() == config
    assert os.umask(umask) == umask
    assert signal.getsignal(signal.SIGTERM) is term
    assert "MEDDLED" not in os.environ and os.getcwd() == cwd
    assert logsetup._secrets == secrets


def test_a_command_past_its_timeout_is_interrupted(env, monkeypatch):
    def hang(a: argparse.Namespace, io: Io) -> int:
        time.sleep(30)
        return 0

    as_command(monkeypatch, "ls", hang)
    with pytest.raises(CliTimeout, match="prefetchd ls still running after 0.2s"):
        env.invoke("ls", timeout=0.2)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_serving_commands_need_a_process(env):
    for args in (("run",), ("--config", "x", "mcp")):
        with pytest.raises(ValueError, match="serves until stopped"):
            env.invoke(*args)


def test_wait_until_names_what_it_waited_for():
    with pytest.raises(AssertionError, match=r"for lambda: len\(\[1\]\) > 5\b.*last gave False"):
        wait_until(lambda: len([1]) > 5, timeout=0.05)
    with pytest.raises(AssertionError, match="waited 0.05s for the moon; it last gave None"):
        wait_until(lambda: None, timeout=0.05, what="the moon")
    assert wait_until(lambda: [7], timeout=0.05) == [7]


def test_the_shared_files_server_comes_as_new(monkeypatch):
    pool = SharedFiles()
    try:
        srv = pool.fresh()
        srv.add("file-a", b"A")
        srv.requests.append({"file_id": "file-a", "kind": "content"})
        srv.client_closed, srv.peak_active, srv.api_key = 1, 2, "sk"
        again = pool.fresh()
        assert again is srv
        assert (srv.files, srv.requests, srv.client_closed, srv.peak_active, srv.api_key) == (
            {}, [], 0, 0, None)
        monkeypatch.setattr(shared, "IDLE_GRACE", 0.05)
        srv.active = 1  # a body the last test left is still being sent
        other = pool.fresh()
        assert other is not srv and other.files == {}
        srv.active = 0
    finally:
        pool.close()


def test_a_warning_shows_on_the_commands_stderr_as_a_process_prints_it(env, monkeypatch):
    import warnings

    def warn(a: argparse.Namespace, io: Io) -> int:
        warnings.warn("something odd", UserWarning, stacklevel=1)
        warnings.warn("old ways", DeprecationWarning, stacklevel=1)  # ignored by default
        return 0

    as_command(monkeypatch, "ls", warn)
    r = env.invoke("ls")
    assert "UserWarning: something odd" in r.stderr and "old ways" not in r.stderr


def test_a_thread_that_would_keep_the_process_alive_fails_the_test(env, monkeypatch):
    import threading

    stop = threading.Event()

    def linger(a: argparse.Namespace, io: Io) -> int:
        threading.Thread(target=stop.wait, name="lingering").start()
        threading.Thread(target=stop.wait, name="daemonic", daemon=True).start()
        return 0

    as_command(monkeypatch, "ls", linger)
    try:
        with pytest.raises(AssertionError, match="left thread lingering running"):
            env.invoke("ls", timeout=0.2)
    finally:
        stop.set()
