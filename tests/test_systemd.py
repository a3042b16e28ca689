"""systemd/: the unit verifies and its hardening scores 1.5 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "prefetchd.service"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's prefetchd."""
    exe = Path(sys.executable).parent / "prefetchd"
    unit = tmp_path / "prefetchd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/prefetchd", str(exe)))
    return unit


@needs_analyze
def test_unit_verifies(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify", str(_unit_for_this_machine(tmp_path))],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""


@needs_analyze
def test_hardening_score(tmp_path):
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                        str(_unit_for_this_machine(tmp_path))], capture_output=True, text=True,
                       check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 1.5


def test_unit_contract():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "User=prefetchd", "StateDirectory=prefetchd",
                 "ReadWritePaths=/mnt/project", "LoadCredential=", "ExecReload="):
        assert line in text
