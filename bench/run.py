#!/usr/bin/env python3
"""prefetchd benchmarks against curl and aria2c, side by side, on a local nginx.

    .venv/bin/python bench/run.py            # full run (a few minutes, ~6 GiB of data)
    .venv/bin/python bench/run.py --quick    # smaller files, fewer rounds

It installs nginx (Debian's nginx-light) and aria2 if they are missing, starts
nginx on loopback, makes the data under bench/out/, runs every case several
times alternating prefetchd and the baselines, and prints a table of medians and
ratios (also written to bench/out/results.md and results.json). Not collected by
pytest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DATA = OUT / "data"
WORK = OUT / "work"
# What users run: the console script (prefetchd.cli.launch), or the same through -m.
_SCRIPT = Path(sys.executable).with_name("prefetchd")
PREFETCHD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "prefetchd.cli.launch"]
MiB = 1 << 20
# --before DIR: also run the prefetchd cases with the package found in DIR (an earlier
# version, e.g. `git archive main daemon | tar -x -C /tmp/before`), in the same run.
BEFORE: Path | None = None


# -- set-up ------------------------------------------------------------------------------------


def ensure_tools() -> None:
    need = [pkg for tool, pkg in (("nginx", "nginx-light"), ("aria2c", "aria2"),
                                  ("curl", "curl"), ("/usr/bin/time", "time"))
            if shutil.which(tool) is None]
    if need:
        print(f"installing {', '.join(need)} from Debian's packages...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *need], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def make_file(path: Path, size: int) -> str:
    """Random bytes (incompressible), written once; returns the sha256."""
    digest_file = path.with_suffix(path.suffix + ".sha256")
    if path.exists() and path.stat().st_size == size and digest_file.exists():
        return digest_file.read_text().strip()
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 16 * MiB))
            f.write(block)
            h.update(block)
            left -= len(block)
    digest_file.write_text(h.hexdigest())
    return h.hexdigest()


def make_data(big_sizes: dict[str, int], n_small: int) -> dict[str, str]:
    (DATA / "files").mkdir(parents=True, exist_ok=True)
    (DATA / "meta").mkdir(exist_ok=True)
    (DATA / "small").mkdir(exist_ok=True)
    hashes = {}
    for label, size in big_sizes.items():
        name = f"big-{label}"
        hashes[name] = make_file(DATA / "files" / name, size)
        (DATA / "meta" / f"{name}.json").write_text(json.dumps({
            "id": name, "object": "file", "bytes": size, "created_at": 1700000000,
            "filename": f"{name}.bin", "purpose": "assistants", "status": "processed"}))
    for i in range(n_small):
        p = DATA / "small" / f"s{i:05d}.bin"
        if not p.exists():
            p.write_bytes(os.urandom(16 * 1024))
    return hashes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(port: int) -> subprocess.Popen:
    conf = OUT / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 2;
pid {OUT}/nginx.pid;
error_log {OUT}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {DATA};
        location ~ ^/v1/files/([^/]+)/content$ {{ alias {DATA}/files/$1; }}
        location ~ ^/v1/files/([^/]+)$ {{
            default_type application/json;
            alias {DATA}/meta/$1.json;
        }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(OUT), "-g", "daemon off;"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start; see bench/out/nginx-error.log")


def write_config(port: int, concurrency: int) -> Path:
    cfg = OUT / "bench.toml"
    cfg.write_text(f"""
default_provider = "bench"
log_level = "warning"

[download]
concurrency = {concurrency}
per_provider_concurrency = {concurrency}

[providers.bench]
type = "openai"
base_url = "http://127.0.0.1:{port}/v1"

[providers.web]
type = "http"
concurrency = {concurrency}
allow_private_networks = true  # nginx on loopback

[providers.http]  # the built-in provider for http(s):// ids, allowed onto loopback
type = "http"
concurrency = {concurrency}
allow_private_networks = true

