"""Config and request-file errors in prefetchd's own words, never pydantic's: the key
named, what was expected, what was given, on one line; request-file sizes take units
as `--size` does; entries are numbered the same way in errors and in the README."""

from __future__ import annotations

import json
import re

import pytest

from prefetchd.config import load_settings
from prefetchd.errors import ConfigError
from prefetchd.inbox.parse import RequestError, parse_request
from tests.conftest import REPO

PYDANTIC_WORDS = ("Input should", "Input tag", "Unable to extract", "Extra inputs",
                  "Value error", "pydantic", "more)")


def config_error(tmp_path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_settings(path, environ={})
    message = str(ei.value)
    assert "\n" not in message
    for words in PYDANTIC_WORDS:
        assert words not in message, message
    prefix = f"{path}: "
    assert message.startswith(prefix), message
    return message[len(prefix):]


@pytest.mark.parametrize("text, expected", [
    ('[providers.http]\nallow_private_networks = true\n',
     'providers.http: missing type (use type = "http")'),
    ('[providers.mirror]\npath = "/srv"\n',
     "providers.mirror: missing type (type = one of openai, http, dir, glm, supabase)"),
    ('[providers.web]\ntype = "https"\n',
     "providers.web.type: 'https' is not one of openai, http, dir, glm, supabase"),
    ('[download]\nconcurency = 3\n',
     "download.concurency: unknown key (did you mean concurrency?)"),
    ('rot = "/x"\n', "rot: unknown key (did you mean root?)"),
    ('[providers.w]\ntype = "http"\nallow_private_network = true\n',
     "providers.w.allow_private_network: unknown key (did you mean allow_private_networks?)"),
    ('[supabase]\nurl = "https://x.example"\nkey = "env:K"\nshema = "s"\n',
     "supabase.shema: unknown key (did you mean schema?)"),
    ('[download]\nconcurrency = "x"\nretries = -1\n',
     "download.concurrency: expected an integer, got 'x'; "
     "download.retries: must be at least 0, got -1"),
    ('log_level = "loud"\n', "log_level: 'loud' is not one of debug, info, warning, error"),
    ('[metrics]\nenabled = "yes please"\n',
     "metrics.enabled: expected true or false, got 'yes please'"),
])
def test_config_errors_in_our_words(tmp_path, text, expected):
    assert config_error(tmp_path, text) == expected


def test_an_environment_variable_is_named_in_our_words(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("")
    with pytest.raises(ConfigError) as ei:
        load_settings(path, environ={"PREFETCHD_DOWNLOAD__CONCURRENCY": "many"})
    assert str(ei.value) == ("PREFETCHD_DOWNLOAD__CONCURRENCY: download.concurrency: "
                             "expected an integer, got 'many'")


def test_request_file_sizes_take_units_like_size_option():
    entries = parse_request("r.json", json.dumps([
        {"file_id": "a", "size": "3MB"}, {"file_id": "b", "size": "2KiB"},
        {"file_id": "c", "size": 7}]).encode())
    assert [e.size for e in entries] == [3_000_000, 2048, 7]
    assert entries[0].options().size == 3_000_000


@pytest.mark.parametrize("entry, expected", [
    ({"size": "big"}, "entry 0: size: 'big' is not a size (use e.g. '500MB'"),
    ({"size": -1}, "entry 0: size: a size cannot be negative"),
    ({"size": True}, "entry 0: size: expected a size such as"),
    ({"pin": "yes"}, "entry 0: pin: expected true or false, got 'yes'"),
    ({"action": "delete"}, "entry 0: action: 'delete' is not one of want, unwant, forget"),
])
def test_request_file_errors_in_our_words(entry, expected):
    with pytest.raises(RequestError) as ei:
        parse_request("r.json", json.dumps({"file_id": "a", **entry}).encode())
    assert str(ei.value).startswith(expected), str(ei.value)
    for words in PYDANTIC_WORDS:
        assert words not in str(ei.value)


def test_entries_are_numbered_as_the_readme_says(env):
    """The README's example error and its numbering rule, from a real rejected file."""
    readme = " ".join((REPO / "README.md").read_text().split())
    example = re.search(r"\(`(entry (\d+) \(file-x\): dest: '\.\./a' contains '\.\.')`\)", readme)
    assert example is not None, "the README's request-file error example"
    assert "Entries are numbered from 0" in readme
    position = int(example.group(2))
    entries = [{"file_id": f"file-{i}"} for i in range(position)]
    entries.append({"file_id": "file-x", "dest": "../a"})
    drop = env.root / ".prefetchd" / "inbox"
    p = env.prefetch()
    try:
        from prefetchd.inbox.watch import Inbox

        inbox = Inbox(p, env.settings().inbox_path, lambda: None)
        try:
            (drop / ".r.json").write_text(json.dumps(entries))
            (drop / ".r.json").rename(drop / "r.json")
            inbox.process("r.json")
            error = json.loads((drop / "failed/r.json.error.json").read_text())["error"]
        finally:
            inbox.close()
    finally:
        p.close()
    assert error == example.group(1)
