"""What operators look for: log lines journald files at their priority, stdout left to
command output, Prometheus series by the conventions (and all in the README), per-user
places for a user other than root (transport failures in words: test_transport_words)."""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import prefetchd
from prefetchd.log import get_logger
from tests.conftest import REPO
from tests.daemon_helpers import DaemonProc, wait_until
from tests.support.users import install_for_others, python_for_others

SRC = REPO / "daemon"
LEVELS = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def missing(what: str) -> None:
    """Skip for a missing component; under CI=true, fail (CI must have it)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI needs it")
    pytest.skip(what)


def python(script: str, env: dict[str, str] | None = None,
           **kw: Any) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(SRC)}
    environ.pop("JOURNAL_STREAM", None)
    return subprocess.run([sys.executable, "-c", script], text=True, env={**environ, **(env or {})},
                          cwd=REPO, timeout=120, check=False, **kw)


def dir_config(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello")
    config = tmp_path / "c.toml"
    config.write_text(f'root = "{tmp_path / "root"}"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'default_provider = "local"\n[providers.local]\ntype = "dir"\n'
                      f'path = "{src}"\n')
    return config


# -- logging: the library configures nothing and never writes to stdout ---------------

def test_the_library_configures_nothing_and_prints_nothing(tmp_path):
    config = dir_config(tmp_path)
    r = python(f"""
import json, logging, structlog
import prefetchd, prefetchd.api, prefetchd.cli
from prefetchd.api import Prefetch
from prefetchd.config import load_settings
with Prefetch(load_settings({str(config)!r})) as p:
    ok = p.get("a.txt")
    bad = p.get_many(["nope.txt"], timeout=30)[0]
print(json.dumps({{"ok": ok.name, "bad": bool(bad.error), "structlog": structlog.is_configured(),
                  "handlers": len(logging.getLogger().handlers),
                  "level": logging.getLogger("prefetchd").level}}))
""", capture_output=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": "a.txt", "bad": True, "structlog": False,
                                    "handlers": 0, "level": logging.NOTSET}
    # The failure is a warning: Python's last-resort handler shows it, on stderr.
    assert "download" in r.stderr and "nope.txt" in r.stderr and "outcome=failed" in r.stderr


def test_an_embedding_application_gets_events_through_logging(caplog):
    log = get_logger("prefetchd.test_ops")
    with caplog.at_level(logging.INFO, logger="prefetchd"):
        log.debug("hidden", n=1)
        log.info("download", file_id="https://u:pw@example.com/x?sig=s3cret", bytes=3)
    [record] = [r for r in caplog.records if r.name == "prefetchd.test_ops"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        'download bytes=3 file_id="https://***@example.com/x?sig=REDACTED"')


LEVELS_SCRIPT = """
import logging
from prefetchd import log
log.configure("debug")
lg = log.get_logger("prefetchd.levels")
for level in ("debug", "info", "warning", "error", "critical"):
    getattr(lg, level)("at_" + level, n=1)
logging.getLogger("asyncio").warning("from another library")
"""


def run_on_socket(args: list[str], env: dict[str, str], *, stamp: bool = True
                  ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run with stderr on a Unix stream socket, as systemd connects a service to
    journald; `stamp` sets $JOURNAL_STREAM to the socket's device:inode like systemd."""
    ours, theirs = socket.socketpair()
    st = os.fstat(theirs.fileno())
    env = {**os.environ, "PYTHONPATH": str(SRC), **env}
    env.pop("JOURNAL_STREAM", None)
    if stamp:
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    with ours, theirs:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=theirs, text=True,
                                env=env, cwd=REPO)
        theirs.close()
        chunks = []
        while data := ours.recv(65536):
            chunks.append(data)
        out, _ = proc.communicate(timeout=120)
    lines = b"".join(chunks).decode().splitlines()
    return subprocess.CompletedProcess(args, proc.returncode, out, ""), lines


def prefixed(line: str) -> tuple[int, dict]:
    m = re.fullmatch(r"<(\d)>(\{.*\})", line)
    assert m, line
    return int(m.group(1)), json.loads(m.group(2))


