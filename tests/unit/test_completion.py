"""The bash completion files: what the generator writes from the parsers now
(so they cannot drift), valid bash, and completing in a real bash."""

from __future__ import annotations

import argparse
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from offloadd.cli import completion

REPO = Path(__file__).resolve().parents[2]
DIR = REPO / "contrib" / "bash-completion"


@pytest.mark.parametrize(("prog", "build"), completion.programs())
def test_committed_file_is_what_the_parser_generates(
        prog: str, build: Callable[[], argparse.ArgumentParser]) -> None:
    assert (DIR / prog).read_text() == completion.script(prog, build()), (
        f"contrib/bash-completion/{prog} is stale: run `make generate` and commit it")


@pytest.mark.parametrize("prog", [p for p, _ in completion.programs()])
def test_bash_parses_it(prog: str) -> None:
    proc = subprocess.run(["bash", "-n", str(DIR / prog)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


def _complete(words: list[str], cwd: Path) -> list[str]:
    """COMPREPLY of the completion function for `words` (the last is being typed)."""
    prog = words[0]
    script = "\n".join([
        f"source {shlex.quote(str(DIR / prog))}",
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})",
        f"COMP_CWORD={len(words) - 1}",
        # How bash calls it: the command, the word being completed, the one before.
        f"_{prog} {prog} {shlex.quote(words[-1])} {shlex.quote(words[-2])}",
        'for r in "${COMPREPLY[@]}"; do printf "%s\\n" "$r"; done',
    ])
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=30)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return sorted(proc.stdout.splitlines())


CASES = [
    (["offloadctl", "st"], ["status"]),
    (["offloadctl", ""], ["check", "explain", "flows", "reload", "repair", "revalidate", "status"]),
    (["offloadctl", "--j"], ["--json"]),
    # an option's value is skipped
    (["offloadctl", "-c", "/etc/x.toml", "re"], ["reload", "repair", "revalidate"]),
    (["offloadctl", "--config", "=", "a"], ["a.toml"]),  # --config=a, split by bash at '='
    (["offloadctl", "--socket", ""], ["a.toml", "b.toml", "sub"]),
    (["offloadctl", "--json", "explain", ""], ["icmp", "sctp", "tcp", "udp"]),
    (["offloadctl", "explain", "u"], ["udp"]),
    (["offloadctl", "explain", "tcp", ""], []),  # addresses: nothing to offer
    (["offloadctl", "flows", "--"], ["--addr", "--device", "--help", "--top"]),
    (["offloadctl", "flows", "--top", ""], []),
    (["offloadctl", "flows", "--top", "5", "--d"], ["--device"]),
    (["offloadctl", "check", "b"], ["b.toml"]),
    (["offloadctl", "check", "a.toml", ""], []),
    (["offloadctl", "status", "-"], ["--help", "-h"]),
    (["offloadd", "--log-level", "w"], ["warning"]),
    (["offloadd", "--ch"], ["--check"]),
    (["offloadd", "-c", "a"], ["a.toml"]),
]


@pytest.mark.parametrize(("words", "expected"), CASES, ids=[" ".join(w) for w, _ in CASES])
def test_completes(tmp_path: Path, words: list[str], expected: list[str]) -> None:
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    assert _complete(words, tmp_path) == expected


@pytest.mark.parametrize("prog", [p for p, _ in completion.programs()])
def test_sourcing_registers_the_function(prog: str) -> None:
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c",
                           f"source {shlex.quote(str(DIR / prog))}; complete -p {prog}"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == f"complete -F _{prog} {prog}"


def test_an_argument_it_cannot_express_fails_generation() -> None:
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("files", nargs="*")
    with pytest.raises(ValueError, match="nargs='\\*' is not supported"):
        completion.script("x", p)
