"""The devices beneath a selected one (offloadd.core.stack) and what a
flowtable with stack = "lower"/"both" holds (offloadd.core.model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from offloadd.cli.format import format_status
from offloadd.core.attach import AttachMode, attach_plan
from offloadd.core.config import Config, FlowtableConfig, Stack
from offloadd.core.configparse import parse_config
from offloadd.core.errors import ConfigError
from offloadd.core.model import Link, NoteKind, desired_state, set_name
from offloadd.core.stack import Path as StackPath
from offloadd.core.stack import (
    PppoeSessions,
    parse_pppoe,
    resolve,
    stack_identities,
    stale_stacks,
)
from offloadd.service.report import status_report
from offloadd.service.status import Status

# A gateway: br-lan (ports lan0, lan1), PPPoE over VLAN 7 on eth1, WireGuard
# over eth2, a second VLAN on eth1 (IPTV), a port-less bridge.
GATEWAY = (
    Link(2, "eth1", None), Link(3, "eth2", None),
    Link(4, "br-lan", "bridge"), Link(5, "lan0", "veth", master=4),
    Link(6, "lan1", None, master=4), Link(7, "eth1.7", "vlan", lower=2),
    Link(8, "ppp0", "ppp"), Link(9, "wg0", "wireguard"),
    Link(10, "eth1.8", "vlan", lower=2), Link(11, "br-empty", "bridge"),
)
BY_NAME = {link.name: link for link in GATEWAY}
SESSION = PppoeSessions(("eth1.7",), ("00000001",))
PROC_PPPOE = """Id       Address              Device
00000001 02:00:00:00:00:01   eth1.7
"""


def _paths(name: str, pppoe: PppoeSessions = SESSION) -> list[str]:
    return [str(p) for p in resolve(BY_NAME[name], GATEWAY, pppoe).paths]


def test_paths_down_each_kind_of_stack() -> None:
    assert _paths("ppp0") == ["ppp0 → eth1.7 → eth1"]
    assert _paths("br-lan") == ["br-lan → lan0", "br-lan → lan1"]
    assert _paths("eth1.8") == ["eth1.8 → eth1"]
    # The kernel resolves nothing beneath these: they are their own bottom.
    for name in ("wg0", "eth1", "lan0"):
        assert _paths(name) == [name]
        assert not resolve(BY_NAME[name], GATEWAY).stacked
    # A bridge without ports carries nothing.
    assert _paths("br-empty") == []


def test_pppoe_sessions_from_proc() -> None:
    assert parse_pppoe(PROC_PPPOE) == SESSION
    assert parse_pppoe("Id       Address              Device\n") == PppoeSessions()


def test_a_ppp_device_is_resolved_only_when_its_session_is_unambiguous() -> None:
    none = resolve(BY_NAME["ppp0"], GATEWAY, PppoeSessions())
    assert [str(p) for p in none.paths] == ["ppp0"] and "no PPPoE session" in none.note
    # Two sessions on one device: still that device.
    assert _paths("ppp0", PppoeSessions(("eth1.7", "eth1.7"))) == ["ppp0 → eth1.7 → eth1"]
    two = resolve(BY_NAME["ppp0"], GATEWAY, PppoeSessions(("eth1.7", "eth2")))
    assert [str(p) for p in two.paths] == ["ppp0"]
    assert "eth1.7, eth2" in two.note and "used as it is" in two.note


def test_a_loop_in_the_facts_ends() -> None:
    loop = (Link(1, "v1", "vlan", lower=2), Link(2, "v2", "vlan", lower=1))
    assert [str(p) for p in resolve(loop[0], loop).paths] == []
    deep = tuple(Link(i, f"v{i}", "vlan", lower=i + 1) for i in range(1, 20))
    (path,) = resolve(deep[0], deep).paths
    assert len(path.names) == 9
    assert StackPath(("a", "b")).bottom == "b"


def _config(stack: Stack, *more: FlowtableConfig, exclude: tuple[str, ...] = ()) -> Config:
    return Config(flowtables=(FlowtableConfig("ft", devices=("br-lan", "ppp0", "wg0"),
                                              exclude=exclude, stack=stack), *more))


def _state(config: Config, pppoe: PppoeSessions = SESSION) -> tuple[
        dict[str, frozenset[str]], dict[str, frozenset[str]], dict[str, str | None]]:
    d = desired_state(config, GATEWAY, {}, 0, pppoe=pppoe)
    fts = {ft.name: ft.devices for ft in d.table.flowtables}
    guards = {}
    for name in fts:
        guard = d.table.set(set_name(name))
        assert guard is not None
        guards[name] = guard.elements
    return fts, guards, {x.device: x.flowtable for x in d.decisions}


def test_as_listed_is_what_the_config_names() -> None:
    fts, guards, _ = _state(_config(Stack.AS_LISTED))
    assert fts == {"ft": {"br-lan", "ppp0", "wg0"}} and guards == fts


def test_lower_lists_the_devices_beneath_and_guards_the_selected_ones() -> None:
    fts, guards, by_dev = _state(_config(Stack.LOWER))
    assert fts == {"ft": {"lan0", "lan1", "eth1", "wg0"}}
    # The forward hook sees the flow on br-lan and ppp0: the rule must let it in.
    assert guards == {"ft": {"lan0", "lan1", "eth1", "wg0", "br-lan", "ppp0"}}
    assert by_dev["br-lan"] is None and by_dev["ppp0"] is None and by_dev["eth1"] == "ft"
    d = desired_state(_config(Stack.LOWER), GATEWAY, {}, 0, pppoe=SESSION)
    reasons = {x.device: x.reason for x in d.decisions}
    assert "beneath ppp0 (ppp0 → eth1.7 → eth1), stack = lower" in reasons["eth1"]
    assert "the devices beneath it are used instead (ppp0 → eth1.7 → eth1)" in reasons["ppp0"]
    # The repairer and explain map the L3 devices to their flowtable.
    assert d.flowtable_of()["br-lan"] == "ft" and d.flowtable_of()["ppp0"] == "ft"


def test_both_lists_the_selected_devices_and_those_beneath() -> None:
    fts, guards, _ = _state(_config(Stack.BOTH))
    assert fts == {"ft": {"br-lan", "lan0", "lan1", "ppp0", "eth1", "wg0"}}
    assert guards == fts


def test_without_its_session_a_ppp_device_is_used_as_it_is_and_reported() -> None:
    d = desired_state(_config(Stack.LOWER), GATEWAY, {}, 0)
    assert d.table.flowtables[0].devices == {"lan0", "lan1", "ppp0", "wg0"}
    assert [n.kind for n in d.notes if n.device == "ppp0"] == [NoteKind.STACK]


def test_an_excluded_lower_device_is_left_out_with_its_reason() -> None:
    d = desired_state(_config(Stack.LOWER, exclude=("lan1",)), GATEWAY, {}, 0, pppoe=SESSION)
    assert d.table.flowtables[0].devices == {"lan0", "eth1", "wg0"}
    (lan1,) = [x for x in d.decisions if x.device == "lan1"]
    assert lan1.flowtable is None and "excluded by 'lan1'" in lan1.reason


def test_a_lower_device_another_flowtable_has_stays_there_and_is_reported() -> None:
    iptv = FlowtableConfig("iptv", devices=("eth1",))
    config = Config(flowtables=(iptv, *_config(Stack.LOWER).flowtables))
    fts, guards, _ = _state(config)
    assert fts == {"iptv": {"eth1"}, "ft": {"lan0", "lan1", "wg0"}}
    # ppp0's flows through eth1 are not this flowtable's: no guard entry for it.
    assert "ppp0" not in guards["ft"]
    d = desired_state(config, GATEWAY, {}, 0, pppoe=SESSION)
    (note,) = [n for n in d.notes if n.device == "eth1"]
    assert "beneath ppp0" in note.message and "already in flowtable 'iptv'" in note.message


def test_two_vlans_on_one_device_give_one_entry() -> None:
    config = Config(flowtables=(FlowtableConfig("wan", devices=("eth1.*",), stack=Stack.LOWER),))
    d = desired_state(config, GATEWAY, {}, 0)
    assert d.table.flowtables[0].devices == {"eth1"}
    assert [x.device for x in d.decisions if x.flowtable] == ["eth1"]
    assert not d.notes


def test_a_stack_flowtable_declares_its_names_ahead_and_takes_the_stack_once_it_is_there() -> None:
    """With name hooks, stack = "lower" declares the configured names like
    as-listed (the kernel hooks ppp0 the moment pppd creates it); once the
    device is there and its stack known, the devices beneath it replace it."""
    config = _config(Stack.LOWER)
    (fa,) = attach_plan(config, name_hooks=True)
    assert fa.mode is AttachMode.KERNEL and fa.declared == ("br-lan", "ppp0", "wg0")
    assert 'stack = "lower": the devices beneath a stacked one attached by offloadd' in fa.reason
    # The PPPoE session is down: no ppp0, nothing in /proc/net/pppoe.
    down = tuple(link for link in GATEWAY if link.name != "ppp0")
    d = desired_state(config, down, {}, 0, attach=(fa,))
    assert d.table.flowtables[0].devices == {"lan0", "lan1", "ppp0", "wg0"}
    assert d.declared_only() == {"ppp0"}
    # pppd dialled again: ppp0 and its session are there.
    d = desired_state(config, GATEWAY, {}, 0, pppoe=SESSION, attach=(fa,))
    assert d.table.flowtables[0].devices == {"lan0", "lan1", "eth1", "wg0"}
    assert not d.declared_only()
    # Without name hooks offloadd attaches everything itself, as before.
    (fa,) = attach_plan(config, name_hooks=False)
    assert fa.mode is AttachMode.DAEMON


def test_config_key() -> None:
    text = '[[flowtable]]\nname = "ft"\ndevices = ["br-lan"]\nstack = "{}"\n'
    assert parse_config(text.format("both")).flowtables[0].stack is Stack.BOTH
    # The default, chosen from the lab's measurements (README, Real gateways).
    assert parse_config(text.replace('stack = "{}"\n', "")).flowtables[0].stack \
        is Stack.LOWER
    with pytest.raises(ConfigError, match="stack"):
        parse_config(text.format("lowest"))


def test_status_shows_each_stack_and_where_the_fast_path_runs() -> None:
    config = _config(Stack.LOWER)
    status = Status(config_path=Path("/etc/offloadd/offloadd.toml"), links=GATEWAY)
    status.reconcile.desired = desired_state(config, GATEWAY, {}, 0, pppoe=SESSION)
    rep = status_report(status, "offloadd", "inet", status.reconcile.desired.table, now=0.0)
    assert {s["device"]: s["paths"] for s in rep["stacks"]} == {
        "br-lan": ["br-lan → lan0", "br-lan → lan1"], "ppp0": ["ppp0 → eth1.7 → eth1"],
        "wg0": ["wg0"]}
    rep["daemon"]["running"] = True
    text = format_status(rep)
    assert "  ppp0 → eth1.7 → eth1  [flowtable ft]" in text
    assert "  br-lan → lan0; br-lan → lan1  [flowtable ft]" in text
    # wg0 stands for itself (the default stack = "lower" on plain devices):
    # the JSON says so, the text has no line for it.
    assert "  wg0  [flowtable ft]" not in text
    (ft,) = rep["flowtables"]
    assert ft["desired"] == ["eth1", "lan0", "lan1", "wg0"] and ft["in_sync"]


def test_a_stack_that_came_back_as_another_device_or_session_is_stale() -> None:
    ppp = resolve(BY_NAME["ppp0"], GATEWAY, SESSION)
    br = resolve(BY_NAME["br-lan"], GATEWAY, SESSION)
    index = {link.name: link.index for link in GATEWAY}
    kinds = {link.name: link.kind for link in GATEWAY}
    bottoms = {"ppp0": ("eth1",), "br-lan": ("lan0", "lan1")}
    listed = {"eth1", "lan0", "lan1", "wg0"}
    before = stack_identities((ppp, br), index, kinds, SESSION)
    assert before == {"ppp0": (8, ("00000001",)), "br-lan": (4, ())}

    def stale(after: dict[str, tuple[int, tuple[str, ...]]], present: dict[str, int],
              still: set[str] = listed) -> tuple[str, ...]:
        return stale_stacks(before, after, present, bottoms, still)
    # Nothing new: nothing stale (a port joining br-lan changes no identity).
    assert stale(before, index) == ()
    # pppd made a new ppp0 (new ifindex) ...
    moved = {**index, "ppp0": 18}
    assert stale(stack_identities((ppp, br), moved, kinds, SESSION), moved) == ("ppp0",)
    # ... or kept it with a new session ...
    new = PppoeSessions(("eth1.7",), ("00000002",))
    assert stale(stack_identities((ppp, br), index, kinds, new), index) == ("ppp0",)
    # ... or it is gone while eth1 stays listed (another selected device has it).
    gone = {k: v for k, v in index.items() if k != "ppp0"}
    assert stale(stack_identities((br,), gone, kinds, SESSION), gone) == ("ppp0",)
    # Gone with eth1 unhooked: the kernel frees those flows itself.
    assert stale(stack_identities((br,), gone, kinds, SESSION), gone,
                 listed - {"eth1"}) == ()
    # Still there but used as it is (the guard refused its path): not stale.
    assert stale(stack_identities((br,), index, kinds, SESSION), index) == ()
