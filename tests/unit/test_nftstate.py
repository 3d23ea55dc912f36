"""Parsing real nft 1.0.6 listings (captured in the lab VM) into TableState."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from offloadd.core.model import ChainState, FlowtableState, SetKind, SetState
from offloadd.kernel.nftstate import (
    ifname_sets,
    other_forward_priorities,
    parse_table,
    set_elements,
    table_listed,
    table_text,
)

DATA = Path(__file__).with_name("data")


def _items() -> list[dict[str, object]]:
    return list(json.loads((DATA / "table.json").read_text())["nftables"])


def test_parse_captured_table() -> None:
    state = parse_table(_items(), (DATA / "table.nft").read_text(), "inet", "offloadd")
    assert state is not None
    assert state.flowtable("ft") == FlowtableState("ft", frozenset({"lan0", "wan0"}),
                                                   hardware=False, counter=True, priority=0)
    assert state.flowtable("hw") == FlowtableState("hw", frozenset({"lan1"}), False, True, -5)
    assert state.flowtable("empty") == FlowtableState("empty", frozenset(), False, False, 0)
    assert state.set("ft_ifs") == SetState("ft_ifs", frozenset({"lan0", "wan0"}))
    assert state.set("empty_ifs") == SetState("empty_ifs", frozenset())
    assert state.chain == ChainState(100, (
        "meta l4proto { tcp, udp } iifname @ft_ifs oifname @ft_ifs flow add @ft",
        "meta l4proto tcp iifname @empty_ifs oifname @empty_ifs ct packets > 10 flow add @empty",
    ))


def test_flags_offload_line_means_hardware() -> None:
    text = (DATA / "table.nft").read_text().replace(
        "devices = { lan1 }\n", "devices = { lan1 }\n\t\tflags offload\n")
    state = parse_table(_items(), text, "inet", "offloadd")
    assert state is not None and state.flowtable("hw") is not None
    assert state.flowtable("hw").hardware  # type: ignore[union-attr]


def test_absent_table_is_none() -> None:
    assert parse_table(_items(), "", "inet", "other") is None


def test_other_forward_priorities_excludes_own_and_non_ip() -> None:
    items: list[dict[str, Any]] = [
        {"chain": {"family": "inet", "table": "offloadd", "name": "forward", "hook": "forward",
                   "prio": 11}},
        {"chain": {"family": "ip", "table": "fw", "name": "f", "hook": "forward", "prio": 10}},
        {"chain": {"family": "ip6", "table": "fw6", "name": "f", "hook": "forward",
                   "prio": -3}},
        {"chain": {"family": "bridge", "table": "br", "name": "f", "hook": "forward",
                   "prio": 500}},
        {"chain": {"family": "inet", "table": "x", "name": "in", "hook": "input", "prio": 900}},
        {"chain": {"family": "inet", "table": "x", "name": "regular"}},
    ]
    assert sorted(other_forward_priorities(items, "inet", "offloadd")) == [-3, 10]


def test_numeric_protocols_read_as_names() -> None:
    # A system without /etc/protocols (netbase) lists protocol numbers.
    text = (DATA / "table.nft").read_text().replace("{ tcp, udp }", "{ 6, 17 }").replace(
        "meta l4proto tcp ", "meta l4proto 6 ")
    state = parse_table(_items(), text, "inet", "offloadd")
    assert state is not None and state.chain is not None
    assert state.chain.rules[0].startswith("meta l4proto { tcp, udp } iifname @ft_ifs")
    assert state.chain.rules[1].startswith("meta l4proto tcp iifname @empty_ifs")
    assert "ct packets > 10" in state.chain.rules[1]


def _terse() -> tuple[list[dict[str, object]], str]:
    items = list(json.loads((DATA / "terse.json").read_text())["nftables"])
    return items, (DATA / "terse.nft").read_text()


def test_terse_listing_with_the_gate_and_elements_listed_per_set() -> None:
    # Captured on 6.1 (nft 1.0.6) from a table offloadd created, after two
    # elements were put in passed_original: the terse listing has no elements.
    # (The gate's sets and rules rewritten for its per-flow key, 2026-12-03:
    # nft 1.0.6 on 6.1 lists the rewritten file back identically.)
    items, text = _terse()
    assert ifname_sets(items, "offloadd") == ["bulk_ifs", "ft_ifs"]
    ft_ifs = set_elements(json.loads((DATA / "set_ft_ifs.json").read_text())["nftables"])
    assert ft_ifs == {"lan0", "wan0"}
    state = parse_table(items, text, "inet", "offloadd",
                        {"ft_ifs": ft_ifs, "bulk_ifs": frozenset()})
    assert state is not None
    assert state.set("ft_ifs") == SetState("ft_ifs", frozenset({"lan0", "wan0"}))
    assert state.set("passed_original") == SetState("passed_original", kind=SetKind.PASSED)
    assert state.set("passed_reply") == SetState("passed_reply", kind=SetKind.PASSED)
    assert state.passed_size == 1_048_576
    assert state.chain is not None and len(state.chain.rules) == 8


def test_a_gate_set_declared_otherwise_reads_as_other() -> None:
    items, text = _terse()
    # What only the native listing shows: typeof and the dynamic flag.
    # (The first: offloadd's gate before it was keyed on the ports too.)
    for change in (("typeof ct id . th sport . th dport", "typeof ct id"),
                   ("flags dynamic,timeout", "flags timeout")):
        state = parse_table(items, text.replace(*change, 1), "inet", "offloadd", {})
        assert state is not None and state.set("passed_original") is not None
        assert state.set("passed_original").kind is SetKind.OTHER  # type: ignore[union-attr]
        assert state.set("passed_reply").kind is SetKind.PASSED  # type: ignore[union-attr]
    # What JSON shows: the timeout, and how often expired elements are
    # collected (a set of an offloadd before that was declared: re-created).
    for key, value in (("timeout", 60), ("gc-interval", None)):
        changed = [{"set": {**i["set"], key: value}} if "set" in i else i  # type: ignore[dict-item]
                   for i in items]
        state = parse_table(changed, text, "inet", "offloadd", {})
        assert state is not None and all(s.kind is not SetKind.PASSED for s in state.sets)


def _resized(items: list[dict[str, object]], name: str,
             size: int | None) -> list[dict[str, object]]:
    """The listing with set ``name``'s size changed (None: none listed)."""
    out: list[dict[str, object]] = []
    for i in items:
        st = i.get("set")
        if isinstance(st, dict) and st.get("name") == name:
            st = {k: v for k, v in st.items() if k != "size"}
            if size is not None:
                st["size"] = size
            out.append({"set": st})
        else:
            out.append(i)
    return out


