"""The local API on a Unix socket, against a real daemon (`prefetchd run` as a
subprocess): every route through httpx's uds transport and curl --unix-socket, NDJSON
progress, errors, the socket's mode, and who may do what, with real second users."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefetchd.records import Entry
from prefetchd.server.waits import GetWait, Waits
from tests.conftest import Env, sha
from tests.daemon_helpers import DaemonProc, wait_until
from tests.servers.files_api import Fault


class Api:
    """A running daemon and an httpx client on its socket."""

    def __init__(self, env: Env, daemon: DaemonProc, socket_path: Path) -> None:
        self.env = env
        self.daemon = daemon
        self.socket = socket_path
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)),
                                 base_url="http://prefetchd", timeout=60)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=body if body is not None else {}, **kw)

    def get_lines(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST /v1/get and read the NDJSON stream to its end."""
        with self.http.stream("POST", "/v1/get", json=body) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("application/x-ndjson")
            return [json.loads(line) for line in r.iter_lines() if line]

    def requests(self) -> list[dict[str, Any]]:
        """The daemon's `api_request` log lines."""
        lines = [json.loads(x) for x in self.daemon.logtext().splitlines() if x.startswith("{")]
        return [x for x in lines if x.get("event") == "api_request"]


@pytest.fixture
def api(env: Env) -> Iterator[Any]:
    started: list[Api] = []

    def start(extra_env: dict[str, str] | None = None) -> Api:
        d = DaemonProc(env, extra_env).ready()
        a = Api(env, d, env.settings().api_socket)
        started.append(a)
        return a

    yield start
    for a in started:
        a.http.close()
        if a.daemon.alive:
            a.daemon.stop()


def _local(env: Env, name: str, data: bytes) -> None:
    (env.src / name).write_bytes(data)


