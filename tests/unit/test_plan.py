"""compute_plan: minimal, ordered, idempotent; checked against the strict
in-memory simulator apply_plan, which refuses what the kernel refuses."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offloadd.core.attach import attach_plan
from offloadd.core.config import Config, FlowtableConfig, Hardware
from offloadd.core.errors import NftError
from offloadd.core.gate import PASSED_SIZE
from offloadd.core.model import (
    ChainState,
    FlowtableState,
    Link,
    SetKind,
    SetState,
    TableState,
    desired_state,
    offload_rules,
)
from offloadd.core.plan import (
    AddFlowtableDevices,
    AddSetElements,
    CreateChain,
    CreateFlowtable,
    CreateSet,
    CreateTable,
    DeleteChain,
    DeleteFlowtable,
    DeleteSet,
    DeleteTable,
    Op,
    Plan,
    RemoveFlowtableDevices,
    RemoveSetElements,
    UpdateFlowtableFlags,
    chain_references,
    compute_plan,
    replace_flowtables_plan,
    teardown_plan,
)
from offloadd.core.simulate import apply_plan

GATE = (SetState("passed_original", kind=SetKind.PASSED),
        SetState("passed_reply", kind=SetKind.PASSED))

CONFIG = Config(
    flowtables=(
        FlowtableConfig("a", devices=("eth*", "wan*")),
        FlowtableConfig("b", devices=("lan*",), hardware=Hardware.AUTO),
    )
)


def _links(*names: str) -> tuple[Link, ...]:
    return tuple(Link(i, n, None) for i, n in enumerate(names, 1))


def _desired(*names: str, config: Config = CONFIG, priority: int = 0,
             gate_size: int = PASSED_SIZE) -> TableState:
    capable = {"lan0": True}
    return desired_state(config, _links(*names), capable, priority, gate_size=gate_size).table


def _kinds(plan: Plan) -> list[type]:
    return [type(op) for op in plan.ops]


def _check(current: TableState | None, desired: TableState) -> Plan:
    plan = compute_plan(desired, current)
    assert apply_plan(current, plan) == desired
    assert compute_plan(desired, desired).is_empty
    return plan


def test_fresh_table_creates_everything_in_valid_order() -> None:
    desired = _desired("eth0", "lan0", "lan1")
    plan = _check(None, desired)
    kinds = _kinds(plan)
    assert kinds[0] is CreateTable
    assert kinds[-1] is CreateChain
    assert kinds.count(CreateFlowtable) == 3  # a, b, b_hw
    assert kinds.count(CreateSet) == 5  # three ifname sets, the gate's two
    # Sets are created before elements are added to them.
    assert max(i for i, k in enumerate(kinds) if k is CreateSet) < min(
        i for i, k in enumerate(kinds) if k is AddSetElements
    )


def test_same_state_gives_empty_plan() -> None:
    desired = _desired("eth0", "lan0")
    assert compute_plan(desired, desired) == Plan()
    assert compute_plan(desired, desired).is_empty


def test_device_added_touches_only_devices_and_set_elements() -> None:
    before = _desired("eth0", "lan0")
    after = _desired("eth0", "eth1", "lan0")
    plan = _check(before, after)
    assert plan.ops == (
        AddFlowtableDevices(after.flowtables[0], frozenset({"eth1"})),
        AddSetElements("a_ifs", frozenset({"eth1"})),
    )


def test_device_removed_touches_only_devices_and_set_elements() -> None:
    before = _desired("eth0", "eth1", "lan1")
    after = _desired("eth0", "lan1")
    plan = _check(before, after)
    assert plan.ops == (
        RemoveFlowtableDevices(before.flowtables[0], frozenset({"eth1"})),
        RemoveSetElements("a_ifs", frozenset({"eth1"})),
    )


def test_device_moving_between_flowtables_is_removed_before_added() -> None:
    before = _desired("lan5")  # lan* -> b (software)
    wider = Config(
        flowtables=(FlowtableConfig("a", devices=("eth*", "wan*", "lan5")), CONFIG.flowtables[1])
    )
    after = _desired("lan5", config=wider)
    plan = _check(before, after)
    kinds = _kinds(plan)
    assert set(kinds) == {
        RemoveFlowtableDevices,
        AddFlowtableDevices,
        RemoveSetElements,
        AddSetElements,
    }
    assert kinds.index(RemoveFlowtableDevices) < kinds.index(AddFlowtableDevices)
    # The same ops in the opposite order would be refused by the kernel.
    swapped = Plan(tuple(reversed(plan.ops)))
    with pytest.raises(NftError, match="another flowtable"):
        apply_plan(before, swapped)


def test_counter_change_updates_flags_only() -> None:
    before = _desired("eth0")
    config = Config(flowtables=(replace(CONFIG.flowtables[0], counter=False), CONFIG.flowtables[1]))
    after = _desired("eth0", config=config)
    plan = _check(before, after)
    assert _kinds(plan) == [UpdateFlowtableFlags]


def test_forward_priority_change_replaces_only_the_chain() -> None:
    before = _desired("eth0", priority=0)
    after = _desired("eth0", priority=10)
    plan = _check(before, after)
    assert _kinds(plan) == [DeleteChain, CreateChain]


def test_hardware_flag_change_recreates_flowtable_around_the_chain() -> None:
    ft = FlowtableState("x", frozenset({"eth0"}), False, True)
    chain = ChainState(0, offload_rules("x", ("tcp",), 0))
    before = TableState("t", "inet", (ft,), (SetState("x_ifs", frozenset({"eth0"})), *GATE),
                        chain)
    after = replace(before, flowtables=(replace(ft, hardware=True),))
    plan = _check(before, after)
    assert _kinds(plan) == [DeleteChain, DeleteFlowtable, CreateFlowtable, CreateChain]


def test_flowtable_priority_change_recreates_flowtable() -> None:
    ft = FlowtableState("x", frozenset({"eth0"}), False, True, 0)
    before = TableState("t", "inet", (ft,))
    after = replace(before, flowtables=(replace(ft, priority=5),))
    assert _kinds(_check(before, after)) == [DeleteFlowtable, CreateFlowtable]


def test_hardware_mode_change_in_config() -> None:
    before = _desired("eth0", "lan0", "lan1")
    config = Config(
        flowtables=(CONFIG.flowtables[0], replace(CONFIG.flowtables[1], hardware=Hardware.OFF))
    )
    after = _desired("eth0", "lan0", "lan1", config=config)
    plan = _check(before, after)
    kinds = _kinds(plan)
    assert kinds[0] is DeleteChain and kinds[-1] is CreateChain
    assert DeleteFlowtable(name="b_hw") in plan.ops
    assert DeleteSet(name="b_hw_ifs") in plan.ops


def test_removed_flowtable_deleted_after_its_rule() -> None:
    before = _desired("eth0", "lan0")
    after = _desired("eth0", config=Config(flowtables=(CONFIG.flowtables[0],)))
    plan = _check(before, after)
    kinds = _kinds(plan)
    assert kinds.index(DeleteChain) < kinds.index(DeleteFlowtable)
    assert kinds.index(DeleteChain) < kinds.index(DeleteSet)


def test_a_gate_set_declared_otherwise_is_recreated_around_the_chain() -> None:
    desired = _desired("eth0", "lan0")
    odd = tuple(replace(s, kind=SetKind.OTHER) if s.name == "passed_reply" else s
                for s in desired.sets)
    plan = _check(replace(desired, sets=odd), desired)
    kinds = _kinds(plan)
    assert kinds == [DeleteChain, DeleteSet, CreateSet, CreateChain]
    assert CreateSet("passed_reply", SetKind.PASSED, PASSED_SIZE) in plan.ops


def _sized(table: TableState, size: int) -> TableState:
    return replace(table, sets=tuple(replace(s, size=size) if s.kind is SetKind.PASSED else s
                                     for s in table.sets))


def test_a_gate_smaller_than_desired_is_recreated_larger_around_the_chain() -> None:
    # nf_conntrack_max raised: the desired sets are larger than the kernel's.
    desired = _desired("eth0", "lan0", gate_size=4 * PASSED_SIZE)
    current = _sized(desired, PASSED_SIZE)
    assert current == desired  # the size alone is no verify mismatch ...
    plan = compute_plan(desired, current)  # ... but the planner sees it
    assert _kinds(plan) == [DeleteChain, DeleteSet, DeleteSet, CreateSet, CreateSet,
                            CreateChain]
    assert {op for op in plan.ops if isinstance(op, CreateSet)} == {
        CreateSet("passed_original", SetKind.PASSED, 4 * PASSED_SIZE),
        CreateSet("passed_reply", SetKind.PASSED, 4 * PASSED_SIZE)}
    after = apply_plan(current, plan)
    assert after == desired and after is not None and after.passed_size == 4 * PASSED_SIZE
    assert compute_plan(desired, after).is_empty


def test_one_gate_set_smaller_than_desired_is_recreated_alone() -> None:
    desired = _desired("eth0", "lan0", gate_size=2 * PASSED_SIZE)
    current = replace(desired, sets=tuple(
        replace(s, size=PASSED_SIZE) if s.name == "passed_reply" else s for s in desired.sets))
    plan = compute_plan(desired, current)
    assert _kinds(plan) == [DeleteChain, DeleteSet, CreateSet, CreateChain]
    assert CreateSet("passed_reply", SetKind.PASSED, 2 * PASSED_SIZE) in plan.ops


@pytest.mark.parametrize("have", [PASSED_SIZE, 3 * PASSED_SIZE])
def test_a_gate_as_large_as_desired_or_larger_is_kept(have: int) -> None:
    # An operator's larger size is kept; so is the desired one once reached.
    desired = _desired("eth0", "lan0", gate_size=PASSED_SIZE)
    assert compute_plan(desired, _sized(desired, have)).is_empty


def test_a_revalidation_recreates_the_gate_at_the_larger_size() -> None:
    desired = _desired("eth0", "lan0", gate_size=2 * PASSED_SIZE)
    names = [ft.name for ft in desired.flowtables]
    for have, want, size in ((4 * PASSED_SIZE, 2 * PASSED_SIZE, 4 * PASSED_SIZE),
                             (PASSED_SIZE, 2 * PASSED_SIZE, 2 * PASSED_SIZE),
                             (PASSED_SIZE, 0, PASSED_SIZE)):
        current = _sized(desired, have)
        plan = replace_flowtables_plan(current, names, forget_passed=True, gate_size=want)
        assert {op for op in plan.ops if isinstance(op, CreateSet)} == {
            CreateSet("passed_original", SetKind.PASSED, size),
            CreateSet("passed_reply", SetKind.PASSED, size)}
        after = apply_plan(current, plan)
        assert after == current and after is not None and after.passed_size == size


def test_an_older_table_without_the_gate_gets_it_without_touching_flowtables() -> None:
    desired = _desired("eth0", "lan0")
    assert desired.chain is not None
    old_rules = tuple(re.sub(r" ct direction \w+ .*@passed_reply", "", r)
                      for r in desired.chain.rules if "flow add" in r)
    older = replace(desired, sets=tuple(s for s in desired.sets if s.kind is SetKind.IFNAMES),
                    chain=ChainState(desired.chain.priority, old_rules))
    plan = _check(older, desired)
    assert _kinds(plan) == [DeleteChain, CreateSet, CreateSet, CreateChain]


def test_mismatched_table_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not the desired"):
        compute_plan(TableState("a", "inet"), TableState("b", "inet"))


def test_teardown() -> None:
    plan = teardown_plan("offloadd", "inet")
    assert plan.ops == (DeleteTable("offloadd", "inet"),)
    current = replace(_desired("eth0"), name="offloadd")
    assert apply_plan(current, plan) is None


def test_chain_references() -> None:
    chain = ChainState(0, (*offload_rules("a", ("tcp",), 0), "iifname @s1 accept"))
    assert chain_references(chain) == (
        frozenset({"a"}), frozenset({"a_ifs", "s1", "passed_original", "passed_reply"}))
    assert chain_references(None) == (frozenset(), frozenset())


# --- the simulator refuses what the kernel refuses --------------------------

FT = FlowtableState("x", frozenset({"eth0"}), False, True)
BASE = TableState(
    "t",
    "inet",
    (FT,),
    (SetState("x_ifs", frozenset({"eth0"})), *GATE),
    ChainState(0, offload_rules("x", ("tcp",), 0)),
)


@pytest.mark.parametrize(
    ("op", "match"),
    [
        (CreateTable("t", "inet"), "exists"),
        (CreateFlowtable(replace(FT, name="y")), "another flowtable"),
        (CreateFlowtable(FT), "exists"),
        (AddFlowtableDevices(replace(FT, hardware=True), frozenset({"eth1"})), "hardware"),
        (AddFlowtableDevices(replace(FT, name="nope"), frozenset({"eth1"})), "no flowtable"),
        (RemoveFlowtableDevices(FT, frozenset({"eth9"})), "no devices"),
        (UpdateFlowtableFlags(replace(FT, hardware=True)), "hardware"),
        (DeleteFlowtable("x"), "in use"),
        (DeleteSet("x_ifs"), "in use"),
        (CreateSet("x_ifs"), "exists"),
        (AddSetElements("x_ifs", frozenset({"eth0"})), "exist"),
        (RemoveSetElements("x_ifs", frozenset({"eth1"})), "no elements"),
        (AddSetElements("nope", frozenset({"eth1"})), "no set"),
        (AddSetElements("passed_reply", frozenset({"eth1"})), "no interface names"),
        (DeleteSet("nope"), "no set"),
        (DeleteSet("passed_original"), "in use"),
        (CreateChain(ChainState(0)), "exists"),
        (DeleteTable("other", "inet"), "no table"),
    ],
)
def test_simulator_refuses(op: Op, match: str) -> None:
    with pytest.raises(NftError, match=match):
        apply_plan(BASE, Plan((op,)))


def test_simulator_refuses_chain_with_missing_references() -> None:
    bare = replace(BASE, chain=None)
    with pytest.raises(NftError, match="missing"):
        apply_plan(bare, Plan((CreateChain(ChainState(0, ("flow add @zz",))),)))
    with pytest.raises(NftError, match="no such table"):
        apply_plan(None, Plan((DeleteChain(),)))


def test_add_devices_resends_counter() -> None:
    new = apply_plan(
        BASE, Plan((AddFlowtableDevices(replace(FT, counter=False), frozenset({"eth1"})),))
    )
    assert new is not None
    assert new.flowtable("x") == FlowtableState("x", frozenset({"eth0", "eth1"}), False, False)


# --- properties --------------------------------------------------------------

FT_NAMES = ("a", "b", "c", "a_hw")
SET_NAMES = ("a_ifs", "b_ifs", "s", "passed_reply")
DEVICES = ("e0", "e1", "e2", "e3", "e4")


@st.composite
def table_states(draw: st.DrawFn) -> TableState:
    """Consistent states: disjoint flowtable devices, rules reference what exists."""
    names = draw(st.lists(st.sampled_from(FT_NAMES), unique=True))
    owner = {d: draw(st.integers(-1, len(names) - 1)) for d in DEVICES}
    fts = tuple(
        FlowtableState(
            name,
            frozenset(d for d, o in owner.items() if o == i),
            draw(st.booleans()),
            draw(st.booleans()),
            draw(st.sampled_from((0, -10))),
        )
        for i, name in enumerate(names)
    )
    set_names = draw(st.lists(st.sampled_from(SET_NAMES), unique=True))
    sets = tuple(
        SetState(s, kind=draw(st.sampled_from((SetKind.PASSED, SetKind.OTHER))),
                 size=draw(st.sampled_from((0, PASSED_SIZE, 2 * PASSED_SIZE))))
        if s.startswith("passed")
        else SetState(s, frozenset(draw(st.sets(st.sampled_from(DEVICES)))))
        for s in set_names)
    chain = None
    if draw(st.booleans()):
        rules: list[str] = []
        for _ in range(draw(st.integers(0, 3))):
            parts = ["meta l4proto tcp"]
            if set_names:
                s = draw(st.sampled_from(set_names))
                parts.append(f"iifname @{s} oifname @{s}")
            if names:
                parts.append(f"flow add @{draw(st.sampled_from(names))}")
            else:
                parts.append("accept")
            rules.append(" ".join(parts))
        chain = ChainState(draw(st.sampled_from((0, 5))), tuple(rules))
    return TableState("t", "inet", fts, sets, chain)


@settings(max_examples=400, deadline=None)
@given(current=st.none() | table_states(), desired=table_states())
def test_plan_applied_to_current_yields_desired(
    current: TableState | None, desired: TableState
) -> None:
    plan = compute_plan(desired, current)
    after = apply_plan(current, plan)
    assert after == desired
    # Sizes too: no gate set left smaller than desired.
    assert compute_plan(desired, after).is_empty
    assert compute_plan(desired, desired).is_empty
    assert compute_plan(desired, current) == plan  # deterministic
    if current is not None and current.chain == desired.chain:
        # The chain is only rebuilt when something it references goes away.
        used_fts, used_sets = chain_references(current.chain)
        gone = {op.name for op in plan.ops if isinstance(op, DeleteFlowtable | DeleteSet)}
        assert (DeleteChain() in plan.ops) == bool(gone & (used_fts | used_sets))


LINK_NAMES = ("eth0", "eth1", "wan0", "lan0", "lan1", "lan2", "other0")


@settings(max_examples=200, deadline=None)
@given(
    before=st.sets(st.sampled_from(LINK_NAMES)),
    after=st.sets(st.sampled_from(LINK_NAMES)),
)
def test_link_changes_never_touch_chain_or_flowtable_objects(
    before: set[str], after: set[str]
) -> None:
    current = _desired(*sorted(before))
    desired = _desired(*sorted(after))
    plan = compute_plan(desired, current)
    assert apply_plan(current, plan) == desired
    allowed = (AddFlowtableDevices, RemoveFlowtableDevices, AddSetElements, RemoveSetElements)
    assert all(isinstance(op, allowed) for op in plan.ops)
    # "other0" matches no flowtable, so it alone never produces work.
    assert plan.is_empty == (before - {"other0"} == after - {"other0"})


def test_attached_devices_are_what_creates_and_adds_put_in_flowtables() -> None:
    assert compute_plan(_desired("eth0", "lan0"), None).attached_devices == {"eth0", "lan0"}
    grown = compute_plan(_desired("eth0", "eth1", "lan0"), _desired("eth0", "lan0", "lan1"))
    assert grown.attached_devices == {"eth1"}  # lan1 leaving is not attaching
    assert teardown_plan("offloadd", "inet").attached_devices == frozenset()


# --- kernel wildcards --------------------------------------------------------

WILD_CONFIG = Config(flowtables=(FlowtableConfig("w", devices=("lan0", "wan*")),))
WILD_LINKS = ("lan0", "wan0", "wan1")


def _wild_desired(wildcards: bool, *names: str) -> TableState:
    attach = attach_plan(WILD_CONFIG, True, wildcards=wildcards)
    return desired_state(WILD_CONFIG, _links(*names), {}, 0, attach=attach).table


def test_switching_to_kernel_wildcards_recreates_only_the_set_and_the_chain() -> None:
    """The flowtable stays (its flows survive): the devices the wildcard covers
    leave it in the batch that brings the wildcard, before it (added beside
    them, the kernel would drop the wildcard as a hook it has)."""
    daemon, wild = _wild_desired(False, *WILD_LINKS), _wild_desired(True, *WILD_LINKS)
    plan = compute_plan(wild, daemon)
    assert apply_plan(daemon, plan, wildcards=True) == wild
    assert not any(isinstance(op, CreateFlowtable | DeleteFlowtable) for op in plan.ops)
    assert _kinds(plan) == [DeleteChain, RemoveFlowtableDevices, DeleteSet,
                            AddFlowtableDevices, CreateSet, AddSetElements, CreateChain]
    remove, add = plan.ops[1], plan.ops[3]
    assert isinstance(remove, RemoveFlowtableDevices) and remove.devices == {"wan0", "wan1"}
    assert isinstance(add, AddFlowtableDevices) and add.devices == {"wan*"}
    assert CreateSet("w_ifs", SetKind.IFNAMES_WILD) in plan.ops
    # And back (wildcards gone after an nftables downgrade): the same way round.
    back = compute_plan(daemon, wild)
    assert apply_plan(wild, back, wildcards=True) == daemon
    assert not any(isinstance(op, CreateFlowtable | DeleteFlowtable) for op in back.ops)


def test_the_simulator_drops_a_wildcard_added_beside_a_device_it_covers() -> None:
    daemon, wild = _wild_desired(False, *WILD_LINKS), _wild_desired(True, *WILD_LINKS)
    ft = wild.flowtable("w")
    assert ft is not None
    late = Plan((AddFlowtableDevices(ft, frozenset({"wan*"})),
                 RemoveFlowtableDevices(ft, frozenset({"wan0", "wan1"}))))
    after = apply_plan(daemon, late, wildcards=True)
    assert after is not None and after.flowtable("w").devices == {"lan0"}  # type: ignore[union-attr]


def test_the_simulator_refuses_a_name_a_wildcard_of_another_flowtable_covers() -> None:
    wild = FlowtableState("a", frozenset({"wan*"}), False, True)
    named = FlowtableState("b", frozenset({"wan0"}), False, True)
    base = TableState("t", "inet")
    for first, second in ((wild, named), (named, wild)):
        plan = Plan((CreateFlowtable(first), CreateFlowtable(second)))
        with pytest.raises(NftError, match="another flowtable"):
            apply_plan(base, plan, wildcards=True)
        # Old libnftables sends "wan*" as a literal name: no clash.
        assert apply_plan(base, plan, wildcards=False) is not None
    with pytest.raises(NftError, match="same hook twice"):
        apply_plan(base, Plan((CreateFlowtable(replace(wild, devices=frozenset(
            {"wan*", "wan0"}))),)), wildcards=True)


def test_the_simulator_keeps_wildcard_elements_to_interval_sets() -> None:
    base = TableState("t", "inet", sets=(SetState("plain"),
                                         SetState("wild", kind=SetKind.IFNAMES_WILD)))
    with pytest.raises(NftError, match="need flags interval"):
        apply_plan(base, Plan((AddSetElements("plain", frozenset({"wan*"})),)))
    with pytest.raises(NftError, match="overlap"):
        apply_plan(base, Plan((AddSetElements("wild", frozenset({"wan*", "wan0"})),)))
    after = apply_plan(base, Plan((AddSetElements("wild", frozenset({"wan*", "lan0"})),)))
    assert after is not None and after.set("wild") == SetState(
        "wild", frozenset({"wan*", "lan0"}), SetKind.IFNAMES_WILD)
