#!/usr/bin/env python3
"""prefetchd at 10,000 -> 100,000 -> 1,000,000 entries: does every figure grow at most
linearly with the entries?

    flock /tmp/bench.lock .venv/bin/python bench/scale.py --steps 10000
    flock /tmp/bench.lock .venv/bin/python bench/scale.py --steps 100000
    flock /tmp/bench.lock .venv/bin/python bench/scale.py --steps 1000000 --phase fill
    flock /tmp/bench.lock .venv/bin/python bench/scale.py --steps 1000000 --phase measure
    .venv/bin/python bench/scale.py --report          # the table, with growth per step
    .venv/bin/python bench/scale.py --clean           # remove the source files and roots

One step (n entries), in two phases that can run as separate commands (one `flock`
each: the machine is shared, and a million entries take a while to fill):

- fill: n tiny files in a `dir` provider's folder (made once, kept for the next
  step); a daemon on an empty root; the n ids dropped into its inbox at once as
  request files of 10,000 ids each (the documented limit). Timed from the drop to
  every entry ready, and to every receipt complete; the daemon's peak RSS.
- measure, on the root the fill left: a restart (daemon start to READY=1 with all n
  ready), the restarted daemon's RSS and its idle CPU (`--idle` seconds, once it
  settled), then through it `status --json`, `ls --json` (the CLI's peak RSS too),
  `gc --dry-run` and one retention pass (`gc`); then `ls --json` without a daemon
  (in-process, its peak RSS).

Rows go to bench/out/scale.json; `--report` prints them with the growth factor of
each figure from one step to the next. Reuses bench/run.py's harness (its
NOTIFY_SOCKET daemon, GNU time for a command's wall time and peak RSS). Not
collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402  (bench/run.py: the same daemon and command harness)

PER_REQUEST = 10_000  # the documented limit of one request file
SCALE = harness.OUT / "scale"
SRC = SCALE / "src"
RESULTS = harness.OUT / "scale.json"


class Daemon(harness._Daemon):  # noqa: SLF001 - the harness's own daemon, longer patience
    def wait_ready(self, timeout: float = 3600.0) -> float:
        self.sock.settimeout(timeout)
        while b"READY=1" not in self.sock.recv(4096):
            pass
        return time.perf_counter() - self.t0

    def rss_kib(self) -> int:
        return _status_kib(self.proc.pid, "VmRSS:")


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def file_id(i: int) -> str:
    return f"f{i:07d}"


def make_sources(n: int) -> None:
    """src/f0000000 ... (32 bytes each, all different), made once and kept across steps."""
    SRC.mkdir(parents=True, exist_ok=True)
    have = len(os.listdir(SRC))
    for i in range(have, n):
        fd = os.open(SRC / file_id(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, f"{i:031d}\n".encode())
        os.close(fd)


def write_config(path: Path) -> Path:
    cfg = path / "scale.toml"
    cfg.write_text(f"""
default_provider = "src"
log_level = "warning"

