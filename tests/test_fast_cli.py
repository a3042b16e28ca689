"""The CLI's socket path (prefetchd.cli.quick): with a daemon running, an agent's commands
load none of the heavy modules and print what the full CLI prints; without one, or
when in doubt, the full CLI runs."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from prefetchd.cli import quick
from prefetchd.config import parse_duration, parse_size
from tests.conftest import _OWN_ENV, REPO, Env

HEAVY = ("pydantic", "structlog", "openai", "supabase", "aiohttp", "httpx", "apscheduler",
         "watchfiles", "sqlite_utils", "prefetchd.fetch", "prefetchd.config", "prefetchd.api",
         "prefetchd.cli.commands", "prefetchd.cli.base", "prefetchd.cli.fleet",
         "prefetchd.cli.completion", "prefetchd.service", "prefetchd.manifest", "typing",
         "dataclasses")

# Runs the console script's entry point, then reports which heavy modules it loaded.
PROBE = """
import json, os, sys
from prefetchd.cli.launch import main
try:
    code = main(sys.argv[1:])
finally:
    sys.stdout.flush()
    heavy = sorted({m for m in sys.modules for h in json.loads(os.environ["HEAVY"])
                    if m == h or m.startswith(h + ".")})
    with open(os.environ["REPORT"], "w") as f:
        json.dump(heavy, f)
