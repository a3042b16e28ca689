"""Shared fixtures: a real files server on loopback, a config, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prefetchd.api import Prefetch
from prefetchd.config import Settings, load_settings
from prefetchd.fetch import Engine, Outcome
from tests.servers.files_api import FilesServer

pytest_plugins = ["tests.supa_env"]

REPO = Path(__file__).resolve().parent.parent
# The environment a CLI subprocess gets: the suite's own settings variable (which the
# CLI would warn about as an unknown PREFETCHD_* variable) is not passed on.
_OWN_ENV = {k: v for k, v in os.environ.items() if k != "PREFETCHD_TEST_PG"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[FilesServer]:
    srv = FilesServer().start()
    yield srv
    srv.stop()


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

    def cli(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
        env = {**_OWN_ENV, **self.environ, "PREFETCHD_CONFIG": str(self.config)}
        return subprocess.run(
            [sys.executable, "-m", "prefetchd.cli", *args], capture_output=True, text=True,
            env=env, timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO, check=False, **kw,
        )

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen:
        env = {**_OWN_ENV, **self.environ, "PREFETCHD_CONFIG": str(self.config)}
        return subprocess.Popen(
            [sys.executable, "-m", "prefetchd.cli", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL, cwd=REPO, **kw,
        )


@pytest.fixture
def env(tmp_path: Path, server: FilesServer) -> Env:
    src = tmp_path / "src"
    src.mkdir()
    e = Env(tmp_path, server, tmp_path / "prefetchd.toml", tmp_path / "root",
            tmp_path / "state", src)
    e.write_config()
    return e


@pytest.fixture
def daemon(env: Env) -> Iterator[Callable[..., Any]]:
    """`daemon(**kw)` starts `prefetchd run` on `env` (a DaemonProc, ready); every one
    still alive is stopped at the end."""
    from tests.daemon_helpers import DaemonProc

    procs: list[DaemonProc] = []

    def start(**kw: Any) -> DaemonProc:
        d = DaemonProc(env, **kw)
        procs.append(d)
        return d.ready()

    yield start
    for d in procs:
        if d.alive:
            d.stop()


class SleepRecorder:
    """Records the delays the engine asks for and sleeps a token amount instead."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def fetch(p: Prefetch, file_id: str, *, sleep: Any = None, **want: Any) -> Outcome:
    """Want one file and run the engine on it in this process."""
    p.want([file_id], **want)

    async def go() -> Outcome:
        eng = Engine(p.settings, p.manifest, p.store, sleep=sleep or asyncio.sleep)
        try:
            return await eng.fetch(file_id)
        finally:
            await eng.aclose()

    return asyncio.run(go())
