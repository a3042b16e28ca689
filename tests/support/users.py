"""What a test that runs as another Unix user installs for it.

The checkout may sit where no other user can read (a clone under /root, any 0700
directory): the other user could not import prefetchd from the source folder. So
`install_for_others` copies the package into a folder it can read, for its PYTHONPATH.
The interpreter (a venv) must be runnable by that user too: that cannot be copied;
`python_for_others` checks it, and without it the test skips saying so (fails under
CI=true, which must be able to run it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import REPO

PACKAGE = REPO / "daemon" / "prefetchd"


def install_for_others(where: Path) -> Path:
    """Copy the prefetchd package into `where` (made 0755, files 0644) and return the
    folder to put on the other user's PYTHONPATH. Every parent of `where` must let
    others through (/tmp does)."""
    where.mkdir(parents=True, exist_ok=True)
    target = where / "prefetchd"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in [where, *where.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return where


def missing(what: str) -> None:
    """Skip for something this machine lacks; under CI=true, fail (CI must have it)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI needs it")
    pytest.skip(what)


def python_for_others(argv_as: list[str], environ: dict[str, str]) -> None:
    """Check that `argv_as` (setpriv ... as the other user) can run this interpreter and
    import prefetchd's dependencies; skip (fail under CI) when it cannot."""
    probe = "import pydantic, structlog, sqlite_utils, httpx, openai"
    r = subprocess.run([*argv_as, sys.executable, "-c", probe], env=environ, cwd="/",
                       capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        missing(f"another user cannot use the interpreter {sys.executable} (is its venv "
                f"{sys.prefix} readable by others?): {why}")
