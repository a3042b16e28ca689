"""The console script's start-up: the collector paused while modules load, on for commands."""

from __future__ import annotations

import gc
import subprocess
import sys

import prefetchd.cli.commands
from prefetchd.cli import launch


def test_commands_run_with_the_collector_on(monkeypatch):
    seen = []

    def fake_main(argv):
        seen.append((list(argv), gc.isenabled()))
        return 3

    monkeypatch.setattr(prefetchd.cli.commands, "main", fake_main)
    assert launch.main(["status"]) == 3
    assert seen == [(["status"], True)]
    assert gc.isenabled()


def test_the_script_entry_point_runs_the_cli():
    r = subprocess.run([sys.executable, "-m", "prefetchd.cli.launch", "--help"],
                       capture_output=True,
                       text=True, check=False, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "usage: prefetchd" in r.stdout
