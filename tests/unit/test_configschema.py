"""The config schema (core/configschema.py) agrees with the parser: the keys it
knows, what a missing key means, the values and types it accepts; and the
README's configuration reference names every key."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from offloadd.core.configparse import parse_config
from offloadd.core.configschema import BOOLEAN, INTEGER, KEYS, STRING, STRINGS, TABLES, Key
from offloadd.core.errors import ConfigError
from offloadd.core.tomlsection import q

README = Path(__file__).resolve().parents[2] / "README.md"

# kinds as well as devices: either may then be left out or emptied.
BASE: dict[str, Any] = {"daemon": {}, "metrics": {}, "control": {},
                        "flowtable": [{"name": "lan", "devices": ["eth0"], "kinds": ["ether"]}]}


def _toml(doc: dict[str, Any]) -> str:
    lines = []
    for t in TABLES:
        for body in doc[t.name] if t.array else [doc[t.name]]:
            lines.append(f"[[{t.name}]]" if t.array else f"[{t.name}]")
            lines += [f"{k} = {q(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def _with(key: Key, value: object = None, *, drop: bool = False) -> str:
    doc = copy.deepcopy(BASE)
    body = doc[key.table][0] if key.table == "flowtable" else doc[key.table]
    if drop:
        body.pop(key.name, None)
    else:
        body[key.name] = list(value) if isinstance(value, tuple) else value
    return _toml(doc)


def _ids(keys: Any) -> list[str]:
    return [k.path for k in keys]


def _known_by_parser(table: str) -> list[str]:
    """The keys the parser lists when it meets an unknown one."""
    text = ('[[flowtable]]\nname = "a"\ndevices = ["x"]\nzzz_unknown = 1\n'
            if table == "flowtable" else f'[{table}]\nzzz_unknown = 1\n'
            '[[flowtable]]\nname = "a"\ndevices = ["x"]\n')
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    return str(e.value).split("known keys: ")[1].split(", ")


@pytest.mark.parametrize("table", [t.name for t in TABLES])
def test_the_parser_knows_exactly_the_schema_keys(table: str) -> None:
    assert _known_by_parser(table) == [k.name for k in KEYS if k.table == table]


def test_the_parser_knows_exactly_the_schema_tables() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config('[zzz_unknown]\n[[flowtable]]\nname = "a"\ndevices = ["x"]\n')
    assert str(e.value).split("known keys: ")[1].split(", ") == [t.name for t in TABLES]


WITH_DEFAULT = [k for k in KEYS if k.default is not None]


@pytest.mark.parametrize("key", WITH_DEFAULT, ids=_ids(WITH_DEFAULT))
def test_a_missing_key_means_its_default(key: Key) -> None:
    assert parse_config(_with(key, key.default)) == parse_config(_with(key, drop=True))


@pytest.mark.parametrize("key", [k for k in KEYS if k.default is None],
                         ids=_ids(k for k in KEYS if k.default is None))
def test_a_key_without_default_is_required_or_optional(key: Key) -> None:
    if key.required:
        with pytest.raises(ConfigError, match=f"{key.name}: missing"):
            parse_config(_with(key, drop=True))
    else:
        parse_config(_with(key, drop=True))


WITH_VALUES = [k for k in KEYS if k.values]


@pytest.mark.parametrize("key", WITH_VALUES, ids=_ids(WITH_VALUES))
def test_exactly_the_listed_values_are_accepted(key: Key) -> None:
    for value in key.values:
        parse_config(_with(key, [value] if key.type == STRINGS else value))
    with pytest.raises(ConfigError) as e:
        parse_config(_with(key, ["zzz"] if key.type == STRINGS else "zzz"))
    for value in key.values:  # the error lists every valid value
        assert q(value) in str(e.value), (value, str(e.value))


WRONG = {STRING: (1, "it must be a string"), INTEGER: ("1", "it must be an integer"),
         BOOLEAN: ("yes", "it must be a boolean"), STRINGS: ("x", "it must be an array")}


@pytest.mark.parametrize("key", KEYS, ids=_ids(KEYS))
def test_a_value_of_another_type_is_refused(key: Key) -> None:
    sample, message = WRONG.get(key.type, (True, 'use "auto" or an integer'))
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        parse_config(_with(key, sample))
    assert key.name in str(e.value)


def test_the_readme_reference_names_every_key() -> None:
    text = README.read_text()
    reference = text.split("## Configuration reference")[1].split("\n## ")[0]
    for key in KEYS:
        names = [f"`{key.path}`", f"`{key.name}`", f"`[[{key.table}]] {key.name}`"]
        assert any(n in reference for n in names), f"README lacks {key.path}"
