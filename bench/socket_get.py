#!/usr/bin/env python3
"""Latency of `get` on a file that is already ready: through the daemon's socket, and
in this process.

    .venv/bin/python bench/socket_get.py                # 1,000 calls each way
    .venv/bin/python bench/socket_get.py --calls 5000 --cli 50

Makes one file ready through a `dir` provider, then times `Prefetch.get` (one
handle, kept open, as an agent holds it) 1,000 times without a daemon (in-process:
the facade on its own manifest and store) and 1,000 times with `prefetchd run` up
(every call a POST /v1/get over the Unix socket and its NDJSON answer), and prints
p50/p90/p99/max of each. With --cli N it also times N whole `prefetchd get`
processes each way (interpreter start-up included). Not collected by pytest; work
files live in a temp dir.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ready_file import FILE_ID, environ, quantiles_ms, write_config

from prefetchd.api import Prefetch
from prefetchd.api.client import Client
from prefetchd.config import load_settings


def percentiles(samples: list[float]) -> dict[str, float]:
    return dict(zip(("p50", "p90", "p99", "max"), quantiles_ms(samples), strict=True))


def timed(call: Callable[[], object], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples


def time_facade(config: Path, calls: int, *, through_daemon: bool) -> list[float]:
    with Prefetch(load_settings(config)) as p:
        assert (p.client is not None) == through_daemon, "not the way asked for"
        for _ in range(20):  # warm-up: connections, caches, the first import
            p.get(FILE_ID)
        return timed(lambda: p.get(FILE_ID), calls)


def time_cli(config: Path, calls: int) -> list[float]:
    cmd = [sys.executable, "-m", "prefetchd.cli.launch", "get", FILE_ID]

    def one() -> None:
        subprocess.run(cmd, env=environ(config), check=True, stdout=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL)

    return timed(one, calls)


def start_daemon(config: Path, tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([sys.executable, "-m", "prefetchd.cli", "run"], env=environ(config),
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    socket = load_settings(config).api_socket
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        client = Client.connect(socket)
        if client is not None:
            client.close()
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the daemon did not answer at {socket}; see {tmp / 'daemon.log'}")


def row(name: str, p: dict[str, float]) -> str:
    return (f"{name:<34} {p['p50']:8.3f} {p['p90']:8.3f} {p['p99']:8.3f} {p['max']:8.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--cli", type=int, default=0, metavar="N",
                        help="also time N `prefetchd get` processes each way")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefetchd-bench-") as d:
        tmp = Path(d)
        config = write_config(tmp, 64 * 1024)
        with Prefetch(load_settings(config)) as p:
            p.get(FILE_ID)  # ready from here on
        results = {"Prefetch.get, in-process": time_facade(config, a.calls, through_daemon=False)}
        if a.cli:
            results["prefetchd get (process), in-process"] = time_cli(config, a.cli)
        daemon = start_daemon(config, tmp)
        try:
            results["Prefetch.get, through the socket"] = time_facade(
                config, a.calls, through_daemon=True)
            if a.cli:
                results["prefetchd get (process), socket"] = time_cli(config, a.cli)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    print(f"get of a ready 64 KiB file; {a.calls} calls each, milliseconds")
    print(f"{'':<34} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    for name, samples in results.items():
        print(row(name, percentiles(samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
