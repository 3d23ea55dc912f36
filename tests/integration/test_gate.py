"""The gate lets a flow through only on its own packets, never on another
flow's id.

The gate (offloadd.core.gate) offloads a flow once a packet of each direction
has passed the forward chains. Keyed on the 32-bit conntrack id alone, a flow
whose replies an admin rule drops was offloaded as soon as its id was in the
reply set for another flow (a hash collision: ~2.4e-4 per new flow with 10^6
ids there), and from then on its replies skipped that rule. Here the admin
drops the replies of every flow to one port; the reply set is pre-loaded with
each such flow's id under other ports (what a colliding flow leaves), and with
one flow's own key (the control: a matching key does offload, so the oracle
sees it). Through an IPv4 masquerade and over IPv6; conntrack-tools the oracle.

Then, on the same flows, the gate's capacity follows nf_conntrack_max: raised
so that twice it exceeds the sets' size, the next reconcile re-creates both
sets larger, and the control flow stays offloaded under its entry (the
flowtable is not touched); offloadctl status says the size and why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from offloadd.core.gate import PASSED_SETS, PASSED_SIZE, element
from tests.lab import conntrack
from tests.lab.daemon import offloadd
from tests.lab.netns import Netns
from tests.lab.prom import http_get
from tests.lab.topology import Lab
from tests.lab.traffic import LIFETIME_S, SETTLE_S, udp_echo_server, udp_flows, wait_for

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
PORT = 7400
ADMIN = f"""
table inet admin {{
    chain filter_fwd {{ type filter hook forward priority 0; policy accept;
                 udp sport {PORT} counter drop; }}
}}
table ip adminnat {{
    chain post {{ type nat hook postrouting priority 100; policy accept;
                 oifname "wan0" masquerade; }}
}}
"""
# After the control flow is offloaded, the others send this long more: every
# datagram meets the offload rule, and none may pass it.
MORE_S = 3.0


def _flows(lab: Lab) -> list[conntrack.CtEntry]:
    return [e for fam in (4, 6) for e in conntrack.entries(lab.router, fam)
            if e.proto == "udp" and e.dport == PORT]


def _answered(lab: Lab, want: int) -> list[conntrack.CtEntry] | None:
    """The flows once conntrack has seen a reply for each (the admin drops
    the replies after that, in the forward hook)."""
    got = _flows(lab)
    ok = len(got) == want and not any("UNREPLIED" in e.flags for e in got)
    return got if ok else None


CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")


def _gate_sizes(ns: Netns) -> dict[str, int]:
    # Terse: no elements listed (nft 1.0.6 would list them with a set).
    items = json.loads(ns.out("nft", "-t", "-j", "list", "ruleset", "inet"))["nftables"]
    return {i["set"]["name"]: int(i["set"].get("size", 0)) for i in items
            if "set" in i and i["set"]["table"] == "offloadd" and i["set"]["name"] in PASSED_SETS}


def _gate_sizes_if(ns: Netns, size: int) -> dict[str, int] | None:
    sizes = _gate_sizes(ns)
    return sizes if sorted(sizes) == sorted(PASSED_SETS) and set(sizes.values()) == {size} else None


def test_a_flow_passes_the_gate_only_on_its_own_key(lab: Lab, tmp_path: Path) -> None:
    r = lab.router
    r.nft(ADMIN)
    with offloadd(r, CONFIG, tmp_path) as d, udp_echo_server(lab.server, "::", PORT):
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        gens = [udp_flows(lab.client, lab.server_addr(fam), port=PORT, flows=n,
                          seconds=LIFETIME_S, interval=0.1) for fam, n in ((4, 4), (6, 2))]
        try:
            flows = wait_for(lambda: _answered(lab, 6), SETTLE_S, interval=0.5,
                             what="6 udp flows with a reply seen by conntrack")
            control = next(e for e in flows if "." in e.src)
            others = [e for e in flows if e is not control]
            # Another flow's elements: the same id, a client port or a server port off.
            fake = [element(e.id, e.sport % 64511 + 1025, e.reply[2]) for e in others]
            fake += [element(e.id, e.sport, e.reply[2] % 64511 + 1025) for e in others]
            own = element(control.id, control.sport, control.reply[2])
            r.nft(f"add element inet offloadd passed_reply {{ {', '.join([*fake, own])} }}")
            wait_for(lambda: any(e.offloaded and e.id == control.id for e in _flows(lab)),
                     SETTLE_S, interval=0.3, what="the control flow offloaded on its own key")
            time.sleep(MORE_S)
            after = {e.id: e for e in _flows(lab)}
            counter = r.out("nft", "list", "chain", "inet", "admin", "filter_fwd")
            collider = next(e for e in others if "." in e.src)
            why = json.loads(d.ctl("--json", "explain", "udp", f"{collider.src}:{collider.sport}",
                                   f"{collider.dst}:{PORT}", check=True).stdout)

            # Counted by the daemon through a raw set-element dump on this kernel.
            fill = d.status()["gate"]["fill"]
            # The capacity: nf_conntrack_max (the VM's, global) raised past half the size.
            sizes0 = _gate_sizes(r)
            ct_max0 = CT_MAX.read_text().strip()
            raised = PASSED_SIZE // 2 + 4096
            try:
                CT_MAX.write_text(f"{raised}\n")
                r.run("ip", "link", "add", "lan8", "type", "dummy")  # a link event: a pass
                sizes1 = wait_for(lambda: _gate_sizes_if(r, 2 * raised), SETTLE_S, interval=0.5,
                                  what=f"gate sets of size {2 * raised}")
                text = d.ctl("status", check=True).stdout
                still = [e for e in _flows(lab) if e.id == control.id and e.offloaded]
            finally:
                CT_MAX.write_text(f"{ct_max0}\n")
        finally:
            for g in gens:
                g.stop()
    wrong = [f"{e.src}:{e.sport} id={e.id}" for e in others
             if e.id in after and after[e.id].offloaded]
    assert not wrong, (f"offloaded on another flow's element, replies dropped by the admin: "
                       f"{wrong}\n{counter}\n{d.log_text()[-2000:]}")
    assert all(e.id in after for e in others), sorted(after)
    assert "counter packets 0 " not in counter, counter
    assert why["verdict"] == "not offloaded" and why["passed"] == {
        "original": True, "reply": False}, why
    print(f"control offloaded on its own key; {len(others)} flows ({len(fake)} colliding "
          f"elements) kept on the slow path {MORE_S:.0f} s after it")
    assert sizes0 == {n: PASSED_SIZE for n in PASSED_SETS}, sizes0
    assert fill and sorted(fill["elements"]) == sorted(PASSED_SETS) and not fill["stale"], fill
    assert still, "the control flow lost its offload when the gate grew"
    line = next((ln for ln in text.splitlines() if ln.startswith("gate:")), "")
    assert f"up to {2 * raised} flows" in line and f"nf_conntrack_max {raised}" in line, text
    print(f"nf_conntrack_max {ct_max0} -> {raised}: gate sets {sizes0} -> {sizes1}; {line}")


FULL_GATE = 8  # elements each gate set holds (the lab's OFFLOADD_LAB_GATE_SIZE)
FULL_FLOWS = 12
FULL_PORT = 7401
WITNESS = f"""
table inet gatefull {{
    counter slow {{ }}
    chain fwd_witness {{ type filter hook forward priority 0; policy accept;
                 udp dport {FULL_PORT} counter name slow
                 udp sport {FULL_PORT} counter name slow; }}
}}
"""


def _set_count(ns: Netns, name: str) -> int:
    items = json.loads(ns.out("nft", "-j", "list", "set", "inet", "offloadd", name))["nftables"]
    elem = next(i["set"] for i in items if "set" in i).get("elem", [])
    return len(elem)


def _slow(ns: Netns) -> int:
    items = json.loads(ns.out("nft", "-j", "list", "counter", "inet", "gatefull", "slow"))
    return int(next(i["counter"] for i in items["nftables"] if "counter" in i)["packets"])


def test_a_full_gate_fails_closed_and_says_so(lab: Lab, tmp_path: Path) -> None:
    """Gate sets with room for 8 flows each (a lab setting), 12 UDP flows: the
    kernel adds no element to a full set, so a flow whose key is missing from
    either set is never offloaded: the gate fails closed, those flows keep
    forwarding on the slow path (an admin's forward chain sees their packets),
    and every offloaded flow has its own key in both sets. Both sets show as
    full in the metric (elements == capacity) and in offloadctl status."""
    r = lab.router
    r.nft(WITNESS)
    env = {"OFFLOADD_LAB_GATE_SIZE": str(FULL_GATE)}
    try:
        with offloadd(r, CONFIG, tmp_path, env=env) as d, \
                udp_echo_server(lab.server, "::", FULL_PORT):
            d.wait_devices("ft", {"lan0", "lan1", "wan0"})
            assert _gate_sizes_if(r, FULL_GATE), _gate_sizes(r)
            gen = udp_flows(lab.client, lab.server_addr(4), port=FULL_PORT, flows=FULL_FLOWS,
                            seconds=LIFETIME_S, interval=0.1)
            try:
                def full() -> bool:
                    return all(_set_count(r, n) == FULL_GATE for n in PASSED_SETS)

                wait_for(full, SETTLE_S, interval=0.5, what=f"both gate sets full ({FULL_GATE})")

                def settled() -> list[conntrack.CtEntry] | None:
                    got = [e for e in conntrack.entries(r, 4)
                           if e.proto == "udp" and e.dport == FULL_PORT]
                    return got if len(got) == FULL_FLOWS and any(e.offloaded for e in got) \
                        else None

                wait_for(settled, SETTLE_S, interval=0.5, what="the flows, some offloaded")
                time.sleep(MORE_S)  # every flow has met the offload rule again since
                flows = settled() or []
                slow0 = _slow(r)
                time.sleep(MORE_S)
                slow = _slow(r) - slow0
                offloaded = [e for e in flows if e.offloaded]
                outside = [(e, n) for e in offloaded for n in PASSED_SETS
                           if r.run("nft", "get", "element", "inet", "offloadd", n,
                                    f"{{ {element(e.id, e.sport, e.reply[2])} }}",
                                    check=False).returncode != 0]

                def metric_full() -> str | None:
                    text = http_get(r, "http://127.0.0.1:9468/metrics")
                    lines = set(text.splitlines())
                    want = {f'offloadd_gate_elements{{set="{n}"}} {float(FULL_GATE)}'
                            for n in PASSED_SETS}
                    want.add(f"offloadd_gate_capacity {float(FULL_GATE)}")
                    return text if want <= lines else None

                metrics = wait_for(metric_full, SETTLE_S, interval=1,
                                   what="the metric to show both sets full")
                status = d.ctl("status", check=True).stdout
            finally:
                gen.stop()
    finally:
        r.run("nft", "delete", "table", "inet", "gatefull", check=False)
    assert 1 <= len(offloaded) <= FULL_GATE, [(e.sport, e.offloaded) for e in flows]
    assert not outside, f"offloaded without its own key in the gate: {outside}"
    kept = FULL_FLOWS - len(offloaded)
    # Each flow left out sends 10 datagrams a second, each answered (20
    # packets): asked for is one a second, which a starved VM still sends.
    assert kept >= FULL_FLOWS - FULL_GATE and slow >= kept * MORE_S, (kept, slow)
    line = next((ln for ln in status.splitlines() if ln.startswith("gate:")), "")
    assert "(100.0 %)" in line and "FULL" in line, status
    print(f"gate of {FULL_GATE}: {len(offloaded)}/{FULL_FLOWS} flows offloaded, {kept} kept "
          f"on the slow path ({slow} packets at the admin's forward chain in {MORE_S:.0f} s); "
          f"{line}; metric: " + "; ".join(ln for ln in metrics.splitlines()
                                         if ln.startswith("offloadd_gate_")))
