"""desired_state: selector semantics, hardware split, first-flowtable-wins,
and the auto forward priority."""

from __future__ import annotations

import pytest

from offloadd.core.attach import attach_plan
from offloadd.core.config import (
    Config,
    FlowtableConfig,
    Hardware,
    device_name_problem,
    is_safe_ifname,
)
from offloadd.core.configparse import parse_config
from offloadd.core.errors import ConfigError
from offloadd.core.gate import PASSED_SIZE, gate_size, sized_by
from offloadd.core.model import (
    ChainState,
    FlowtableState,
    Link,
    NoteKind,
    SetKind,
    SetState,
    TableState,
    auto_forward_priority,
    desired_state,
    offload_rules,
    selector_matches,
)

LINKS = (
    Link(1, "eth0", None),
    Link(2, "eth1", None),
    Link(3, "wan0", "vlan"),
    Link(4, "wan9", "vlan"),
    Link(5, "lan3", "bridge"),
    Link(6, "lan10", "bridge"),
    Link(7, "veth0", "veth"),
    Link(8, "wg0", "wireguard"),
)


def _config(*fts: FlowtableConfig) -> Config:
    return Config(flowtables=fts)


def _devices(config: Config, links: tuple[Link, ...] = LINKS) -> dict[str, frozenset[str]]:
    result = desired_state(config, links, {}, 0)
    return {ft.name: ft.devices for ft in result.table.flowtables}


@pytest.mark.parametrize(
    ("ft", "expected"),
    [
        (FlowtableConfig("a", devices=("eth0",)), {"eth0"}),
        (FlowtableConfig("a", devices=("eth*",)), {"eth0", "eth1"}),
        (FlowtableConfig("a", devices=("lan[0-9]",)), {"lan3"}),  # not lan10
        (FlowtableConfig("a", devices=("wan*",), exclude=("wan9",)), {"wan0"}),
        (FlowtableConfig("a", kinds=frozenset({"vlan"})), {"wan0", "wan9"}),
        (FlowtableConfig("a", kinds=frozenset({"ether"})), {"eth0", "eth1"}),
        (
            FlowtableConfig("a", kinds=frozenset({"ether", "bridge"}), exclude=("lan1*",)),
            {"eth0", "eth1", "lan3"},
        ),
        # devices AND kinds: both must match
        (
            FlowtableConfig("a", devices=("*0",), kinds=frozenset({"vlan", "veth"})),
            {"wan0", "veth0"},
        ),
        (FlowtableConfig("a", devices=("nomatch*",)), set()),
    ],
)
def test_selector_semantics(ft: FlowtableConfig, expected: set[str]) -> None:
    assert _devices(_config(ft))["a"] == expected
    assert {link.name for link in LINKS if selector_matches(ft, link)} == expected


def test_excluded_device_has_a_decision() -> None:
    ft = FlowtableConfig("a", devices=("wan*",), exclude=("wan9",))
    result = desired_state(_config(ft), LINKS, {}, 0)
    by_dev = {d.device: d for d in result.decisions}
    assert by_dev["wan9"].flowtable is None
    assert "excluded by 'wan9'" in by_dev["wan9"].reason
    assert by_dev["wan0"].flowtable == "a"
    assert "eth0" not in by_dev  # matched nothing: no decision


def test_off_builds_one_software_flowtable_set_and_rule() -> None:
    config = parse_config(
        '[daemon]\ntable = "t"\n[[flowtable]]\nname = "lan"\ndevices = ["eth*"]\n'
        'protocols = ["tcp"]\nelephant_packets = 7\ncounter = false\npriority = -3\n'
    )
    result = desired_state(config, LINKS, lambda _: True, 42)
    assert result.table == TableState(
        name="t",
        family="inet",
        flowtables=(FlowtableState("lan", frozenset({"eth0", "eth1"}), False, False, -3),),
        sets=(SetState("lan_ifs", frozenset({"eth0", "eth1"})),
              SetState("passed_original", kind=SetKind.PASSED),
              SetState("passed_reply", kind=SetKind.PASSED)),
        chain=ChainState(
            42,
            ("ct state established ct direction original iifname @lan_ifs oifname @lan_ifs "
             "update @passed_original { ct id . tcp sport . tcp dport } "
             "ct id . tcp sport . tcp dport @passed_reply ct packets > 7 flow add @lan",
             "ct state established ct direction reply iifname @lan_ifs oifname @lan_ifs "
             "update @passed_reply { ct id . tcp dport . tcp sport } "
             "ct id . tcp dport . tcp sport @passed_original ct packets > 7 flow add @lan"),
        ),
    )


