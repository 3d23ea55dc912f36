"""Flows stay offloaded across device removals on every kernel, and offloadd
repairs exactly where the kernel needs it.

200 UDP flows (100 IPv4, 100 IPv6) run offloaded through lan0/wan0. A control
round with ``repair = "off"`` asks the kernel itself whether device removals
leave flows behind (7.3: every IPv4 flow drops out of [OFFLOAD] for good;
6.1/6.12: they are offloaded again at their next packet, so a removal whose
flows are not back within CONTROL_S counts as leaving them behind). Then, with
repair on, 8 cycles add and remove an unrelated matching device: after each
removal at least 99 % of the flows must be offloaded again under the same
conntrack entries (conntrack-tools is the oracle). offloadd must have
replaced the flowtable where the control round showed the kernel needs it,
and never where it does not. The first repair's second transaction (its offload
rules put back) is refused (an injected fault): the chain is then without them,
and the reconcile that failure asks for must put them back, so the flows are
offloaded again all the same. On a kernel that needs no repair, the operator's
``offloadctl repair`` makes the same two steps, and the same refusal is healed.

How soon the flows come back is a figure, printed (and in `make bench`), not
a bound: each wait is generous (SETTLE_S), so a slow machine passes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.lab import conntrack
from tests.lab.daemon import RunningDaemon, offloadd
from tests.lab.nftns import rule_counter_packets
from tests.lab.topology import Lab
from tests.lab.traffic import LIFETIME_S, SETTLE_S, udp_echo_server, udp_flows, wait_for

CONFIG = """
[daemon]
repair = "{repair}"
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
PER_FAMILY = 100
CYCLES = 8
# The control round: flows the kernel offloads again by itself are back within
# a few seconds even on a slow day; 7.3 leaves them behind for good.
CONTROL_S = 30.0
WITNESS = """
table inet witness {
    chain slowpath { type filter hook forward priority -300; policy accept; counter; }
}
"""


def _flows(lab: Lab) -> dict[int, bool]:
    """conntrack id -> offloaded, for the test's flows of both families."""
    return {e.id: e.offloaded for fam in (4, 6) for e in conntrack.entries(lab.router, fam)
            if e.proto == "udp" and e.dport == 7000}


def _all_offloaded(lab: Lab) -> set[int] | None:
    now = _flows(lab)
    return set(now) if len(now) >= 2 * PER_FAMILY and all(now.values()) else None


def _offloaded_share(lab: Lab, ids: set[int]) -> float:
    now = _flows(lab)
    return sum(1 for i in ids if now.get(i)) / len(ids)


def _repair_status(d: RunningDaemon) -> dict[str, object]:
    rep: dict[str, object] = d.status()["repair"]
    return rep


def _explain(lab: Lab, d: RunningDaemon, ids: set[int]) -> str:
    now = _flows(lab)
    gone = ids - set(now)
    slow = [i for i in ids if i in now and not now[i]]
    lines = [ln for ln in lab.router.out("conntrack", "-L", "-p", "udp", "-o", "id").splitlines()
             if "dport=7000" in ln]
    sample = [ln for ln in lines if "OFFLOAD" not in ln][:4] or lines[:2]
    rep = _repair_status(d)
    last = rep.get("last")
    ago = f"{time.time() - last['time']:.1f} s ago" if isinstance(last, dict) else "never"
    return (f"{len(gone)} entries gone, {len(slow)} not offloaded, {len(now)} now; "
            f"last repair {ago}; repair status {rep}\nconntrack sample:\n" + "\n".join(sample)
            + f"\n--- offloadd log ---\n{d.log_text()[-4000:]}")


def _remove_and_time(lab: Lab, d: RunningDaemon, name: str, ids: set[int],
                     timeout: float) -> float | None:
    """Adds then removes a matching device; seconds until >= 99 % are offloaded again."""
    r = lab.router
    r.run("ip", "link", "add", name, "type", "veth", "peer", "name", f"p{name}")
    d.wait_devices("ft", {"lan0", "lan1", "wan0", name})
    t0 = time.monotonic()
    r.run("ip", "link", "del", name)
    # The removal first sends flows to the slow path (a route cache flush on
    # every kernel); give them their next packet before looking.
    time.sleep(1.5)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if _offloaded_share(lab, ids) >= 0.99:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def _without_repair(lab: Lab, d: RunningDaemon, ids: set[int], faults: Path, *,
                    rep: dict[str, object], rec: dict[str, Any]) -> None:
    """A kernel that never left a flow behind: nothing was replaced; then the
    operator asks for a repair (offloadctl repair), whose second step the
    injected fault refuses, and the reconcile it asks for heals it here too."""
    # Nothing to repair: no replacement, so no extra slow-path trips.
    assert rep["repairs_total"] == 0, rep
    assert rep["left_behind_flows"] == 0, rep
    # The injected fault still waits for a repair that never came.
    # The one write failure allowed: a removed device that vanished
    # between a pass's plan and its apply (ENOENT; the kernel applied
    # nothing and the pass is planned again; once on 6.12, 2026-12-03).
    assert faults.read_text() == "fail-chain-replace 1\n"
    replanned = d.log_text().count("re-planning shortly")
    assert rec["write_failures_total"] == replanned, (rec, replanned)
    healed = _operator_repair_healed(lab, d, ids, faults)
    rec = d.status()["reconcile"]
    assert rec["write_failures_total"] == replanned + 1, rec
    assert any("repair failed" in e and "injected" in e for e in rec["recent_errors"]), rec
    print(f"offloadctl repair with its second step refused: rule back and "
          f">= 99 % of the flows offloaded again after {healed:.1f} s")


