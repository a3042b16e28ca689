#!/usr/bin/env python3
"""One big file onto several hosts: through the fleet, against independent downloads.

    .venv/bin/python bench/fleet.py                          # 1 GiB, 2 rounds, 4 hosts
    .venv/bin/python bench/fleet.py --quick                  # 64 MiB, 1 round
    .venv/bin/python bench/fleet.py --size 256MiB --rounds 3 --hosts 4
    .venv/bin/python bench/fleet.py --cases fleet --storage-dir /dev/shm   # fleet only*
    * `independent` runs too: the ratios are against it. --storage-dir: where the
      Storage stand-in keeps its objects (default beside the hosts, on their disk);
      --storage-etag mtime: Storage's file backend without the md5 of every upload

Issue 14's benchmark. The origin is nginx (Debian's nginx-light) on loopback with an
access log of request, status and bytes sent, so what the origin served is counted by
the origin itself. Three cases run in the same run, their order rotated each round:

  curl xN         N parallel `curl -sS -o` of the URL: the floor of N independent
                  downloads (no hashing, no fsync);
  independent xN  N daemons without [fleet], each its own root and state dir, ready
                  before the clock starts; `prefetchd want URL --sha256 H` through each;
                  done when every daemon's manifest says ready;
  fleet xN        N daemons with [fleet] on one PostgreSQL through the PostgREST +
                  Storage stand-in (tests/servers/supabase_api.py, in this process),
                  ready before the clock starts; one `prefetchd fleet want URL --sha256 H`
                  with the service key; done when every host's manifest says ready. One
                  host downloads from nginx and uploads to the Storage cache, the others
                  download from the cache. A fresh schema and Storage directory per round,
                  so each round starts cold.

For each case: wall time until every host has the file (and until the first one has
it), origin requests and bytes (the nginx log's delta), Storage bytes in and out (the
stand-in's request log), the daemons' peak RSS (VmHWM, curl's from GNU time), the
daemons' CPU seconds during the case and this process's (the stand-in's threads and
the manifest poller), each host's CPU, and for the fleet a timeline from the
stand-in's request log (first claim, first and last PATCH, the cache GETs, when each
host was ready; the whole log in bench/out/fleet-requests-*.json). Every host's file
is hashed at the end of each case;
a wrong or missing file stops the benchmark (nothing is reported). Medians over the
rounds, ratios against `independent xN`, go to stdout and bench/out/fleet.md +
fleet.json. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from run import DATA, OUT, PREFETCHD, ensure_tools, free_port, machine, make_file

REPO = Path(__file__).resolve().parent.parent
# The code measured is this checkout's: the daemons, the CLI and (tests.supa_env) the
# stand-in and its SQL set-up, whatever the venv's editable install points at.
sys.path[:0] = [str(REPO / "daemon"), str(REPO)]

MiB = 1 << 20
WORK = OUT / "fleet-work"
GROUP = "bench"
CACHE = "fleet-cache"
BASE = "independent"
CASES = ("curl", BASE, "fleet")
DEADLINE = 1800.0  # a bound for a slow, shared machine: past it the case fails
# The CLI subprocesses get no PREFETCHD_* variable of this shell (a stray one would
# change what they do); each case sets its own.
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PREFETCHD_")}
_ENV["PYTHONPATH"] = os.pathsep.join(
    [str(REPO / "daemon"), *filter(None, [os.environ.get("PYTHONPATH")])])


# -- the origin --------------------------------------------------------------------------------


class Origin:
    """nginx serving DATA on loopback, every request logged with its status and bytes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.log = OUT / "fleet-access.log"
        self.log.write_text("")
        conf = OUT / "fleet-nginx.conf"
        conf.write_text(f"""
user root;
worker_processes 2;
pid {OUT}/fleet-nginx.pid;
error_log {OUT}/fleet-nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    log_format counted '$request $status $body_bytes_sent';
    access_log {self.log} counted;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {DATA};
    }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(OUT),
                                      "-g", "daemon off;"])
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit(f"nginx did not start; see {OUT}/fleet-nginx-error.log")

    def url(self, rel: str) -> str:
        return f"http://127.0.0.1:{self.port}/{rel}"

    def mark(self) -> int:
        return self.log.stat().st_size

    def since(self, mark: int, rel: str) -> tuple[int, int]:
        """(requests, body bytes) nginx logged for /rel since `mark`, any method/status."""
        with self.log.open("rb") as f:
            f.seek(mark)
            lines = f.read().decode().splitlines()
        n = sent = 0
        for line in lines:
            parts = line.split()  # METHOD PATH PROTO STATUS BYTES
            if len(parts) >= 5 and parts[1].split("?")[0] == f"/{rel}":
                n += 1
                sent += int(parts[-1])
        return n, sent

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# -- daemons -----------------------------------------------------------------------------------


BASE_CONFIG = """
root = "{root}"
state_dir = "{state}"
log_level = "warning"

[providers.web]
type = "http"
allow_private_networks = true  # nginx on loopback

[providers.http]  # the provider of http(s):// ids, allowed onto loopback
type = "http"
allow_private_networks = true
"""


class Daemon:
    """`prefetchd run` for one host: its own dir, config, root, state dir and log."""

    def __init__(self, d: Path, extra: str = "", environ: dict[str, str] | None = None) -> None:
        self.dir, self.root, self.state = d, d / "root", d / "state"
        d.mkdir(parents=True)
        self.config = d / "prefetchd.toml"
        self.config.write_text(BASE_CONFIG.format(root=self.root, state=self.state) + extra)
        self.env = {**_ENV, **(environ or {}), "PREFETCHD_CONFIG": str(self.config)}
        self.notify_path = d / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.log = open(d / "daemon.log", "ab")  # noqa: SIM115 - lives as long as the daemon
        self.proc = subprocess.Popen([*PREFETCHD, "run"], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log,
                                     env={**self.env, "NOTIFY_SOCKET": str(self.notify_path)})
        self._db: sqlite3.Connection | None = None
        self.ready_at = 0.0  # perf_counter when the case's file was seen ready

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                if b"READY=1" in self.notify.recv(4096):
                    return
            except TimeoutError:
                break
        raise SystemExit(f"daemon in {self.dir} not ready in {timeout:g}s; see its daemon.log")

    def cli(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*PREFETCHD, *args], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def row(self, file_id: str) -> tuple[str, str | None, str | None] | None:
        """(state, path, sha256) of file_id, read-only (never creates the database)."""
        if self._db is None:
            db = self.state / "prefetchd.db"
            if not db.exists():
                return None
            self._db = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        return self._db.execute("SELECT state, path, sha256 FROM files WHERE file_id = ?",
                                [file_id]).fetchone()

    def usage(self) -> tuple[int, float]:
        """Peak RSS (KiB) and CPU seconds so far, from /proc."""
        rss = 0
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1])
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(60)
        self.log.close()
        self.notify.close()


def finish(procs: list[subprocess.Popen], what: str) -> None:
    for p in procs:
        _out, err = p.communicate(timeout=300)
        if p.returncode != 0:
            raise SystemExit(f"{what} failed ({p.returncode}): {err.decode().strip()[-500:]}")


def wait_all_ready(hosts: list[Daemon], file_id: str) -> list[float]:
    """Polls every host's manifest; the perf_counter moment each was first seen ready."""
    deadline = time.monotonic() + DEADLINE
    pending = list(hosts)
    seen: list[float] = []
    while pending:
        for h in list(pending):
            row = h.row(file_id)
            if row is not None and row[0] == "ready":
                seen.append(time.perf_counter())
                h.ready_at = seen[-1]
                pending.remove(h)
            elif row is not None and row[0] in ("failed", "quarantined"):
                raise SystemExit(f"{h.dir.name}: {file_id} is {row[0]}; see its daemon.log")
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready on {[h.dir.name for h in pending]} in {DEADLINE:g}s")
        if pending:
            time.sleep(0.02)
    return seen


def check_hosts(hosts: list[Daemon], file_id: str, digest: str, size: int) -> None:
    """Every host's file: ready, the right sha256 recorded, the right bytes on disk."""
    for h in hosts:
        row = h.row(file_id)
        if row is None or row[0] != "ready" or row[1] is None or row[2] != digest:
            raise SystemExit(f"{h.dir.name}: wrong manifest row {row}")
        check_file(h.root / row[1], digest, size)


def check_file(path: Path, digest: str, size: int) -> None:
    if path.stat().st_size != size:
        raise SystemExit(f"{path}: {path.stat().st_size} bytes, not {size}")
    with path.open("rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    if got != digest:
        raise SystemExit(f"{path}: sha256 {got}, not {digest}")


def daemons_usage(hosts: list[Daemon], cpu_before: list[float]) -> dict[str, Any]:
    """Peak RSS of the biggest daemon (its whole life), CPU of all of them since
    `cpu_before` (their start-up is not the case's work), and each host's."""
    used = [(r, c - c0) for (r, c), c0 in zip((h.usage() for h in hosts), cpu_before,
                                              strict=True)]
    # in the order the hosts got the file (the first is the origin's downloader)
    ordered = sorted(zip(hosts, used, strict=True), key=lambda hu: hu[0].ready_at)
    return {"peak_rss_mib": max(r for r, _c in used) / 1024,
            "cpu_s": sum(c for _r, c in used),
            "host_rss_mib": {h.dir.name: round(r / 1024) for h, (r, _c) in ordered},
            "host_cpu_s": {h.dir.name: round(c, 2) for h, (_r, c) in ordered}}


def cpu_now(hosts: list[Daemon]) -> list[float]:
    return [h.usage()[1] for h in hosts]


# -- the cases ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, origin: Origin, rel: str, digest: str, size: int, args: Any) -> None:
        self.origin, self.rel, self.digest, self.size = origin, rel, digest, size
        self.url = origin.url(rel)
        self.n = args.hosts
        self.poll = args.poll
        self.storage_etag = args.storage_etag
        self.storage_dir: Path | None = args.storage_dir
        self.pg: Any = None
        self.t0_wall = 0.0  # time.time() when the clock of the case started

    def clocked(self, start: Callable[[], None],
                done: Callable[[], list[float] | None]) -> dict[str, Any]:
        """Settle the disk, then time start() .. done() and count what nginx served.
        done() may return the moments each host got the file (first_ready_s)."""
        os.sync()  # no writeback of the previous case pending
        mark = self.origin.mark()
        cpu0 = time.process_time()
        self.t0_wall = time.time()
        t0 = time.perf_counter()
        start()
        stamps = done()
        wall = time.perf_counter() - t0
        requests, sent = self.origin.since(mark, self.rel)
        res = {"wall_s": wall, "origin_requests": requests, "origin_bytes": sent,
               "bench_cpu_s": time.process_time() - cpu0}
        if stamps:
            res["first_ready_s"] = min(stamps) - t0
        return res

    def curl(self, d: Path) -> dict[str, Any]:
        procs: list[subprocess.Popen] = []
        outs = [d / f"h{i}" for i in range(1, self.n + 1)]

        def start() -> None:
            for out in outs:
                procs.append(subprocess.Popen(
                    ["/usr/bin/time", "-f", "%M", "-o", f"{out}.rss", "curl", "-sS", "-f",
                     "-o", str(out), self.url], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        def done() -> None:
            finish(procs, "curl")

        res = self.clocked(start, done)
        for out in outs:
            check_file(out, self.digest, self.size)
        res["peak_rss_mib"] = max(int(Path(f"{o}.rss").read_text().split()[-1]) for o in outs
                                  ) / 1024
        return res

    def independent(self, d: Path) -> dict[str, Any]:
        hosts = [Daemon(d / f"h{i}") for i in range(1, self.n + 1)]
        try:
            for h in hosts:
                h.wait_ready()
            procs: list[subprocess.Popen] = []

            def start() -> None:
                procs.extend(h.cli("want", self.url, "--sha256", self.digest) for h in hosts)
                finish(procs, "prefetchd want")

            cpu0 = cpu_now(hosts)
            res = self.clocked(start, lambda: wait_all_ready(hosts, self.url))
            res.update(daemons_usage(hosts, cpu0))
            check_hosts(hosts, self.url, self.digest, self.size)
            return res
        finally:
            for h in hosts:
                h.stop()

    def fleet(self, d: Path) -> dict[str, Any]:
        from tests.supa_env import (
            ANON_KEY,
            ROLE_NAMES,
            SERVICE_KEY,
            Supa,
            migrate,
            mint,
            storage_table,
        )

        schema = f"pfd_bench_{uuid.uuid4().hex[:10]}"
        self.pg.execute(f"CREATE SCHEMA {schema}")
        hosts: list[Daemon] = []
        supa = None
        cleanup: list[Path] = []
        try:
            # Supabase's API roles under the tests' names (tests/supa_env.py ROLES).
            self.pg.execute(f"GRANT USAGE ON SCHEMA {schema} TO " + ", ".join(
                ROLE_NAMES[r] for r in ("anon", "authenticated", "service_role")))
            storage_table(self.pg, schema)
            migrate(self.pg, schema)
            # The cache bucket is one hosts may write (as the tests' db fixture does).
            self.pg.execute(f"INSERT INTO {schema}.prefetchd_fleet_cache_buckets VALUES (%s)"
                            " ON CONFLICT DO NOTHING", [CACHE])
            storage = (Path(tempfile.mkdtemp(prefix="fleet-storage-", dir=self.storage_dir))
                       if self.storage_dir is not None else d / "storage")
            cleanup.append(storage)
            supa = Supa(self.pg, schema, storage)
            supa.srv.etag_algorithm = self.storage_etag
            fleet = f"""
[supabase]
url = "{supa.srv.url}"
key = "env:SUPA_KEY"
{{token}}schema = "{schema}"

[fleet]
group = "{GROUP}"
{{host}}cache_bucket = "{CACHE}"
poll_interval = "{self.poll}s"
wait_poll = "{self.poll}s"
report_interval = "1s"
"""
            for i in range(1, self.n + 1):
                name = f"h{i}"
                hosts.append(Daemon(
                    d / name, fleet.format(token='token = "env:FLEET_KEY"\n',
                                           host=f'host = "{name}"\n'),
                    {"SUPA_KEY": ANON_KEY, "FLEET_KEY": mint(GROUP, name)}))
            for h in hosts:
                h.wait_ready()
            admin = d / "admin"
            admin.mkdir()
            admin_cfg = admin / "prefetchd.toml"
            admin_cfg.write_text(BASE_CONFIG.format(root=admin / "root", state=admin / "state")
                                 + fleet.format(token="", host=""))
            admin_env = {**_ENV, "PREFETCHD_CONFIG": str(admin_cfg), "SUPA_KEY": SERVICE_KEY}
            seen = len(supa.srv.requests)

            def start() -> None:
                finish([subprocess.Popen(
                    [*PREFETCHD, "fleet", "want", self.url, "--sha256", self.digest],
                    env=admin_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE)], "prefetchd fleet want")

            cpu0 = cpu_now(hosts)
            t0 = time.perf_counter()
            res = self.clocked(start, lambda: wait_all_ready(hosts, self.url))
            res.update(daemons_usage(hosts, cpu0))
            check_hosts(hosts, self.url, self.digest, self.size)
            res.update(storage_traffic(supa.srv.requests[seen:], self.size))
            res["timeline"] = timeline(supa.srv.requests[seen:], self.t0_wall,
                                       [h.ready_at - t0 for h in hosts])
            # The stand-in's whole request log of the case, for a closer look.
            (OUT / f"fleet-requests-{d.name}.json").write_text(json.dumps(
                [{"at": round(r["at"] - self.t0_wall, 3), "method": r["method"],
                  "path": r["path"].split("?")[0][-60:],
                  "host": jwt_host(r["headers"].get("authorization", ""))}
                 for r in supa.srv.requests[seen:] if r["method"] != "PATCH"]))
            return res
        finally:
            for h in hosts:
                h.stop()
            if supa is not None:
                supa.stop()
            for path in cleanup:
                shutil.rmtree(path, ignore_errors=True)
            self.pg.execute(f"DROP SCHEMA {schema} CASCADE")

    def run_case(self, case: str, rnd: int) -> dict[str, Any]:
        d = WORK / f"r{rnd}-{case}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        try:
            return getattr(self, case)(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)


def storage_traffic(requests: list[dict[str, Any]], size: int) -> dict[str, int]:
    """Bytes the stand-in's Storage took in (uploads) and served (cache downloads), from
    its request log: a GET's body is the object from its Range start (no faults here)."""
    up = down = gets = 0
    prefix = f"/storage/v1/object/authenticated/{CACHE}/"
    for r in requests:
        if r["method"] == "PATCH" or (r["method"] in ("POST", "PUT")
                                      and r["path"].startswith(f"/storage/v1/object/{CACHE}/")):
            up += int(r["headers"].get("content-length") or 0)
        elif r["method"] == "GET" and r["path"].startswith(prefix):
            gets += 1
            m = re.match(r"bytes=(\d+)-", r["headers"].get("range") or "")
            down += size - (int(m.group(1)) if m else 0)
    return {"storage_in_bytes": up, "storage_out_bytes": down, "storage_gets": gets}


def jwt_host(auth: str) -> str:
    """The `host` claim of a request's bearer JWT ("" for the service key)."""
    parts = auth.removeprefix("Bearer ").split(".")
    if len(parts) != 3:  # noqa: PLR2004 - header.payload.signature
        return ""
    body = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    return str(body.get("host") or "")


def timeline(requests: list[dict[str, Any]], t0: float, ready: list[float]) -> dict[str, Any]:
    """When things happened in a fleet case, in seconds from its start (the stand-in's
    request log, and when each host was seen ready): where the time goes."""
    def at(r: dict[str, Any]) -> float:
        return round(r["at"] - t0, 2)

    claims = [at(r) for r in requests if r["path"].endswith("/rpc/prefetchd_fleet_claim")]
    patches = [at(r) for r in requests if r["method"] == "PATCH"]
    gets = [at(r) for r in requests if r["method"] == "GET"
            and r["path"].startswith(f"/storage/v1/object/authenticated/{CACHE}/")]
    return {"first_claim": claims[0] if claims else None,
            "first_patch": patches[0] if patches else None,
            "last_patch": patches[-1] if patches else None, "patches": len(patches),
            "gets": gets, "ready": sorted(round(x, 2) for x in ready)}


# -- set-up and report -------------------------------------------------------------------------


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: a size like 64MiB or 1GiB")
    return int(m.group(1)) << {"B": 0, "KiB": 10, "MiB": 20, "GiB": 30}[m.group(2) or "B"]


def label(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size}B"


def connect_pg() -> Any:
    """Autocommit superuser connection; the API roles the migrations grant to exist."""
    import psycopg

    from tests.supa_env import DSN, ensure_roles

    try:
        conn = psycopg.connect(DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        raise SystemExit(f"PostgreSQL is not reachable at {DSN}: {e}") from None
    ensure_roles(conn)
    return conn


def check_disk(size: int, hosts: int) -> None:
    # The source, then per case at most: N host copies + one Storage copy + spooled upload.
    need = size * (hosts + 3)
    free = shutil.disk_usage(OUT).free
    if free < need:
        raise SystemExit(f"{free >> 20} MiB free under {OUT}, the run needs {need >> 20} MiB")


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for case, samples in results.items():
        row: dict[str, Any] = {"case": case, "rounds": len(samples)}
        for key, value in samples[0].items():
            if isinstance(value, int | float):
                row[key] = statistics.median(s[key] for s in samples)
        row["wall_s_all"] = [round(s["wall_s"], 3) for s in samples]
        rows.append(row)
    base = next(r for r in rows if r["case"].startswith(BASE))
    for r in rows:
        for key in ("wall_s", "origin_requests", "origin_bytes"):
            r[f"{key}_ratio"] = r[key] / base[key] if base[key] else None
    return rows


def table(rows: list[dict[str, Any]], size: int) -> str:
    lines = ["| case | all hosts have it (median; rounds) | first host | ×independent "
             "| origin requests | ×independent | origin bytes | ×independent "
             "| Storage in / out | peak RSS (max) | CPU during the case |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ratio(r: dict[str, Any], key: str) -> str:
        v = r.get(f"{key}_ratio")
        return f"{v:.2f}×" if v is not None else ""

    for r in rows:
        storage = (f"{r['storage_in_bytes'] / size:.2f} / {r['storage_out_bytes'] / size:.2f}"
                   " files" if "storage_in_bytes" in r else "")
        cpu = (f"daemons {r['cpu_s']:.1f} s, bench process {r['bench_cpu_s']:.1f} s"
               if "cpu_s" in r else "")
        first = f"{r['first_ready_s']:.2f} s" if "first_ready_s" in r else ""
        walls = ", ".join(f"{w:.2f}" for w in r["wall_s_all"])
        lines.append(
            f"| {r['case']} | {r['wall_s']:.2f} s ({walls}) | {first} | {ratio(r, 'wall_s')}"
            f" | {r['origin_requests']:g} | {ratio(r, 'origin_requests')}"
            f" | {r['origin_bytes'] / MiB:.0f} MiB ({r['origin_bytes'] / size:.2f} files)"
            f" | {ratio(r, 'origin_bytes')} | {storage} | {r['peak_rss_mib']:.0f} MiB | {cpu} |")
    return "\n".join(lines)


def parse_args() -> tuple[argparse.Namespace, tuple[str, ...]]:
    """The options, and the cases to run (in CASES order)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="file size (default 1GiB)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of every case (default 2)")
    ap.add_argument("--hosts", type=int, default=4, help="hosts per case (default 4)")
    ap.add_argument("--poll", type=float, default=0.5,
                    help="fleet poll_interval and wait_poll in seconds (default 0.5)")
    ap.add_argument("--quick", action="store_true", help="64MiB, 1 round (a smoke run)")
    ap.add_argument("--storage-etag", choices=("md5", "mtime"), default="md5",
                    help="the Storage stand-in's ETag (STORAGE_FILE_ETAG_ALGORITHM of "
                         "Storage's file backend): md5 (default) hashes every upload on "
                         "this machine's cores; mtime hashes nothing, like a Storage on "
                         "machines of its own")
    ap.add_argument("--storage-dir", type=Path, default=None,
                    help="where the Storage stand-in keeps its objects (default: beside "
                         "the hosts, on their disk; e.g. /dev/shm: a Storage whose disk "
                         "is not the hosts')")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"which cases, comma-separated (default {','.join(CASES)}; "
                         f"{BASE} is always run: the ratios are against it)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.rounds = 64 * MiB, 1
    wanted = set(args.cases.split(",")) | {BASE}
    if not wanted <= set(CASES):
        ap.error(f"--cases: unknown {', '.join(sorted(wanted - set(CASES)))}")
    return args, tuple(c for c in CASES if c in wanted)


def main() -> int:
    args, cases = parse_args()
    ensure_tools()
    OUT.mkdir(exist_ok=True)
    check_disk(args.size, args.hosts)
    t_run = time.perf_counter()
    rel = f"fleet/blob-{label(args.size)}"
    (DATA / "fleet").mkdir(parents=True, exist_ok=True)
    print(f"making {rel} ({label(args.size)} of random bytes)...", flush=True)
    digest = make_file(DATA / rel, args.size)
    subprocess.run(["cat", str(DATA / rel)], stdout=subprocess.DEVNULL, check=True)  # warm
    origin = Origin()
    bench = Bench(origin, rel, digest, args.size, args)
    names = {"curl": f"curl x{args.hosts}", BASE: f"{BASE} x{args.hosts}",
             "fleet": f"fleet x{args.hosts}"}
    results: dict[str, list[dict[str, Any]]] = {names[c]: [] for c in cases}
    try:
        bench.pg = connect_pg()
        for rnd in range(args.rounds):
            order = cases[rnd % len(cases):] + cases[:rnd % len(cases)]
            for case in order:
                print(f"round {rnd + 1}/{args.rounds}: {names[case]}...", flush=True)
                res = bench.run_case(case, rnd)
                print(f"  {res['wall_s']:.2f} s, origin {res['origin_requests']} requests, "
                      f"{res['origin_bytes'] / MiB:.0f} MiB", flush=True)
                for key in ("timeline", "host_cpu_s"):
                    if key in res:
                        print(f"  {key}: {res[key]}", flush=True)
                results[names[case]].append(res)
    finally:
        origin.stop()
        if bench.pg is not None:
            bench.pg.close()
        shutil.rmtree(WORK, ignore_errors=True)
    rows = summarize(results)
    took = time.perf_counter() - t_run
    load = os.getloadavg()
    report = (f"Machine: {machine()}; load average at the end {load[0]:.1f}/{load[1]:.1f}/"
              f"{load[2]:.1f}\n\nOne {label(args.size)} file onto {args.hosts} hosts, "
              f"rounds: {args.rounds} (cases alternated), fleet poll_interval = wait_poll = "
              f"{args.poll:g} s, Storage ETags {args.storage_etag}, Storage's objects in "
              f"{args.storage_dir or OUT}; whole run {took:.0f} s."
              f"\n\n{table(rows, args.size)}\n")
    (OUT / "fleet.md").write_text(report)
    (OUT / "fleet.json").write_text(json.dumps({"size": args.size, "hosts": args.hosts,
                                                "rounds": args.rounds, "poll_s": args.poll,
                                                "storage_etag": args.storage_etag,
                                                "run_s": took, "rows": rows,
                                                "samples": results}, indent=2))
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