def test_auto_splits_by_capability_and_hw_rule_comes_first() -> None:
    ft = FlowtableConfig("lan", devices=("eth*", "wan0"), hardware=Hardware.AUTO)
    result = desired_state(_config(ft), LINKS, {"eth0": True, "wan0": False}, 0)
    table = result.table
    hw, sw = table.flowtable("lan_hw"), table.flowtable("lan")
    assert hw is not None and sw is not None
    assert (hw.devices, hw.hardware) == (frozenset({"eth0"}), True)
    assert (sw.devices, sw.hardware) == (frozenset({"eth1", "wan0"}), False)
    assert table.set("lan_hw_ifs") == SetState("lan_hw_ifs", frozenset({"eth0"}))
    assert table.chain is not None
    assert table.chain.rules == (
        *offload_rules("lan_hw", ("tcp", "udp"), 0),
        *offload_rules("lan", ("tcp", "udp"), 0),
    )
    decisions = {d.device: d for d in result.decisions}
    assert decisions["eth0"].hardware and decisions["eth0"].flowtable == "lan_hw"
    assert not decisions["eth1"].hardware and decisions["eth1"].flowtable == "lan"
    assert result.problems == ()


def test_hardware_rules_precede_software_rules_across_flowtables() -> None:
    config = _config(
        FlowtableConfig("a", devices=("eth0",)),
        FlowtableConfig("b", devices=("eth1",), hardware=Hardware.REQUIRED),
    )
    table = desired_state(config, LINKS, {"eth1": True}, 0).table
    assert table.chain is not None
    assert [r.rsplit("@", 1)[1] for r in table.chain.rules if "flow add" in r] == [
        "b_hw", "b_hw", "a", "a"]


def test_required_leaves_out_and_reports_non_capable_devices() -> None:
    ft = FlowtableConfig("lan", devices=("eth*",), hardware=Hardware.REQUIRED)
    result = desired_state(_config(ft), LINKS, lambda dev: dev == "eth0", 0)
    assert [f.name for f in result.table.flowtables] == ["lan_hw"]
    assert result.table.flowtables[0].devices == frozenset({"eth0"})
    assert [(p.device, p.kind) for p in result.problems] == [("eth1", NoteKind.NOT_HW_CAPABLE)]
    assert "cannot offload in hardware" in result.problems[0].message


def test_capability_mapping_missing_key_means_not_capable() -> None:
    ft = FlowtableConfig("lan", devices=("eth0",), hardware=Hardware.AUTO)
    table = desired_state(_config(ft), LINKS, {}, 0).table
    assert table.flowtable("lan") == FlowtableState("lan", frozenset({"eth0"}), False, True)


def test_device_matching_two_flowtables_stays_in_first() -> None:
    config = _config(
        FlowtableConfig("a", devices=("wan*",)),
        FlowtableConfig("b", kinds=frozenset({"vlan"})),
    )
    result = desired_state(config, LINKS, {}, 0)
    assert result.table.flowtable("a") == FlowtableState(
        "a", frozenset({"wan0", "wan9"}), False, True
    )
    assert result.table.flowtable("b") == FlowtableState("b", frozenset(), False, True)
    notes = [(n.device, n.kind) for n in result.notes]
    assert notes == [("wan0", NoteKind.ALSO_MATCHES), ("wan9", NoteKind.ALSO_MATCHES)]
    assert result.notes[0].message == "wan0 also matches flowtable 'b'; kept in 'a'"
    assert result.problems == ()


