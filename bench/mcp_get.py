#!/usr/bin/env python3
"""Latency of MCP `prefetch_get` on a file that is already ready.

    .venv/bin/python bench/mcp_get.py                 # 300 calls, no daemon (in-process)
    .venv/bin/python bench/mcp_get.py --daemon        # the same with `prefetchd run` up
    .venv/bin/python bench/mcp_get.py --calls 1000

Starts `prefetchd mcp` (`python -m prefetchd.cli mcp`) the way an MCP host does (the SDK's stdio
client and ClientSession), makes one file ready through a `dir` provider, then times
one `prefetch_get` round trip at a time (request -> result over stdio) and prints
p50/p90/p99/max. For scale it also times the facade call the tool makes
(`Prefetch(...).get_many` on the ready file, a fresh handle per call as the tool opens
one) in this process. Not collected by pytest; work files live in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp_types import CallToolResult
from ready_file import FILE_ID, REPO, environ, quantiles_ms, write_config


def percentiles(samples: list[float]) -> dict[str, float]:
    p50, p90, p99, top = quantiles_ms(samples)
    return {"calls": len(samples), "p50_ms": round(p50, 3), "p90_ms": round(p90, 3),
            "p99_ms": round(p99, 3), "max_ms": round(top, 3)}


async def time_mcp(config: Path, calls: int) -> list[float]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "prefetchd.cli", "mcp"],
                                   env=environ(config), cwd=REPO)
    samples: list[float] = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()  # the client validates results against output schemas
        first = await session.call_tool("prefetch_get", {"file_id": FILE_ID})
        assert isinstance(first, CallToolResult) and not first.is_error, first
        for _ in range(calls):
            started = time.perf_counter()
            result = await session.call_tool("prefetch_get", {"file_id": FILE_ID})
            samples.append(time.perf_counter() - started)
            assert isinstance(result, CallToolResult) and not result.is_error, result
            assert result.structured_content["cached"] is True
    return samples


def time_facade(config: Path, calls: int) -> list[float]:
    sys.path.insert(0, str(REPO / "daemon"))
    from prefetchd import log
    from prefetchd.api import Prefetch
    from prefetchd.config import load_settings

    log.configure("error")  # as the CLI and the MCP server do: no log line per call
    settings = load_settings(config)
    samples: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        with Prefetch(settings) as p:
            (result,) = p.get_many([FILE_ID])
        samples.append(time.perf_counter() - started)
        assert result.error is None
    return samples


def start_daemon(config: Path, tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / "daemon.log", "ab")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([sys.executable, "-m", "prefetchd.cli", "run"], cwd=REPO,
                            env={**os.environ, **environ(config)}, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not (tmp / "state" / "lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # past the lock: the start-up passes
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--daemon", action="store_true", help="with `prefetchd run` up")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefetchd-mcp-bench-") as d:
        tmp = Path(d)
        config = write_config(tmp, 1 << 20)
        daemon = start_daemon(config, tmp) if a.daemon else None
        try:
            mcp = percentiles(anyio.run(time_mcp, config, a.calls))
            facade = percentiles(time_facade(config, a.calls))
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
    report = {"mode": "daemon" if a.daemon else "in-process", "mcp_prefetch_get": mcp,
              "facade_get_many": facade}
    if a.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"prefetch_get of a ready file, {report['mode']}, {a.calls} calls")
    for name in ("mcp_prefetch_get", "facade_get_many"):
        r = report[name]
        assert isinstance(r, dict)
        print(f"  {name:<18} p50 {r['p50_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms  "
              f"p99 {r['p99_ms']:7.2f} ms  max {r['max_ms']:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
