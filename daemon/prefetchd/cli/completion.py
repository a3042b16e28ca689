"""`prefetchd completion bash|zsh`: a completion script made from the argparse command
table, so that a command or option added to the CLI completes without a list kept by
hand. The table is read once (`table`) and written out per shell."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

# Options whose value is a path: completed as files or folders; others have no list.
FILES = frozenset({"--config"})
DIRS = frozenset({"--root", "--state-dir"})


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]
    help: str
    valued: bool
    choices: tuple[str, ...]


@dataclass(frozen=True)
class Positional:
    name: str
    many: bool
    choices: tuple[str, ...]


@dataclass(frozen=True)
class Cmd:
    name: str
    help: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...]


def _first_line(text: str | None) -> str:
    """The help's first sentence: a completion menu shows one short line."""
    if not text or text == argparse.SUPPRESS:
        return ""
    flat = " ".join(text.split())
    head, dot, _ = flat.partition(". ")
    return head.rstrip(".:") if dot else flat.rstrip(".")


def _choices(action: argparse.Action) -> tuple[str, ...]:
    return tuple(str(c) for c in action.choices) if action.choices else ()


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    return tuple(Option(tuple(a.option_strings), _first_line(a.help), a.nargs != 0,
                        _choices(a))
                 for a in parser._actions if a.option_strings)


def table(parser: argparse.ArgumentParser) -> tuple[tuple[Option, ...], tuple[Cmd, ...]]:
    """The top-level options, and every command with its options and positionals."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: _first_line(a.help) for a in sub._choices_actions}
    cmds = []
    for name, sp in sub.choices.items():
        positionals = tuple(
            Positional(a.metavar if isinstance(a.metavar, str) else a.dest,
                       a.nargs in ("*", "+"), _choices(a))
            for a in sp._actions if not a.option_strings)
        cmds.append(Cmd(name, helps.get(name, ""), _options(sp), positionals))
    return _options(parser), tuple(cmds)


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    top, cmds = table(parser)
    return bash(top, cmds) if shell == "bash" else zsh(top, cmds)


# -- bash -------------------------------------------------------------------------------


def bash(top: tuple[Option, ...], cmds: tuple[Cmd, ...]) -> str:
    prog = "prefetchd"
    valued = sorted({n for opts in (top, *(c.options for c in cmds))
                     for o in opts if o.valued for n in o.names})
    flags = {n for opts in (top, *(c.options for c in cmds)) for o in opts if not o.valued
             for n in o.names}
    clash = flags & set(valued)
    if clash:  # the scan below skips a valued option's value whatever the command
        raise ValueError(f"options both valued and not: {sorted(clash)}")
    cases = [_bash_case("", top, tuple(c.name for c in cmds))]
    cases += [_bash_case(c.name, c.options,
                         c.positionals[0].choices if c.positionals else ()) for c in cmds]
    return f"""# bash completion for {prog}, made by `{prog} completion bash` from its commands.
# Load it now: source <({prog} completion bash); for every shell: save it as
# /etc/bash_completion.d/{prog} (or ~/.local/share/bash-completion/completions/{prog}).
_{prog}() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" cmd="" i n=0 opts="" args=""
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    COMPREPLY=()
    # The command: the first word that is neither an option nor an option's value;
    # n: how many positionals follow it before the word being completed.
    for (( i = 1; i < COMP_CWORD; i++ )); do
        case "${{COMP_WORDS[i]}}" in
            {"|".join(valued)}) i=$((i + 1)) ;;
            -*) ;;
            *) if [[ -z "$cmd" ]]; then cmd="${{COMP_WORDS[i]}}"; else n=$((n + 1)); fi ;;
        esac
    done
    case "$prev" in
        {"|".join(sorted(FILES))}) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
        {"|".join(sorted(DIRS))}) mapfile -t COMPREPLY < <(compgen -d -- "$cur"); return ;;
    esac
    case "$cmd" in
{"".join(cases)}        *) return ;;
    esac
    if [[ "$cur" == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
    elif (( n == 0 )); then
        mapfile -t COMPREPLY < <(compgen -W "$args" -- "$cur")
    fi
}}
complete -F _{prog} {prog}
"""


def _bash_case(name: str, options: tuple[Option, ...], args: tuple[str, ...]) -> str:
    """One command's branch: the values of its options with choices, its options, and
    the words its first positional takes (the commands, at the top)."""
    label = shlex.quote(name) if name else "''"
    lines = [f"        {label})\n"]
    with_choices = [o for o in options if o.choices]
    if with_choices:
        lines.append('            case "$prev" in\n')
        for o in with_choices:
            lines.append(f"                {'|'.join(o.names)}) mapfile -t COMPREPLY < "
                         f"<(compgen -W {shlex.quote(' '.join(o.choices))} -- \"$cur\"); "
                         "return ;;\n")
        lines.append("            esac\n")
    names = " ".join(n for o in options for n in o.names)
    lines.append(f"            opts={shlex.quote(names)}\n")
    lines.append(f"            args={shlex.quote(' '.join(args))} ;;\n")
    return "".join(lines)


# -- zsh --------------------------------------------------------------------------------


def _zq(text: str) -> str:
    """A word for zsh, single-quoted."""
    return "'" + text.replace("'", "'\\''") + "'"


def _zesc(text: str) -> str:
    """Text inside an _arguments spec's [description]."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def _zspecs(options: tuple[Option, ...]) -> list[str]:
    specs = []
    for o in options:
        for n in o.names:
            spec = f"{n}[{_zesc(o.help)}]"
            if o.valued:
                if o.choices:
                    action = "(" + " ".join(o.choices) + ")"
                elif n in FILES:
                    action = "_files"
                elif n in DIRS:
                    action = "_files -/"
                else:
                    action = " "
                spec += f":{n.lstrip('-')}:{action}"
            specs.append(_zq(spec))
    return specs


def _zpositionals(cmd: Cmd) -> list[str]:
    specs = []
    for p in cmd.positionals:
        action = "(" + " ".join(p.choices) + ")" if p.choices else " "
        specs.append(_zq(f"{'*' if p.many else ''}:{_zesc(p.name)}:{action}"))
    return specs


def zsh(top: tuple[Option, ...], cmds: tuple[Cmd, ...]) -> str:
    cont = " \\\n"
    described = "\n".join(f"        {_zq(c.name + ':' + c.help)}" for c in cmds)
    branches = "".join(
        f"                {c.name})\n                    _arguments{cont}"
        + cont.join(f"                        {s}"
                    for s in _zspecs(c.options) + _zpositionals(c))
        + " ;;\n"
        for c in cmds)
    top_specs = cont.join(f"        {s}" for s in _zspecs(top))
    positionals = cont.join(("        '1:command:->command'", "        '*::argument:->argument'"))
    return f"""#compdef prefetchd
# zsh completion for prefetchd, made by `prefetchd completion zsh` from its command table.
# Save it as _prefetchd in a folder on $fpath (then compinit),
# or load it now: source <(prefetchd completion zsh)

_prefetchd() {{
    local curcontext="$curcontext" state line
    typeset -A opt_args
    local -a commands
    commands=(
{described}
    )
    _arguments -C{cont}{top_specs}{cont}{positionals}
    case $state in
        command)
            _describe -t commands 'prefetchd command' commands ;;
        argument)
            case $words[1] in
{branches}            esac ;;
    esac
}}

if [[ "${{funcstack[1]}}" == _prefetchd ]]; then
    _prefetchd "$@"
else
    compdef _prefetchd prefetchd
fi
"""