def test_device_excluded_by_first_goes_to_second() -> None:
    config = _config(
        FlowtableConfig("a", devices=("wan*",), exclude=("wan9",)),
        FlowtableConfig("b", kinds=frozenset({"vlan"})),
    )
    devices = _devices(config)
    assert devices == {"a": {"wan0"}, "b": {"wan9"}}


def test_no_device_in_two_flowtables_with_auto() -> None:
    config = _config(
        FlowtableConfig("a", devices=("eth*",), hardware=Hardware.AUTO),
        FlowtableConfig("b", devices=("*",)),
    )
    table = desired_state(config, LINKS, {"eth0": True}, 0).table
    seen: list[str] = [d for ft in table.flowtables for d in ft.devices]
    assert len(seen) == len(set(seen)) == len(LINKS)


def test_empty_flowtables_still_exist_so_device_changes_stay_small() -> None:
    config = _config(FlowtableConfig("a", devices=("none*",), hardware=Hardware.AUTO))
    table = desired_state(config, (), {}, 7).table
    assert [f.name for f in table.flowtables] == ["a", "a_hw"]
    assert [s.name for s in table.sets if s.kind is SetKind.IFNAMES] == ["a_hw_ifs", "a_ifs"]
    assert table.chain is not None and len(table.chain.rules) == 4  # 2 per flowtable


def test_unsafe_kernel_names_are_left_out_and_reported() -> None:
    links = (Link(1, 'ev"il', None), Link(2, "eth0", None))
    result = desired_state(_config(FlowtableConfig("a", devices=("*",))), links, {}, 0)
    assert result.table.flowtables[0].devices == frozenset({"eth0"})
    assert [p.kind for p in result.problems] == [NoteKind.UNSAFE_NAME]


def test_kernel_refused_devices_are_left_out_of_flowtable_and_set() -> None:
    links = (Link(1, "eth0", None), Link(2, "eth1", None))
    result = desired_state(_config(FlowtableConfig("a", devices=("eth*",))), links, {}, 0,
                           refused={"eth1": "Operation not supported"})
    assert result.table.flowtables[0].devices == frozenset({"eth0"})
    assert result.table.sets[0].elements == frozenset({"eth0"})
    (note,) = result.problems
    assert note.kind is NoteKind.KERNEL_REFUSED and "Operation not supported" in note.message


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("eth0", True),
        ("a.b-c@d", True),
        ("", False),
        ('a"b', False),
        ("a b", False),
        ("a\\b", False),
        ("a\nb", False),
        ("x" * 16, False),
        ("x" * 15, True),
    ],
)
def test_is_safe_ifname(name: str, ok: bool) -> None:
    assert is_safe_ifname(name) is ok


def test_offload_rule_forms() -> None:
    # As nft prints them (rules are compared so): several protocols need
    # "meta l4proto" for "th"; with one, "udp sport" implies it. Each
    # direction's packet records itself and needs the other direction's.
    assert offload_rules("lan", ("tcp", "udp"), 0) == (
        "ct state established ct direction original meta l4proto { tcp, udp } "
        "iifname @lan_ifs oifname @lan_ifs "
        "update @passed_original { ct id . th sport . th dport } "
        "ct id . th sport . th dport @passed_reply flow add @lan",
        "ct state established ct direction reply meta l4proto { tcp, udp } "
        "iifname @lan_ifs oifname @lan_ifs "
        "update @passed_reply { ct id . th dport . th sport } "
        "ct id . th dport . th sport @passed_original flow add @lan",
    )
    assert offload_rules("x", ("udp",), 3) == (
        "ct state established ct direction original iifname @x_ifs oifname @x_ifs "
        "update @passed_original { ct id . udp sport . udp dport } "
        "ct id . udp sport . udp dport @passed_reply ct packets > 3 flow add @x",
        "ct state established ct direction reply iifname @x_ifs oifname @x_ifs "
        "update @passed_reply { ct id . udp dport . udp sport } "
        "ct id . udp dport . udp sport @passed_original ct packets > 3 flow add @x",
    )