def _operator_repair_healed(lab: Lab, d: RunningDaemon, ids: set[int], faults: Path) -> float:
    """`offloadctl repair` with the second step refused: seconds until the rule
    is back and >= 99 % of the flows are offloaded again under their entries."""
    t0 = time.monotonic()
    out = d.ctl("repair", check=True).stdout
    assert out.startswith("replacement scheduled for ft"), out
    wait_for(lambda: faults.read_text() == "fail-chain-replace 0\n", SETTLE_S, interval=0.2,
             what="the repair's second step (refused by the injected fault)")
    wait_for(lambda: "flow add @ft" in lab.router.out("nft", "list", "chain", "inet",
                                                      "offloadd", "forward"),
             SETTLE_S, interval=0.2, what="offloadd's flow add rules back after the refusal")
    wait_for(lambda: _offloaded_share(lab, ids) >= 0.99, SETTLE_S, interval=0.2,
             what=">= 99 % of the flows offloaded again after the refused repair")
    return time.monotonic() - t0


def test_flows_offloaded_again_after_device_removals(lab: Lab, tmp_path: Path) -> None:
    r = lab.router
    r.nft(WITNESS)
    # One dual-stack echo server answers both families.
    faults = tmp_path / "faults"
    with offloadd(r, CONFIG.format(repair="off"), tmp_path,
                  env={"OFFLOADD_FAULTS": str(faults)}) as d, \
            udp_echo_server(lab.server, "::"):
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        gens = [udp_flows(lab.client, lab.server_addr(fam), flows=PER_FAMILY, seconds=LIFETIME_S,
                          interval=0.5) for fam in (4, 6)]
        try:
            ids = wait_for(lambda: _all_offloaded(lab), 2 * SETTLE_S, interval=1,
                           what=f"{2 * PER_FAMILY} offloaded udp flows")

            # Control round, repair off: does this kernel leave flows behind?
            # 7.3 does not at every removal (seen: 12-14 of 20), so up to 5
            # removals ask; once flows are left behind they stay so.
            needs_repair = False
            for i in range(5):
                if _remove_and_time(lab, d, f"lan8{i}", ids, CONTROL_S) is None:
                    needs_repair = True
                    break
            stranded = 1 - _offloaded_share(lab, ids)
            assert _repair_status(d)["repairs_total"] == 0

            faults.write_text("fail-chain-replace 1\n")
            d.config.write_text(d.config.read_text().replace('repair = "off"',
                                                             'repair = "auto"'))
            d.ctl("reload", check=True)
            # A reload looks at once: what the control round left behind goes.
            # (Seen up to 47 s on a loaded machine: the repair waits for the
            # left-behind scan, then every flow's next packet.)
            t0 = time.monotonic()
            try:
                wait_for(lambda: _offloaded_share(lab, ids) >= 0.99, 3 * SETTLE_S, interval=0.2,
                         what=">= 99 % of the flows offloaded after turning repair on")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{_explain(lab, d, ids)}") from None
            first = time.monotonic() - t0

            times = []
            slow_before = rule_counter_packets(r, "inet", "witness", "slowpath")
            for i in range(CYCLES):
                took = _remove_and_time(lab, d, f"lan9{i % 10}", ids, SETTLE_S)
                assert took is not None, (
                    f"cycle {i}: fewer than 99 % of the flows offloaded again within "
                    f"{SETTLE_S} s ({_offloaded_share(lab, ids):.3f})\n{_explain(lab, d, ids)}")
                times.append(took)
            slow = rule_counter_packets(r, "inet", "witness", "slowpath") - slow_before
            # Same conntrack entries throughout: none was destroyed and made anew.
            assert set(_flows(lab)) >= ids
            rep = _repair_status(d)
            rec = d.status()["reconcile"]
            print(f"kernel needs repair: {needs_repair} (control round left "
                  f"{stranded:.1%} behind); after turning repair on: {first:.1f} s; "
                  f"{CYCLES} removals: offloaded again after "
                  f"max {max(times):.1f} s, median {sorted(times)[len(times) // 2]:.1f} s; "
                  f"repairs {rep['repairs_total']} in {rep['checks_total']} checks; "
                  f"slow-path packets {slow} ({slow / CYCLES / len(ids):.2f} per flow and "
                  "removal)")
            if needs_repair:
                assert isinstance(rep["repairs_total"], int)
                # Not every removal strands flows on 7.3 (seen: 12 of 20 needed a
                # repair); never a loop: at most the checks one removal makes.
                assert 1 <= rep["repairs_total"] <= 3 * CYCLES + 1, rep
                assert "left behind" in d.log_text()
                # The refused second step was healed by the reconcile it asked for.
                assert faults.read_text() == "fail-chain-replace 0\n"
                assert rec["write_failures_total"] == 1, rec
                assert any("repair failed" in e and "injected" in e
                           for e in rec["recent_errors"]), rec
            else:
                _without_repair(lab, d, ids, faults, rep=rep, rec=rec)
        finally:
            for g in gens:
                g.stop()