def test_every_route_through_httpx(env, api):
    _local(env, "a.txt", b"a" * 1000)
    _local(env, "b.txt", b"b" * 10)
    a = api()
    assert a.http.get("/v1/version").json() == {"version": "0.1.0", "api": 1}
    assert a.post("/v1/want", {"file_ids": ["b.txt"], "provider": "local"}).json() == {
        "wanted": ["b.txt"]}
    lines = a.get_lines({"file_ids": ["a.txt", "b.txt", "a.txt"], "provider": "local"})
    result = lines[-1]
    assert result["type"] == "result" and all(x["type"] != "result" for x in lines[:-1])
    root = env.root
    sa, sb = sha((env.src / "a.txt").read_bytes()), sha((env.src / "b.txt").read_bytes())
    size = (env.src / "a.txt").stat().st_size
    assert result["results"] == [
        {"file_id": "a.txt", "state": "ready", "path": str(root / "downloads/a.txt/a.txt"),
         "error": None, "detail": None, "sha256": sa, "size": size},
        {"file_id": "b.txt", "state": "ready", "path": str(root / "downloads/b.txt/b.txt"),
         "error": None, "detail": None, "sha256": sb,
         "size": (env.src / "b.txt").stat().st_size},
        {"file_id": "a.txt", "state": "ready", "path": str(root / "downloads/a.txt/a.txt"),
         "error": None, "detail": None, "sha256": sa, "size": size}]
    assert a.http.get("/v1/path", params={"file_id": "a.txt"}).json() == {
        "path": str(root / "downloads/a.txt/a.txt")}
    ls = a.http.get("/v1/ls").json()
    assert ls == json.loads(env.invoke("ls", "--json").stdout)
    assert [r["file_id"] for r in a.http.get("/v1/ls", params={"state": "ready"}).json()] == [
        "a.txt", "b.txt"]
    status = a.http.get("/v1/status").json()
    assert status["daemon"] == {"running": True, "pid": a.daemon.proc.pid}
    assert status["states"]["ready"] == 2
    assert a.http.get("/v1/stats").json() == json.loads(env.invoke("stats", "--json").stdout)
    verify = a.post("/v1/verify", {"file_ids": ["a.txt"]})
    assert verify.json() == [{"file_id": "a.txt", "ok": True, "sha256": sha(b"a" * 1000)}]
    assert a.post("/v1/gc", {"dry_run": True}).json() == {
        "deleted": [], "objects_removed": [], "strays_removed": []}
    assert a.post("/v1/unwant", {"file_ids": ["b.txt"]}).json() == {"unwanted": ["b.txt"]}
    assert a.post("/v1/release", {"file_ids": ["b.txt"]}).json() == {
        "released": ["b.txt"], "removed": ["downloads/b.txt/b.txt"], "kept": {}}
    assert a.post("/v1/forget", {"file_ids": ["a.txt"]}).json() == {
        "forgotten": ["a.txt"], "removed": ["downloads/a.txt/a.txt"], "kept": {}}
    push = a.post("/v1/stats/push")
    assert push.status_code == 409
    assert push.json()["error"] == "stats --push needs a [supabase] section in the config"
    # One log line per request, with the peer's credentials (this process).
    ours = [r for r in a.requests() if r["pid"] == os.getpid()]
    assert all((r["uid"], r["gid"]) == (os.getuid(), os.getgid()) for r in a.requests())
    seen = {(r["method"], r["path"], r["status"]) for r in ours}
    assert ("POST", "/v1/get", 200) in seen and ("POST", "/v1/stats/push", 409) in seen
    assert len(seen) == 13
    get_line = next(r for r in ours if r["path"] == "/v1/get")
    assert get_line["file_ids"] == ["a.txt", "b.txt", "a.txt"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_unix_socket(env, api):
    _local(env, "c.txt", b"c" * 100)
    a = api()
    base = ["curl", "-sS", "--unix-socket", str(a.socket)]
    out = subprocess.run([*base, "http://prefetchd/v1/status"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["daemon"]["running"] is True
    proc = subprocess.run([*base, "-N", "-X", "POST", "-H", "Content-Type: application/json",
                           "-d", '{"file_ids": ["c.txt"], "provider": "local"}',
                           "http://prefetchd/v1/get"], capture_output=True, text=True,
                          check=True)
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["results"][0]["path"] == str(env.root / "downloads/c.txt/c.txt")
    # The access line is written when the response has ended: maybe just after curl
    # read its last byte.
    curl_line = wait_until(lambda: [r for r in a.requests() if r["path"] == "/v1/get"])[-1]
    assert curl_line["uid"] == os.getuid() and curl_line["pid"] != os.getpid()


def test_get_streams_progress_and_resumed_from(env, api, server):
    """A slow body, cut once: progress lines while it streams (at most ~4 a second),
    and the resumed attempt says where it resumed so a client can tell speed."""
    data = os.urandom(300_000)
    server.add("file-slow", data, filename="slow.bin")
    server.fault("file-slow", Fault(cut_after=100_000), Fault(rate=200_000))
    env.write_config(download="chunk_size = 4096\nretries = 4")
    a = api()
    started = time.monotonic()
    lines = a.get_lines({"file_ids": ["file-slow"], "sha256": sha(data)})
    elapsed = time.monotonic() - started
    progress = [x for x in lines if x["type"] == "progress"]
    assert len(progress) >= 2
    assert set(progress[0]) == {"type", "file_id", "name", "done", "total", "resumed_from"}
    resumed = [p for p in progress if p["resumed_from"] == 100_000]
    assert resumed, progress
    assert all(p["name"] == "slow.bin" and p["total"] == 300_000 for p in resumed)
    assert [p["done"] for p in resumed] == sorted(p["done"] for p in resumed)
    assert resumed[-1]["done"] == 300_000
    assert len(progress) <= elapsed / 0.25 + 3  # rate-limited per file
    assert server.content_requests("file-slow")[-1]["headers"]["range"] == "bytes=100000-"
    assert lines[-1]["results"][0]["state"] == "ready"


def test_a_client_that_goes_away_does_not_cancel_the_download(env, api, server):
    data = os.urandom(200_000)
    server.add("file-leave", data)
    server.fault("file-leave", Fault(rate=100_000))
    env.write_config(download="chunk_size = 4096")
    a = api()
    with a.http.stream("POST", "/v1/get", json={"file_ids": ["file-leave"]}) as r:
        for line in r.iter_lines():
            if json.loads(line)["type"] == "progress":
                break  # and the connection closes
    wait_until(lambda: a.http.get("/v1/path", params={"file_id": "file-leave"}).status_code
               == 200, timeout=60)
    assert len(server.content_requests("file-leave")) == 1
    assert any(r["path"] == "/v1/get" and r["status"] == 200 for r in a.requests())


def test_errors_are_json_with_the_clis_message(env, api):
    _local(env, "e.txt", b"e")
    a = api()

    def err(r: httpx.Response) -> dict[str, Any]:
        assert r.headers["content-type"].startswith("application/json")
        return r.json()

    cli = env.invoke("want", "e.txt", "--provider", "local", "--sha256", "xyz")
    r = a.post("/v1/want", {"file_ids": ["e.txt"], "provider": "local", "sha256": "xyz"})
    assert r.status_code == 400
    assert err(r)["error"] == cli.stderr.strip().removeprefix("prefetchd: error: ")
    assert err(r)["exit_code"] == 2 == cli.returncode
    cli = env.invoke("get", "e.txt", "--provider", "local", "--dest", "../../etc/x")
    r = a.post("/v1/get", {"file_ids": ["e.txt"], "provider": "local", "dest": "../../etc/x"})
    assert (r.status_code, err(r)["exit_code"]) == (400, 2)
    assert err(r)["error"] == cli.stderr.strip().removeprefix("prefetchd: error: ")
    r = a.http.get("/v1/nothing")
    assert (r.status_code, err(r)) == (404, {"error": "no route GET /v1/nothing (see GET "
                                             "/v1/version)", "code": "bad_request",
                                             "exit_code": 2, "file_id": None, "path": None})
    assert a.http.get("/v1/want").status_code == 405
    r = a.http.post("/v1/want", content=b'{"file_ids": ["x"')
    assert r.status_code == 400 and err(r)["error"].startswith("request body is not valid JSON")
    assert err(a.post("/v1/want", {"file_ids": "x"}))["error"].startswith("file_ids: ")
    assert err(a.post("/v1/want", {"file_ids": ["x"], "bogus": 1}))["error"] == (
        "bogus: unknown key")
    assert err(a.post("/v1/want", ["x"]))["error"] == "request body must be a JSON object"
    assert err(a.post("/v1/want", {"file_ids": []}))["error"] == "no file_id given"
    r = a.http.get("/v1/path", params={"file_id": "e.txt"})
    cli = env.invoke("path", "e.txt")
    assert (r.status_code, err(r)["exit_code"], err(r)["file_id"]) == (404, 1, "e.txt")
    assert err(r)["error"] == cli.stderr.strip().removeprefix("prefetchd: ")
    r = a.post("/v1/release", {"file_ids": ["nope", "e.txt"]})
    assert (r.status_code, err(r)["error"]) == (404, "not in the manifest: nope, e.txt")
    r = a.http.get("/v1/ls", params={"state": "bogus"})
    assert r.status_code == 400 and "'bogus' is not one of" in err(r)["error"]
    assert "Traceback" not in a.daemon.logtext().split("api_listening")[-1]


def test_socket_file_mode_stale_socket_and_shutdown(env, api, server):
    a = api()
    st = os.stat(a.socket, follow_symlinks=False)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == os.getegid()
    # A get in progress when the daemon stops ends without a result line.
    server.add("file-stop", os.urandom(400_000))
    server.fault("file-stop", Fault(rate=50_000))
    env.write_config(download="chunk_size = 4096\nshutdown_grace = \"100ms\"")
    a.daemon.kill9()
    assert stat.S_ISSOCK(os.stat(a.socket).st_mode)  # a killed daemon leaves it
    b = api()  # ... and the next one replaces it
    with b.http.stream("POST", "/v1/get", json={"file_ids": ["file-stop"]}) as r:
        it = r.iter_lines()
        while json.loads(next(it))["type"] != "progress":
            pass
        b.daemon.proc.send_signal(signal.SIGTERM)
        rest = [json.loads(x) for x in it if x]
    assert all(x["type"] != "result" for x in rest)
    assert b.daemon.proc.wait(30) == 0
    assert not a.socket.exists()


def test_a_file_in_the_way_of_the_socket_is_not_replaced(env):
    env.state.mkdir()
    (env.state / "api.sock").write_text("mine")
    r = env.cli("run", timeout=30)
    assert r.returncode == 1
    assert f"{env.state / 'api.sock'} exists and is not a socket" in r.stderr
    assert (env.state / "api.sock").read_text() == "mine"


def test_under_systemd_the_socket_lives_in_the_runtime_directory(env, api, tmp_path):
    run = tmp_path / "run"
    a = api({"RUNTIME_DIRECTORY": str(run)})
    assert os.readlink(env.state / "api.sock") == str(run / "api.sock")
    assert a.http.get("/v1/version").status_code == 200  # clients connect through the link
    assert a.daemon.stop() == 0
    assert not (run / "api.sock").exists() and not (env.state / "api.sock").is_symlink()


def test_get_of_10000_ids(env, api):
    ids = [f"f{i:05}.txt" for i in range(10_000)]
    for fid in ids:
        (env.src / fid).write_bytes(fid.encode())
    a = api()
    lines = a.get_lines({"file_ids": ids, "provider": "local"})
    results = lines[-1]["results"]
    assert [r["file_id"] for r in results] == ids
    assert {r["state"] for r in results} == {"ready"}


def test_waits_read_only_what_moved():
    """The bound behind a get of 10,000 ids: no task per id, and after the first look
    only the ids a hook names are read again."""

    class Counting:
        def __init__(self) -> None:
            self.reads: list[int] = []

        def rows_for(self, ids: Any) -> dict[str, Entry]:
            self.reads.append(len(ids))
            return {f: _entry(f, "queued") for f in ids}

        def claims_for(self, ids: Any) -> dict[str, list[Any]]:
            return {f: [] for f in ids}

    async def go() -> None:
        manifest = Counting()
        waits = Waits(manifest, Path("/r"))  # type: ignore[arg-type]
        ids = [f"id{i}" for i in range(10_000)]
        wait = GetWait.of(ids, Path("/r"), 60.0, None)
        waits.add(wait)
        waits.check(set(ids), 0.0)
        task = asyncio.ensure_future(waits.run())
        waits.progress("id7", 10, 100)
        waits.touch("id7")
        waits.touch("not-waited-on")
        await asyncio.sleep(0.05)
        assert manifest.reads == [10_000, 1]
        assert wait.moved == {"id7": (10, 100)}
        assert len(asyncio.all_tasks()) <= 3  # this test, run() and its timed wait
        task.cancel()

    asyncio.run(go())


def _entry(fid: str, state: str) -> Entry:
    return Entry.from_row({"file_id": fid, "wanted": 1, "pin": 0, "state": state,
                           "attempts": 0})


# -- a real second user --------------------------------------------------------------------


def _root_or_skip() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the access tests need root (to add users) under CI")
        pytest.skip("the access tests need root (to add users with useradd)")
    for tool in ("useradd", "groupadd", "setpriv", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture
def users() -> Iterator[dict[str, str]]:
    """An API group, an admin group, an agent (API group) and an admin (both, the admin
    group as a supplementary one); removed at the end."""
    _root_or_skip()
    tag = f"{os.getpid() % 100000}{int(time.time()) % 1000}"
    names = {"group": f"pfdg{tag}", "admin_group": f"pfda{tag}", "agent": f"pfdu{tag}",
             "admin": f"pfdm{tag}"}
    made: list[list[str]] = []
    try:
        for g in (names["group"], names["admin_group"]):
            subprocess.run(["groupadd", g], check=True)
            made.append(["groupdel", g])
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-G", names["group"],
                        names["agent"]], check=True)
        made.append(["userdel", names["agent"]])
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-G",
                        f"{names['group']},{names['admin_group']}", names["admin"]],
                       check=True)
        made.append(["userdel", names["admin"]])
        yield names
    finally:
        for cmd in reversed(made):
            subprocess.run(cmd, check=False)


