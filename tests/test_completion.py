"""`prefetchd completion bash|zsh` (issue 21, point 5): scripts made from the command
table, asked for completions by a real bash (and checked by a real zsh)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from prefetchd.cli import commands as cli
from prefetchd.cli import quick
from prefetchd.cli.base import COMMANDS, Command, arg
from prefetchd.records import State

# Fill COMP_WORDS/COMP_CWORD as bash does for the line typed so far (the last word is
# the one being completed), call the function `complete` names, print COMPREPLY.
_ASK = r"""
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
fn=$(complete -p prefetchd | sed -n 's/.*-F \([^ ]*\).*/\1/p')
"$fn" prefetchd "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["completion", shell]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out


def _complete(script: Path, *words: str) -> set[str]:
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", _ASK, "ask", str(script),
                        "prefetchd", *words], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return {w for w in r.stdout.splitlines() if w}


@pytest.fixture
def bash_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    if shutil.which("bash") is None:  # pragma: no cover - bash is everywhere we run
        pytest.fail("bash is not installed")
    path = tmp_path / "prefetchd.bash"
    path.write_text(_script("bash", capsys))
    return path


def test_bash_completes_commands_options_and_states(bash_script):
    assert _complete(bash_script, "re") == {"release"}
    assert _complete(bash_script, "") == set(COMMANDS)
    assert _complete(bash_script, "ls", "--st") == {"--state", "--state-dir"}
    assert _complete(bash_script, "ls", "--state", "") == {s.value for s in State}
    assert _complete(bash_script, "ls", "--state", "re") == {"ready", "retrying"}
    # Global options before the command, with their values, are skipped over.
    assert _complete(bash_script, "--root", "/tmp", "ls", "--state", "f") == {"failed"}
    assert _complete(bash_script, "get", "--ti") == {"--timeout"}
    assert _complete(bash_script, "fleet", "") == {"want", "unwant", "forget", "status"}
    assert _complete(bash_script, "fleet", "want", "") == set()  # file_ids: no list
    assert _complete(bash_script, "completion", "") == {"bash", "zsh"}


def test_a_command_added_to_the_table_completes(monkeypatch, tmp_path, capsys):
    """No list kept by hand: what the table holds is what completes."""
    monkeypatch.setitem(COMMANDS, "zebra", Command(
        lambda a, io: 0, (arg("--stripes", choices=["thin", "wide"]),),
        example="prefetchd zebra --stripes thin"))
    path = tmp_path / "prefetchd.bash"
    path.write_text(_script("bash", capsys))
    assert _complete(path, "ze") == {"zebra"}
    assert _complete(path, "zebra", "--str") == {"--stripes"}
    assert _complete(path, "zebra", "--stripes", "") == {"thin", "wide"}
    assert "zebra" in _script("zsh", capsys)


def test_zsh_accepts_the_script_and_it_names_every_command(tmp_path, capsys):
    if shutil.which("zsh") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("zsh is not installed (.ci/run installs it)")
        pytest.skip("zsh is not installed (apt-get install zsh)")
    text = _script("zsh", capsys)
    path = tmp_path / "_prefetchd"
    path.write_text(text)
    r = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True, check=False)
    assert (r.returncode, r.stderr) == (0, "")
    for name in COMMANDS:
        assert f"'{name}:" in text, name  # in the list _describe offers
        assert f"                {name})\n" in text, name  # and its own options
    assert "(" + " ".join(s.value for s in State) + ")" in text
    # Loaded into a real completion system, it registers for prefetchd.
    r = subprocess.run(["zsh", "-f", "-c", 'autoload -U compinit; compinit -u -d "$2"; '
                        'source "$1"; print -r -- "${_comps[prefetchd]}"', "z", str(path),
                        str(tmp_path / "zcompdump")],
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, "_prefetchd", "")


def test_the_socket_path_leaves_completion_to_the_full_cli():
    assert quick.run(["completion", "bash"]) is None
    assert quick.run(["completion", "zsh"]) is None
