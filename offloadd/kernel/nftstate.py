"""Turns libnftables listings into the model's TableState (pure parsing).

JSON carries tables, sets, chains and flowtable devices; it does not carry a
flowtable's ``flags offload`` or ``counter``, so those come from the native
listing, and rules are compared as the text nft prints for them. The table is
read from a terse listing of the family's ruleset, the only listing that
fetches no named set's elements with nftables 1.0.6 (the gate's sets may hold
one per flow); the ifname sets' elements come from a listing of each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from offloadd.core.gate import is_passed_declaration, listed_size
from offloadd.core.model import (
    CHAIN_NAME,
    ChainState,
    FlowtableState,
    SetKind,
    SetState,
    TableState,
)

# Families whose "forward" hook sits in the IP forward path that offloaded
# packets skip (bridge/netdev forward hooks are a different path).
_IP_FAMILIES = frozenset({"ip", "ip6", "inet"})
_L4PROTO = re.compile(r"meta l4proto (\{[^}]*\}|\S+)")
# nft prints protocol names only where /etc/protocols exists (not on minimal
# systems), so rules are compared with numbers mapped back to names.
_PROTO_NAMES = {"6": "tcp", "17": "udp"}
_BLOCK = re.compile(r"^\t(flowtable|chain|set|map) (\S+) \{\n(.*?)^\t\}", re.M | re.S)


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    return [str(x) for x in v]


def _blocks(text: str, kind: str) -> dict[str, list[str]]:
    """Body lines of each ``kind`` block of a native table listing."""
    out: dict[str, list[str]] = {}
    for m in _BLOCK.finditer(text):
        if m.group(1) == kind:
            lines = [ln.strip() for ln in m.group(3).splitlines()]
            out[m.group(2).strip('"')] = [ln for ln in lines if ln and not ln.startswith("#")]
    return out


def table_listed(items: Iterable[Mapping[str, Any]], family: str, name: str) -> bool:
    """Whether a JSON listing has the table ``family name``."""
    return any("table" in i and i["table"].get("name") == name
               and i["table"].get("family") == family for i in items)


def table_text(ruleset: str, family: str, name: str) -> str:
    """The ``table family name { ... }`` block of a native ruleset listing
    ("" if absent): other tables may have chains and sets of the same names."""
    head = re.compile(rf"^table {re.escape(family)} \"?{re.escape(name)}\"? \{{$", re.M)
    m = head.search(ruleset)
    if m is None:
        return ""
    end = re.compile(r"^\}$", re.M).search(ruleset, m.end())
    return ruleset[m.start():end.end() if end else len(ruleset)] + "\n"


def canonical_rule(rule: str) -> str:
    def names(m: re.Match[str]) -> str:
        value = re.sub(r"\b(\d+)\b", lambda n: _PROTO_NAMES.get(n.group(1), n.group(1)),
                       m.group(1))
        return f"meta l4proto {value}"
    return _L4PROTO.sub(names, rule)


def ifname_sets(items: Iterable[Mapping[str, Any]], table: str) -> list[str]:
    """Names of the table's ``type ifname`` sets (whose elements are state)."""
    return [i["set"]["name"] for i in items
            if "set" in i and i["set"].get("table") == table and i["set"].get("type") == "ifname"]


def set_elements(items: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The elements of a ``list set`` JSON answer."""
    return frozenset(e for i in items if "set" in i for e in _as_list(i["set"].get("elem")))


def _set_state(st: Mapping[str, Any], body: list[str],
               elements: Mapping[str, frozenset[str]] | None) -> SetState:
    if st.get("type") == "ifname":
        listed = elements.get(st["name"]) if elements is not None else None
        elems = listed if listed is not None else frozenset(_as_list(st.get("elem")))
        wild = "interval" in _as_list(st.get("flags"))
        return SetState(name=st["name"], elements=elems,
                        kind=SetKind.IFNAMES_WILD if wild else SetKind.IFNAMES)
    if is_passed_declaration(dict(st), body):
        return SetState(name=st["name"], kind=SetKind.PASSED, size=listed_size(dict(st)))
    return SetState(name=st["name"], kind=SetKind.OTHER)


def parse_table(items: Iterable[Mapping[str, Any]], text: str, family: str,
                name: str, elements: Mapping[str, frozenset[str]] | None = None
                ) -> TableState | None:
    """offloadd's table from ``list table`` JSON items plus its native text;
    ``elements``: ifname sets' elements, where the items omit them."""
    items = list(items)
    if not table_listed(items, family, name):
        return None
    ft_text = _blocks(text, "flowtable")
    chain_text = _blocks(text, "chain")
    set_text = _blocks(text, "set")
    flowtables = []
    sets = []
    chain: ChainState | None = None
    for item in items:
        if "flowtable" in item:
            ft = item["flowtable"]
            if ft.get("table") != name:
                continue
            body = ft_text.get(ft["name"], [])
            flowtables.append(FlowtableState(
                name=ft["name"], devices=frozenset(_as_list(ft.get("dev"))),
                hardware=any(ln.startswith("flags") and "offload" in ln for ln in body),
                counter="counter" in body, priority=int(ft.get("prio", 0))))
        elif "set" in item:
            st = item["set"]
            if st.get("table") != name:
                continue
            sets.append(_set_state(st, set_text.get(st["name"], []), elements))
        elif "chain" in item:
            ch = item["chain"]
            if ch.get("table") != name or ch.get("name") != CHAIN_NAME:
                continue
            body = chain_text.get(CHAIN_NAME, [])
            rules = tuple(canonical_rule(ln) for ln in body if not ln.startswith("type "))
            chain = ChainState(priority=int(ch.get("prio", 0)), rules=rules)
    return TableState(name=name, family=family, flowtables=tuple(flowtables),
                      sets=tuple(sets), chain=chain)


def other_forward_priorities(items: Iterable[Mapping[str, Any]], own_family: str,
                             own_table: str) -> list[int]:
    """Priorities of every IP forward base chain that is not offloadd's own."""
    out = []
    for item in items:
        ch = item.get("chain")
        if not ch or ch.get("hook") != "forward" or ch.get("family") not in _IP_FAMILIES:
            continue
        if ch.get("family") == own_family and ch.get("table") == own_table:
            continue
        out.append(int(ch.get("prio", 0)))
    return out


def base_chain_hooks(items: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], frozenset[str]]:
    """(family, table) -> the hooks of its base chains, for every table that
    ``list chains`` shows (a table with regular chains only maps to no hook)."""
    out: dict[tuple[str, str], set[str]] = {}
    for item in items:
        ch = item.get("chain")
        if not ch:
            continue
        hooks = out.setdefault((str(ch.get("family")), str(ch.get("table"))), set())
        if ch.get("hook"):
            hooks.add(str(ch["hook"]))
    return {t: frozenset(h) for t, h in out.items()}