def test_each_line_starts_with_its_syslog_priority_under_journald():
    r, lines = run_on_socket([sys.executable, "-c", LEVELS_SCRIPT], {})
    assert r.returncode == 0
    got = [prefixed(line) for line in lines]
    assert [(p, e["event"]) for p, e in got] == (
        [(n, f"at_{level}") for level, n in LEVELS.items()] + [(4, "from another library")])
    assert got[-1][1]["logger"] == "asyncio"


def test_no_prefix_when_stderr_is_not_the_journal_stream(tmp_path):
    # $JOURNAL_STREAM is inherited, but stderr now goes elsewhere (a file): no prefix.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        st = os.fstat(theirs.fileno())
        with open(tmp_path / "err", "w") as err:
            r = python(LEVELS_SCRIPT, stderr=err,
                       env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert r.returncode == 0
    lines = (tmp_path / "err").read_text().splitlines()
    assert len(lines) == 6 and all(line.startswith("{") for line in lines)
    assert [json.loads(line)["level"] for line in lines[:5]] == list(LEVELS)


def test_cli_output_on_stdout_logs_on_stderr_with_priorities(tmp_path):
    config = dir_config(tmp_path)
    cli = [sys.executable, "-m", "prefetchd.cli", "--config", str(config), "-v", "get"]
    ok, lines = run_on_socket([*cli, "a.txt"], {})
    assert ok.returncode == 0
    assert ok.stdout == f"{tmp_path / 'root/downloads/a.txt/a.txt'}\n"  # only the path
    events = [prefixed(line) for line in lines]
    assert (6, "download", "downloaded") in [(p, e["event"], e.get("outcome"))
                                             for p, e in events]
    bad, lines = run_on_socket([*cli, "nope.txt", "--timeout", "30s"], {})
    assert bad.returncode == 1 and bad.stdout == ""
    logged = [prefixed(line) for line in lines if line.startswith("<")]
    assert (4, "download", "failed") in [(p, e["event"], e.get("outcome")) for p, e in logged]


JOURNALD = Path("/lib/systemd/systemd-journald")
JOURNAL_SOCKET = Path("/run/systemd/journal/stdout")


@pytest.fixture
def journald() -> Iterator[None]:
    """The machine's journald, or (as root, where none runs: containers, CI) a real one
    started for the test and removed after it, sockets and volatile journal included."""
    if JOURNAL_SOCKET.is_socket():
        yield
        return
    if os.geteuid() != 0 or not JOURNALD.exists():
        missing("no journald running, and none can be started (needs root and "
                f"{JOURNALD})")
    made = [p for p in (Path("/run/systemd/journal"), Path("/run/log/journal"))
            if not p.exists()]
    proc = subprocess.Popen([str(JOURNALD)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(JOURNAL_SOCKET.is_socket, timeout=30)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for p in made:
            shutil.rmtree(p, ignore_errors=True)


def test_journald_files_each_line_at_its_priority(tmp_path, journald):
    """A real journald: stderr connected by systemd-cat, $JOURNAL_STREAM stamped as the
    service manager does; journalctl shows PRIORITY per line and no `<N>` left."""
    if not (shutil.which("systemd-cat") and shutil.which("journalctl")):
        missing("systemd-cat / journalctl are missing (apt-get install systemd)")
    config = dir_config(tmp_path)
    tag = f"prefetchd-test-{uuid.uuid4().hex[:12]}"
    cli = f"{sys.executable} -m prefetchd.cli --config {config} -v get"
    script = ('JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM'
              f' && {cli} a.txt; {cli} nope.txt --timeout 30s; true')
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run(["systemd-cat", "-t", tag, "sh", "-c", script], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0:
        missing(f"systemd-cat cannot reach journald: {r.stderr.strip()}")

    def entries() -> list[tuple[str, str]]:
        out = subprocess.run(["journalctl", "-t", tag, "-o", "json", "--no-pager"],
                             capture_output=True, text=True, timeout=60, check=False).stdout
        found = [json.loads(line) for line in out.splitlines()]
        got = [(e["PRIORITY"], e["MESSAGE"]) for e in found if isinstance(e["MESSAGE"], str)]
        return got if any('"failed"' in m for _, m in got) else []

    got = wait_until(entries, timeout=30)
    events = {(p, json.loads(m)["event"], json.loads(m).get("outcome"))
              for p, m in got if m.startswith("{")}
    assert ("6", "download", "downloaded") in events
    assert ("4", "download", "failed") in events
    assert not [m for _, m in got if m.startswith("<")]


# -- metrics -----------------------------------------------------------------------------

def exposed(prom: Any) -> dict[str, str]:
    """Every series name of the default registry that prefetchd defines -> its type."""
    from prefetchd.service.metrics import instruments

    instruments()
    names = {}
    for family in prom.REGISTRY.collect():
        if family.name.startswith("prefetchd_"):
            name = family.name + "_total" if family.type == "counter" else family.name
            names[name] = family.type
    return names


def test_series_follow_prometheus_conventions():
    prom = pytest.importorskip("prometheus_client")
    names = exposed(prom)
    for name, kind in names.items():
        assert re.fullmatch(r"prefetchd_[a-z_]+", name), name
        assert (kind == "counter") == name.endswith("_total"), name
        assert "bytes" not in name or re.search(r"_bytes(_total)?$", name), name
        assert "duration" not in name or name.endswith("_seconds"), name
    assert names["prefetchd_download_duration_seconds"] == "histogram"
    version = prom.REGISTRY.get_sample_value("prefetchd_build_info",
                                             {"version": prefetchd.__version__})
    assert version == 1.0
    # The default registry's own collectors come along.
    assert prom.REGISTRY.get_sample_value("process_cpu_seconds_total") is not None
    assert any(f.name == "python_info" for f in prom.REGISTRY.collect())


def test_the_readme_lists_every_series():
    prom = pytest.importorskip("prometheus_client")
    text = (REPO / "README.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    listed = set(re.findall(r"^\| `(prefetchd_[a-z_]+)`", section, re.M))
    assert listed == set(exposed(prom))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_durations_are_observed_for_downloads_only():
    prom = pytest.importorskip("prometheus_client")
    from prefetchd.config import MetricsSettings
    from prefetchd.service.metrics import Metrics

    provider = f"p{uuid.uuid4().hex[:8]}"

    def value(name: str, **labels: str) -> float:
        return prom.REGISTRY.get_sample_value(name, {"provider": provider, **labels}) or 0.0

    m = Metrics(MetricsSettings(enabled=True, port=free_port()))
    try:
        m.observe("download", provider, 1000, 0.2)
        m.observe("cache_hit", provider, 0, 0.001)
        m.observe("retry", provider, 0)
        m.observe("failed", provider, 0)
    finally:
        m.close()
    assert value("prefetchd_download_duration_seconds_count") == 1.0
    assert value("prefetchd_download_duration_seconds_sum") == 0.2
    assert value("prefetchd_download_duration_seconds_bucket", le="0.25") == 1.0
    assert value("prefetchd_download_duration_seconds_bucket", le="0.1") == 0.0
    assert value("prefetchd_downloads_total", outcome="cache_hit") == 1.0
    assert value("prefetchd_downloads_total", outcome="failed") == 1.0
    assert value("prefetchd_retries_total") == 1.0
    assert value("prefetchd_downloaded_bytes_total") == 1000.0


@pytest.fixture
def daemon(env) -> Iterator[list[DaemonProc]]:
    procs: list[DaemonProc] = []
    yield procs
    for d in procs:
        if d.alive:
            d.stop()


def test_the_daemon_serves_its_series_with_the_process_ones(env, daemon, server):
    pytest.importorskip("prometheus_client")
    port = free_port()
    env.write_config(extra=f"\n[metrics]\nenabled = true\nport = {port}\n")
    server.add("file-h", b"h" * 4321)
    daemon.append(DaemonProc(env).ready())
    assert env.invoke("get", "file-h").returncode == 0

    def scraped() -> str:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = text.decode()
        done = 'prefetchd_download_duration_seconds_count{provider="files"} 1.0' in text
        return text if done else ""

    text = wait_until(scraped, timeout=15)
    assert f'prefetchd_build_info{{version="{prefetchd.__version__}"}} 1.0' in text
    assert 'prefetchd_downloaded_bytes_total{provider="files"} 4321.0' in text
    assert "\nprocess_cpu_seconds_total " in text and "\npython_info{" in text


# -- per-user places for a user other than root ------------------------------------------

@pytest.fixture
def unprivileged_user() -> Iterator[pwd.struct_passwd]:
    """A real user made for this test (useradd), with its own home; removed after."""
    if os.geteuid() != 0:
        pytest.skip("needs root to add a user (useradd)")
    if not shutil.which("useradd") or not shutil.which("setpriv"):
        missing("useradd / setpriv are missing")
    if Path("/etc/prefetchd/config.toml").exists():
        pytest.skip("/etc/prefetchd/config.toml exists: every user gets the system config")
    name = f"pfu{uuid.uuid4().hex[:10]}"
    home = Path(tempfile.mkdtemp(prefix="prefetchd-user-"))
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                    "/bin/sh", "--user-group", name], check=True, capture_output=True)
    try:
        user = pwd.getpwnam(name)
        os.chown(home, user.pw_uid, user.pw_gid)
        install_for_others(home / PYTHON_PATH)  # the checkout may be closed to others
        yield user
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


#: where, in the user's home, prefetchd is installed for it
PYTHON_PATH = ".prefetchd-python"


def as_user(user: pwd.struct_passwd, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`prefetchd ARGS` (or `python ARGS` when the first is `-c`) run as `user`, with
    nothing of this environment but PYTHONPATH."""
    environ = {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin",
               "PYTHONPATH": str(Path(user.pw_dir) / PYTHON_PATH),
               "LANG": "C.UTF-8", **env}
    argv = list(args) if args[0] == "-c" else ["-m", "prefetchd.cli", *args]
    return subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         sys.executable, *argv],
        env=environ, cwd="/", capture_output=True, text=True, timeout=120, check=False)


def test_a_user_without_a_config_gets_per_user_places(unprivileged_user, tmp_path):
    user = unprivileged_user
    python_for_others(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                       "--init-groups"], {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin"})
    r = as_user(user, "-c", "import prefetchd.cli; print(prefetchd.__file__)")
    assert r.stdout.startswith(f"{user.pw_dir}/{PYTHON_PATH}/"), r.stdout + r.stderr
    home = Path(user.pw_dir)
    state, root = home / ".local/state/prefetchd", home / ".local/share/prefetchd"
    shared = Path(tempfile.mkdtemp(prefix="prefetchd-src-"))  # a folder the user may read
    try:
        os.chmod(shared, 0o755)
        (shared / "a.txt").write_bytes(b"mine")
        os.chmod(shared / "a.txt", 0o644)
        # Providers may come from the environment alone: still no config file.
        provider = {"PREFETCHD_PROVIDERS__LOCAL__TYPE": "dir",
                    "PREFETCHD_PROVIDERS__LOCAL__PATH": str(shared)}
        runs = {
            "status before": as_user(user, "status"),
            "want": as_user(user, "want", "--provider", "local", "a.txt", **provider),
            "path before": as_user(user, "path", "a.txt", **provider),
            "get": as_user(user, "get", "--provider", "local", "a.txt", **provider),
            "path": as_user(user, "path", "a.txt", **provider),
            "status": as_user(user, "status", **provider),
        }
    finally:
        shutil.rmtree(shared)
    codes = {k: r.returncode for k, r in runs.items()}
    assert codes == {"status before": 1, "want": 0, "path before": 1, "get": 0, "path": 0,
                     "status": 0}, {k: r.stderr for k, r in runs.items()}
    assert str(state / "prefetchd.db") in runs["status before"].stderr
    placed = root / "downloads/a.txt/a.txt"
    assert runs["get"].stdout == runs["path"].stdout == f"{placed}\n"
    assert f"root:     {root}" in runs["status"].stdout
    assert placed.read_bytes() == b"mine"
    assert (state / "prefetchd.db").stat().st_uid == user.pw_uid
    for r in runs.values():
        assert "/var/lib/prefetchd" not in r.stdout + r.stderr
        assert "/mnt/project" not in r.stdout + r.stderr
        assert "Permission denied" not in r.stderr


def test_xdg_variables_choose_the_places(unprivileged_user):
    user = unprivileged_user
    home = Path(user.pw_dir)
    r = as_user(user, "want", "--provider", "http", "https://example.invalid/f",
                XDG_STATE_HOME=str(home / "st"), XDG_DATA_HOME=str(home / "da"))
    assert r.returncode == 0, r.stderr
    assert (home / "st/prefetchd/prefetchd.db").is_file()
    assert (home / "da/prefetchd/.prefetchd").is_dir()
    assert not (home / ".local").exists()
