#!/usr/bin/env python3
"""Where the time of `prefetchd get` of one large file goes (in-process, timed wrappers).

    .venv/bin/python bench/profile_big.py [--size 1GiB] [--port PORT] [--rounds 3]

Starts nginx like bench/run.py (or uses one on --port), then runs the CLI's `get` of
one file in this process with wrappers on the steps of its last second: the body's
stream (first byte to last), each buffer's write (+hash on the loop's path; a large
body's own threads hash apart, see fetch.pump), the seal (last buffer, close,
digest), the group commit's syncfs calls and links, the record. Each round also runs
`dd bs=1M conv=fsync` of the same bytes (from the page cache) to a fresh file, so the
ratio is of the same moment. Prints a timeline per round, the CPU each thread used,
and the process's peak RSS (which includes this script's interpreter). Not collected
by pytest.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import profile_small  # noqa: E402
import run as benchrun  # noqa: E402

EVENTS: list[tuple[str, float, float]] = []  # (step, start, end)
COUNTS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
_lock = threading.Lock()


def traced(name: str, fn, *, each: bool = True):  # type: ignore[no-untyped-def]
    """Wrap `fn`: count and time its calls; keep each call on the timeline if `each`."""
    def wrapper(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            t1 = time.perf_counter()
            with _lock:
                COUNTS[name][0] += 1
                COUNTS[name][1] += t1 - t0
                if each:
                    EVENTS.append((name, t0, t1))
    return wrapper


def async_traced(name: str, fn):  # type: ignore[no-untyped-def]
    async def wrapper(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return await fn(*a, **k)
        finally:
            EVENTS.append((name, t0, time.perf_counter()))
    return wrapper


def instrument() -> None:
    import prefetchd.store as store
    import prefetchd.store.temps as temps
    from prefetchd.fetch.download import Download
    from prefetchd.manifest import Manifest
    from prefetchd.store.temps import Partial

    store._call_syncfs = traced("syncfs", store._call_syncfs)
    store.Store.sync_then_link = traced("sync_then_link", store.Store.sync_then_link)
    store.Store.publish = traced("publish (into objects/)", store.Store.publish)
    store.Store.link = traced("link (dest)", store.Store.link)
    Partial.write = traced("Partial.write (write + hash)", Partial.write, each=False)
    Partial.append = traced("Partial.append (write; hashed on its own thread)",
                            Partial.append, each=False)
    Partial.append_direct = traced("Partial.append_direct (O_DIRECT write)",
                                   Partial.append_direct, each=False)
    Partial.finish = traced("Partial.finish (fsync?, close, digest)", Partial.finish)
    temps.os.posix_fadvise = traced("posix_fadvise", os.posix_fadvise, each=False)
    temps.os.fsync = traced("os.fsync", os.fsync)
    Download.seal = traced("seal (last buffer, finish, verify)", Download.seal)
    Download.stream = async_traced("stream (request to last byte)", Download.stream)
    Download.publish = async_traced("publish (hand to the group commit, wait)",
                                    Download.publish)
    Manifest.record_many = traced("record_many", Manifest.record_many)


def dd(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", "conv=fsync", "status=none"],
                   check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB", choices=["64MiB", "256MiB", "1GiB", "4GiB"])
    ap.add_argument("--port", type=int, help="an nginx of bench/run.py already serving")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = {"64MiB": 64, "256MiB": 256, "1GiB": 1024, "4GiB": 4096}[args.size] << 20
    benchrun.OUT.mkdir(exist_ok=True)
    benchrun.WORK.mkdir(exist_ok=True)
    digest = benchrun.make_data({args.size: size}, 0)[f"big-{args.size}"]
    src = benchrun.DATA / "files" / f"big-{args.size}"
    port = args.port or benchrun.free_port()
    nginx = None if args.port else benchrun.start_nginx(port)
    instrument()
    from prefetchd.cli.commands import main as cli_main
    threads = profile_small.ThreadCPU()
    threads.start()
    try:
        cfg = benchrun.write_config(port, 16)
        url = f"http://127.0.0.1:{port}/files/big-{args.size}"
        for r in range(args.rounds):
            out = benchrun.fresh(benchrun.WORK / "baseline")
            t_dd = dd(src, out / "f")
            argv = benchrun.prefetchd_cmd(cfg, "get", url, "--sha256", digest)
            EVENTS.clear()
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the path `get` prints
            t0 = time.perf_counter()
            code = cli_main(argv[argv.index("--config"):])
            wall = time.perf_counter() - t0
            sys.stdout = sys.__stdout__
            print(f"round {r + 1}: exit {code}, get {wall:.2f} s, dd + fsync {t_dd:.2f} s, "
                  f"ratio {wall / t_dd:.2f}")
            for name, a, b in sorted(EVENTS, key=lambda e: e[1]):
                print(f"  {name:45s} {a - t0:6.2f} -> {b - t0:6.2f}  ({b - a:.3f} s)")
    finally:
        threads.stop.set()
        threads.join()
        if nginx is not None:
            nginx.terminate()
            nginx.wait()
    print("busy time by step, all rounds (threads overlap):")
    for name, (n, s) in sorted(COUNTS.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:45s} {int(n):6d} calls {s:7.3f} s")
    print("CPU by thread, all rounds:")
    print("\n".join(threads.report()))
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}"
          " MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