def test_a_gate_set_of_another_size_reads_as_the_gate_with_that_size() -> None:
    # Grown with nf_conntrack_max, or made larger by hand: still the gate (the
    # planner keeps it if large enough, offloadd.core.plan).
    items, text = _terse()
    state = parse_table(_resized(items, "passed_reply", 8_388_608), text, "inet", "offloadd",
                        {})
    assert state is not None
    reply, original = state.set("passed_reply"), state.set("passed_original")
    assert reply is not None and original is not None
    assert reply.kind is SetKind.PASSED and reply.size == 8_388_608
    assert original.kind is SetKind.PASSED and original.size == 1_048_576
    assert state.passed_size == 1_048_576
    # No size listed: no cap offloadd declared, read as 0 (re-created with one).
    state = parse_table(_resized(items, "passed_reply", None), text, "inet", "offloadd", {})
    assert state is not None and state.set("passed_reply") is not None
    assert state.set("passed_reply").kind is SetKind.PASSED  # type: ignore[union-attr]
    assert state.set("passed_reply").size == 0  # type: ignore[union-attr]


def test_an_interval_ifname_set_and_a_wildcard_flowtable_read_back() -> None:
    # The shapes nft 1.1.7 lists (7.3.4): "dev" is a string for one device,
    # an interval ifname set's wildcard element a plain string.
    items: list[dict[str, Any]] = [
        {"table": {"family": "inet", "name": "offloadd", "handle": 1}},
        {"flowtable": {"family": "inet", "name": "edge", "table": "offloadd", "handle": 2,
                       "hook": "ingress", "prio": 0, "dev": "oflpw*"}},
        {"set": {"family": "inet", "name": "edge_ifs", "table": "offloadd", "type": "ifname",
                 "handle": 3, "flags": ["interval"], "elem": ["lan0", "oflpw*"]}},
        {"set": {"family": "inet", "name": "plain_ifs", "table": "offloadd", "type": "ifname",
                 "handle": 4, "elem": ["lan1"]}},
    ]
    listed = {"nftables": [{"metainfo": {"version": "1.1.7"}}, items[2]]}
    assert set_elements(listed["nftables"]) == {"lan0", "oflpw*"}
    state = parse_table(items, "", "inet", "offloadd")
    assert state is not None
    assert state.flowtable("edge") == FlowtableState("edge", frozenset({"oflpw*"}), False,
                                                     False, 0)
    assert state.set("edge_ifs") == SetState("edge_ifs", frozenset({"lan0", "oflpw*"}),
                                             SetKind.IFNAMES_WILD)
    assert state.set("plain_ifs") == SetState("plain_ifs", frozenset({"lan1"}), SetKind.IFNAMES)


def _ruleset() -> tuple[list[dict[str, object]], str]:
    # Captured with nft 1.0.6 (`nft -t [-j] list ruleset inet`) with 100k ids
    # in each gate set: the listing has none of them, and holds an admin's
    # table with a chain of the same name as offloadd's.
    items = list(json.loads((DATA / "ruleset_terse.json").read_text())["nftables"])
    return items, (DATA / "ruleset_terse.nft").read_text()


def test_own_table_cut_from_a_ruleset_listing() -> None:
    items, text = _ruleset()
    own = table_text(text, "inet", "offloadd")
    assert own.startswith("table inet offloadd {\n") and own.endswith("\n}\n")
    assert "blocked4" not in own and "lan9" not in own
    assert table_text(text, "inet", "admin").count("chain forward {") == 1
    assert table_text(text, "inet", "nope") == "" and table_text(text, "ip", "admin") == ""
    assert table_listed(items, "inet", "admin") and not table_listed(items, "ip", "admin")
    lan_ifs = set_elements(json.loads((DATA / "set_lan_ifs.json").read_text())["nftables"])
    state = parse_table(items, own, "inet", "offloadd", {"lan_ifs": lan_ifs})
    assert state is not None and state.chain is not None
    assert state.chain.priority == 11 and len(state.chain.rules) == 4
    assert all("lan9" not in r and "blocked4" not in r for r in state.chain.rules)
    assert state.set("lan_ifs") == SetState("lan_ifs", frozenset({"lo", "wan0"}))
    assert {s.name for s in state.sets} == {"lan_ifs", "passed_original", "passed_reply"}
    assert state.set("passed_reply") == SetState("passed_reply", kind=SetKind.PASSED)
