"""`prefetchd mcp` driven the way an MCP host drives it: the server as a subprocess on
stdio, the SDK's own stdio client and ClientSession on the other end.

Every session also keeps a copy of the server's stdout (through tee) and checks after
it that each line is one JSON-RPC message: nothing but the protocol goes there. Tool
errors are compared with what the CLI prints for the same request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp_types import CallToolResult, TextContent

from tests.conftest import REPO, Env, sha
from tests.daemon_helpers import DaemonProc
from tests.servers.files_api import Fault

TOOLS = {"prefetch_get", "prefetch_want", "prefetch_path", "prefetch_status",
         "prefetch_release"}
CALL_TIMEOUT = 120.0


def server_params(env: Env, stdout_copy: Path) -> StdioServerParameters:
    """`prefetchd mcp` (as `python -m prefetchd.cli mcp`), its stdout copied to a file on
    the way out."""
    return StdioServerParameters(
        command="sh",
        args=["-c", '"$0" -m prefetchd.cli mcp | tee -a "$1"', sys.executable,
              str(stdout_copy)],
        env={"PREFETCHD_CONFIG": str(env.config), "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        cwd=REPO,
    )


@asynccontextmanager
async def connect(env: Env) -> AsyncIterator[ClientSession]:
    copy = env.tmp / f"mcp-stdout-{os.urandom(4).hex()}.jsonl"
    with open(env.tmp / "mcp-stderr.log", "a") as errlog:
        async with stdio_client(server_params(env, copy), errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session
    assert_protocol_only(copy)


def assert_protocol_only(copy: Path) -> None:
    lines = copy.read_text().splitlines()
    assert lines, "the server wrote nothing"
    for line in lines:
        message = json.loads(line)  # raises on anything that is not JSON
        assert message.get("jsonrpc") == "2.0", line


def run(scenario: Any) -> None:
    """Run an async scenario under anyio (no pytest plugin needed)."""
    anyio.run(scenario)


def text_of(result: CallToolResult) -> str:
    (block,) = result.content
    assert isinstance(block, TextContent)
    return block.text


async def call(session: ClientSession, name: str, **arguments: Any) -> CallToolResult:
    result = await session.call_tool(name, arguments, read_timeout_seconds=CALL_TIMEOUT)
    assert isinstance(result, CallToolResult)
    return result


async def ok(session: ClientSession, name: str, **arguments: Any) -> Any:
    result = await call(session, name, **arguments)
    assert not result.is_error, text_of(result)
    return result.structured_content


async def error(session: ClientSession, name: str, **arguments: Any) -> str:
    result = await call(session, name, **arguments)
    assert result.is_error, result
    return text_of(result)


def test_tools_are_listed_with_schemas_and_descriptions(env):
    async def scenario() -> None:
        async with connect(env) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == TOOLS
            for t in tools.values():
                assert t.description and len(t.description) > 40, t.name
                assert t.input_schema["type"] == "object"
                for prop in t.input_schema.get("properties", {}).values():
                    assert prop.get("description"), (t.name, prop)
                assert t.output_schema is not None and t.output_schema["type"] == "object"
            get = tools["prefetch_get"]
            assert get.input_schema["required"] == ["file_id"]
            assert set(get.input_schema["properties"]) == {
                "file_id", "sha256", "size", "dest", "provider", "timeout_s"}
            assert set((get.output_schema or {})["required"]) == {
                "path", "sha256", "size", "state", "cached"}
            assert tools["prefetch_want"].input_schema["required"] == ["file_ids"]
            reads = tools["prefetch_path"].annotations
            deletes = tools["prefetch_release"].annotations
            assert reads is not None and reads.read_only_hint is True
            assert deletes is not None and deletes.destructive_hint is True

    run(scenario)


def test_each_tool_in_process(env, server):
    data = b"A" * 5000
    server.add("file-a", data, "a.txt")
    server.add("file-b", b"B" * 10, "b.txt")
    path_a = str(env.root / "downloads/file-a/a.txt")

    async def scenario() -> None:
        async with connect(env) as s:
            got = await ok(s, "prefetch_get", file_id="file-a")
            assert got == {"path": path_a, "sha256": sha(data), "size": 5000,
                           "state": "ready", "cached": False}
            assert Path(path_a).read_bytes() == data
            again = await ok(s, "prefetch_get", file_id="file-a", timeout_s=0)
            assert again == {**got, "cached": True}
            assert await ok(s, "prefetch_want", file_ids=["file-b"], pin=True,
                            ttl="1h") == {"wanted": ["file-b"]}
            assert await ok(s, "prefetch_path", file_id="file-a") == {"path": path_a}
            status = await ok(s, "prefetch_status")
            assert status["daemon"] == {"running": False, "pid": None}
            assert status["states"]["ready"] == 1 and status["states"]["queued"] == 1
            released = await ok(s, "prefetch_release", file_ids=["file-a"])
            assert released == {"released": ["file-a"], "removed": ["downloads/file-a/a.txt"]}
            assert not Path(path_a).exists()
            assert (await error(s, "prefetch_path", file_id="file-a")
                    == "file-a is not ready (state evicted)")

    run(scenario)
    r = env.cli("path", "file-a")
    assert r.stderr.strip() == "prefetchd: file-a is not ready (state evicted)"


def test_get_reports_progress_on_a_slow_download(env, server):
    env.write_config(download="chunk_size = 65536")  # the engine reports each buffer
    data = os.urandom(1_500_000)
    server.add("file-slow", data, "slow.bin")
    server.fault("file-slow", Fault(rate=1_000_000))  # 1.5 s
    seen: list[tuple[float, float | None, str | None]] = []

    class Progress:
        async def __call__(self, progress: float, total: float | None,
                           message: str | None) -> None:
            seen.append((progress, total, message))

    async def scenario() -> None:
        async with connect(env) as s:
            result = await s.call_tool("prefetch_get", {"file_id": "file-slow"},
                                       read_timeout_seconds=CALL_TIMEOUT,
                                       progress_callback=Progress())
            assert isinstance(result, CallToolResult) and not result.is_error
            assert result.structured_content["size"] == len(data)

    run(scenario)
    assert len(seen) >= 3, seen
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and done[-1] == len(data)
    assert {t for _, t, _ in seen} == {len(data)}
    assert seen[-1][2] == "file-slow: 1.4 MiB of 1.4 MiB"


def test_bad_sha256_is_a_tool_error_with_the_cli_message(env, server):
    data = b"C" * 1000
    for fid in ("file-m", "file-c"):
        server.add(fid, data, "c.txt")
    wrong = sha(b"something else")

    async def scenario() -> tuple[str, str]:
        async with connect(env) as s:
            malformed = await error(s, "prefetch_get", file_id="file-m", sha256="xyz")
            mismatch = await error(s, "prefetch_get", file_id="file-m", sha256=wrong)
            return malformed, mismatch

    malformed, mismatch = anyio.run(scenario)
    r = env.cli("get", "file-c", "--sha256", "xyz")
    assert r.returncode == 2
    assert r.stderr == f"prefetchd: error: {malformed.replace('file-m', 'file-c')}\n"
    assert "does not match the expected" in mismatch and wrong[:16] in mismatch
    r = env.cli("get", "file-c", "--sha256", wrong)
    assert r.returncode == 1
    assert r.stderr == f"prefetchd: {mismatch.replace('file-m', 'file-c')}\n"
    assert not (env.root / "downloads/file-m").exists()


def test_traversal_dest_is_refused(env, server):
    server.add("file-a", b"A" * 10, "a.txt")

    async def scenario() -> list[str]:
        async with connect(env) as s:
            return [await error(s, "prefetch_get", file_id="file-a", dest=dest)
                    for dest in ("../escape.txt", "/etc/passwd", ".prefetchd/x")]

    messages = anyio.run(scenario)
    for dest, message in zip(("../escape.txt", "/etc/passwd", ".prefetchd/x"), messages,
                             strict=True):
        r = env.cli("get", "file-a", "--dest", dest)
        assert r.returncode == 2
        assert r.stderr == f"prefetchd: error: {message}\n"
    assert not (env.tmp / "escape.txt").exists()


def test_secrets_in_a_url_never_reach_the_model(env):
    url = "http://user:hunter2secret@127.0.0.1:9/f.bin?X-Amz-Signature=sigsecret"

    async def scenario() -> str:
        async with connect(env) as s:
            await ok(s, "prefetch_want", file_ids=["file-x"])  # state exists: path reads it
            return await error(s, "prefetch_path", file_id=url)

    message = anyio.run(scenario)
    assert "hunter2secret" not in message and "sigsecret" not in message
    assert message.endswith("is not ready (not in the manifest)")
    for copy in env.tmp.glob("mcp-stdout-*.jsonl"):
        assert "hunter2secret" not in copy.read_text()


def test_through_a_running_daemon(env, server):
    env.write_config(download="chunk_size = 65536")
    daemon = DaemonProc(env).ready()
    data = os.urandom(1_000_000)
    server.add("file-d", data, "d.bin")
    server.fault("file-d", Fault(rate=500_000))  # 2 s, downloaded by the daemon
    seen: list[float] = []

    class Progress:
        async def __call__(self, progress: float, total: float | None,
                           message: str | None) -> None:
            seen.append(progress)

    async def scenario() -> None:
        async with connect(env) as s:
            result = await s.call_tool("prefetch_get", {"file_id": "file-d"},
                                       read_timeout_seconds=CALL_TIMEOUT,
                                       progress_callback=Progress())
            assert isinstance(result, CallToolResult) and not result.is_error, result
            got = result.structured_content
            assert got["sha256"] == sha(data) and got["size"] == len(data)
            assert got["cached"] is False
            assert (await ok(s, "prefetch_get", file_id="file-d"))["cached"] is True
            status = await ok(s, "prefetch_status")
            assert status["daemon"] == {"running": True, "pid": daemon.proc.pid}
            assert (await ok(s, "prefetch_release", file_ids=["file-d"]))["removed"] == [
                "downloads/file-d/d.bin"]
            assert (await error(s, "prefetch_path", file_id="file-d")
                    == "file-d is not ready (state evicted)")

    try:
        run(scenario)
    finally:
        daemon.stop()
    assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] == len(data), seen
    log = (env.tmp / "daemon.log").read_text()
    assert "api_request" in log and "/v1/get" in log  # through the socket, not the db


def test_a_bad_config_is_one_line_and_nothing_on_stdout(env):
    env.config.write_text("bogus_key = 1\n")
    r = subprocess.run([sys.executable, "-m", "prefetchd.cli", "mcp"], capture_output=True,
                       text=True, env={**os.environ, "PREFETCHD_CONFIG": str(env.config)},
                       stdin=subprocess.DEVNULL, cwd=REPO, timeout=60, check=False)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("prefetchd: error: ") and r.stderr.count("\n") == 1
