"""Reading one TOML table with error messages that point at the key.

Why: every config section needs the same checks (unknown keys with a
did-you-mean, exact TOML types, enums, ranges) and the same message style,
one line naming the key path, the bad value as written and what would be
valid; here they are written once, apart from what each section means.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Mapping
from typing import Any

from offloadd.core.errors import ConfigError


def q(value: object) -> str:
    """Show a value the way it was written in TOML, on one line."""
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(q(v) for v in value) + "]"
    return repr(value).replace("\n", " ")


def choices(values: object) -> str:
    assert isinstance(values, (tuple, list, frozenset, set))
    return ", ".join(q(v) for v in sorted(values))


_TYPE_NAMES: Mapping[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "an array",
    dict: "a table",
}


def _type_name(value: object) -> str:
    for typ, name in _TYPE_NAMES.items():
        if type(value) is typ:
            return name
    return f"a {type(value).__name__}"


class Section:
    """A TOML table being read, remembering its path for error messages."""

    def __init__(self, data: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
        self._data = data
        self._path = path
        for key in data:
            if key not in known:
                self._unknown(key, known)

    def _unknown(self, key: str, known: tuple[str, ...]) -> None:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown key {self.key(key)}; {hint}known keys: {', '.join(known)}")

    def key(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, typ: type, default: Any) -> Any:
        if key not in self._data:
            return default
        value = self._data[key]
        # bool is an int subclass in Python but not in TOML.
        if type(value) is not typ:
            raise ConfigError(
                f"{self.key(key)}: {q(value)} is {_type_name(value)}; "
                f"it must be {_TYPE_NAMES.get(typ, typ.__name__)}"
            )
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        items = self.get(key, list, [])
        for i, item in enumerate(items):
            if type(item) is not str:
                raise ConfigError(
                    f"{self.key(key)}[{i}]: {q(item)} is {_type_name(item)}; it must be a string"
                )
        return tuple(items)


def enum_value(section: Section, key: str, enum_type: type[enum.Enum], default: Any) -> Any:
    raw = section.get(key, str, None)
    if raw is None:
        return default
    try:
        return enum_type(raw)
    except ValueError:
        raise ConfigError(
            f"{section.key(key)}: {q(raw)} is not valid; "
            f"use one of {', '.join(q(m.value) for m in enum_type)}"
        ) from None


def int_in(section: Section, key: str, default: int, lo: int, hi: int) -> int:
    value: int = section.get(key, int, default)
    if not lo <= value <= hi:
        raise ConfigError(f"{section.key(key)}: {value} is out of range; use {lo}..{hi}")
    return value
