#!/usr/bin/env python3
"""Where the time of `prefetchd get` of N small files goes (in-process, timed wrappers).

    .venv/bin/python bench/profile_small.py [--n 2000] [--rounds 1]

Starts nginx like bench/run.py, then runs the CLI's `get` in this process with
wrappers that count and time syncfs, the group commit's rounds, links.sync after each
ready file, the manifest's writes and the seal's close, and a trace of the SQL
statements and transactions the manifest's connections run. Wall time of
the wrapped steps overlaps (threads), so read them as "busy time", not a breakdown
that sums to the total. Also printed: the phases of the `get` (want, downloads, the
rest) on a timeline, and the CPU each thread used (sampled from /proc every 50 ms),
which says whether the event loop's thread is the bottleneck, and each thread's
voluntary context switches (mostly waits for the GIL handed between threads).
Not collected by pytest.
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
SQL: dict[str, int] = defaultdict(int)  # statements, transactions (BEGIN) run
PHASES: list[tuple[str, float, float]] = []  # (name, start, end), perf_counter
_lock = threading.Lock()


def phase(name: str, fn):  # type: ignore[no-untyped-def]
    def wrapper(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            PHASES.append((name, t0, time.perf_counter()))
    return wrapper


def async_phase(name: str, fn):  # type: ignore[no-untyped-def]
    async def wrapper(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return await fn(*a, **k)
        finally:
            PHASES.append((name, t0, time.perf_counter()))
    return wrapper


class ThreadCPU(threading.Thread):
    """Samples every live thread's CPU time (/proc/self/task/TID/stat) by its name;
    a pool thread's last sample stands for its total (it ends before this does)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.cpu: dict[int, tuple[str, float, float]] = {}  # tid -> (name, user, system)
        self.switches: dict[int, tuple[int, int]] = {}  # tid -> (voluntary, involuntary)
        self.stop = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        for t in threading.enumerate():
            tid = t.native_id
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/self/task/{tid}/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
            except (FileNotFoundError, TypeError):
                continue
            self.cpu[tid] = (t.name, int(fields[11]) / self.tick, int(fields[12]) / self.tick)
            # Voluntary switches: mostly waits for the GIL (a hand-off between threads)
            # and the loop's waits for the network.
            self.switches[tid] = (int(status["voluntary_ctxt_switches"]),
                                  int(status["nonvoluntary_ctxt_switches"]))

    def run(self) -> None:
        while not self.stop.wait(0.05):
            self.sample()

    def report(self) -> list[str]:
        groups: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
        for tid, (name, user, system) in self.cpu.items():
            vol, invol = self.switches.get(tid, (0, 0))
            groups[name.split("_")[0].rstrip("0123456789-")].append((user, system, vol, invol))
        rows = sorted(groups.items(), key=lambda kv: -sum(u + s for u, s, _, _ in kv[1]))
        return [f"  {name:30s} {len(v):3d} threads {sum(x[0] for x in v):6.2f} s user"
                f" {sum(x[1] for x in v):6.2f} s system {sum(x[2] for x in v):7d} voluntary"
                f" {sum(x[3] for x in v):6d} involuntary switches" for name, v in rows]


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
    Partial.finish = timed("Partial.finish (close, hash)", Partial.finish)
    ledger.sync = timed("links.sync after ready", ledger.sync)
    Manifest.record_many = timed("manifest.record_many", Manifest.record_many)
    Manifest.update = timed("manifest.update", Manifest.update)
    Manifest.get = timed("manifest.get", Manifest.get)
    _ = commit
    import prefetchd.manifest.base as base
    real_connect = base.schema.connect

    def connect(*a, **k):  # type: ignore[no-untyped-def]
        """Count the SQL statements each manifest connection runs (BEGIN/COMMIT apart)."""
        conn = real_connect(*a, **k)

        def trace(sql: str) -> None:
            word = sql.lstrip()[:6].upper()
            SQL["transactions" if word.startswith("BEGIN") else
                "ends" if word in ("COMMIT", "ROLLBA") else "statements"] += 1
        conn.set_trace_callback(trace)
        return conn
    base.schema.connect = connect
    import prefetchd.ops.get as get_mod
    import prefetchd.ops.here as here
    get_mod.want = phase("want (claims into SQLite)", get_mod.want)
    get_mod.fetch_here = async_phase("fetch_here (the downloads)", here.fetch_here)
    get_mod.get_many = phase("get_many (all of get)", get_mod.get_many)


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
        threads = ThreadCPU()
        threads.start()
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
        threads.stop.set()
        threads.join()
        sys.stdout = sys.__stdout__
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait()
    print(f"exit {code}: {args.n} files in {wall:.2f} s wall, {cpu:.2f} s CPU (all threads)")
    for name, (n, s) in sorted(STATS.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:45s} {int(n):6d} calls {s:7.3f} s")
    print("phases (seconds from the start of the CLI call):")
    for name, a, b in sorted(PHASES, key=lambda p: p[1]):
        print(f"  {name:45s} {a - t0:6.2f} -> {b - t0:6.2f}  ({b - a:.2f} s)")
    print("CPU by thread (MainThread runs the event loop):")
    print("\n".join(threads.report()))
    print(f"SQL: {SQL['statements'] / args.n:.2f} statements and"
          f" {SQL['transactions'] / args.n:.3f} transactions per file"
          f" ({SQL['statements']} and {SQL['transactions']} for {args.n} files)")
    n_sync = STATS["syncfs"][0]
    print(f"  flushes per file: {n_sync / args.n:.3f}")
    return code


if __name__ == "__main__":
    sys.exit(main())