def _as(user: str, sock: Path, method: str, path: str, body: Any = None,
        *, init_groups: bool = True) -> tuple[int, Any, int]:
    """curl as `user`: (HTTP status, parsed body, curl's exit code)."""
    import pwd

    pw = pwd.getpwnam(user)
    ident = ["--init-groups"] if init_groups else ["--clear-groups"]
    cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", *ident, "curl", "-sS",
           "--unix-socket", str(sock), "-X", method, "-w", "\n%{http_code}"]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    r = subprocess.run([*cmd, f"http://prefetchd{path}"], capture_output=True, text=True,
                       check=False, timeout=120)
    if r.returncode != 0:
        return 0, r.stderr, r.returncode
    text, _, code = r.stdout.rpartition("\n")
    if path != "/v1/get":  # one JSON document (`ls` streams its array a row per line)
        return int(code), json.loads(text), 0
    return int(code), [json.loads(x) for x in text.splitlines() if x], 0


def test_access_with_real_second_users(env, api, users, tmp_path):
    import grp
    import pwd

    sockdir = Path(f"/tmp/pfd-api-{os.getpid()}")
    sockdir.mkdir(mode=0o755)
    try:
        sock = sockdir / "api.sock"
        env.write_config(f'\n[api]\nsocket = "{sock}"\ngroup = "{users["group"]}"\n'
                         f'admin_group = "{users["admin_group"]}"\n')
        _local(env, "mine.txt", b"m" * 10)
        _local(env, "root.txt", b"r" * 10)
        a = api()
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam(users["group"]).gr_gid
        a.post("/v1/want", {"file_ids": ["root.txt"], "provider": "local"})  # root's entry
        agent, admin = users["agent"], users["admin"]
        _agent_may_use_the_files(sock, agent, env)
        needs = f"needs uid 0, the daemon's user, or group {users['admin_group']}"
        for method, path, body, what in (
                ("POST", "/v1/gc", {}, "gc"), ("POST", "/v1/verify", {}, "verify"),
                ("POST", "/v1/stats/push", None, "stats push"),
                ("POST", "/v1/forget", {"file_ids": ["root.txt"], "all": True},
                 "acting on every holder's claims (--all)"),
                ("POST", "/v1/release", {"file_ids": ["root.txt"], "holder": "uid:0"},
                 "acting on the claims of uid 0")):
            status, out, _ = _as(agent, sock, method, path, body)
            assert (status, out) == (403, {"error": f"{what} {needs}", "code": "forbidden",
                                           "exit_code": 1, "file_id": None, "path": None})
        # root's claim is not the agent's to forget: it holds none on root.txt.
        status, out, _ = _as(agent, sock, "POST", "/v1/forget", {"file_ids": ["root.txt"]})
        assert status == 409 and out["error"] == (
            f"no claim of uid {pwd.getpwnam(agent).pw_uid} to forget: root.txt "
            "(held by uid 0)")
        _as(agent, sock, "POST", "/v1/want", {"file_ids": ["mine.txt"], "provider": "local"})
        status, out, _ = _as(agent, sock, "POST", "/v1/forget", {"file_ids": ["mine.txt"]})
        assert (status, out["forgotten"], out["kept"]) == (200, ["mine.txt"], {})
        # The admin group counts as a supplementary group (SO_PEERGROUPS).
        assert _as(admin, sock, "POST", "/v1/gc", {"dry_run": True})[0] == 200
        assert _as(admin, sock, "POST", "/v1/verify", {})[0] == 200
        assert _as(admin, sock, "POST", "/v1/forget", {"file_ids": ["root.txt"],
                                                       "all": True})[0] == 200
        # Without the socket's group nobody connects at all.
        assert _as(agent, sock, "GET", "/v1/status", init_groups=False)[2] == 7
        uid = pwd.getpwnam(agent).pw_uid
        gid = pwd.getpwnam(agent).pw_gid
        logged = [r for r in a.requests() if r["uid"] == uid]
        assert logged and all(r["gid"] == gid and r["pid"] > 0 for r in logged)
        assert {(r["path"], r["status"]) for r in logged} >= {("/v1/gc", 403),
                                                             ("/v1/want", 200)}
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def _agent_may_use_the_files(sock: Path, agent: str, env: Env) -> None:
    """want, get, path, ls, status, release, stats, unwant: allowed to the API group."""
    path = str(env.root / "downloads/mine.txt/mine.txt")
    assert _as(agent, sock, "POST", "/v1/want", {"file_ids": ["mine.txt"],
                                                 "provider": "local"})[:2] == (
        200, {"wanted": ["mine.txt"]})
    status, lines, _ = _as(agent, sock, "POST", "/v1/get", {"file_ids": ["mine.txt"]})
    assert status == 200 and lines[-1]["results"][0]["path"] == path
    assert _as(agent, sock, "GET", "/v1/path?file_id=mine.txt")[:2] == (200, {"path": path})
    assert _as(agent, sock, "GET", "/v1/ls")[0] == 200
    assert _as(agent, sock, "GET", "/v1/status")[0] == 200
    assert _as(agent, sock, "GET", "/v1/stats")[0] == 200
    assert _as(agent, sock, "POST", "/v1/release", {"file_ids": ["mine.txt"]})[:2] == (
        200, {"released": ["mine.txt"], "removed": ["downloads/mine.txt/mine.txt"],
              "kept": {}})
    assert _as(agent, sock, "POST", "/v1/unwant", {"file_ids": ["root.txt"]})[0] == 409


