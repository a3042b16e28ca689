"""Unprivileged use, as the README's systemd install lays it out (issue 13, point 3).

Real users: a service user that runs the daemon (its own group, like `prefetchd`), an
agent and a second agent in that group. The root and inbox get the modes of
systemd/prefetchd.tmpfiles, the state dir the unit's StateDirectoryMode, the daemon the
unit's UMask. The agent then uses the CLI, the Python API and the MCP server (all
through the daemon's socket), is refused the admin operations with the group it would
need, and can write nothing under the root but the inbox, where the sticky bit keeps
the other agent away from its request files.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO, wait_until
from tests.support.users import install_for_others, python_for_others

TMPFILES = REPO / "systemd" / "prefetchd.tmpfiles"
UNIT = REPO / "systemd" / "prefetchd.service"


def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("unprivileged-use tests need root (useradd) under CI")
        pytest.skip("needs root to add users (useradd)")
    for tool in ("useradd", "groupadd", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@dataclass
class Site:
    base: Path
    python_path: Path  # prefetchd, copied where the users may read it
    root: Path
    state: Path
    config: Path
    service: pwd.struct_passwd
    agent: pwd.struct_passwd
    other: pwd.struct_passwd
    group: str

    def env(self, user: pwd.struct_passwd) -> dict[str, str]:
        return {"HOME": str(self.base), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                "PYTHONPATH": str(self.python_path), "PREFETCHD_CONFIG": str(self.config),
                "USER": user.pw_name}

    def argv(self, user: pwd.struct_passwd, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                "--init-groups", *args]

    def run(self, user: pwd.struct_passwd, *args: str,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`python ARGS` as `user` (ARGS start with -c or -m)."""
        return subprocess.run(self.argv(user, sys.executable, *args), env=self.env(user),
                              cwd="/", capture_output=True, text=True, timeout=timeout,
                              check=False)

    def cli(self, user: pwd.struct_passwd, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(user, "-m", "prefetchd.cli", *args)


def _tmpfiles_modes() -> dict[str, tuple[int, str, str]]:
    """path -> (mode, user, group) of each `d` line of the shipped tmpfiles entry."""
    out = {}
    for line in TMPFILES.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "d":
            out[parts[1]] = (int(parts[2], 8), parts[3], parts[4])
    return out


def _unit(key: str) -> str:
    for line in UNIT.read_text().splitlines():
        if line.startswith(key + "="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{key} not in {UNIT}")


@pytest.fixture
def site() -> Iterator[Site]:
    _need_root()
    tag = f"{os.getpid() % 10000}{int(time.time()) % 1000}"
    svc, agent, other = f"pfs{tag}", f"pfa{tag}", f"pfo{tag}"
    made: list[list[str]] = []
    base = Path(f"/tmp/prefetchd-unpriv-{tag}")
    try:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "--user-group", svc],
                       check=True, capture_output=True)
        made.append(["userdel", svc])
        for name in (agent, other):
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "--user-group",
                            "-G", svc, name], check=True, capture_output=True)
            made.append(["userdel", name])
        s = Site(base, base / "python", base / "mnt/project", base / "var/lib/prefetchd",
                 base / "config.toml",
                 pwd.getpwnam(svc), pwd.getpwnam(agent), pwd.getpwnam(other), svc)
        base.mkdir(mode=0o755)
        os.chmod(base, 0o755)
        install_for_others(s.python_path)
        (base / "mnt").mkdir(mode=0o755)
        # The tmpfiles entry, with this test's paths and users.
        for path, (mode, _user, _group) in sorted(_tmpfiles_modes().items()):
            here = s.root / Path(path).relative_to("/mnt/project")
            here.mkdir(parents=True, exist_ok=True)
            os.chown(here, s.service.pw_uid, s.service.pw_gid)
            os.chmod(here, mode)
        # systemd's StateDirectory= with the unit's StateDirectoryMode=.
        s.state.mkdir(parents=True)
        for p in (base / "var", base / "var/lib"):
            os.chmod(p, 0o755)
        os.chown(s.state, s.service.pw_uid, s.service.pw_gid)
        os.chmod(s.state, int(_unit("StateDirectoryMode"), 8))
        src = base / "src"
        src.mkdir(mode=0o755)
        for i in range(6):
            (src / f"f{i}.txt").write_bytes(f"file {i}\n".encode() * 1000)
            os.chmod(src / f"f{i}.txt", 0o644)
        s.config.write_text(
            f'root = "{s.root}"\nstate_dir = "{s.state}"\ndefault_provider = "local"\n'
            f'[providers.local]\ntype = "dir"\npath = "{src}"\n'
            f'[api]\ngroup = "{svc}"\n')
        os.chmod(s.config, 0o644)
        yield s
    finally:
        for cmd in reversed(made):
            subprocess.run(cmd, check=False, capture_output=True)
        subprocess.run(["groupdel", svc], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def daemon(site: Site) -> Iterator[subprocess.Popen[bytes]]:
    python_for_others(site.argv(site.service), site.env(site.service))
    r = site.run(site.service, "-c", "import prefetchd.cli; print(prefetchd.__file__)")
    assert r.returncode == 0, f"prefetchd as installed for the users: {r.stderr}"
    assert r.stdout.startswith(f"{site.python_path}/"), r.stdout  # the copy, not the checkout
    umask = int(_unit("UMask"), 8)
    start = ("import os, sys; from prefetchd.cli.commands import main; "
             f"os.umask({umask}); sys.exit(main(['run']))")  # the unit's UMask=
    log = open(site.base / "daemon.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(site.argv(site.service, sys.executable, "-c", start),
                            env=site.env(site.service), cwd="/", stdout=log, stderr=log)
    sock = site.state / "api.sock"
    try:
        wait_until(lambda: sock.is_socket() or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, (site.base / "daemon.log").read_text()
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()


def test_an_agent_uses_cli_api_and_mcp_through_the_socket(site, daemon):
    a = site.agent
    r = site.cli(a, "get", "f0.txt")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.read_bytes() == b"file 0\n" * 1000
    assert site.cli(a, "want", "f1.txt").returncode == 0
    assert site.cli(a, "get", "f1.txt", "--timeout", "60s").returncode == 0
    r = site.cli(a, "path", "f0.txt")
    assert (r.returncode, r.stdout.strip()) == (0, str(path))
    r = site.cli(a, "ls", "--json")
    assert r.returncode == 0, r.stderr
    assert {e["file_id"]: e["state"] for e in json.loads(r.stdout)} == {
        "f0.txt": "ready", "f1.txt": "ready"}
    r = site.cli(a, "status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["daemon"]["running"] is True
    r = site.cli(a, "release", "f1.txt")
    assert r.returncode == 0, r.stderr
    assert not (site.root / "downloads/f1.txt/f1.txt").exists()

    # The Python API, as an agent's script would use it.
    r = site.run(a, "-c", "from prefetchd import api; print(api.get('f2.txt', timeout=60))")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).read_bytes() == b"file 2\n" * 1000

    # Admin operations: refused, naming what would be needed.
    for args in (["gc"], ["verify"]):
        r = site.cli(a, *args)
        assert r.returncode == 1
        assert (f"{args[0]} needs uid 0 or the daemon's user, or set [api] admin_group"
                in r.stderr)
        assert "Traceback" not in r.stderr

    # The MCP server, run as the agent the way an MCP host starts it.
    got = asyncio.run(_mcp_get(site, "f3.txt"))
    assert got["state"] == "ready" and Path(got["path"]).read_bytes() == b"file 3\n" * 1000

    # Who asked: the daemon's log attributes the agent's requests to its uid.
    log = (site.base / "daemon.log").read_text()
    assert f'"uid": {a.pw_uid}' in log or f"uid={a.pw_uid}" in log


async def _mcp_get(site: Site, file_id: str) -> dict:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    argv = site.argv(site.agent, sys.executable, "-m", "prefetchd.cli", "mcp")
    params = StdioServerParameters(command=argv[0], args=argv[1:],
                                   env=site.env(site.agent), cwd="/")
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        result = await session.call_tool("prefetch_get", {"file_id": file_id,
                                                          "timeout_s": 60})
        assert not result.is_error, result.content
        return dict(result.structured_content or {})


_PROBE = r"""
import json, os, sys
root, published, inbox = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except OSError as e:
        out[name] = e.strerror
def write(path):
    with open(path, "wb") as f:
        f.write(b"x")
attempt("create in root", lambda: write(os.path.join(root, "mine.txt")))
attempt("mkdir in root", lambda: os.mkdir(os.path.join(root, "mine")))
attempt("create beside a published file",
        lambda: write(os.path.join(os.path.dirname(published), "x")))
attempt("overwrite a published file", lambda: write(published))
attempt("delete a published file", lambda: os.unlink(published))
attempt("rename a published file", lambda: os.rename(published, published + ".x"))
attempt("create in .prefetchd", lambda: write(os.path.join(root, ".prefetchd", "x")))
objects = os.path.join(root, ".prefetchd", "objects")
attempt("create in objects", lambda: write(os.path.join(objects, "x")))
attempt("create in tmp", lambda: write(os.path.join(root, ".prefetchd", "tmp", "x")))
attempt("create in the inbox", lambda: write(os.path.join(inbox, ".probe-%d" % os.getuid())))
print(json.dumps(out))
"""

_STEAL = r"""
import json, os, sys
victim = sys.argv[1]
out = {}
for name, fn in (("delete", lambda: os.unlink(victim)),
                 ("rename", lambda: os.rename(victim, victim + ".stolen"))):
    try:
        fn()
        out[name] = "allowed"
    except OSError as e:
        out[name] = e.strerror
print(json.dumps(out))
"""


def test_an_agent_can_write_nothing_under_the_root_but_the_inbox(site, daemon):
    r = site.cli(site.agent, "get", "f4.txt")
    assert r.returncode == 0, r.stderr
    published = r.stdout.strip()
    inbox = site.root / ".prefetchd/inbox"
    r = site.run(site.agent, "-c", _PROBE, str(site.root), published, str(inbox))
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen.pop("create in the inbox") == "allowed"
    assert set(seen.values()) <= {"Permission denied", "Operation not permitted"}, seen
    assert Path(published).read_bytes() == b"file 4\n" * 1000
    # The inbox is sticky: another agent cannot take away this agent's request file (a
    # dotfile, so the daemon leaves it where it is).
    mine = inbox / f".probe-{site.agent.pw_uid}"
    r = site.run(site.other, "-c", _STEAL, str(mine))
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout).values()) == {"Operation not permitted"}
    assert mine.exists()
    # Nor can the agent read or write the daemon's state directly.
    r = site.run(site.agent, "-c", "import sys; open(sys.argv[1], 'ab')",
                 str(site.state / "prefetchd.db"))
    assert r.returncode != 0 and "Permission denied" in r.stderr
