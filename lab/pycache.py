"""Writes the bytecode a lab guest's Python will need into sys.pycache_prefix.

Why: in the guest the root and the repo are read-only 9p mounts, so its
Python keeps bytecode under a pycache prefix on tmpfs (reading .pyc files
over 9p made every process start ~15 % slower than tmpfs, 2026-12-03) — but
a prefix ignores the bytecode beside the sources, so every VM compiled the
standard library, the site packages and offloadd again under TCG (the
daemon's first import 11.3 s, later ones 3.4 s). vm-test.sh runs this
natively, with the guest's interpreter and sys.path (the host's, or the
root's own in a chroot), and the guest unpacks the result into its prefix.

Run with PYTHONPYCACHEPREFIX set; imports every module of the given
packages (and what they import), then compiles each module loaded from
source into the prefix. Prints how many.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pkgutil
import py_compile
import sys


def _import_all(package: str) -> None:
    """``package`` and its modules, those this interpreter can import (a root
    without hypothesis has no hypothesis plugin)."""
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), package + "."):
        with contextlib.suppress(Exception):
            importlib.import_module(info.name)


def main(packages: list[str]) -> int:
    if not sys.pycache_prefix:
        print("pycache.py: PYTHONPYCACHEPREFIX is not set", file=sys.stderr)
        return 2
    for package in packages:
        _import_all(package)
    done = 0
    for mod in list(sys.modules.values()):
        src = getattr(mod, "__file__", None)
        if src and src.endswith(".py"):
            try:
                py_compile.compile(src, cfile=importlib.util.cache_from_source(src),
                                   doraise=True)
                done += 1
            except (OSError, py_compile.PyCompileError):
                pass
    print(f"{done} modules compiled into {sys.pycache_prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
