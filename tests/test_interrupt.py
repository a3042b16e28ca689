"""Ctrl-C on a `get` the daemon serves (issue 21, point 5): the CLI says the daemon
carries on, exits 130, and the daemon does finish the file. Both CLI paths: the
console script's socket path (quick.py) and the full CLI (`python -m prefetchd.cli`).

The SIGINT goes to a process that is known to be waiting: the daemon has answered its
version request (so its interpreter is up, with Python's SIGINT handler) and the file
server is sending the file the get asked for. A signal sent sooner reaches a process
whose SIGINT is still the kernel's default, and kills it with nothing on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import _OWN_ENV, REPO, sha
from tests.daemon_helpers import wait_until
from tests.servers.files_api import Fault

SIZE = 4 << 20
RATE = 1 << 20  # bytes per second: the daemon needs about 4 s, the test signals at once

# A child inherits an ignored SIGINT (a test run started in the background by a shell
# without job control), and Python installs its KeyboardInterrupt handler only over
# the default: give the CLI the default, as a terminal would.
_DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def _versions_asked(d, pid: int) -> bool:
    for line in d.logtext().splitlines():
        if '"api_request"' in line:
            event = json.loads(line)
            if event.get("pid") == pid and event.get("path") == "/v1/version":
                return True
    return False


@pytest.mark.parametrize("module", ["prefetchd.cli.launch", "prefetchd.cli"])
def test_ctrl_c_on_a_get_the_daemon_serves_leaves_the_download_to_it(env, daemon, module):
    data = os.urandom(SIZE)
    env.server.add("slow", data, "slow.bin")
    env.server.fault("slow", Fault(rate=RATE))
    d = daemon()
    proc = subprocess.Popen(
        [sys.executable, "-c", _DEFAULT_SIGINT, "-m", module, "get", "slow"],
        env={**_OWN_ENV, "PREFETCHD_CONFIG": str(env.config)}, cwd=REPO,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)  # the test's own process group never sees this SIGINT
    try:
        wait_until(lambda: proc.poll() is not None or (
            _versions_asked(d, proc.pid) and env.server.active > 0), timeout=60)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, err)
    assert out == ""
    assert "the daemon carries on" in err, err
    assert "partial downloads are kept" not in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err

    # The daemon finishes the file the interrupted get asked for, with nobody waiting.
    def ready() -> dict | None:
        r = env.cli("ls", "--json")
        assert r.returncode == 0, r.stderr
        rows = [row for row in json.loads(r.stdout) if row["file_id"] == "slow"]
        assert len(rows) == 1 and rows[0]["state"] != "failed", rows
        return rows[0] if rows[0]["state"] == "ready" else None

    row = wait_until(ready, timeout=60)
    with open(row["path"], "rb") as f:
        assert sha(f.read()) == sha(data)


class _Interrupting:
    """A meta path finder that is Ctrl-C arriving while the full CLI loads."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "prefetchd.cli.commands":
            raise KeyboardInterrupt
        return None


def test_ctrl_c_while_the_cli_loads_is_one_line(monkeypatch, tmp_path, capsys):
    from prefetchd.cli import launch

    monkeypatch.delitem(sys.modules, "prefetchd.cli.commands", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_Interrupting(), *sys.meta_path])
    monkeypatch.setenv("PREFETCHD_STATE_DIR", str(tmp_path / "state"))  # no daemon there
    assert launch.main(["status"]) == 130
    assert capsys.readouterr().err == "prefetchd: interrupted\n"
