"""Read-only commands create nothing: status, ls, path, stats on a machine with no state."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from prefetchd import api
from prefetchd.api import Prefetch
from prefetchd.manifest import NoStateError


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["ls"], ["ls", "--json"],
                                  ["path", "file-a"], ["stats"], ["stats", "--json"]])
def test_read_only_command_without_state_creates_nothing(env, args):
    r = env.invoke(*args)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line == (f"prefetchd: error: no prefetchd state at {env.state / 'prefetchd.db'} "
                    "(nothing was requested here yet and no daemon has run; `want`, `get` "
                    "or `run` create it)")
    assert not env.root.exists() and not env.state.exists()


def test_read_only_commands_on_existing_state_without_a_root(env, server):
    server.add("file-a", b"A" * 10, "a.txt")
    assert env.invoke("get", "file-a").returncode == 0
    assert env.invoke("want", "file-b", "--provider", "files").returncode == 0
    shutil.rmtree(env.root)  # e.g. the root's filesystem is not mounted
    r = env.invoke("status", "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["states"]["ready"] == 1 and st["queue"] == 1
    assert st["store"] == {"objects": 0, "bytes": 0}
    assert [x["file_id"] for x in json.loads(env.invoke("ls", "--json").stdout)] == [
        "file-a", "file-b"]
    r = env.invoke("path", "file-a")
    assert r.returncode == 1 and "not ready" in r.stderr
    assert json.loads(env.invoke("stats", "--json").stdout)[0]["downloads"] == 1
    assert not env.root.exists()


def test_status_reads_existing_state_read_only(env, server):
    server.add("file-a", b"A" * 10, "a.txt")
    assert env.invoke("get", "file-a").returncode == 0
    with Prefetch(env.settings(), read_only=True) as p:
        assert p.status()["store"] == {"objects": 1, "bytes": 10}
        assert p.path("file-a") == env.root / "downloads/file-a/a.txt"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            p.manifest.conn.execute("DELETE FROM files")
    r = env.invoke("path", "file-a")
    assert r.returncode == 0 and r.stdout.strip() == str(env.root / "downloads/file-a/a.txt")


def test_python_api_read_only_without_state(env, monkeypatch):
    monkeypatch.setenv("PREFETCHD_CONFIG", str(env.config))
    assert api.path("file-a") is None
    with pytest.raises(NoStateError):
        api.status()
    assert not env.root.exists() and not env.state.exists()


@pytest.mark.parametrize("args, name", [(["--config", ""], "--config"),
                                        (["--root", ""], "--root"),
                                        (["--state-dir", ""], "--state-dir")])
def test_empty_global_option_is_an_error(env, args, name):
    r = env.invoke(*args, "ls")
    assert r.returncode == 2
    assert r.stderr.strip() == (f"prefetchd: error: {name} is empty: give a path, or leave "
                                "it out for the default")


def test_empty_prefetchd_config_variable_is_an_error(env):
    r = env.invoke("ls", env={"PREFETCHD_CONFIG": ""})
    assert r.returncode == 2
    assert r.stderr.strip() == ("prefetchd: error: PREFETCHD_CONFIG is empty: give a path, "
                                "or leave it out for the default")
