"""The libnftables edge: the only module that talks to nf_tables.

Reads use JSON; writes are native nft scripts run as one batch, because the
JSON input of libnftables 1.0.6 silently drops flowtable ``flags``/``counter``
and turns a device removal into deleting the whole flowtable. The binding is
imported lazily so that ``import offloadd`` works without it and the failure
names the package to install.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from offloadd.core.errors import (
    DeviceVanishedError,
    MissingDependencyError,
    NftError,
    NftOutputError,
    OffloaddError,
)

_ERRNO_TEXT = {
    "No such file or directory": errno.ENOENT,
    "File exists": errno.EEXIST,
    "Operation not supported": errno.EOPNOTSUPP,
    "Operation not permitted": errno.EPERM,
    "Device or resource busy": errno.EBUSY,
    "Invalid argument": errno.EINVAL,
    "Protocol not supported": errno.EPROTONOSUPPORT,
}
_ERROR_LINE = re.compile(r"Error: (.*)")


def load_binding() -> ModuleType:
    try:
        return importlib.import_module("nftables")
    except ImportError as e:
        raise MissingDependencyError(
            "the libnftables Python binding 'nftables' is missing: install python3-nftables "
            "(apt-get install python3-nftables) and use the system python3 or a venv made "
            "with --system-site-packages") from e


class NftRunner(Protocol):
    """What the rest of offloadd needs from libnftables (faked in unit tests)."""

    def run(self, script: str, *, dry_run: bool = False) -> None: ...

    def list_json(self, what: str, *, terse: bool = False) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class NftFailure:
    message: str
    errno: int | None


def parse_error(text: str) -> NftFailure:
    """First 'Error:' line of libnftables' stderr, and the errno it names if any."""
    lines = [m.group(1).strip() for m in map(_ERROR_LINE.search, text.splitlines()) if m]
    message = lines[0] if lines else (text.strip().splitlines() or ["unknown error"])[0]
    code = next((v for k, v in _ERROR_TEXT_ITEMS if k in text), None)
    return NftFailure(message=message, errno=code)


_ERROR_TEXT_ITEMS = tuple(_ERRNO_TEXT.items())


@contextlib.contextmanager
def answer_of(what: str) -> Iterator[None]:
    """Around code that reads a JSON listing's items: an answer of another
    shape than the one expected (a key missing, a list where an object was)
    is an NftOutputError like output that is not JSON (logged, retried),
    never an exception that ends the daemon and removes its table."""
    try:
        yield
    except OffloaddError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise NftOutputError(f"nft list {what}: JSON of an unexpected shape "
                             f"({type(e).__name__}: {e})") from None


def parse_json_listing(what: str, out: str) -> list[dict[str, Any]]:
    """The ``nftables`` array of a JSON listing; NftOutputError if ``out`` is
    not one (a libnftables that prints a warning or two documents, say)."""
    if not out.strip():
        return []
    try:
        data = json.loads(out)
    except ValueError as e:
        raise NftOutputError(f"nft list {what}: output is not JSON ({e}): "
                             f"{out.strip()[:200]!r}") from None
    items = data.get("nftables") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise NftOutputError(f"nft list {what}: JSON without an 'nftables' array of "
                             f"objects: {out.strip()[:200]!r}")
    return items


class Nft:
    """libnftables context bound to the network namespace it was created in."""

    def __init__(self, binding: ModuleType | None = None) -> None:
        mod = binding or load_binding()
        self._ctx: Any = mod.Nftables()

    def run(self, script: str, *, dry_run: bool = False) -> None:
        """Runs ``script`` as one atomic batch; raises NftError and applies nothing on failure."""
        self._ctx.set_json_output(False)
        self._ctx.set_dry_run(dry_run)
        try:
            rc, _out, err = self._ctx.cmd(script)
        finally:
            self._ctx.set_dry_run(False)
        if rc != 0:
            failure = parse_error(err)
            cls = DeviceVanishedError if failure.errno == errno.ENOENT else NftError
            exc = cls(f"nft refused the transaction: {failure.message}")
            exc.errno = failure.errno
            raise exc

    def list_json(self, what: str, *, terse: bool = False) -> list[dict[str, Any]]:
        """``list <what>`` as the JSON ``nftables`` array (e.g. ``ruleset``);
        ``terse`` leaves set elements out."""
        self._ctx.set_json_output(True)
        self._ctx.set_terse_output(terse)
        try:
            rc, out, err = self._ctx.cmd(f"list {what}")
        finally:
            self._ctx.set_terse_output(False)
        if rc != 0:
            failure = parse_error(err)
            exc = NftError(f"nft list {what}: {failure.message}")
            exc.errno = failure.errno
            raise exc
        return parse_json_listing(what, out)

    def has_element(self, where: str, value: str) -> bool:
        """Whether set ``where`` (``family table set``) holds ``value``."""
        self._ctx.set_json_output(False)
        rc, _out, _err = self._ctx.cmd(f"get element {where} {{ {value} }}")
        return bool(rc == 0)

    def list_text(self, what: str, *, terse: bool = False) -> str:
        """Native listing, for what JSON does not carry (flowtable flags, counter)."""
        self._ctx.set_json_output(False)
        self._ctx.set_terse_output(terse)
        try:
            rc, out, err = self._ctx.cmd(f"list {what}")
        finally:
            self._ctx.set_terse_output(False)
        if rc != 0:
            raise NftError(f"nft list {what}: {parse_error(err).message}")
        return str(out)
