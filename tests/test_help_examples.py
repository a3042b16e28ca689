"""Each command's `--help` ends with one example line (issue 21, point 5): a command
line of that command that the parser takes as written. `--help` is the full CLI's."""

from __future__ import annotations

import shlex

import pytest

from prefetchd.cli import commands as cli
from prefetchd.cli import quick
from prefetchd.cli.base import COMMANDS


def _help(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([name, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_commands_help_shows_an_example_the_parser_takes(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal wraps the help, not the example
    lines = _help(name, capsys).splitlines()
    assert "example:" in lines, lines
    example = lines[lines.index("example:") + 1].strip()
    words = shlex.split(example)
    assert words[0] == "prefetchd"
    parsed = cli.build_parser().parse_args(words[1:])
    assert parsed.command == name


def test_the_parsers_command_table_is_the_one_walked():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == set(COMMANDS)


@pytest.mark.parametrize("name", sorted(quick.COMMANDS))
def test_help_goes_through_the_full_cli(name):
    assert quick.run([name, "--help"]) is None
    assert quick.run([name, "-h"]) is None
