"""systemd/: the unit verifies and its hardening scores 1.5 or lower; the tmpfiles
entry makes the root group-readable only and the inbox setgid and sticky."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "prefetchd.service"
TMPFILES = UNIT.with_name("prefetchd.tmpfiles")

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


def test_unit_serves_the_local_api_and_writes_nothing_group_writable():
    lines = UNIT.read_text().splitlines()
    for line in ("UMask=0022", "RuntimeDirectory=prefetchd", "RuntimeDirectoryMode=0755"):
        assert line in lines
    # In a user namespace every agent's uid would read as "nobody" through SO_PEERCRED.
    assert not any(line.startswith("PrivateUsers=") for line in lines)


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-tmpfiles is not installed")
def test_tmpfiles_modes(tmp_path):
    """Applied by systemd-tmpfiles itself (under --root, as root:root since the test
    machine has no user prefetchd): the root 2755, the inbox 3775; an old install's
    group-writable root (2775) is brought down to 2755."""
    conf = tmp_path / "prefetchd.conf"
    conf.write_text(TMPFILES.read_text().replace("prefetchd prefetchd", "root root"))
    image = tmp_path / "image"
    image.mkdir()

    def apply() -> dict[str, str]:
        r = subprocess.run(["systemd-tmpfiles", "--create", f"--root={image}", str(conf)],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        return {rel: oct((image / rel).stat().st_mode & 0o7777)[2:]
                for rel in ("mnt/project", "mnt/project/.prefetchd",
                            "mnt/project/.prefetchd/inbox")}

    expected = {"mnt/project": "2755", "mnt/project/.prefetchd": "755",
                "mnt/project/.prefetchd/inbox": "3775"}
    assert apply() == expected
    (image / "mnt/project").chmod(0o2775)
    assert apply() == expected
