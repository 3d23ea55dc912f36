"""explain(): the reasons an operator gets for a connection that is not offloaded."""

from __future__ import annotations

from offloadd.core.configparse import parse_config
from offloadd.core.explain import Passed, Verdict, explain
from offloadd.core.flows import (
    IPS_ASSURED,
    IPS_OFFLOAD,
    IPS_SEEN_REPLY,
    FlowTuple,
    OffloadedFlow,
)
from offloadd.core.model import ChainState, FlowtableState, SetKind, SetState, TableState

CONFIG = parse_config('[[flowtable]]\nname = "ft"\ndevices = ["lan*", "wan*"]\n'
                      'protocols = ["udp"]\nelephant_packets = 100\n'
                      '[[flowtable]]\nname = "other"\ndevices = ["vpn*"]\n')
TABLE = TableState("offloadd", "inet", flowtables=(
    FlowtableState("ft", frozenset({"lan0", "wan0"}), False, True),
    FlowtableState("other", frozenset({"vpn0"}), False, True)), chain=ChainState(1, ()))


def _flow(proto: int = 17, status: int = IPS_SEEN_REPLY | IPS_ASSURED, packets: int = 10,
          helper: str | None = None) -> OffloadedFlow:
    t = FlowTuple("198.18.1.2", "198.18.2.2", proto, 1000, 7000)
    return OffloadedFlow(1, 2, status, t, t, packets, 1000, 0, 0, helper)


def test_offloaded() -> None:
    e = explain(_flow(status=IPS_OFFLOAD | IPS_SEEN_REPLY), "lan0", "wan0", CONFIG, TABLE)
    assert e.verdict is Verdict.OFFLOADED and e.flowtable == "ft"
    assert "software" in e.reasons[0]


def test_no_entry() -> None:
    assert explain(None, "lan0", "wan0", CONFIG, TABLE).verdict is Verdict.UNKNOWN


def test_each_reason() -> None:
    def reasons(**kw: object) -> str:
        flow_kw = {k: v for k, v in kw.items() if k in ("proto", "status", "packets", "helper")}
        e = explain(_flow(**flow_kw), str(kw.get("i", "lan0")),  # type: ignore[arg-type]
                    str(kw.get("o", "wan0")), CONFIG, TABLE)
        assert e.verdict is Verdict.NOT_OFFLOADED
        return " | ".join(e.reasons)

    assert "below the elephant threshold: 10 packets" in reasons()
    assert "offloads only udp, not tcp" in reasons(proto=6, packets=500)
    assert "protocol" in reasons(proto=1, packets=500) and "never offloaded" in reasons(proto=1)
    assert "device eth7 is in no flowtable" in reasons(o="eth7", packets=500)
    assert "different flowtables" in reasons(o="vpn0", packets=500)
    assert "helper 'ftp'" in reasons(helper="ftp", packets=500)
    assert "no reply seen yet" in reasons(status=0, packets=500)
    assert "not established" in reasons(proto=6, status=IPS_SEEN_REPLY, packets=500)
    assert "everything allows it" in reasons(packets=500)


def test_table_missing() -> None:
    e = explain(_flow(packets=500), "lan0", "wan0", CONFIG, None)
    assert "does not exist: is offloadd running?" in e.reasons[0]


def test_the_gate() -> None:
    def reasons(passed: Passed) -> str:
        return " | ".join(explain(_flow(packets=500), "lan0", "wan0", CONFIG, TABLE,
                                  passed=passed).reasons)

    assert "its reply direction has passed" not in reasons(Passed(True, True))
    assert "everything allows it" in reasons(Passed(True, True))
    why = reasons(Passed(True, False))
    assert "no packet of its reply direction has passed" in why
    assert "everything allows it" not in why
    assert "original or reply direction" in reasons(Passed(False, False))


def test_a_device_a_kernel_wildcard_covers_is_in_its_flowtable() -> None:
    wild = TableState("offloadd", "inet", flowtables=(
        FlowtableState("ft", frozenset({"lan0", "wan*"}), False, True),
        FlowtableState("other", frozenset({"vpn0"}), False, True)), chain=ChainState(1, ()))
    e = explain(_flow(status=IPS_OFFLOAD | IPS_SEEN_REPLY), "lan0", "wan7", CONFIG, wild)
    assert e.verdict is Verdict.OFFLOADED and e.flowtable == "ft"
    e = explain(_flow(packets=500), "wan7", "vpn0", CONFIG, wild)
    assert "different flowtables (wan7 in ft, vpn0 in other)" in " | ".join(e.reasons)


def test_a_device_whose_lower_devices_are_listed_is_in_their_flowtable() -> None:
    # stack = "lower": br-lan's port and ppp0's Ethernet are listed; the
    # guard set names br-lan and ppp0, where the forward hook sees the flow.
    lower = TableState("offloadd", "inet", flowtables=(
        FlowtableState("ft", frozenset({"lan0", "eth1"}), False, True),),
        sets=(SetState("ft_ifs", frozenset({"lan0", "eth1", "br-lan", "ppp0"}),
                       SetKind.IFNAMES),), chain=ChainState(1, ()))
    e = explain(_flow(packets=500), "br-lan", "ppp0", CONFIG, lower)
    assert e.verdict is Verdict.NOT_OFFLOADED
    assert "in no flowtable" not in " | ".join(e.reasons)
    e = explain(_flow(status=IPS_OFFLOAD | IPS_SEEN_REPLY), "br-lan", "ppp0", CONFIG, lower)
    assert e.flowtable == "ft"