sys.exit(code)
"""


def launch(env: Env, tmp: Path, *args: str) -> tuple[int, str, str, list[str]]:
    report = tmp / "report.json"
    environ = {**_OWN_ENV, **env.environ, "PREFETCHD_CONFIG": str(env.config),
               "HEAVY": json.dumps(HEAVY), "REPORT": str(report)}
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       env=environ, cwd=REPO, timeout=60, stdin=subprocess.DEVNULL, check=False)
    return r.returncode, r.stdout, r.stderr, json.loads(report.read_text())


def test_commands_through_a_daemon_load_nothing_heavy_and_print_the_same(
        env, daemon, server, tmp_path):
    server.add("file-a", b"A" * 1000, "a.txt")
    daemon()
    assert env.cli("get", "file-a").returncode == 0
    same = [("path", "file-a"), ("path", "file-nope"), ("get", "file-a"),
            ("get", "file-a", "--json"), ("--config", str(env.config), "status", "--json"),
            ("status",), ("ls",), ("ls", "--json", "--state", "ready"),
            ("want", "file-a", "--sha256", "xyz"), ("release", "file-zzz"),
            ("get", "file-a", "--timeout", "1m30s", "--size", "1000")]
    for args in same:
        code, out, err, heavy = launch(env, tmp_path, *args)
        full = env.cli(*args)
        assert heavy == [], args
        assert (code, out, err) == (full.returncode, full.stdout, full.stderr), args
    for args, expected in [(("want", "file-b", "--pin", "--ttl", "2h"), ""),
                           (("unwant", "file-b"), ""), (("forget", "file-b"), ""),
                           (("--version",), "prefetchd 0.1.0\n")]:
        code, out, err, heavy = launch(env, tmp_path, *args)
        assert (code, out, err, heavy) == (0, expected, "", []), args
    code, out, err, heavy = launch(env, tmp_path, "release", "file-a")
    assert (code, out, heavy) == (0, "removed downloads/file-a/a.txt\n", [])
    assert json.loads(env.cli("ls", "--json").stdout)[0]["state"] == "evicted"


def test_the_console_script_itself_stays_light(env, daemon, server):
    """The generated wrapper (`.venv/bin/prefetchd`) counts too: -X importtime."""
    script = Path(sys.executable).parent / "prefetchd"
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    server.add("file-a", b"A", "a.txt")
    daemon()
    assert env.cli("get", "file-a").returncode == 0
    environ = {**_OWN_ENV, **env.environ, "PREFETCHD_CONFIG": str(env.config)}
    r = subprocess.run([sys.executable, "-X", "importtime", str(script), "path", "file-a"],
                       capture_output=True, text=True, env=environ, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout == f"{env.root}/downloads/file-a/a.txt\n"
    loaded = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert not {m for m in loaded for h in HEAVY if m == h or m.startswith(h + ".")}
    assert "importlib.metadata" not in loaded


def test_without_a_daemon_the_full_cli_runs(env, server, tmp_path):
    server.add("file-a", b"A", "a.txt")
    assert env.cli("get", "file-a").returncode == 0
    code, out, err, heavy = launch(env, tmp_path, "path", "file-a")
    assert (code, out, err) == (0, f"{env.root}/downloads/file-a/a.txt\n", "")
    assert "pydantic" in heavy and "prefetchd.cli.commands" in heavy


@pytest.mark.parametrize("argv", [
    ["-h"], ["path"], ["path", "a", "b"], ["path", "x", "-v"], ["path", "x", "--bogus"],
    ["get", "x", "--size", "1.5GB"], ["get", "x", "--timeout", "1h30"], ["ls", "--state", "x"],
    ["get", "x", "--dest"], ["run"], ["gc"], ["want", "x", "--pin", "--pin"],
    ["status", "--json=1"],
])
def test_what_it_is_not_sure_of_goes_to_the_full_cli(argv):
    with pytest.raises(quick.Doubt):
        quick.parse(argv)


@pytest.mark.parametrize("text", ["30s", "1h30m", "2.5h", "500ms", "90", "7d", "1w2d", " 5M "])
def test_durations_read_as_the_config_reads_them(text):
    assert quick.duration(text) == parse_duration(text)


@pytest.mark.parametrize("text", ["1000", "500MB", "512MiB", "3 kb", "2GiB", "10TB"])
def test_sizes_read_as_the_config_reads_them(text):
    assert quick.size(text) == parse_size(text)


def test_options_flow_into_the_request_by_their_api_names():
    """--holder, --all, --mine (claims) pass through as the local API names them."""
    call = quick.parse(["--root", "/r", "release", "x", "y", "--holder", "job-1", "--all"])
    assert quick._request(call) == ("POST", "/v1/release",
                                     {"file_ids": ["x", "y"], "holder": "job-1", "all": True})
    call = quick.parse(["get", "x", "--json", "--timeout=1m", "--holder", "j", "--pin"])
    assert quick._request(call) == ("POST", "/v1/get", {"file_ids": ["x"], "timeout": 60.0,
                                                        "holder": "j", "pin": True})
    assert quick._request(quick.parse(["ls", "--mine", "--state", "ready", "--json"]))[1] == (
        "/v1/ls?mine=1&state=ready")
    assert quick._request(quick.parse(["path", "a b/c?d"]))[1] == "/v1/path?file_id=a%20b%2Fc%3Fd"


CONFIGS = [
    'state_dir = "s"\n[api]\nsocket = "/run/p.sock"  # here\n',
    "root = '/r'\nstate_dir = 'st' # c\n[providers.x]\ntype = \"dir\"\npath = \"/p\"\n",
    '[ api ]\ngroup = "g"\n[download]\nconcurrency = 4\n',
    'api.socket = "/x.sock"\n',
    'api = { socket = "/x.sock" }\n',
    '"state_dir" = "q"\n',
    'state_dir = "a\\u0062"\n',
    '[api]\nsocket = """/m.sock"""\n',
    '[[api]]\nsocket = "/y"\n',
    'x = [\n "state_dir = \\"no\\"",\n]\nstate_dir = "yes"\n',
]


@pytest.mark.parametrize("text", CONFIGS)
def test_the_config_scan_agrees_with_tomllib_or_defers_to_it(text):
    data = tomllib.loads(text)
    api = data.get("api")
    expected = (data.get("state_dir"), api.get("socket") if isinstance(api, dict) else None)
    found = quick._scan(text)
    assert found is None or found == expected
    if isinstance(api, dict) or "state_dir" in data:
        assert quick._toml(text.encode()) == expected


def test_the_states_it_knows_are_the_manifests():
    from prefetchd.records import State

    assert quick.STATES == {s.value for s in State}
