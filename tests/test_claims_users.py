"""Two agents and an operator on one daemon, doing to each other's files what they
would by mistake, through every front (issue 19, point 1).

Real users, as tests/test_unprivileged.py lays them out: the service user runs the
daemon (the operator: it may act on any claim), agent A pins a file at its own dest,
agent B (in the socket's group too) then tries the CLI, the local API with curl, the
Python API, MCP through the SDK's own client and a request file of its own. B can
neither delete, move, re-pin, un-pin nor change the expectations of A's claim; B's
own mistakes fail B's own claim only; the operator can release A's claim.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.daemon_helpers import wait_until
from tests.test_unprivileged import Site, daemon, site  # noqa: F401 - fixtures

BODY = b"file 0\n" * 1000


def _curl(s: Site, user, method: str, route: str, body: dict | None = None):
    argv = ["curl", "-sS", "--unix-socket", str(s.state / "api.sock"), "-X", method,
            f"http://prefetchd{route}"]
    if body is not None:
        argv += ["-H", "content-type: application/json", "-d", json.dumps(body)]
    r = subprocess.run(s.argv(user, *argv), env=s.env(user), cwd="/", capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


async def _mcp(s: Site, user, tool: str, args: dict) -> tuple[bool, str]:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    argv = s.argv(user, sys.executable, "-m", "prefetchd.cli", "mcp")
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=s.env(user), cwd="/")
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        result = await session.call_tool(tool, args)
        text = " ".join(getattr(c, "text", "") for c in result.content)
        return bool(result.is_error), text


def _drop(s: Site, user, name: str, entries: list[dict]) -> None:
    """A request file written by `user` (a dotfile renamed into place, as documented)."""
    inbox = s.root / ".prefetchd/inbox"
    code = ("import json, os, sys; d = sys.argv[1]; t = os.path.join(d, '.' + sys.argv[2]);"
            " open(t, 'w').write(sys.argv[3]); os.rename(t, os.path.join(d, sys.argv[2]))")
    r = s.run(user, "-c", code, str(inbox), name, json.dumps(entries))
    assert r.returncode == 0, r.stderr
    done = inbox / "processed" / name
    failed = inbox / "failed" / name
    wait_until(lambda: done.exists() or failed.exists(), timeout=60)
    assert done.exists(), (inbox / "failed" / f"{name}.error.json").read_text()


def _a_state(s: Site) -> dict:
    r = s.cli(s.agent, "ls", "--mine", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    (claim,) = row["claims"]
    return claim


def test_another_agent_cannot_touch_my_claim_through_any_front(site, daemon):  # noqa: F811
    s, a, b = site, site.agent, site.other
    critical = s.root / "ops/critical.bin"
    r = s.cli(a, "get", "f0.txt", "--pin", "--dest", "ops/critical.bin")
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == critical and critical.read_bytes() == BODY
    inode = critical.stat().st_ino

    # CLI: B's release of a file it holds no claim on is refused, nothing changes.
    r = s.cli(b, "release", "f0.txt")
    assert r.returncode == 1 and f"no claim of uid {b.pw_uid} to release" in r.stderr
    assert "Traceback" not in r.stderr
    # B's own dest is B's own link; A's stays where A put it.
    r = s.cli(b, "get", "f0.txt", "--dest", "agent/mine.txt")
    assert r.returncode == 0, r.stderr
    assert (s.root / "agent/mine.txt").stat().st_ino == inode
    # B's wrong --size and --sha256 fail B's claim, with B's own words.
    r = s.cli(b, "get", "f0.txt", "--size", "12")
    assert r.returncode == 1 and "--size 12" in r.stderr and f"uid {b.pw_uid}" in r.stderr
    r = s.cli(b, "path", "f0.txt")
    assert r.returncode == 1 and "--size 12" in r.stderr
    r = s.cli(a, "path", "f0.txt")
    assert (r.returncode, r.stdout.strip()) == (0, str(critical))
    r = s.cli(a, "get", "f0.txt")  # A's plain request is not poisoned by B's size
    assert (r.returncode, r.stdout.strip()) == (0, str(critical))
    # B may not act for A, nor for everybody.
    for args in (["release", "f0.txt", "--holder", f"uid:{a.pw_uid}"],
                 ["forget", "f0.txt", "--all"],
                 ["want", "f0.txt", "--holder", f"uid:{a.pw_uid}", "--sha256", "1" * 64]):
        r = s.cli(b, *args)
        assert r.returncode == 1, (args, r.stdout)
        assert "needs uid 0 or the daemon's user" in r.stderr

    # The local API with curl, as B.
    out = _curl(s, b, "POST", "/v1/release", {"file_ids": ["f0.txt"],
                                               "holder": f"uid:{a.pw_uid}"})
    assert "needs uid 0" in out["error"]
    out = _curl(s, b, "POST", "/v1/forget", {"file_ids": ["f0.txt"], "all": True})
    assert "needs uid 0" in out["error"]
    out = _curl(s, b, "POST", "/v1/want", {"file_ids": ["f0.txt"], "sha256": "2" * 64})
    assert out == {"wanted": ["f0.txt"]}  # B's own claim, B's own (wrong) hash

    # The Python API, as B's script would.
    r = s.run(b, "-c", "from prefetchd.api import Prefetch\n"
                       "with Prefetch() as p:\n"
                       "    print(p.release('f0.txt'))")
    assert r.returncode == 0, r.stderr
    assert not (s.root / "agent/mine.txt").exists()  # B's own link went with B's claim
    r = s.run(b, "-c", "from prefetchd.api import Prefetch\n"
                       f"with Prefetch() as p: p.forget('f0.txt', holder='uid:{a.pw_uid}')")
    assert r.returncode != 0 and "needs uid 0" in r.stderr

    # MCP through the SDK's client, as B: a release drops only B's claim (none now).
    is_error, text = asyncio.run(_mcp(s, b, "prefetch_get",
                                      {"file_id": "f0.txt", "dest": "b/mcp.bin",
                                       "size": 5, "timeout_s": 60}))
    assert is_error and "--size 5" in text
    is_error, text = asyncio.run(_mcp(s, b, "prefetch_release", {"file_ids": ["f0.txt"]}))
    assert not is_error, text

    # A request file B drops: it is B's claim whatever it says.
    _drop(s, b, "b.json", [{"file_id": "f0.txt", "dest": "ops/critical.bin", "pin": False,
                            "sha256": "3" * 64, "holder": "job-1"},
                           {"file_id": "f0.txt", "action": "unwant"}])

    # A's claim is as A left it: pinned, its own dest, no error, the same bytes.
    claim = _a_state(s)
    assert (claim["holder"], claim["pin"], claim["dest"], claim["error"]) == (
        f"uid:{a.pw_uid}", True, "ops/critical.bin", None)
    assert critical.read_bytes() == BODY and critical.stat().st_ino == inode

    # The operator (the daemon's user) may release A's claim.
    r = s.cli(s.service, "release", "f0.txt", "--holder", f"uid:{a.pw_uid}")
    assert r.returncode == 0, r.stderr
    assert not critical.exists()
    assert not (s.root / "ops").exists()  # the directory prefetchd made went with it
    r = s.cli(a, "path", "f0.txt")  # A holds no claim now: the file's shared place
    assert r.stdout.strip() != str(critical)
