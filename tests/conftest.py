"""Fixtures only; what they are made of lives in tests/support/.

Names that test modules import from here (`REPO`, `Env`, `sha`, `fetch`...) are
re-exported from tests.support.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.files_api import FilesServer
from tests.support import (
    OWN_ENV,
    REPO,
    DaemonProc,
    Env,
    SharedFiles,
    SleepRecorder,
    fetch,
    make_env,
    sha,
)

pytest_plugins = ["tests.supa_env"]

_OWN_ENV = OWN_ENV  # the old name, still imported by some tests

__all__ = ["REPO", "_OWN_ENV", "Env", "SleepRecorder", "fetch", "sha"]


@pytest.fixture(scope="session")
def shared_files() -> Iterator[SharedFiles]:
    pool = SharedFiles()
    yield pool
    pool.close()


@pytest.fixture
def server(shared_files: SharedFiles) -> FilesServer:
    """The run's files server with no files, faults, requests or counts: as new."""
    return shared_files.fresh()


@pytest.fixture
def env(tmp_path: Path, server: FilesServer) -> Env:
    return make_env(tmp_path, server)


@pytest.fixture
def daemon(env: Env) -> Iterator[Callable[..., Any]]:
    """`daemon(**kw)` starts `prefetchd run` on `env` (a DaemonProc, ready); every one
    still alive is stopped at the end."""
    procs: list[DaemonProc] = []

    def start(**kw: Any) -> DaemonProc:
        d = DaemonProc(env, **kw)
        procs.append(d)
        return d.ready()

    yield start
    for d in procs:
        if d.alive:
            d.stop()