[providers.src]
type = "dir"
path = "{SRC}"
""")
    return cfg


def ready_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        return int(conn.execute("SELECT count(*) FROM files WHERE state = 'ready'").fetchone()[0])
    finally:
        conn.close()


def receipts_complete(processed: Path, files: int) -> bool:
    done = 0
    for p in processed.glob("*.receipt.json"):
        try:
            with open(p, "rb") as f:
                f.seek(0)
                head = f.read(200)  # "complete" comes second in the document
        except FileNotFoundError:
            return False
        done += b'"complete": true' in head
    return done == files


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "PREFETCHD_CONFIG": str(work / "scale.toml"),
            "PREFETCHD_ROOT": str(work / "root"), "PREFETCHD_STATE_DIR": str(work / "state")}


def fill(n: int) -> dict[str, object]:
    """A daemon on an empty root; n ids dropped at once as request files of 10,000;
    timed to every entry ready and every receipt complete. Leaves the root filled."""
    print(f"[{n}] making {n} source files...", flush=True)
    make_sources(n)
    work = SCALE / f"work-{n}"
    if work.exists():
        shutil.rmtree(work)
    root, state = work / "root", work / "state"
    root.mkdir(parents=True)
    state.mkdir()
    write_config(work)
    env = _env(work)
    db = state / "prefetchd.db"
    row: dict[str, object] = {"fill_date": datetime.now(UTC).isoformat(timespec="seconds"),
                              "fill_load": os.getloadavg()[0]}
    os.sync()
    d = Daemon(env)
    try:
        d.wait_ready()
        inbox = root / ".prefetchd" / "inbox"
        files = (n + PER_REQUEST - 1) // PER_REQUEST
        for k in range(files):
            ids = "\n".join(file_id(i) for i in range(k * PER_REQUEST,
                                                       min(n, (k + 1) * PER_REQUEST)))
            (inbox / f".req{k:04d}.tmp").write_text(ids + "\n")
        print(f"[{n}] dropping {files} request files...", flush=True)
        t0 = time.perf_counter()
        for k in range(files):
            os.rename(inbox / f".req{k:04d}.tmp", inbox / f"req{k:04d}.txt")
        while True:
            time.sleep(1.0)
            if ready_count(db) >= n:
                break
        row["all_ready_s"] = time.perf_counter() - t0
        print(f"[{n}] all ready in {row['all_ready_s']:.1f} s", flush=True)
        while not receipts_complete(inbox / "processed", files):
            time.sleep(0.5)
        row["receipts_complete_s"] = time.perf_counter() - t0
        row["fill_peak_rss_mib"] = d.peak_rss_kib() / 1024
        row["fill_end_rss_mib"] = d.rss_kib() / 1024
    finally:
        d.stop()
    return row


def measure(n: int, idle_s: float) -> dict[str, object]:
    """On the root fill(n) left: a restart (start to READY=1 with all n ready), its RSS
    and idle CPU, status/ls/gc through it, then ls in-process (no daemon)."""
    work = SCALE / f"work-{n}"
    env = _env(work)
    row: dict[str, object] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                              "load_before": os.getloadavg()[0]}
    os.sync()
    d = Daemon(env)
    try:
        row["restart_ready_s"] = d.wait_ready()
        row["restart_peak_rss_mib"] = d.peak_rss_kib() / 1024
        print(f"[{n}] restart to READY=1: {row['restart_ready_s']:.2f} s", flush=True)
        time.sleep(5)  # let the start settle
        row["rss_ready_mib"] = d.rss_kib() / 1024
        c0, w0 = d.cpu(), time.monotonic()
        time.sleep(idle_s)
        row["idle_cpu_pct"] = 100 * (d.cpu() - c0) / (time.monotonic() - w0)
        row["idle_s"] = idle_s
        print(f"[{n}] idle CPU {row['idle_cpu_pct']:.2f} % of a core", flush=True)
        for key, args in (("status_json", ["status", "--json"]), ("ls_json", ["ls", "--json"]),
                          ("gc_dry_run", ["gc", "--dry-run"]), ("retention_pass", ["gc"])):
            wall, rss = harness.run([*harness.PREFETCHD, *args], env=env)
            row[f"{key}_s"], row[f"{key}_cli_rss_mib"] = wall, rss / 1024
            print(f"[{n}] {' '.join(args)}: {wall:.2f} s, CLI peak {rss / 1024:.0f} MiB",
                  flush=True)
        row["daemon_peak_rss_mib"] = d.peak_rss_kib() / 1024
        row["rss_after_mib"] = d.rss_kib() / 1024
    finally:
        d.stop()
    wall, rss = harness.run([*harness.PREFETCHD, "ls", "--json"], env=env)
    row["ls_json_local_s"], row["ls_json_local_rss_mib"] = wall, rss / 1024
    row["load_after"] = os.getloadavg()[0]
    return row


FIGURES = [  # key, label, unit
    ("all_ready_s", "drop to all ready", "s"),
    ("receipts_complete_s", "drop to receipts complete", "s"),
    ("restart_ready_s", "restart to READY=1", "s"),
    ("status_json_s", "status --json (daemon)", "s"),
    ("ls_json_s", "ls --json (daemon)", "s"),
    ("ls_json_cli_rss_mib", "ls --json: CLI peak RSS", "MiB"),
    ("ls_json_local_s", "ls --json (in-process)", "s"),
    ("ls_json_local_rss_mib", "ls --json in-process: peak RSS", "MiB"),
    ("gc_dry_run_s", "gc --dry-run", "s"),
    ("retention_pass_s", "one retention pass (gc)", "s"),
    ("rss_ready_mib", "daemon RSS, all ready (restarted)", "MiB"),
    ("daemon_peak_rss_mib", "daemon peak RSS (restart, commands)", "MiB"),
    ("restart_peak_rss_mib", "daemon peak RSS at restart", "MiB"),
    ("rss_after_mib", "daemon RSS after the commands", "MiB"),
    ("fill_peak_rss_mib", "daemon peak RSS while filling", "MiB"),
    ("idle_cpu_pct", "daemon idle CPU", "% core"),
]


def report(rows: list[dict[str, object]]) -> str:
    rows = sorted(rows, key=lambda r: int(r["entries"]))  # type: ignore[call-overload]
    head = "| figure | " + " | ".join(f"{int(r['entries']):,}" for r in rows)  # type: ignore[call-overload]
    steps = [f"x{int(b['entries']) // int(a['entries'])} growth"  # type: ignore[call-overload]
             for a, b in zip(rows, rows[1:], strict=False)]
    lines = [head + " | " + " | ".join(steps) + " |",
             "|---" * (1 + len(rows) + len(steps)) + "|"]
    for key, label, unit in FIGURES:
        vals = [r.get(key) for r in rows]
        cells = [f"{v:.2f} {unit}" if isinstance(v, float) else "-" for v in vals]
        growth = [f"{b / a:.1f}x" if isinstance(a, float) and isinstance(b, float) and a > 0
                  else "-" for a, b in zip(vals, vals[1:], strict=False)]
        lines.append(f"| {label} | " + " | ".join(cells + growth) + " |")
    when = "; ".join(f"{int(r['entries']):,}: filled {r.get('fill_date')} (load "  # type: ignore[call-overload]
                     f"{r.get('fill_load', 0):.2f}), measured {r.get('date')} (load "
                     f"{r.get('load_before', 0):.2f})" for r in rows)
    return "\n".join(lines) + f"\n\nRuns: {when}. Machine: {machine()}\n"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    fs = subprocess.run(["df", "-T", str(harness.OUT)], capture_output=True, text=True,
                        check=False).stdout.splitlines()[-1].split()[1]
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, files on {fs}"


def load_rows() -> list[dict[str, object]]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="", help="comma list of entry counts, e.g. 10000,100000")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured")
    ap.add_argument("--phase", choices=("all", "fill", "measure"), default="all",
                    help="fill: fill a root and keep it; measure: measure a kept root")
    ap.add_argument("--keep", action="store_true", help="keep the filled root after measuring")
    ap.add_argument("--report", action="store_true", help="print the table of the rows so far")
    ap.add_argument("--reset", action="store_true", help="forget the rows so far first")
    ap.add_argument("--clean", action="store_true", help="remove the source files and exit")
    args = ap.parse_args()
    if args.clean:
        shutil.rmtree(SCALE, ignore_errors=True)  # the sources and any kept roots
        return 0
    harness.OUT.mkdir(exist_ok=True)
    rows = [] if args.reset else load_rows()
    for n in [int(s) for s in args.steps.split(",") if s]:
        row = next((r for r in rows if r["entries"] == n), {"entries": n})
        if args.phase in ("fill", "all"):
            row.update(fill(n))
        if args.phase in ("measure", "all"):
            row.update(measure(n, args.idle))
            if not args.keep:
                shutil.rmtree(SCALE / f"work-{n}")
        rows = [r for r in rows if r["entries"] != n] + [row]
        RESULTS.write_text(json.dumps(rows, indent=2))
    if args.report or args.steps:
        print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
