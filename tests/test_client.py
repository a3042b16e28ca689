"""The CLI and the Python API as clients of a running daemon (its local API socket),
and the Python API as an agent author expects it, in-process and through the daemon.

Real daemons (`prefetchd run` subprocesses) and, for the user who may not write the
state dir, a real second user (nobody) through setpriv.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import structlog

from prefetchd import api
from prefetchd.api import BadRequest, Prefetch, Transfer
from prefetchd.cli.show import Downloads
from prefetchd.errors import NotFoundError, NotReadyError, PrefetchError, TimeoutExpired
from tests.conftest import _OWN_ENV, REPO, Env
from tests.daemon_helpers import DaemonProc
from tests.servers.files_api import Fault

AGENT = 65534  # nobody / nogroup: a user who may read the state dir, never write it


def api_calls(d: DaemonProc) -> list[dict]:
    """The daemon's api_request log lines."""
    lines = [line for line in d.logtext().splitlines() if '"api_request"' in line]
    return [json.loads(line[line.index("{"):]) for line in lines]


# -- the CLI through the socket prints what it prints in-process ------------------------


READS = [("ls",), ("ls", "--json"), ("ls", "--state", "ready", "--json"), ("path", "file-a"),
         ("path", "file-zzz"), ("stats",), ("stats", "--json")]
# A get touches its entries' updated_at (which ls --json shows): these run after READS.
GETS = [("get", "file-a"), ("get", "--json", "file-a", "--timeout", "0"),
        ("get", "--json", "file-a", "file-nope"), ("get", "file-nope", "file-a")]
ERRORS = [("want", "x", "--sha256", "xyz"), ("want", "x", "--provider", "nope"),
          ("want", "a", "b", "--dest", "d"), ("unwant", "file-zzz"), ("release", "file-zzz"),
          ("forget", "file-zzz"), ("get", "file-a", "--dest", "../x")]


def outputs(env: Env, commands: list[tuple[str, ...]]) -> dict[tuple[str, ...], tuple]:
    """Each command's (exit code, stdout, stderr)."""
    results = {}
    for args in commands:
        r = env.invoke(*args)
        results[args] = (r.returncode, r.stdout, r.stderr)
    return results


def assert_same(got: dict, expected: dict) -> None:
    for args, out in expected.items():
        diff = "".join(difflib.unified_diff(out[1].splitlines(True), got[args][1].splitlines(True)))
        assert got[args] == out, f"{args}\n{diff}"


def test_cli_prints_the_same_through_the_daemon_as_in_process(env, daemon, server):
    server.add("file-a", b"A" * 1000, "a.txt")
    server.add("file-b", b"B" * 2000, "b.txt")
    assert env.invoke("get", "file-a", "file-b").returncode == 0
    assert env.invoke("get", "file-nope").returncode == 1
    gets = outputs(env, GETS)
    here = outputs(env, READS + ERRORS)
    status_here = json.loads(env.invoke("status", "--json").stdout)
    d = daemon()
    assert_same(outputs(env, READS + ERRORS), here)
    status = json.loads(env.invoke("status", "--json").stdout)
    assert status.pop("daemon") == {"running": True, "pid": d.proc.pid}
    status_here.pop("daemon")
    assert status == status_here
    assert_same(outputs(env, GETS), gets)
    released = env.invoke("release", "file-b")
    seen = {(c["method"], c["path"]) for c in api_calls(d)}
    assert {("GET", "/v1/ls"), ("GET", "/v1/path"), ("GET", "/v1/stats"), ("POST", "/v1/get"),
            ("POST", "/v1/want"), ("POST", "/v1/release"), ("GET", "/v1/status")} <= seen
    d.stop()
    r = env.invoke("release", "file-a")
    assert (r.returncode, r.stdout, r.stderr) == (0, "removed downloads/file-a/a.txt\n", "")
    assert (released.returncode, released.stdout, released.stderr) == (
        0, "removed downloads/file-b/b.txt\n", "")


