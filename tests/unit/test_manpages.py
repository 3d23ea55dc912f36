"""The man pages: what the generator writes now (so they cannot drift), every
option of the parsers and every key the config parser knows in its page, and
groff renders each without a warning."""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from offloadd.cli import ctl, manpages, run
from offloadd.cli.manpages import esc
from offloadd.core.configparse import parse_config
from offloadd.core.errors import ConfigError
from offloadd.service.daemon import SIGNALS

MAN = Path(__file__).resolve().parents[2] / "man"
PAGES = sorted(manpages.pages())


def _page(name: str) -> str:
    return (MAN / name).read_text()


def _section(text: str, title: str) -> str:
    """One .SH section of a page's source."""
    head = f'.SH "{title}"' if " " in title else f".SH {title}"
    return text.split(f"\n{head}\n")[1].split("\n.SH ", maxsplit=1)[0]


@pytest.mark.parametrize("name", PAGES)
def test_committed_page_is_what_the_generator_writes(name: str) -> None:
    assert _page(name) == manpages.pages()[name], (
        f"man/{name} is stale: run `make generate` and commit it")


def _walk(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """(command, action) for every argument of a parser ("") and of its commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((name, a) for a in sub._actions)
        else:
            yield "", action


@pytest.mark.parametrize(("page", "build"), [("offloadd.8", run.build_parser),
                                             ("offloadctl.8", ctl.build_parser)])
def test_every_option_and_command_is_in_its_page(
        page: str, build: Callable[[], argparse.ArgumentParser]) -> None:
    text = _page(page)
    for command, action in _walk(build()):
        if command:
            assert f"\n.SS {command}\n" in text, command
        for opt in action.option_strings:
            assert f"\\fB{esc(opt)}\\fR" in text, (command, opt)
        if not action.option_strings:
            word = action.metavar or action.dest.upper()
            assert f"\\fI{esc(str(word))}\\fR" in text, (command, word)
        for choice in action.choices or ():
            assert esc(str(choice)) in text, (command, action.dest, choice)


def _known_keys(table: str | None) -> list[str]:
    """The keys the config parser itself lists when it meets an unknown one."""
    ft = '[[flowtable]]\nname = "a"\ndevices = ["x"]\n'
    text = {None: "zzz_unknown = 1\n" + ft, "flowtable": ft + "zzz_unknown = 1\n"}.get(
        table, f"[{table}]\nzzz_unknown = 1\n{ft}")
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return str(e.value).split("known keys: ")[1].split(", ")


def test_every_config_key_is_in_the_config_page() -> None:
    text = _page("offloadd.toml.5")
    for table in _known_keys(None):
        title = "[[flowtable]]" if table == "flowtable" else f"[{table}]"
        body = _section(text, title)
        for key in _known_keys(table):
            assert f"\n\\fB{esc(key)}\\fR = " in body, f"{table}.{key}"


def test_exit_status_and_signals_are_in_the_pages() -> None:
    for page, table in (("offloadd.8", run.EXIT_STATUS), ("offloadctl.8", ctl.EXIT_STATUS)):
        body = _section(_page(page), "EXIT STATUS")
        assert re.findall(r"\\fB(\d+)\\fR", body) == [str(code) for code, _ in table]
    signals = _section(_page("offloadd.8"), "SIGNALS")
    assert re.findall(r"\\fB(SIG\w+)\\fR", signals) == [s.name for s in SIGNALS]


def test_the_config_example_parses() -> None:
    config = parse_config("\n".join(manpages.CONFIG_EXAMPLE))
    assert config.flowtables[0].name == "lan"


@pytest.mark.parametrize("name", PAGES)
def test_groff_renders_it_without_warnings(name: str) -> None:
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(MAN / name)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for title in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert f"\n{title}\n" in re.sub(r".\x08", "", proc.stdout), title


def test_make_install_docs_puts_them_where_man_and_bash_look(tmp_path: Path) -> None:
    repo = MAN.parent
    subprocess.run(["make", "-s", "-C", str(repo), "install-docs", f"DESTDIR={tmp_path}"],
                   check=True, capture_output=True, timeout=60)
    share = tmp_path / "usr" / "local" / "share"
    for name in PAGES:
        assert (share / "man" / f"man{name[-1]}" / name).read_text() == _page(name)
    for prog in ("offloadctl", "offloadd"):
        installed = share / "bash-completion" / "completions" / prog
        assert installed.read_text() == (repo / "contrib" / "bash-completion" / prog).read_text()
