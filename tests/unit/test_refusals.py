"""Finding the devices the kernel refuses, and when they are tried again."""

from __future__ import annotations

import pytest

from offloadd.core.errors import DeviceVanishedError, NftError
from offloadd.core.model import FlowtableState, Link, TableState
from offloadd.core.plan import Plan, compute_plan
from offloadd.service.refusals import Refusals, isolate_refused

ALL = frozenset({f"lan{i}" for i in range(64)})


def _table(devices: frozenset[str]) -> TableState:
    return TableState("offloadd", "inet",
                      (FlowtableState("ft", devices, hardware=False, counter=False),))


CURRENT = _table(frozenset({"lan0"}))


def _isolate(refuse: set[str], checks: list[Plan]) -> dict[str, str]:
    def check(plan: Plan) -> None:
        checks.append(plan)
        bad = sorted(plan.attached_devices & refuse)
        if bad:
            raise NftError(f"nft refused the transaction: no {bad[0]}")

    return isolate_refused(CURRENT, compute_plan(_table(ALL), CURRENT),
                           lambda out: _table(ALL - out), check)


def test_each_refused_device_is_found_with_the_kernels_message() -> None:
    checks: list[Plan] = []
    assert _isolate({"lan3", "lan11"}, checks) == {"lan3": "no lan3", "lan11": "no lan11"}
    assert len(checks) < len(ALL) // 2  # halving, not one dry run per device


def test_a_refusal_that_no_device_causes_blames_nobody() -> None:
    def check(plan: Plan) -> None:
        raise NftError("nft refused the transaction: Cannot allocate memory")

    plan = compute_plan(_table(ALL), CURRENT)
    assert isolate_refused(CURRENT, plan, lambda out: _table(ALL - out), check) == {}


def test_a_device_vanishing_during_the_search_is_not_a_refusal() -> None:
    def check(plan: Plan) -> None:
        raise DeviceVanishedError("nft refused the transaction: No such device")

    plan = compute_plan(_table(ALL), CURRENT)
    with pytest.raises(DeviceVanishedError):
        isolate_refused(CURRENT, plan, lambda out: _table(ALL - out), check)


def test_refused_devices_stay_out_until_recreated_or_due(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("offloadd.service.refusals.time.monotonic", lambda: now[0])
    r = Refusals(retry_s=300)
    links = [Link(7, "lan7", "veth"), Link(8, "lan8", "veth")]
    r.add({"lan7": "Operation not supported", "lan8": "x"}, links)
    assert r.current(links) == {"lan7": "Operation not supported", "lan8": "x"}
    # lan8 re-created under a new index: tried again at once
    assert r.current([links[0], Link(9, "lan8", "veth")]) == {"lan7": "Operation not supported"}
    now[0] += 301
    assert r.current(links) == {} and not r


def test_a_refused_name_without_a_link_stays_out_until_a_link_takes_it() -> None:
    # A wildcard ("wan*") or a name declared ahead of its device has no link.
    r = Refusals(retry_s=300)
    r.add({"wan*": "File exists"}, [])
    assert r.current([Link(3, "wan0", "veth")]) == {"wan*": "File exists"}
    assert r.current([Link(4, "wan*", "veth")]) == {}