# -- a user who may not write the state dir ---------------------------------------------


def agent_cli(env: Env, *args: str) -> subprocess.CompletedProcess:
    """The CLI as nobody:nogroup. The capability lets it read what a member of the
    group could (the interpreter lives under a 0700 /root here, the config under a
    0700 pytest dir); it never grants a write."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("running the CLI as a second user needs root and setpriv")
        pytest.skip("running the CLI as a second user needs root and setpriv")
    environ = {**_OWN_ENV, **env.environ, "PREFETCHD_CONFIG": str(env.config),
               "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        ["setpriv", f"--reuid={AGENT}", f"--regid={AGENT}", "--clear-groups",
         "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
         sys.executable, "-m", "prefetchd.cli", *args],
        capture_output=True, text=True, env=environ, timeout=60, stdin=subprocess.DEVNULL,
        cwd=REPO, check=False)


def test_a_user_who_may_not_write_works_through_the_daemon(env, daemon, server):
    env.write_config(extra='\n[api]\ngroup = "nogroup"\n')
    server.add("file-a", b"A" * 1000, "a.txt")
    server.add("file-b", b"B" * 1000, "b.txt")
    assert env.invoke("want", "file-b").returncode == 0  # the state exists, owned by root
    d = daemon()
    r = agent_cli(env, "get", "file-a")
    assert (r.returncode, r.stdout, r.stderr) == (
        0, f"{env.root / 'downloads/file-a/a.txt'}\n", "")
    assert agent_cli(env, "path", "file-a").stdout == r.stdout
    rows = json.loads(agent_cli(env, "ls", "--json").stdout)
    assert [(x["file_id"], x["state"]) for x in rows] == [("file-a", "ready"), ("file-b", "ready")]
    assert json.loads(agent_cli(env, "status", "--json").stdout)["daemon"]["running"] is True
    r = agent_cli(env, "release", "file-a")
    assert (r.returncode, r.stdout) == (0, "removed downloads/file-a/a.txt\n"), r.stderr
    r = agent_cli(env, "gc")
    assert r.returncode == 1 and "gc needs uid 0" in r.stderr
    assert {c["uid"] for c in api_calls(d)} >= {AGENT}
    owned = [p for p in env.state.rglob("*") if p.lstat().st_uid == AGENT]
    assert owned == []
    d.stop()
    for args in (("want", "file-c"), ("get", "file-a")):
        r = agent_cli(env, *args)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr.splitlines() == [
            f"prefetchd: error: no daemon is running at {env.state / 'api.sock'} and the "
            f"state dir {env.state} is not writable"]


# -- get's progress through the socket ---------------------------------------------------


def test_get_progress_through_the_socket_reaches_the_callbacks(env, daemon, server):
    size = 1_500_000
    server.add("file-slow", os.urandom(size), "slow.bin")
    server.fault("file-slow", Fault(rate=1_000_000))
    daemon()
    progress: list[tuple[str, int, int | None]] = []
    seen: list[Transfer] = []
    with Prefetch(env.settings()) as p:
        assert p.client is not None
        (r,) = p.get_many("file-slow", progress=lambda *a: progress.append(a),
                          watch=seen.append)
    assert r.error is None and r.path == env.root / "downloads/file-slow/slow.bin"
    assert len(progress) >= 2 and progress[-1] == ("file-slow", size, size)
    assert [d for _, d, _ in progress] == sorted(d for _, d, _ in progress)
    assert {(t.file_id, t.name, t.total) for t in seen} == {("file-slow", "slow.bin", size)}
    assert seen[0].resumed_from == 0


def test_a_get_that_joins_a_download_is_told_what_was_there(env, daemon, server):
    size = 3_000_000
    server.add("file-slow", os.urandom(size), "slow.bin")
    server.fault("file-slow", Fault(rate=1_000_000))
    daemon()
    seen: list[Transfer] = []
    with Prefetch(env.settings()) as p:
        with pytest.raises(TimeoutExpired, match="file-slow: not ready within 0.7s"):
            p.get("file-slow", timeout="0.7s")
        (r,) = p.get_many(["file-slow"], watch=seen.append)
    assert r.error is None
    assert seen and seen[0].resumed_from is not None and seen[0].resumed_from > 0
    assert all(t.done >= seen[0].resumed_from for t in seen)


def test_a_get_whose_daemon_stops_carries_on_in_process(env, daemon, server):
    env.write_config(download='shutdown_grace = "100ms"')
    data = os.urandom(2_000_000)
    server.add("file-slow", data, "slow.bin")
    server.fault("file-slow", Fault(rate=1_000_000))
    d = daemon()
    started = threading.Event()
    results: list = []
    with Prefetch(env.settings()) as p:
        assert p.client is not None
        waiter = threading.Thread(target=lambda: results.append(
            p.get_many("file-slow", watch=lambda t: started.set())))
        waiter.start()
        assert started.wait(30)
        d.stop()
        waiter.join(60)
    ((r,),) = results
    assert r.error is None and r.path is not None and r.path.read_bytes() == data
    assert len(server.content_requests("file-slow")) == 2  # the daemon's, then this one's


# -- the Python API as an agent author expects it ---------------------------------------


@pytest.fixture(params=["in-process", "through-daemon"])
def handle(request, env, server) -> Iterator[Prefetch]:
    """A Prefetch in each way of working (a daemon is started for the second)."""
    server.add("file-a", b"A" * 100, "a.txt")
    env.invoke("want", "file-0")  # the state exists
    d = DaemonProc(env).ready() if request.param == "through-daemon" else None
    p = Prefetch(env.settings())
    assert (p.client is not None) == (d is not None)
    yield p
    p.close()
    if d is not None:
        d.stop()


def test_a_str_is_one_file_id(env, handle):
    (env.src / "a").mkdir()
    (env.src / "a/b.txt").write_bytes(b"b")
    assert handle.want("a/b.txt", provider="local") == ["a/b.txt"]
    assert handle.want(("c", "d"), provider="local") == ["c", "d"]
    assert handle.want((f"g{i}" for i in range(2)), provider="local") == ["g0", "g1"]
    assert [r["file_id"] for r in handle.ls()] == ["a/b.txt", "c", "d", "file-0", "g0", "g1"]
    got = handle.get("a/b.txt", provider="local", timeout=30)
    assert got.name == "b.txt" and got.read_bytes() == b"b"
    with pytest.raises(BadRequest, match="get takes one file_id"):
        handle.get(["a/b.txt"])  # type: ignore[arg-type]


def test_timeout_in_seconds_or_as_a_duration(handle):
    assert handle.get("file-a", timeout=10).name == "a.txt"
    assert handle.get("file-a", timeout="10s").name == "a.txt"
    assert handle.get("file-a", timeout=2.5).name == "a.txt"
    with pytest.raises(BadRequest, match="timeout: 'soon'"):
        handle.get("file-a", timeout="soon")


@pytest.mark.parametrize("opts, needle", [
    ({"sha256": "xyz"}, "not 64 hex digits"),
    ({"pin": "no"}, "pin: expected True or False, not 'no'"),
    ({"size": "big"}, "size"),
    ({"provider": "nope"}, "provider 'nope' is not configured"),
])
def test_a_bad_argument_is_a_value_error_and_changes_nothing(handle, opts, needle):
    for call in (handle.want, handle.get_many):
        with pytest.raises(BadRequest, match=re.escape(needle)) as e:
            call("file-x", **opts)
        assert isinstance(e.value, ValueError) and e.value.exit_code == 2
    assert [r["file_id"] for r in handle.ls()] == ["file-0"]


def test_a_missing_file_is_not_found_and_a_path_not_ready(handle):
    # Through the daemon too: its get reads the failure from the manifest, which keeps
    # the error's code and attributes (files.error_detail), so the class crosses.
    with pytest.raises(NotFoundError, match="file-nope"):
        handle.get("file-nope")
    assert handle.path("file-nope") is None
    with pytest.raises(NotReadyError, match=re.escape("file-nope is not ready (state failed)")):
        handle.locate("file-nope")
    with pytest.raises(PrefetchError, match="not in the manifest: file-zzz") as e:
        handle.unwant("file-zzz")
    assert e.value.exit_code == 1


def test_the_module_functions_take_one_id_or_many(env, server, monkeypatch):
    monkeypatch.setenv("PREFETCHD_CONFIG", str(env.config))
    server.add("file-a", b"A" * 10, "a.txt")
    assert api.want("x/y.txt", provider="local") == ["x/y.txt"]
    assert api.want("p", "q", provider="local") == ["p", "q"]
    assert api.want(["r", "s"], provider="local") == ["r", "s"]
    assert api.get("file-a", timeout="30s") == env.root / "downloads/file-a/a.txt"
    assert api.path("file-a") == env.root / "downloads/file-a/a.txt"
    assert api.release(["file-a"]) == ["downloads/file-a/a.txt"]


def test_the_library_configures_no_logging_and_prints_nothing(env, server, capsys):
    server.add("file-a", b"A" * 10, "a.txt")
    handlers = list(logging.getLogger().handlers)
    config = structlog.get_config()
    with Prefetch(env.settings()) as p:
        assert p.get("file-a") == env.root / "downloads/file-a/a.txt"
        with pytest.raises(NotFoundError):
            p.get("file-nope")
        p.status()
        p.ls()
        p.release("file-a")
    assert logging.getLogger().handlers == handlers
    assert structlog.get_config() == config
    assert capsys.readouterr().out == ""


# -- the progress display ------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rate_counts_only_bytes_that_arrived_while_watching(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    now = [0.0]
    term = Terminal()
    shown = Downloads(term, clock=lambda: now[0])
    mib = 1 << 20
    shown(Transfer("file-a", "a-file-with-a-rather-long-name-indeed.bin", 8 * mib, 10 * mib,
                   8 * mib))  # 8 MiB were there already (a resume)
    for t in (1.0, 2.0):
        now[0] = t
        shown(Transfer("file-a", "a-file-with-a-rather-long-name-indeed.bin",
                       8 * mib + int(t * mib), 10 * mib, 8 * mib))
    task = shown.bars.tasks[0]
    assert task.speed == pytest.approx(mib)  # 1 MiB/s, not 10 MiB in 2 s
    shown.bars.refresh()
    shown.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", term.getvalue())
    lines = [line for line in re.split(r"[\r\n]", text) if line.strip()]
    assert lines and all(len(line) <= 60 for line in lines), lines
    assert "1.0 MiB/s" in lines[-1] and "10.0/10.0 MiB" in lines[-1]


def test_one_seam_same_methods_and_return_types(env, handle):
    """Issue 21, point 2: the backend is picked once; both backends have the same
    methods with the same parameters, and a call returns the same type either way."""
    import inspect

    from prefetchd.api.backends import Backend, LocalBackend, SocketBackend

    names = [n for n in vars(Backend) if not n.startswith("_")]
    for n in names:
        proto = list(inspect.signature(getattr(Backend, n)).parameters)
        for cls in (LocalBackend, SocketBackend):
            assert list(inspect.signature(getattr(cls, n)).parameters)[:len(proto)] == proto, (
                cls.__name__, n)
    assert isinstance(handle.backend, SocketBackend if handle.through_daemon else LocalBackend)
    assert handle.unwant("file-0") == ["file-0"]  # a list both ways (once None in-process)
    out = handle.forget("file-0")
    assert list(out) == [] and out.kept == {} and type(out).__name__ == "Removal"
