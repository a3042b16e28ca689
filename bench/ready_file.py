"""What bench/socket_get.py and bench/mcp_get.py share: a config with one file of a
`dir` provider, the environment a prefetchd subprocess needs, and quantiles."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILE_ID = "ready.bin"


def write_config(tmp: Path, size: int) -> Path:
    """A config whose `local` provider serves FILE_ID (`size` random bytes)."""
    src = tmp / "src"
    src.mkdir()
    (src / FILE_ID).write_bytes(os.urandom(size))
    config = tmp / "prefetchd.toml"
    config.write_text(f"""
root = "{tmp / 'root'}"
state_dir = "{tmp / 'state'}"
default_provider = "local"

[providers.local]
type = "dir"
path = "{src}"
""")
    return config


def environ(config: Path) -> dict[str, str]:
    """This environment, with the config and the checkout's source first on the path."""
    path = os.pathsep.join(filter(None, [str(REPO / "daemon"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PREFETCHD_CONFIG": str(config), "PYTHONPATH": path}


def quantiles_ms(samples: list[float]) -> tuple[float, float, float, float]:
    """p50, p90, p99 and max of `samples` (seconds), in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return q[49], q[89], q[98], ms[-1]