def test_the_gate_marks_each_direction_of_each_flowtables_flows() -> None:
    config = _config(
        FlowtableConfig("a", devices=("eth0",), protocols=("udp",)),
        FlowtableConfig("b", devices=("eth1",), protocols=("tcp", "udp")),
    )
    table = desired_state(config, LINKS, {}, 0).table
    assert table.chain is not None
    # Only flows between one flowtable's devices are recorded, in its
    # protocols; each packet records its direction and offloads only once
    # the other direction's are recorded too.
    assert table.chain.rules == (
        *offload_rules("a", ("udp",), 0), *offload_rules("b", ("tcp", "udp"), 0))
    assert table.chain.rules[0].startswith(
        "ct state established ct direction original iifname @a_ifs oifname @a_ifs "
        "update @passed_original { ct id . udp sport . udp dport } ")
    assert table.chain.rules[3].startswith(
        "ct state established ct direction reply meta l4proto { tcp, udp } "
        "iifname @b_ifs oifname @b_ifs update @passed_reply { ct id . th dport . th sport } ")
    assert all("@passed_original" in r and "@passed_reply" in r and "flow add" in r
               for r in table.chain.rules)
    assert {s.name for s in table.sets if s.kind is SetKind.PASSED} == {
        "passed_original", "passed_reply"}


def test_no_flowtables_no_gate() -> None:
    table = desired_state(_config(), LINKS, {}, 0).table
    assert table.sets == () and table.chain is not None and table.chain.rules == ()


@pytest.mark.parametrize(
    ("conntrack_max", "size"),
    [(None, PASSED_SIZE), (0, PASSED_SIZE), (-1, PASSED_SIZE), (65536, PASSED_SIZE),
     (524288, PASSED_SIZE), (524289, 1_048_578), (1_048_576, 2_097_152),
     (4_194_304, 8_388_608), (2**31 - 1, 2**32 - 2), (2**32, 2**32 - 1)],
)
def test_the_gate_holds_twice_the_conntrack_limit_at_least_the_default(
        conntrack_max: int | None, size: int) -> None:
    assert gate_size(conntrack_max) == size


def test_why_the_gate_has_its_size() -> None:
    assert sized_by(2_097_152, 1_048_576) == "2 x nf_conntrack_max 1048576"
    assert sized_by(PASSED_SIZE, 262144) == "the minimum; 2 x nf_conntrack_max 262144 is less"
    assert sized_by(PASSED_SIZE, None) == "the minimum; nf_conntrack_max unreadable"
    assert sized_by(8_388_608, 262144) == (
        "kept as found, larger than offloadd's 1048576: the minimum; "
        "2 x nf_conntrack_max 262144 is less")
    assert sized_by(PASSED_SIZE, 4_194_304) == (
        "below offloadd's 8388608: 2 x nf_conntrack_max 4194304; re-created at the next "
        "reconcile")


def test_the_gate_sets_have_the_given_size() -> None:
    config = _config(FlowtableConfig("a", devices=("eth0",)))
    table = desired_state(config, LINKS, {}, 0).table
    assert {s.size for s in table.sets if s.kind is SetKind.PASSED} == {PASSED_SIZE}
    table = desired_state(config, LINKS, {}, 0, gate_size=8_388_608).table
    assert {s.size for s in table.sets if s.kind is SetKind.PASSED} == {8_388_608}
    assert table.passed_size == 8_388_608
    assert table.set("a_ifs") == SetState("a_ifs", frozenset({"eth0"}))
    assert table.set("a_ifs").size == 0  # type: ignore[union-attr]
    assert desired_state(_config(), LINKS, {}, 0, gate_size=8).table.passed_size == 0


def test_a_gate_sets_size_is_not_part_of_the_state_compared() -> None:
    # Verify compares tables with ==: a set kept larger than desired is no mismatch.
    small = SetState("passed_reply", kind=SetKind.PASSED, size=PASSED_SIZE)
    assert small == SetState("passed_reply", kind=SetKind.PASSED, size=4 * PASSED_SIZE)
    # The smaller set decides: a flow needs its key in both.
    table = TableState("t", "inet", sets=(
        small, SetState("passed_original", kind=SetKind.PASSED, size=2 * PASSED_SIZE)))
    assert table.passed_size == PASSED_SIZE


