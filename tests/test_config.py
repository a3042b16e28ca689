"""Config: TOML + PREFETCHD_* environment + secret references, validated with key names."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefetchd.config import (
    DEFAULT_ROOT,
    DEFAULT_STATE_DIR,
    ConfigWarning,
    load_settings,
    parse_duration,
    parse_size,
    resolve_secret,
)
from prefetchd.config import load as load_module
from prefetchd.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_defaults_without_a_file(tmp_path):
    s = load_settings(root=tmp_path / "r", state_dir=tmp_path / "s", environ={})
    assert s.root == tmp_path / "r"
    assert s.download.concurrency == 8
    assert s.provider_config("http").type == "http"


@pytest.fixture
def no_system_config(tmp_path, monkeypatch):
    """No /etc/prefetchd/config.toml, whatever this machine has."""
    monkeypatch.setattr(load_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")


def as_uid(monkeypatch, uid: int) -> None:
    monkeypatch.setattr(load_module.os, "geteuid", lambda: uid)


def test_a_user_without_a_config_gets_xdg_places(tmp_path, monkeypatch, no_system_config):
    as_uid(monkeypatch, 1000)
    s = load_settings(environ={"HOME": "/home/u"})
    assert s.state_dir == Path("/home/u/.local/state/prefetchd")
    assert s.root == Path("/home/u/.local/share/prefetchd")
    s = load_settings(environ={"HOME": "/home/u", "XDG_STATE_HOME": "/x/state",
                               "XDG_DATA_HOME": "/x/data"})
    assert (s.state_dir, s.root) == (Path("/x/state/prefetchd"), Path("/x/data/prefetchd"))
    # The spec: a relative XDG path is invalid and ignored.
    s = load_settings(environ={"HOME": "/home/u", "XDG_STATE_HOME": "rel"})
    assert s.state_dir == Path("/home/u/.local/state/prefetchd")


def test_given_places_beat_the_per_user_ones(tmp_path, monkeypatch, no_system_config):
    as_uid(monkeypatch, 1000)
    s = load_settings(environ={"HOME": "/home/u", "PREFETCHD_STATE_DIR": str(tmp_path / "s")})
    assert (s.state_dir, s.root) == (tmp_path / "s", Path("/home/u/.local/share/prefetchd"))
    s = load_settings(root=tmp_path / "r", environ={"HOME": "/home/u"})
    assert (s.state_dir, s.root) == (Path("/home/u/.local/state/prefetchd"), tmp_path / "r")


def test_root_and_a_config_file_keep_the_system_places(tmp_path, monkeypatch,
                                                        no_system_config):
    as_uid(monkeypatch, 0)
    s = load_settings(environ={"HOME": "/root"})
    assert (s.state_dir, s.root) == (DEFAULT_STATE_DIR, DEFAULT_ROOT)
    # A config file is the system's way (the daemon's own user is not root either).
    as_uid(monkeypatch, 1000)
    s = load_settings(write(tmp_path, 'default_provider = "http"\n'), environ={"HOME": "/h"})
    assert (s.state_dir, s.root) == (Path("/var/lib/prefetchd"), Path("/mnt/project"))


def test_a_user_with_no_home_is_told_what_to_set(tmp_path, monkeypatch, no_system_config):
    as_uid(monkeypatch, 4_000_000_000)  # not in the password database
    with pytest.raises(ConfigError, match="no HOME and no XDG_"):
        load_settings(environ={})
    s = load_settings(root=tmp_path / "r", state_dir=tmp_path / "s", environ={})
    assert s.state_dir == tmp_path / "s"


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    p = write(tmp_path, 'root = "r"\n[providers.m]\ntype = "dir"\npath = "src"\n')
    s = load_settings(p, environ={})
    assert s.root == tmp_path / "r"
    assert s.providers["m"].path == tmp_path / "src"


@pytest.mark.parametrize(
    "text, expected",
    [
        ('bogus = 1\n', "bogus: unknown key"),
        ('[download]\nconcurency = 3\n', "download.concurency: unknown key"),
        ('[download]\nconcurrency = 0\n', "download.concurrency"),
        ('[download]\nstall_timeout = "soon"\n',
         "download.stall_timeout: 'soon' is not a duration"),
        ('[limits]\nmax_file_size = "lots"\n', "limits.max_file_size: 'lots' is not a size"),
        ('[providers.x]\ntype = "ftp"\n', "providers.x"),
        ('[providers.x]\ntype = "dir"\n', "providers.x.path"),
        ('[providers.x]\ntype = "dir"\npath = "/a"\nextra = 1\n', "providers.x.extra: unknown key"),
        ('default_provider = "nope"\n', "default_provider: no provider named 'nope'"),
        ('root = [1\n', "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as ei:
        load_settings(write(tmp_path, text), environ={})
    assert expected in str(ei.value)
    assert "\n" not in str(ei.value)


def test_literal_secret_is_refused_without_echo(tmp_path):
    p = write(tmp_path, '[providers.k]\ntype = "openai"\napi_key = "sk-live-abcdef123456"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(p, environ={})
    assert "providers.k.api_key" in str(ei.value)
    assert "sk-live" not in str(ei.value)


def test_environment_overrides(tmp_path):
    p = write(tmp_path, '[download]\nconcurrency = 3\n')
    env = {"PREFETCHD_DOWNLOAD__CONCURRENCY": "5", "PREFETCHD_ROOT": str(tmp_path / "x"),
           "PREFETCHD_LIMITS__MAX_FILE_SIZE": "1GiB"}
    s = load_settings(p, environ=env)
    assert s.download.concurrency == 5
    assert s.root == tmp_path / "x"
    assert s.limits.max_file_size == 1 << 30
    with pytest.raises(ConfigError, match="PREFETCHD_DOWNLOAD__CONCURRENCY: download.concurrency"):
        load_settings(p, environ={"PREFETCHD_DOWNLOAD__CONCURRENCY": "many"})  # bad value


def test_unknown_environment_variable_is_a_warning(tmp_path):
    p = write(tmp_path, '[download]\nconcurrency = 3\n')
    warned: list[str] = []
    s = load_settings(p, warn=warned.append, environ={
        "PREFETCHD_DOWNLOD__CONCURRENCY": "5", "PREFETCHD_TEST_PG": "postgresql://x@y/test",
        "PREFETCHD_DOWNLOAD__RETRIES": "2", "PREFETCHD_DOWNLOAD__CONCURENCY": "9"})
    assert s.download.concurrency == 3 and s.download.retries == 2
    assert sorted(warned) == [
        "PREFETCHD_DOWNLOAD__CONCURENCY: download.concurency is not a prefetchd setting; ignored",
        "PREFETCHD_DOWNLOD__CONCURRENCY: downlod.concurrency is not a prefetchd setting; "
        "ignored",
        "PREFETCHD_TEST_PG: test_pg is not a prefetchd setting; ignored"]
    with pytest.warns(ConfigWarning, match="PREFETCHD_TEST_PG"):
        load_settings(p, environ={"PREFETCHD_TEST_PG": "x"})
    # The same unknown key in the file is still an error.
    p = write(tmp_path, '[download]\nconcurency = 3\n')
    with pytest.raises(ConfigError, match="download.concurency: unknown key"):
        load_settings(p, environ={"PREFETCHD_DOWNLOAD__CONCURENCY": "9"}, warn=warned.append)


def test_cli_warns_about_an_unknown_variable_and_goes_on(env):
    env.environ["PREFETCHD_TEST_PG"] = "postgresql://postgres@127.0.0.1/test"
    r = env.invoke("want", "file-a", "--size", "500MB")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("prefetchd: warning: PREFETCHD_TEST_PG: test_pg is not a prefetchd "
                        "setting; ignored\n")
    r = env.invoke("want", "file-b", "--size", "500MiB")
    assert r.returncode == 0, r.stderr
    del env.environ["PREFETCHD_TEST_PG"]
    with env.prefetch() as p:
        assert p.manifest.get("file-a").expected_size == 500_000_000
        assert p.manifest.get("file-b").expected_size == 524_288_000
    r = env.invoke("want", "file-c", "--size", "lots")
    assert r.returncode == 2 and "'lots' is not a size" in r.stderr


def test_cli_options_beat_environment(tmp_path):
    s = load_settings(root=tmp_path / "cli", environ={"PREFETCHD_ROOT": str(tmp_path / "env")})
    assert s.root == tmp_path / "cli"


def test_secret_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("K1", "from-env")
    assert resolve_secret("env:K1", "k").get_secret_value() == "from-env"
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert resolve_secret(f"file:{f}", "k").get_secret_value() == "from-file"
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "kimi_api_key").write_text("from-cred")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert resolve_secret("credential:kimi_api_key", "k").get_secret_value() == "from-cred"
    with pytest.raises(ConfigError, match="providers.kimi.api_key: environment variable NOPE"):
        resolve_secret("env:NOPE", "providers.kimi.api_key")
    with pytest.raises(ConfigError, match="not a plain name"):
        resolve_secret("credential:../etc/passwd", "k")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        resolve_secret("credential:kimi_api_key", "k")


def test_secret_repr_hides_value(monkeypatch):
    monkeypatch.setenv("K1", "hunter2-secret")
    s = resolve_secret("env:K1", "k")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("1h30m", 5400), ("24h", 86400),
                                           ("500ms", 0.5), ("7d", 604800), (12, 12)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "1x", "h", "1h 30", -1, True])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("text, n", [("512KiB", 512 * 1024), ("10GiB", 10 << 30), ("1000", 1000),
                                     ("500MB", 500_000_000), ("500MiB", 524_288_000),
                                     ("500mb", 500_000_000), ("1.5M", 1_500_000),
                                     ("1.5 GiB", 3 << 29), ("2kB", 2000), ("2k", 2000),
                                     (42, 42), ("7B", 7)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "lots", "5 xB", "-5", "1e3", -1, True, 1.5])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_config_sizes_are_decimal_or_binary_as_written(tmp_path):
    p = write(tmp_path, '[limits]\nmax_file_size = "500MB"\n'
                        'max_size_by_type = { pdf = "200MiB" }\n')
    s = load_settings(p, environ={})
    assert s.limits.max_file_size == 500_000_000
    assert s.limits.max_size_by_type == {"pdf": 200 << 20}


def test_cli_config_error_exit_2_one_line(env):
    env.config.write_text(env.config.read_text() + "\n[retention]\nbogus = 1\n")
    r = env.invoke("ls")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "retention.bogus: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_config_file(env, tmp_path):
    r = env.invoke("--config", str(tmp_path / "nope.toml"), "ls")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_secret_never_in_logs_errors_or_status(env, server, monkeypatch):
    secret = "sk-very-secret-0123456789"
    server.api_key = "something-else"
    text = env.config.read_text().replace(
        '[providers.files]\ntype = "openai"', '[providers.files]\ntype = "openai"\n'
        'api_key = "env:FILES_KEY"')
    env.config.write_text(text)
    env.environ["FILES_KEY"] = secret
    server.add("file-x", b"abc")
    r = env.invoke("-v", "get", "file-x")
    s = env.invoke("status", "--json")
    ls = env.invoke("ls", "--json")
    assert r.returncode == 1
    for out in (r.stdout, r.stderr, s.stdout, s.stderr, ls.stdout):
        assert secret not in out
    assert "401" in r.stderr


def test_shipped_configs_are_valid():
    from tests.conftest import REPO

    for name in ("example.toml", "quickstart.toml"):
        load_settings(REPO / "config" / name, environ={})
