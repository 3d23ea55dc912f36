"""render(): the nft script for each plan scenario matches its golden file.

Goldens live in tests/unit/golden/<scenario>.nft. After an intended change
to the rendered syntax, rewrite them with

    OFFLOADD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_render.py

and review the diff before committing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from offloadd.core.attach import attach_plan
from offloadd.core.config import Config, FlowtableConfig, Hardware
from offloadd.core.gate import PASSED_SIZE
from offloadd.core.model import FlowtableState, Link, SetKind, TableState, desired_state
from offloadd.core.plan import (
    AddSetElements,
    CreateSet,
    CreateTable,
    DeleteFlowtable,
    Plan,
    RemoveFlowtableDevices,
    compute_plan,
    replace_flowtables_plan,
    teardown_plan,
)
from offloadd.core.render import RenderError, render

GOLDEN = Path(__file__).parent / "golden"
TABLE = "offloadd"

A = FlowtableConfig("wan", devices=("eth*",), protocols=("tcp",), elephant_packets=10)
B = FlowtableConfig("lan", devices=("lan*",), hardware=Hardware.AUTO, priority=-5)
CONFIG = Config(flowtables=(A, B))
CAPABLE = {"lan0": True}


def _state(*links: str, config: Config = CONFIG, priority: int = 100,
           gate_size: int = PASSED_SIZE) -> TableState:
    state = desired_state(
        config, [Link(i, n, None) for i, n in enumerate(links)], CAPABLE, priority,
        gate_size=gate_size,
    ).table
    return replace(state, name=TABLE)


def _with(a: FlowtableConfig = A, b: FlowtableConfig = B) -> Config:
    return Config(flowtables=(a, b))


# Kernel wildcards: "wan*" in the flowtable and in an interval set.
WILD = Config(flowtables=(FlowtableConfig("edge", devices=("lan0", "ppp0", "wan*")),))


def _wild_state(wildcards: bool) -> TableState:
    links = [Link(i, n, None) for i, n in enumerate(("lan0", "wan0", "wan1"))]
    attach = attach_plan(WILD, True, wildcards=wildcards)
    return replace(desired_state(WILD, links, {}, 100, attach=attach).table, name=TABLE)


BASE = ("eth0", "lan0", "lan1")
# Names Linux allows that offloadd must never write as themselves: one
# literally "lan*" (nft would read a wildcard), one not UTF-8 (read as
# "lan\xff"); "lan?x" means nothing to nft and is written as it is.
ODD = ("lan*", "lan\\xff", "lan?x")


def _wild_odd_state() -> TableState:
    """The kernel wildcard "wan*" beside a device literally called "wan*"."""
    links = [Link(i, n, None) for i, n in enumerate(("lan0", "wan0", "wan*", "wan\\xff"))]
    attach = attach_plan(WILD, True, wildcards=True)
    return replace(desired_state(WILD, links, {}, 100, attach=attach).table, name=TABLE)

SCENARIOS: dict[str, Callable[[], Plan]] = {
    "fresh_create": lambda: compute_plan(_state(*BASE), None),
    "add_device": lambda: compute_plan(_state(*BASE, "eth1"), _state(*BASE)),
    "remove_device": lambda: compute_plan(_state("eth0", "lan0"), _state(*BASE)),
    "device_moves": lambda: compute_plan(
        _state(*BASE, config=_with(a=replace(A, devices=("eth*", "lan1")))), _state(*BASE)
    ),
    "counter_change": lambda: compute_plan(
        _state(*BASE, config=_with(b=replace(B, counter=False))), _state(*BASE)
    ),
    "priority_change": lambda: compute_plan(_state(*BASE, priority=-50), _state(*BASE)),
    "hardware_mode_change": lambda: compute_plan(
        _state(*BASE, config=_with(b=replace(B, hardware=Hardware.REQUIRED))), _state(*BASE)
    ),
    "teardown": lambda: teardown_plan(TABLE, "inet"),
    "odd_names": lambda: compute_plan(_state(*BASE, *ODD), None),
    "odd_names_join": lambda: compute_plan(_state(*BASE, *ODD), _state(*BASE)),
    "odd_names_wildcard": lambda: compute_plan(_wild_odd_state(), None),
    "wildcard_create": lambda: compute_plan(_wild_state(True), None),
    # Names declared one by one before, the wildcard now: the set is declared
    # anew (interval), the flowtable stays.
    "wildcard_switch": lambda: compute_plan(_wild_state(True), _wild_state(False)),
    # A re-validation: every flowtable replaced, the gate's sets replaced
    # (deleted and created empty, never flushed).
    "revalidate_replace": lambda: replace_flowtables_plan(
        _state(*BASE), ("lan", "lan_hw", "wan"), forget_passed=True
    ),
    # nf_conntrack_max raised to 4194304: the gate's sets re-created at twice
    # it, around the chain; the flowtables stay.
    "gate_grows": lambda: compute_plan(_state(*BASE, gate_size=8_388_608), _state(*BASE)),
    # A repair: the flowtable replaced, what passed is kept.
    "repair_replace": lambda: replace_flowtables_plan(_state(*BASE), ("wan",)),
    # Same kernel name, hardware flag flipped ("lan_hw" configured with
    # hardware = "off" becomes the hardware flowtable of "lan"): the kernel
    # cannot change `flags offload` in place.
    "hardware_flag_flip": lambda: compute_plan(
        _state("lan0", config=Config(flowtables=(replace(B, hardware=Hardware.REQUIRED),))),
        _state(
            "lan0", config=Config(flowtables=(replace(B, name="lan_hw", hardware=Hardware.OFF),))
        ),
    ),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_golden(scenario: str) -> None:
    text = render(SCENARIOS[scenario](), "inet", TABLE)
    path = GOLDEN / f"{scenario}.nft"
    if os.environ.get("OFFLOADD_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing; run with OFFLOADD_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def test_golden_files_have_no_strays() -> None:
    assert {p.stem for p in GOLDEN.glob("*.nft")} == set(SCENARIOS)


def test_empty_plan_renders_nothing() -> None:
    assert render(Plan(), "inet", TABLE) == ""


def test_flowtable_without_devices_omits_devices_clause() -> None:
    text = render(compute_plan(_state(), None), "inet", TABLE)
    assert "add flowtable inet offloadd wan { hook ingress priority 0; counter; }\n" in text
    assert "devices" not in text


def test_hardware_flowtable_has_flags_offload() -> None:
    text = render(compute_plan(_state("lan0"), None), "inet", TABLE)
    assert (
        "add flowtable inet offloadd lan_hw { hook ingress priority -5; "
        'devices = { "lan0" }; flags offload; counter; }'
    ) in text


@pytest.mark.parametrize(
    "plan",
    [
        Plan((AddSetElements("lan_ifs", frozenset({'ev"il'})),)),
        Plan((AddSetElements("lan_ifs", frozenset({"a b"})),)),
        Plan(
            (
                RemoveFlowtableDevices(
                    FlowtableState("x", frozenset(), False, True), frozenset({"x\ny"})
                ),
            )
        ),
        # A "*" that is not one prefix wildcard: nft would read it as one
        # (or as something else); the model never lists such a name.
        Plan((AddSetElements("lan_ifs", frozenset({"l*n"})),)),
        Plan((AddSetElements("lan_ifs", frozenset({"lan**"})),)),
        Plan((AddSetElements("lan_ifs", frozenset({"*"})),)),
        Plan((AddSetElements("lan_ifs", frozenset({"lan\\xff"})),)),
        Plan((DeleteFlowtable("bad name"),)),
        Plan((DeleteFlowtable("x; flush ruleset"),)),
        Plan((CreateTable("other", "inet"),)),
        # A gate set with no size planned: never declared with the kernel's default.
        Plan((CreateSet("passed_reply", SetKind.PASSED),)),
    ],
)
def test_unsafe_or_mismatched_names_are_refused(plan: Plan) -> None:
    with pytest.raises(RenderError):
        render(plan, "inet", TABLE)


def test_bad_table_or_family_refused() -> None:
    with pytest.raises(RenderError):
        render(Plan(), "inet", "t;x")
    with pytest.raises(RenderError):
        render(Plan(), "inet6", TABLE)


def _statements(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def _named(line: str) -> list[str]:
    inner = line.split("devices = {")[1].split("}", maxsplit=1)[0]
    return [d.strip().strip('"') for d in inner.split(",")]


def test_long_device_lists_are_split_below_the_kernel_limit() -> None:
    # nf_tables answers EFBIG to one flowtable message naming >= 256 devices.
    many = tuple(f"eth{i}" for i in range(300))
    created = render(compute_plan(_state(*many), None), "inet", TABLE)
    adds = _statements(created, "add flowtable inet offloadd wan ")
    assert len(adds) == 3
    named = [d for line in adds for d in _named(line)]
    assert sorted(named) == sorted(many)
    assert all(len(_named(line)) <= 128 for line in adds)
    # Every statement re-sends the flags: nft replaces them on each add.
    assert all(line.endswith("counter; }") for line in adds)

    grown = render(compute_plan(_state(*many, "eth300"), _state(*many[:10])), "inet", TABLE)
    assert sorted(d for line in _statements(grown, "add flowtable inet offloadd wan ")
                  for d in _named(line)) == sorted((*many[10:], "eth300"))

    shrunk = render(compute_plan(_state(), _state(*many)), "inet", TABLE)
    dels = _statements(shrunk, "delete flowtable inet offloadd wan ")
    assert len(dels) == 3
    assert sorted(d for line in dels for d in _named(line)) == sorted(many)