# -- config and the manifest's requested_by -------------------------------------------------


def test_api_settings(env, tmp_path):
    from prefetchd.config import load_settings
    from prefetchd.errors import ConfigError

    assert env.settings().api_socket == env.state / "api.sock"
    env.write_config('\n[api]\nsocket = "run/api.sock"\ngroup = "0"\nadmin_group = "root"\n')
    s = env.settings()
    assert s.api_socket == env.config.parent / "run" / "api.sock"  # beside the config
    assert (s.api.group, s.api.admin_group) == ("0", "root")
    env.write_config('\n[api]\nbogus = 1\n')
    with pytest.raises(ConfigError, match=r"api\.bogus: unknown key"):
        load_settings(env.config, environ={})


def test_an_unknown_admin_group_stops_the_start(env):
    env.write_config('\n[api]\nadmin_group = "no-such-group-pfd"\n')
    r = env.cli("run", timeout=30)
    assert r.returncode == 2
    assert "api.admin_group: no group named 'no-such-group-pfd'" in r.stderr


def test_each_asker_holds_its_own_claim(tmp_path):
    from prefetchd.manifest import Manifest, WantSpec

    m = Manifest(tmp_path / "m.db")
    try:
        m.want([WantSpec("x", holder="uid:1234", dest="a/x"), WantSpec("y")])
        assert [c.holder for c in m.claims_of("y")] == [f"uid:{os.getuid()}"]  # its own
        m.want([WantSpec("x", holder="uid:99", dest="b/x")])
        assert {c.holder: c.dest for c in m.claims_of("x")} == {"uid:1234": "a/x",
                                                                "uid:99": "b/x"}
        m.unwant(["x"], holder="uid:1234")
        assert m.get("x").wanted and not m.claim("x", "uid:1234").wanted
    finally:
        m.close()
