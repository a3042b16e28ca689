#!/usr/bin/env python3
"""Whole-process latency of the commands an agent runs, with a daemon up and the file
ready, beside the interpreter's own start and curl on the same socket.

    .venv/bin/python bench/cli_latency.py            # p50 of 30 calls each
    .venv/bin/python bench/cli_latency.py --calls 50

Runs `prefetchd run` on a temp root, makes one file ready, then runs each case
`--calls` times, the cases interleaved (so a busy moment costs each case alike), and
prints p50 and its ratio to `python -c pass`. The console script is the one beside
this interpreter (`.venv/bin/prefetchd`). The package's bytecode is compiled first and
PYTHONDONTWRITEBYTECODE dropped, as in an installed prefetchd. Not collected by
pytest; work files live in a temp dir.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ready_file import FILE_ID, REPO, environ, write_config


def cases(script: Path, sock: Path) -> dict[str, list[str]]:
    p = [str(script)]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "curl --unix-socket … /v1/path": [
            "curl", "-s", "--unix-socket", str(sock),
            f"http://prefetchd/v1/path?file_id={FILE_ID}"],
        "prefetchd path ID": [*p, "path", FILE_ID],
        "prefetchd get ID": [*p, "get", FILE_ID],
        "prefetchd want ID ID": [*p, "want", FILE_ID, "other.bin"],
        "prefetchd status": [*p, "status"],
        "prefetchd status --json": [*p, "status", "--json"],
        "prefetchd ls": [*p, "ls"],
        "prefetchd release ID2": [*p, "release", "other.bin"],
        "prefetchd forget ID3": [*p, "forget", "third.bin"],
        "prefetchd unwant ID2": [*p, "unwant", "other.bin"],
        "prefetchd --version": [*p, "--version"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    script = Path(sys.executable).parent / "prefetchd"
    if not script.exists():
        sys.exit(f"no console script at {script}: pip install -e . into this venv")
    compileall.compile_dir(str(REPO / "daemon" / "prefetchd"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), 1 << 20)
        env = environ(config)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        daemon = subprocess.Popen([str(script), "run"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            sock = Path(tmp) / "state" / "api.sock"
            for _ in range(300):
                if sock.exists():
                    break
                time.sleep(0.05)
            subprocess.run([str(script), "get", FILE_ID], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            table = cases(script, sock)
            if shutil.which("curl") is None:
                del table["curl --unix-socket … /v1/path"]
            samples: dict[str, list[float]] = {name: [] for name in table}
            for _ in range(args.calls):
                subprocess.run([str(script), "want", "third.bin"], env=env, check=True)
                for name, argv in table.items():
                    started = time.perf_counter()
                    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, check=False)
                    samples[name].append(time.perf_counter() - started)
                    if r.returncode != 0:
                        sys.exit(f"{name}: exit {r.returncode}")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    floor = statistics.median(samples["python -c pass"])
    print(f"| case (p50 of {args.calls}, same run) | p50 | × `python -c pass` |")
    print("|---|---|---|")
    for name, s in samples.items():
        p50 = statistics.median(s)
        print(f"| `{name}` | {p50 * 1000:.1f} ms | {p50 / floor:.1f}× |")
    print(f"\nload average: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
