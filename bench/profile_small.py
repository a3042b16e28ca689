#!/usr/bin/env python3
"""Where the time of `prefetchd get` of N small files goes (in-process, timed wrappers).

    .venv/bin/python bench/profile_small.py [--n 2000] [--rounds 1]

Starts nginx like bench/run.py, then runs the CLI's `get` in this process with
wrappers that count and time syncfs, the group commit's rounds, links.sync after each
ready file, the manifest's writes and the directory creation in seal. Wall time of
the wrapped steps overlaps (threads), so read them as "busy time", not a breakdown
that sums to the total. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as benchrun  # noqa: E402

STATS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
_lock = threading.Lock()


def timed(name: str, fn):  # type: ignore[no-untyped-def]
    def wrapper(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            dt = time.perf_counter() - t0
            with _lock:
                STATS[name][0] += 1
                STATS[name][1] += dt
    return wrapper


def instrument() -> None:
    import prefetchd.fetch.commit as commit
    import prefetchd.fetch.ledger as ledger
    import prefetchd.store as store
    from prefetchd.manifest import Manifest
    from prefetchd.store.temps import Partial

    store._call_syncfs = timed("syncfs", store._call_syncfs)
    store.Store.sync_then_link = timed("sync_then_link (syncfs + publish + link)",
                                       store.Store.sync_then_link)
    store.Store.make_parents = timed("make_parents (seal)", store.Store.make_parents)
    Partial.finish = timed("Partial.finish (close, hash)", Partial.finish)
    ledger.sync = timed("links.sync after ready", ledger.sync)
    Manifest.record_many = timed("manifest.record_many", Manifest.record_many)
    Manifest.update = timed("manifest.update", Manifest.update)
    Manifest.get = timed("manifest.get", Manifest.get)
    _ = commit


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--port", type=int, help="an nginx of bench/run.py already serving")
    ap.add_argument("--cprofile", choices=["tottime", "cumulative"],
                    help="profile the event loop thread, sorted so")
    args = ap.parse_args()
    benchrun.OUT.mkdir(exist_ok=True)
    benchrun.WORK.mkdir(exist_ok=True)
    benchrun.make_data({}, args.n)
    port = args.port or benchrun.free_port()
    nginx = None if args.port else benchrun.start_nginx(port)
    try:
        cfg = benchrun.write_config(port, 16)
        urls = [f"http://127.0.0.1:{port}/small/s{i:05d}.bin" for i in range(args.n)]
        argv = benchrun.prefetchd_cmd(cfg, "get", *urls)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the paths `get` prints
        instrument()
        from prefetchd.cli.commands import main as cli_main
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        if args.cprofile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            code = prof.runcall(cli_main, argv[argv.index("--config"):])
            pstats.Stats(prof, stream=sys.stderr).sort_stats(args.cprofile).print_stats(45)
        else:
            code = cli_main(argv[argv.index("--config"):])
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        sys.stdout = sys.__stdout__
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait()
    print(f"exit {code}: {args.n} files in {wall:.2f} s wall, {cpu:.2f} s CPU (all threads)")
    for name, (n, s) in sorted(STATS.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:45s} {int(n):6d} calls {s:7.3f} s")
    n_sync = STATS["syncfs"][0]
    print(f"  flushes per file: {n_sync / args.n:.3f}")
    return code


if __name__ == "__main__":
    sys.exit(main())
