"""The test's prefetchd site (`Env`): a config over the files server, a root, a state
dir, a `dir` provider's folder, and the CLI run against it, in this process or as a
real process."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefetchd.api import Prefetch
from prefetchd.config import Settings, load_settings
from tests.servers.files_api import FilesServer
from tests.support.cli import CliResult, run_cli

REPO = Path(__file__).resolve().parent.parent.parent
# The environment a CLI run gets: the suite's own settings variable (which the CLI
# would warn about as an unknown PREFETCHD_* variable) is not passed on.
OWN_ENV = {k: v for k, v in os.environ.items() if k != "PREFETCHD_TEST_PG"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Env:
    tmp: Path
    server: FilesServer
    config: Path
    root: Path
    state: Path
    src: Path
    environ: dict[str, str] = field(default_factory=dict)

    def write_config(self, extra: str = "", download: str = "") -> None:
        """Write the test config; `download` lines override the [download] defaults."""
        dl = {"retries": "4", "backoff_base": '"10ms"', "backoff_max": '"2s"',
              "stall_timeout": '"1s"', "connect_timeout": '"2s"'}
        for line in download.splitlines():
            if line.strip():
                k, v = (x.strip() for x in line.split("=", 1))
                dl[k] = v
        download = "\n".join(f"{k} = {v}" for k, v in dl.items())
        self.config.write_text(f"""
root = "{self.root}"
state_dir = "{self.state}"
default_provider = "files"

[download]
{download}

[providers.files]
type = "openai"
base_url = "{self.server.base_url}"

[providers.kimi]
type = "openai"
base_url = "{self.server.base_url}"

[providers.web]
type = "http"
allow_private_networks = true

[providers.http]
type = "http"
allow_private_networks = true

[providers.local]
type = "dir"
path = "{self.src}"
{extra}
""")

    def settings(self) -> Settings:
        return load_settings(self.config, environ=self.environ)

    def prefetch(self) -> Prefetch:
        return Prefetch(self.settings())

    def cli_environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What a CLI run sees as its environment."""
        return {**OWN_ENV, **self.environ, "PREFETCHD_CONFIG": str(self.config),
                **(extra or {})}

    def invoke(self, *args: str, timeout: float = 60, traceback_ok: bool = False,
               env: Mapping[str, str] | None = None) -> CliResult:
        """`prefetchd ARGS` in this process (see tests/support/cli.py): what a user
        would see of it, without a new interpreter's start-up."""
        return run_cli(args, self.cli_environ(env), cwd=REPO, timeout=timeout,
                       traceback_ok=traceback_ok)

    def cli(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
        """`python -m prefetchd.cli ARGS` as a real process: for what needs one (the
        process's own exit, signals, other users, POSIX locks, concurrency)."""
        return subprocess.run(
            [sys.executable, "-m", "prefetchd.cli", *args], capture_output=True, text=True,
            env=self.cli_environ(), timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO,
            check=False, **kw,
        )

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "prefetchd.cli", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=self.cli_environ(),
            stdin=subprocess.DEVNULL, cwd=REPO, **kw,
        )


def make_env(tmp_path: Path, server: FilesServer) -> Env:
    src = tmp_path / "src"
    src.mkdir()
    e = Env(tmp_path, server, tmp_path / "prefetchd.toml", tmp_path / "root",
            tmp_path / "state", src)
    e.write_config()
    return e