[providers.src]
type = "dir"
path = "{DATA / 'src'}"
""")
    return cfg


# -- measuring ---------------------------------------------------------------------------------


def run(cmd: list[str] | str, *, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command; fails loudly on a non-zero exit.

    Peak RSS comes from GNU time, which forks from a small process: measured from this
    Python process, a child's maxrss would include the interpreter it was forked from.
    """
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else cmd
    rss_file = OUT / "rss.txt"
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *argv], env=env,
                          cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed: {cmd}\n{proc.stderr.decode()[-2000:]}")
    return wall, int(rss_file.read_text().split()[-1])


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.sync()  # start every run with no writeback of the previous one pending
    return path


def before_env() -> dict[str, str]:
    """The environment that runs the earlier version given by --before."""
    return {**os.environ, "PYTHONPATH": str(BEFORE)}


def prefetchd_cmd(cfg: Path, *args: str) -> list[str]:
    root, state = fresh(WORK / "root"), fresh(WORK / "state")
    return [*PREFETCHD, "--config", str(cfg), "--root", str(root), "--state-dir", str(state),
            *args]


def alternate(rounds: int, cases: dict[str, object]) -> dict[str, list[tuple[float, int]]]:
    """Run each case once per round, rotating the order so no case always goes first."""
    names = list(cases)
    results: dict[str, list[tuple[float, int]]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            results[name].append(cases[name]())  # type: ignore[operator]
    return results


def med(samples: list[tuple[float, int]]) -> float:
    return statistics.median(s[0] for s in samples)


# -- cases -------------------------------------------------------------------------------------


def bench_big(port: int, cfg: Path, label: str, digest: str, rounds: int,  # noqa: PLR0913
              only: list[str] | None = None) -> list[dict]:
    name = f"big-{label}"
    url = f"http://127.0.0.1:{port}/files/{name}"
    out = WORK / "baseline"

    def curl_sync():
        fresh(out)
        return run(f"curl -sf -o {out}/f {url} && sync {out}/f")

    def curl_sha_sync():
        fresh(out)
        return run(f"curl -sf -o {out}/f {url} && sha256sum {out}/f >/dev/null && sync {out}/f")

    def aria2():
        fresh(out)
        return run(["aria2c", "-q", "--allow-overwrite=true", "--auto-file-renaming=false",
                    "--file-allocation=none", f"--checksum=sha-256={digest}", "-d", str(out),
                    "-o", "f", url])

    def with_daemon(*args: str):
        """`prefetchd get` while the daemon runs (it downloads; the CLI waits): how agents
        use it. Timed from the CLI's start to its exit; the daemon was READY before.
        The memory reported is the daemon's peak."""
        def case() -> tuple[float, int]:
            root, state = fresh(WORK / "root"), fresh(WORK / "state")
            env = {**os.environ, "PREFETCHD_CONFIG": str(cfg), "PREFETCHD_ROOT": str(root),
                   "PREFETCHD_STATE_DIR": str(state)}
            d = _Daemon(env)
            try:
                d.wait_ready()
                wall, _ = run([*PREFETCHD, "get", *args], env=env)
                return wall, d.peak_rss_kib()
            finally:
                d.stop()
        return case

    def dd_fsync():
        """The disk's floor: the same bytes (from the page cache) written and fsynced."""
        fresh(out)
        return run(["dd", f"if={DATA / 'files' / name}", f"of={out}/f", "bs=1M",
                    "conv=fsync", "status=none"])

    cases = {
        "dd + fsync (the disk)": dd_fsync,
        "prefetchd get (http)": lambda: run(prefetchd_cmd(cfg, "get", url, "--sha256", digest)),
        **({"prefetchd get (http), before": lambda: run(
            prefetchd_cmd(cfg, "get", url, "--sha256", digest), env=before_env())}
           if BEFORE else {}),
        "prefetchd get (openai)": lambda: run(prefetchd_cmd(cfg, "get", name, "--provider",
                                                            "bench", "--sha256", digest)),
        "prefetchd get (http), daemon running": with_daemon(url, "--sha256", digest),
        "prefetchd get (openai), daemon running": with_daemon(name, "--provider", "bench",
                                                              "--sha256", digest),
        "curl && sync": curl_sync,
        "curl && sha256sum && sync": curl_sha_sync,
        "aria2c --checksum": aria2,
    }
    if only:  # the baselines always, and the prefetchd cases named
        cases = {k: v for k, v in cases.items()
                 if k in ("dd + fsync (the disk)", "curl && sync") or any(o in k for o in only)}
    res = alternate(rounds, cases)
    base = med(res["curl && sync"])
    disk = med(res["dd + fsync (the disk)"])
    rows = []
    for case, samples in res.items():
        rows.append({"group": f"one {label} file", "case": case, "median_s": med(samples),
                     "ratio_vs_curl_sync": med(samples) / base,
                     "ratio_vs_dd": med(samples) / disk,
                     "peak_rss_mib": max(s[1] for s in samples) / 1024})
    return rows


def bench_memory(port: int, cfg: Path, labels: list[str], hashes: dict[str, str]) -> list[dict]:
    rows = []
    for label in labels:
        name = f"big-{label}"
        wall, rss = run(prefetchd_cmd(cfg, "get", f"http://127.0.0.1:{port}/files/{name}",
                                      "--sha256", hashes[name]))
        rows.append({"group": "peak memory", "case": f"prefetchd get {label}", "median_s": wall,
                     "peak_rss_mib": rss / 1024})
    return rows


def bench_small(port: int, cfg: Path, n: int, rounds: int) -> list[dict]:
    urls = [f"http://127.0.0.1:{port}/small/s{i:05d}.bin" for i in range(n)]
    lst = OUT / "small.list"
    lst.write_text("".join(f"{u}\n" for u in urls))
    aria_list = OUT / "small.aria2"
    aria_list.write_text("".join(f"{u}\n  out=s{i:05d}.bin\n" for i, u in enumerate(urls)))
    out = WORK / "baseline"
    per = max(1, n // 16)

    def aria2():
        fresh(out)
        return run(["aria2c", "-q", "-j16", "--allow-overwrite=true",
                    "--auto-file-renaming=false", "--file-allocation=none", "-d", str(out),
                    "-i", str(aria_list)])

    def xargs_curl():
        fresh(out)
        return run(f"xargs -P16 -n{per} curl -sf --remote-name-all < {lst}", cwd=out)

    def floor():
        """The same files' disk work alone (bench/floor_small.py), then one syncfs."""
        return run([sys.executable, str(HERE / "floor_small.py"), str(DATA / "small"),
                    str(fresh(out))])

    cases = {
        f"prefetchd get ({n} ids)": lambda: run(prefetchd_cmd(cfg, "get", *urls)),
        **({f"prefetchd get ({n} ids), before": lambda: run(
            prefetchd_cmd(cfg, "get", *urls), env=before_env())} if BEFORE else {}),
        "aria2c -j16 -i LIST": aria2,
        "floor: write, link, one syncfs": floor,
        "xargs -P16 curl": xargs_curl,
    }
    res = alternate(rounds, cases)
    base = med(res["aria2c -j16 -i LIST"])
    floor_s = med(res["floor: write, link, one syncfs"])
    rows = [{"group": f"{n} files of 16 KiB", "case": c, "median_s": med(s),
             "ratio_vs_aria2c": med(s) / base, "ratio_vs_floor": med(s) / floor_s,
             "peak_rss_mib": max(x[1] for x in s) / 1024}
            for c, s in res.items()]
    # Flushes per file: one more `get`, in a process that counts its syncfs calls.
    counted = subprocess.run([sys.executable, str(HERE / "profile_small.py"), "--n", str(n),
                              "--port", str(port)], capture_output=True, text=True,
                             check=True).stdout
    per = next(line.split()[-1] for line in counted.splitlines() if "flushes per file" in line)
    rows.append({"group": f"{n} files of 16 KiB", "case": "prefetchd: syncfs per file",
                 "value": per})
    # and the SQL it ran: "SQL: S statements and T transactions per file (...)"
    sql = next((line.split() for line in counted.splitlines() if line.startswith("SQL:")), None)
    if sql is not None:
        rows.append({"group": f"{n} files of 16 KiB",
                     "case": "prefetchd: SQL statements / transactions per file",
                     "value": f"{sql[1]} / {sql[4]}"})
    return rows


def bench_daemon(cfg: Path, n_ready: int, idle_s: float,  # noqa: PLR0915 - one scripted run
                 drops: int) -> list[dict]:
    """Start-up with n_ready ready entries, idle CPU, drop-to-ready latency, retention."""
    sys.path.insert(0, str(HERE.parent))
    from prefetchd.api import Prefetch
    from prefetchd.config import load_settings

    src = DATA / "src"
    src.mkdir(exist_ok=True)
    for i in range(n_ready + drops):
        p = src / f"d{i:05d}"
        if not p.exists():
            p.write_bytes(os.urandom(512))
    root, state = fresh(WORK / "droot"), fresh(WORK / "dstate")
    env = {**os.environ, "PREFETCHD_CONFIG": str(cfg), "PREFETCHD_ROOT": str(root),
           "PREFETCHD_STATE_DIR": str(state)}
    settings = load_settings(cfg, root=root, state_dir=state)
    with Prefetch(settings) as p:
        p.want([f"d{i:05d}" for i in range(n_ready)], provider="src")
    # Fill: the daemon fetches all n_ready entries once (set-up, not measured).
    d = _Daemon(env)
    d.wait_ready()
    with Prefetch(settings) as p:
        while p.manifest.state_counts()["ready"] < n_ready:
            time.sleep(0.2)
    d.stop()
    rows = []
    starts = []
    for _ in range(3):
        d = _Daemon(env)
        starts.append(d.wait_ready())
        d.stop()
    rows.append({"group": f"daemon, {n_ready} ready entries", "case": "start to READY=1",
                 "median_s": statistics.median(starts)})
    d = _Daemon(env)
    d.wait_ready()
    time.sleep(2)
    c0, t0 = d.cpu(), time.monotonic()
    time.sleep(idle_s)
    idle = (d.cpu() - c0) / (time.monotonic() - t0)
    rows.append({"group": f"daemon, {n_ready} ready entries", "case": f"idle CPU over {idle_s:g}s",
                 "value": f"{idle:.2%} of a core"})
    inbox = root / ".prefetchd" / "inbox"
    lat = []
    for i in range(n_ready, n_ready + drops):
        fid = f"d{i:05d}"
        tmp = inbox / f".{fid}.tmp"
        tmp.write_text(json.dumps({"file_id": fid, "provider": "src"}))
        dest = root / "downloads" / fid / fid
        t0 = time.perf_counter()
        os.rename(tmp, inbox / f"{fid}.json")
        while not dest.exists():
            time.sleep(0.0005)
        lat.append(time.perf_counter() - t0)
        time.sleep(0.02)
    lat.sort()
    rows.append({"group": f"daemon, {n_ready} ready entries",
                 "case": f"request file drop to ready ({drops} drops)",
                 "value": f"p50 {statistics.median(lat) * 1000:.0f} ms, "
                          f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.0f} ms"})
    d.stop()
    passes = []
    with Prefetch(settings) as p:
        for _ in range(3):
            t0 = time.perf_counter()
            p.gc()
            passes.append(time.perf_counter() - t0)
    rows.append({"group": f"daemon, {n_ready} ready entries", "case": "one retention pass",
                 "median_s": statistics.median(passes)})
    return rows


def bench_requests(cfg: Path, n: int, rounds: int) -> list[dict]:
    """n ids of 64-byte files (dir provider) made ready by a running daemon: dropped as
    one request file into the inbox, against the same ids through `prefetchd want`.
    Timed from the request to the last entry ready (the inbox receipt complete)."""
    import sqlite3

    src = DATA / "src"
    src.mkdir(exist_ok=True)
    ids = [f"r{i:05d}" for i in range(n)]
    for fid in ids:
        if not (src / fid).exists():
            (src / fid).write_bytes(os.urandom(32).hex().encode())
    listing = OUT / "request.txt"
    listing.write_text("\n".join(ids) + "\n")
    # The same ids as claims of 10 holders (sub-holders job-0..job-9 of this user).
    claims = OUT / "claims.json"
    claims.write_text(json.dumps([{"file_id": f, "holder": f"job-{i % 10}"}
                                  for i, f in enumerate(ids)]))

    def one(how: str) -> tuple[float, int]:
        root, state = fresh(WORK / "qroot"), fresh(WORK / "qstate")
        env = {**os.environ, "PREFETCHD_CONFIG": str(cfg), "PREFETCHD_ROOT": str(root),
               "PREFETCHD_STATE_DIR": str(state), "PREFETCHD_DEFAULT_PROVIDER": "src"}
        d = _Daemon(env)
        d.wait_ready()
        inbox = root / ".prefetchd" / "inbox"
        t0 = time.perf_counter()
        if how in ("inbox", "claims"):
            name = "req.txt" if how == "inbox" else "req.json"
            shutil.copy(listing if how == "inbox" else claims, inbox / ".req.tmp")
            os.rename(inbox / ".req.tmp", inbox / name)
            receipt = inbox / "processed" / f"{name}.receipt.json"
            while True:
                time.sleep(0.05)
                try:
                    if json.loads(receipt.read_text())["complete"]:
                        break
                except (FileNotFoundError, ValueError):
                    continue
        else:
            subprocess.run([*PREFETCHD, "want", *ids], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            db = sqlite3.connect(f"file:{state / 'prefetchd.db'}?mode=ro", uri=True)
            while db.execute("SELECT count(*) FROM files WHERE state = 'ready'"
                             ).fetchone()[0] < n:
                time.sleep(0.05)
            db.close()
        wall = time.perf_counter() - t0
        rss = d.peak_rss_kib()
        d.stop()
        return wall, rss

    res = alternate(rounds, {"prefetchd want (daemon running)": lambda: one("want"),
                             "request file in the inbox": lambda: one("inbox"),
                             "claims of 10 holders, one request file": lambda: one("claims")})
    base = med(res["prefetchd want (daemon running)"])
    return [{"group": f"{n} ids of 64 bytes (dir provider), daemon running", "case": c,
             "median_s": med(v), "ratio_vs_want": med(v) / base,
             "peak_rss_mib": max(x[1] for x in v) / 1024} for c, v in res.items()]


class _Daemon:
    def __init__(self, env: dict[str, str]) -> None:
        self.sock_path = OUT / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.sock_path))
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([*PREFETCHD, "run"], env={
            **env, "NOTIFY_SOCKET": str(self.sock_path)}, stdout=subprocess.DEVNULL,
            stderr=open(OUT / "daemon.log", "ab"))

    def wait_ready(self) -> float:
        self.sock.settimeout(60)
        while b"READY=1" not in self.sock.recv(4096):
            pass
        return time.perf_counter() - self.t0

    def peak_rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def cpu(self) -> float:
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.sock.close()
        self.sock_path.unlink()


# -- report ------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    lines = ["| case | median | ratio | peak RSS |", "|---|---|---|---|"]
    group = None
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            lines.append(f"| **{group}** | | | |")
        value = r.get("value") or f"{r['median_s']:.3f} s"
        ratio_s = ""
        for key, base in (("ratio_vs_curl_sync", "curl&&sync"), ("ratio_vs_aria2c", "aria2c"),
                          ("ratio_vs_want", "want"), ("ratio_vs_floor", "floor"),
                          ("ratio_vs_dd", "dd+fsync")):
            if r.get(key) is not None:
                ratio_s = (f"{ratio_s}, " if ratio_s else "") + f"{r[key]:.2f}× {base}"
        rss = f"{r['peak_rss_mib']:.0f} MiB" if r.get("peak_rss_mib") else ""
        lines.append(f"| {r['case']} | {value} | {ratio_s} | {rss} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    def version(*cmd: str) -> str:
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return r.stdout or r.stderr  # nginx -v writes to stderr

    nginx = version("nginx", "-v").strip()
    curl = version("curl", "--version").split()[1]
    aria = version("aria2c", "--version").split()[2]
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python "
            f"{platform.python_version()}, {nginx}, curl {curl}, aria2c {aria}; "
            f"files written under {OUT} ({_fs(OUT)})")


def _fs(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True,
                         check=False).stdout
    return out.splitlines()[-1].split()[1] if out else "?"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round (a smoke run)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per case (default 5)")
    ap.add_argument("--big-only", default=None,
                    help="comma list: run only the big cases whose names contain one")
    ap.add_argument("--cases", default="big,memory,small,daemon,requests",
                    help="comma list of: big, memory, small, daemon, requests")
    ap.add_argument("--before", type=Path, default=None,
                    help="a directory holding an earlier `prefetchd` package: its `get` "
                         "runs beside this one's (small and big cases)")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    global BEFORE  # noqa: PLW0603 - one option read by the cases
    BEFORE = args.before.resolve() if args.before else None
    quick = args.quick
    rounds = args.rounds or (1 if quick else 5)
    big = {"64MiB": 64 * MiB} if quick else {"256MiB": 256 * MiB, "1GiB": 1024 * MiB,
                                              "4GiB": 4096 * MiB}
    n_small = 200 if quick else 2000
    cases = set(args.cases.split(","))
    ensure_tools()
    OUT.mkdir(exist_ok=True)
    WORK.mkdir(exist_ok=True)
    print("making data...", flush=True)
    if "memory" not in cases:  # only the file the big cases use
        big = {k: v for k, v in big.items() if k in ("64MiB", "1GiB")}
    hashes = make_data(big, n_small)
    port = free_port()
    nginx = start_nginx(port)
    cfg = write_config(port, 16)
    rows: list[dict] = []
    try:
        main_label = "64MiB" if quick else "1GiB"
        if "big" in cases:
            print(f"one {main_label} file, {rounds} rounds...", flush=True)
            rows += bench_big(port, cfg, main_label, hashes[f"big-{main_label}"], rounds,
                              args.big_only.split(",") if args.big_only else None)
        if "memory" in cases:
            print("peak memory across sizes...", flush=True)
            rows += bench_memory(port, cfg, list(big), hashes)
        if "small" in cases:
            print(f"{n_small} small files, {rounds} rounds...", flush=True)
            rows += bench_small(port, cfg, n_small, rounds)
        if "daemon" in cases:
            print("daemon...", flush=True)
            rows += bench_daemon(cfg, 1000 if quick else 10_000, 5 if quick else 60,
                                 20 if quick else 200)
        if "requests" in cases:
            n_req = 1000 if quick else 10_000
            print(f"{n_req} ids through the inbox and through want, {rounds} rounds...",
                  flush=True)
            rows += bench_requests(cfg, n_req, rounds)
    finally:
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(WORK, ignore_errors=True)
    report = f"Machine: {machine()}\n\n{table(rows)}\n"
    (OUT / "results.md").write_text(report)
    (OUT / "results.json").write_text(json.dumps(rows, indent=2))
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