@pytest.mark.parametrize(
    ("others", "expected"),
    [((), 0), ((-300, -150), 0), ((0,), 1), ((10, 300, -5), 301), ((2**31 - 2,), 2**31 - 1)],
)
def test_auto_forward_priority(others: tuple[int, ...], expected: int) -> None:
    assert auto_forward_priority(others) == expected


def test_auto_forward_priority_overflow() -> None:
    with pytest.raises(ConfigError, match=r"daemon\.priority"):
        auto_forward_priority([2**31 - 1])


def test_table_state_is_canonical_and_rejects_duplicates() -> None:
    a = FlowtableState("a", frozenset(), False, True)
    b = FlowtableState("b", frozenset(), False, True)
    assert TableState("t", "inet", (b, a)) == TableState("t", "inet", (a, b))
    with pytest.raises(ValueError, match="duplicate flowtable"):
        TableState("t", "inet", (a, a))


# A device literally named "lan*" (Linux allows it), and one whose name is not
# UTF-8: its bytes read as \xNN (offloadd.kernel.linkmsg.decode_name).
STAR = Link(20, "lan*", "veth")
NOT_UTF8 = Link(21, "lan\\xff", "veth")


@pytest.mark.parametrize("pattern", ["lan*", "lan[*]", "*"])
def test_a_device_named_with_a_star_is_never_listed(pattern: str) -> None:
    """Listed, nft would read "lan*" as a wildcard: every lan device hooked
    (or matched by the rule's guard), not that one."""
    links = (Link(1, "lan0", None), STAR, Link(3, "lan?x", None))
    result = desired_state(_config(FlowtableConfig("a", devices=(pattern,))), links, {}, 0)
    want = {"lan0", "lan?x"} - ({"lan0", "lan?x"} if pattern == "lan[*]" else set())
    assert result.table.flowtables[0].devices == want
    assert result.table.sets[0].elements == want
    (note,) = result.problems
    assert note.kind is NoteKind.UNSAFE_NAME and note.device == "lan*"
    assert note.message.startswith('"lan*" cannot be written safely in an nft script: it has '
                                   'a "*", which nft reads as a wildcard')
    (decision,) = [d for d in result.decisions if d.device == "lan*"]
    assert decision.flowtable is None


def test_a_configured_wildcard_covers_a_device_named_like_it() -> None:
    """The kernel's own wildcard "lan*" does hook a device called "lan*":
    listed once, as the wildcard the config asked for."""
    cfg = _config(FlowtableConfig("a", devices=("lan*",)))
    attach = attach_plan(cfg, True, wildcards=True)
    result = desired_state(cfg, (Link(1, "lan0", None), STAR), {}, 0, attach=attach)
    assert result.table.flowtables[0].devices == {"lan*"}
    assert not result.problems
    assert {d.device: d.flowtable for d in result.decisions} == {"lan0": "a", "lan*": "a"}


def test_a_name_that_is_not_utf8_is_left_out_and_holds_back_no_other() -> None:
    links = (Link(1, "lan0", None), NOT_UTF8)
    result = desired_state(_config(FlowtableConfig("a", devices=("lan*",))), links, {}, 0)
    assert result.table.flowtables[0].devices == {"lan0"}
    (note,) = result.problems
    assert note.message.startswith('"lan\\xff" cannot be written safely in an nft script: '
                                   "it has a backslash")


@pytest.mark.parametrize(
    ("name", "problem"),
    [("eth0", None), ("lan?x", None), ("wan[1]", None), ("lan*", '"*"'), ("l*n", '"*"'),
     ("lan\\xff", "backslash"), ('a"b', "quote"), ("", "empty"), ("x" * 16, "longer")],
)
def test_device_name_problem(name: str, problem: str | None) -> None:
    got = device_name_problem(name)
    assert (got is None) == (problem is None)
    assert problem is None or (got is not None and problem in got), got
