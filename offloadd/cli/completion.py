"""Bash completion for offloadctl and offloadd, generated from their parsers.

Why generated: a hand-written completion drifts from the commands and options
it completes. This reads the argparse parsers themselves (commands, options,
which options take a value, choices, file arguments) and writes one bash
function per program; the files under contrib/bash-completion are its output,
and a unit test fails when they differ from what it would write now.

    python -m offloadd.cli.completion contrib/bash-completion   (make generate)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from offloadd.cli import ctl, run


@dataclass(frozen=True)
class Arg:
    """An option or positional argument, as far as completion cares."""

    names: tuple[str, ...]  # option strings; () for a positional argument
    takes_value: bool
    words: tuple[str, ...] = ()  # the values it accepts, if argparse knows them
    files: bool = False  # its value is a file name


@dataclass(frozen=True)
class Context:
    """The top level of a program ("") or one of its commands."""

    name: str
    options: tuple[Arg, ...]
    positionals: tuple[Arg, ...]
    commands: tuple[Context, ...] = ()


def programs() -> tuple[tuple[str, Callable[[], argparse.ArgumentParser]], ...]:
    """The programs that get a completion file, with their parsers."""
    return (("offloadctl", ctl.build_parser), ("offloadd", run.build_parser))


def _arg(action: argparse.Action) -> Arg:
    if action.nargs not in (None, 0, "?"):
        # Repeated arguments would need counting rules this generator lacks;
        # failing here is better than a completion that silently lies.
        raise ValueError(f"{action.dest}: nargs={action.nargs!r} is not supported")
    words = tuple(str(c) for c in action.choices) if action.choices else ()
    return Arg(tuple(action.option_strings), action.nargs != 0, words, action.type is Path)


def context(parser: argparse.ArgumentParser, name: str = "") -> Context:
    """What `parser` accepts, read from its actions."""
    options: list[Arg] = []
    positionals: list[Arg] = []
    commands: list[Context] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands += [context(sub, cmd) for cmd, sub in action.choices.items()]
        elif action.option_strings:
            options.append(_arg(action))
        else:
            positionals.append(_arg(action))
    return Context(name, tuple(options), tuple(positionals), tuple(commands))


def _contexts(top: Context) -> Iterator[Context]:
    yield top
    yield from top.commands


def _words(words: tuple[str, ...] | list[str]) -> str:
    return f'mapfile -t COMPREPLY < <(compgen -W "{" ".join(words)}" -- "$cur")'


_FILES = 'compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur")'


def _value(arg: Arg) -> str | None:
    """The bash that completes `arg`'s value, or None: free text, nothing to offer."""
    if arg.words:
        return _words(arg.words)
    return _FILES if arg.files else None


def script(prog: str, parser: argparse.ArgumentParser) -> str:
    """The bash completion file for `prog`."""
    top = context(parser)
    func = "_" + re.sub(r"\W", "_", prog)
    with_value = [f"{c.name}/{n}" for c in _contexts(top) for o in c.options if o.takes_value
                  for n in o.names]
    out = [
        f"# bash completion for {prog}(8)                          -*- shell-script -*-",
        f"# Generated from {prog}'s argument parser by `python -m offloadd.cli.completion`",
        "# (make generate); do not edit: tests/unit/test_completion.py fails when it drifts.",
        "",
        f"{func}()",
        "{",
        '    local cur=${COMP_WORDS[COMP_CWORD]} cmd="" value_of="" npos=0 i w',
        "    COMPREPLY=()",
        "    # The words before the cursor: the command, an option still waiting for",
        "    # its value (\"--opt=value\" arrives as three words), positionals given.",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        w=${COMP_WORDS[i]}",
        '        if [[ -n $value_of ]]; then',
        '            [[ $w == = ]] || value_of=""',
        "            continue",
        "        fi",
        '        case "$cmd/$w" in',
    ]
    if with_value:
        out.append(f"            {'|'.join(with_value)}) value_of=$w ;;")
    out.append("            */-*) ;;")
    if top.commands:
        out.append("            /*) cmd=$w ;;")
    out += [
        "            *) npos=$((npos + 1)) ;;",
        "        esac",
        "    done",
        '    if [[ -n $value_of ]]; then',
        '        [[ $cur == = ]] && cur=""',
        '        case "$cmd/$value_of" in',
    ]
    for c in _contexts(top):
        for o in c.options:
            code = _value(o) if o.takes_value else None
            if code is not None:
                out.append(f"            {'|'.join(f'{c.name}/{n}' for n in o.names)}) {code} ;;")
    out += [
        "        esac",
        "        return 0",
        "    fi",
        '    case "$cmd" in',
    ]
    for c in _contexts(top):
        out += [
            f'        "{c.name}")',
            "            if [[ $cur == -* ]]; then",
            f"                {_words([n for o in c.options for n in o.names])}",
        ]
        if c.commands:
            out += ["            else", f"                {_words([s.name for s in c.commands])}"]
        else:
            cases = [(i, _value(p)) for i, p in enumerate(c.positionals)]
            cases = [(i, code) for i, code in cases if code is not None]
            if cases:
                out += ["            else", '                case "$npos" in']
                out += [f"                    {i}) {code} ;;" for i, code in cases]
                out.append("                esac")
        out += ["            fi", "            ;;"]
    out += [
        "    esac",
        "    return 0",
        "}",
        f"complete -F {func} {prog}",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m offloadd.cli.completion",
                                description="Write the bash completion files.")
    p.add_argument("directory", type=Path, help="where to write them (contrib/bash-completion)")
    args = p.parse_args(argv)
    args.directory.mkdir(parents=True, exist_ok=True)
    for prog, build in programs():
        (args.directory / prog).write_text(script(prog, build()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
