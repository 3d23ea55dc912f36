"""offloadd on a real gateway: a bridged LAN, PPPoE over a VLAN, a WireGuard site.

The gateway of tests/lab/gateway.py (a real ``pppd`` and ``pppoe-server``, a
WireGuard peer), run by offloadd with the flowtable a gateway operator writes:
the L3 devices (br-lan, ppp0, wg0) and ``stack = "lower"``. UDP flows and a
TCP connection from the LAN host run to a server behind each WAN, IPv4 and
IPv6, while:

- conntrack-tools (the oracle) says which flows are offloaded;
- the LAN host's own counters say they keep forwarding (replies come back);
- an admin's forward chain beside offloadd counts what still takes the slow
  path, and netdev ingress counters on br-lan and ppp0 what still crosses the
  bridge and PPPoE layers (WireGuard has no forward path beneath wg0: its
  fast path runs at wg0, which the kernel resolves to nothing lower). These
  are asserted for UDP; TCP's are printed (after a flowtable replacement
  7.3.4 sent 8-10 packets of an offloaded path's traffic in 4 s through the
  forward chain, TCP's by all signs).

Then what a gateway lives through: the ISP ends the PPPoE session and pppd
dials again (a new ppp0, a new session id), and the admin runs ``nft -f`` of
a file that starts with ``flush ruleset``. After each, every path is
offloaded again and forwards. The times are printed (JUnit system-out): the
targets (ppp0's stack attached within the attach target, the table back
within 1 s) are figures for the README, not bounds a slow day could miss.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.daemon import RunningDaemon, offloadd
from tests.lab.gateway import (
    Gateway,
    add_gw_witnesses,
    gateway_with_servers,
    match,
    offloaded_per_path,
    reconnect_pppoe,
    snapshot,
    watch_attach,
)
from tests.lab.traffic import (
    LIFETIME_S,
    SETTLE_S,
    Background,
    probe,
    udp_flows,
    wait_for,
)

PORT = 7000  # UDP and TCP echo servers
UDP_FLOWS = 2  # per path, each sending 10 datagrams a second
TCP_FLOWS = 1  # per path, each sending 10 small messages a second
FLOWS = UDP_FLOWS + TCP_FLOWS
INTERVAL = 0.1
WINDOW_S = 4.0
CONFIG = """
[[flowtable]]
name = "gw"
devices = ["br-lan", "ppp0", "wg0"]
stack = "lower"
"""
# What stack = "lower" attaches: br-lan's port, the Ethernet under the VLAN
# under the PPPoE session, and wg0 itself.
LOWER = frozenset({"lan0", "eth1", "wg0"})


def _admin(g: Gateway) -> str:
    """The admin's own table beside offloadd: a forward chain that counts each
    path's packets that take the slow path (offloadd's chain runs after it),
    UDP (fwd_PATH) and TCP (fwdtcp_PATH) apart."""
    return ("table inet admin {\n"
            + "".join(f"counter fwd_{p.name} {{}}\ncounter fwdtcp_{p.name} {{}}\n"
                      for p in g.paths)
            + "chain forward { type filter hook forward priority 0; policy accept;\n"
            + "".join(f"{match(p, d, PORT, 'udp')} counter name \"fwd_{p.name}\"\n"
                      f"{match(p, d, PORT, 'tcp')} counter name \"fwdtcp_{p.name}\"\n"
                      for p in g.paths for d in ("req", "rep"))
            + "}\n}\n")


@contextlib.contextmanager
def _flows(g: Gateway) -> Iterator[list[Background]]:
    gens = [udp_flows(g.lan, p.server_addr, port=PORT, flows=UDP_FLOWS, seconds=LIFETIME_S,
                      interval=INTERVAL) for p in g.paths]
    gens += [probe(g.lan, "tcp", p.server_addr, PORT, flows=TCP_FLOWS, seconds=LIFETIME_S,
                   interval=INTERVAL) for p in g.paths]
    try:
        yield gens
    finally:
        for gen in gens:
            gen.stop()


def _all_offloaded(g: Gateway) -> bool:
    return all(n == FLOWS for n in offloaded_per_path(g, PORT).values())


def _witnesses_anew(g: Gateway, d: RunningDaemon,
                    slow_ok: frozenset[str] = frozenset()) -> None:
    """add_gw_witnesses with offloadd running, then the re-validation it
    causes waited out: a netdev chain before the flowtable is policy that
    can reach forwarded packets, so offloadd replaces the flowtable and every
    flow takes the forward path for a packet or two until offloaded again. A
    window begun before that counts those packets (seen on 6.12 once the lab's
    commands got faster: 8-10 per path)."""
    def counts() -> tuple[int, int, int]:
        r = d.status()["revalidate"]
        return (r["policy_changes_total"], r["policy_changes_skipped_total"],
                r["revalidations_total"])

    before = counts()
    add_gw_witnesses(g, PORT)
    wait_for(lambda: counts()[:2] != before[:2], SETTLE_S, interval=0.2,
             what="offloadd to see the witnesses' transaction")
    if counts()[0] > before[0]:
        try:
            wait_for(lambda: counts()[2] > before[2], SETTLE_S, interval=0.2,
                     what="the re-validation the witnesses caused")
        except AssertionError as e:
            raise AssertionError(f"{e}; before {before}; now {d.status()['revalidate']}\n"
                                 f"{d.log_text()[-3000:]}") from None
    # Paths through a device in ``slow_ok`` may stay on the slow path (a
    # refused one on a kernel that offloads nothing through the device itself).
    wanted = {p.name for p in g.paths if p.upper not in slow_ok}
    wait_for(lambda: all(n == FLOWS for name, n in offloaded_per_path(g, PORT).items()
                         if name in wanted),
             SETTLE_S, interval=0.2,
             what="every path offloaded again after the witnesses' re-validation")


def _window(g: Gateway, what: str, slow_ok: frozenset[str] = frozenset()) -> list[str]:
    """Counts every path's packets for WINDOW_S; returns what is wrong: a path
    not offloaded, not forwarding, still taking the forward path, or crossing
    br-lan's or ppp0's ingress (a path through a device in ``slow_ok`` need
    only forward)."""
    a = snapshot(g)
    time.sleep(WINDOW_S)
    b = snapshot(g)
    offl = offloaded_per_path(g, PORT)
    d = {k: b[k] - a.get(k, 0) for k in b}
    problems = []
    for p in g.paths:
        sent, back = d[f"req_{p.name}"], d[f"rep_{p.name}"]
        fwd = d.get(f"fwd_{p.name}", 0)
        fwd_tcp = d.get(f"fwdtcp_{p.name}", 0)
        in_lan = d.get(f"in_brlan_{p.name}", 0)
        in_wan = d.get(f"in_{p.upper}_{p.name}", 0)
        print(f"[{what}] {p.name}: {offl[p.name]}/{FLOWS} offloaded; in {WINDOW_S:.0f} s "
              f"sent {sent}, at the server {d[f'arr_{p.name}']}, answered "
              f"{d[f'ans_{p.name}']}, back {back}; forward chain UDP {fwd} TCP {fwd_tcp}, "
              f"br-lan ingress {in_lan}, {p.upper} ingress {in_wan} (UDP)")
        if sent == 0 or back < sent // 2:
            problems.append(f"{what}: {p.name} does not forward: sent {sent}, at the server "
                            f"{d[f'arr_{p.name}']}, answered {d[f'ans_{p.name}']}, "
                            f"back {back}")
        if p.upper in slow_ok:
            continue
        if offl[p.name] != FLOWS:
            problems.append(f"{what}: {p.name} {offl[p.name]}/{FLOWS} flows offloaded")
        # A few packets in flight when the window opens may still be counted.
        few = max(5, sent // 50)
        layer = {"forward chain": fwd, "br-lan ingress": in_lan}
        if p.wan == "pppoe":
            layer[f"{p.upper} ingress"] = in_wan
        problems += [f"{what}: {p.name} offloaded, yet {n} packets reached the {where} "
                     f"(sent {sent})" for where, n in layer.items() if n > few]
    return problems


def _members_after(d: RunningDaemon, since: float, want: frozenset[str]) -> float:
    """Waits for the flowtable's devices; returns how long after ``since`` the
    listing that showed them began (a listing takes a second in the VM)."""
    asked: list[float] = []

    def there() -> bool:
        asked.append(time.monotonic())
        return d.members("gw")[0] == want
    wait_for(there, SETTLE_S, interval=0.1, what=f"flowtable gw devices == {sorted(want)}")
    return asked[-1] - since


def _diagnose(g: Gateway) -> str:
    """What the gateway and the ISP end look like, for a failed assertion."""
    out = []
    for ns, script in (
            (g.gw, "cat /proc/net/pppoe; ip -br link; ip -br addr; ip -4 route; ip -6 route; "
                   "conntrack -L 2>/dev/null | grep 7000; nft list flowtables"),
            (g.isp, "ip -br link; ip -br addr; ip -4 route; ip -6 route; nft list ruleset")):
        out.append(f"--- {ns.name}\n" + ns.run("sh", "-c", script, check=False).stdout)
    return "\n".join(out) + "\n" + g.logs()


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    with gateway_with_servers(PORT, tcp=True) as g:
        yield g


def test_a_gateway_offloads_every_path_through_reconnect_and_flush_ruleset(
        gateway: Gateway, tmp_path: Path) -> None:
    g = gateway
    g.gw.nft(_admin(g))
    with offloadd(g.gw, CONFIG, tmp_path) as d, _flows(g):
        _members_after(d, time.monotonic(), LOWER)
        # Per-direction packet counts in conntrack, for _diagnose.
        g.gw.sysctl("net.netfilter.nf_conntrack_acct", 1)
        status = d.status()
        stacks = {s["device"]: s["paths"] for s in status["stacks"]}
        print(f"flowtable gw: {sorted(LOWER)}; stacks {stacks}")
        cpu0 = d.cpu_seconds()
        assert stacks.get("br-lan") == ["br-lan → lan0"], status["stacks"]
        assert stacks.get("ppp0") == ["ppp0 → eth1.7 → eth1"], status["stacks"]

        wait_for(lambda: _all_offloaded(g), SETTLE_S, interval=0.5,
                 what=f"{FLOWS} offloaded flows on every path")
        problems = _window(g, "steady")
        assert not problems, "\n".join(problems) + "\n" + _diagnose(g)

        # The ISP ends the session; pppd dials again.
        t0 = time.monotonic()
        with watch_attach(g.gw, "gw", g.ppp, LOWER) as watched:
            up = reconnect_pppoe(g)
            attached = _members_after(d, up, LOWER)
            w = watched()
        # Stamped in the gateway's namespace by one clock as it happened (the
        # lab's own listings above cost up to a second each).
        print(f"PPPoE reconnect: the new ppp0's stack in the flowtable {w['attach_ms']} ms "
              "after the new ppp0 appeared; flowtable gw: " + "; ".join(
                  f"{t - w['appeared']:+.3f} s {m}" for t, m in w["timeline"]))
        assert w["attach_ms"] is not None, w
        wait_for(lambda: _all_offloaded(g), SETTLE_S, interval=0.2,
                 what="every path offloaded again after the PPPoE reconnect")
        again = time.monotonic() - up
        _witnesses_anew(g, d)  # on the new ppp0
        print(f"PPPoE reconnect: the new session up {up - t0:.1f} s after the old one ended; "
              f"its stack in the flowtable {attached:.1f} s and every flow offloaded again "
              f"{again:.1f} s after the new ppp0 was up")
        print(f"offloadd's CPU since the flows began: {d.cpu_seconds() - cpu0:.1f} s")
        problems = _window(g, "after the reconnect")
        assert not problems, "\n".join(problems) + "\n" + _diagnose(g)

        # The admin reloads a ruleset file that starts with flush ruleset.
        t0 = time.monotonic()
        g.gw.nft("flush ruleset\n" + _admin(g))
        back = _members_after(d, t0, LOWER)
        wait_for(lambda: _all_offloaded(g), SETTLE_S, interval=0.2,
                 what="every path offloaded again after flush ruleset")
        flows_back = time.monotonic() - t0
        print(f"flush ruleset: offloadd's table back {back:.1f} s and every flow offloaded "
              f"again {flows_back:.1f} s after the admin's nft -f")
        _witnesses_anew(g, d)  # they went with the flush
        print(f"offloadd's CPU since the flows began: {d.cpu_seconds() - cpu0:.1f} s")
        problems = _window(g, "after flush ruleset")
        assert not problems, "\n".join(problems) + "\n" + _diagnose(g)


class _Windows(threading.Thread):
    """Per path, (sent, back) at the LAN host in consecutive windows of about
    2 s, from the flows' start until stopped, each with its wall-clock span
    (the clock the guard's refusal is reported in): what every path did
    before and after the guard looked, also while the test still waited for
    the flows to be offloaded (a black hole starts with the first flow
    offloaded, and the guard may refuse before the test's own wait ends)."""

    def __init__(self, g: Gateway, seconds: float = 2.0) -> None:
        super().__init__(daemon=True)
        self._g = g
        self._seconds = seconds
        self._done = threading.Event()
        self.windows: list[tuple[float, float, dict[str, tuple[int, int]]]] = []

    def run(self) -> None:
        a, ta = snapshot(self._g), time.time()
        while not self._done.wait(self._seconds):
            b, tb = snapshot(self._g), time.time()
            self.windows.append((ta, tb, {
                p.name: (b[f"req_{p.name}"] - a[f"req_{p.name}"],
                         b[f"rep_{p.name}"] - a[f"rep_{p.name}"]) for p in self._g.paths}))
            a, ta = b, tb

    def stop(self) -> None:
        self._done.set()
        self.join()


def _black(fwd: dict[str, tuple[int, int]]) -> set[str]:
    return {name for name, (sent, back) in fwd.items() if sent == 0 or back < sent // 2}


def _swallowing(fwd: dict[str, tuple[int, int]]) -> set[str]:
    """Paths whose flows sent and lost most answers (a window before the
    flows began sends nothing: that is no evidence)."""
    return {name for name, (sent, back) in fwd.items() if sent >= 10 and back < sent // 2}


def test_a_path_that_swallows_offloaded_flows_is_refused(
        gateway: Gateway, tmp_path: Path) -> None:
    """The LAN host keeps veth's checksum offload: its datagrams reach the
    gateway with unfinished checksums, as from a container or VM on the
    gateway's bridge. Where the kernel's fast path sends them through PPPoE
    itself (eth1 in the flowtable) and the ISP end does not finish them (the
    lab's user-space pppoe-server), the offloaded PPPoE flows forward nothing:
    a black hole. The stack guard must find it on the running kernel, attach
    ppp0 as it is instead and free the flows, so that every path forwards
    again; where the kernel has no black hole it must refuse nothing: every
    refusal must follow a window in which a path through the refused device
    swallowed its flows."""
    g = gateway
    g.lan.run("ethtool", "-K", "eth0", "tx", "on")
    try:
        g.gw.nft("flush ruleset\n" + _admin(g))
        add_gw_witnesses(g, PORT)
        watch = _Windows(g)
        with offloadd(g.gw, CONFIG, tmp_path) as d, _flows(g):
            watch.start()
            try:
                _members_after(d, time.monotonic(), LOWER)
                wait_for(lambda: _all_offloaded(g), SETTLE_S, interval=0.5,
                         what=f"{FLOWS} offloaded flows on every path")
                # Until every path forwards and the guard has looked three
                # more times (where nothing swallows the flows, those looks
                # must refuse nothing).
                wall0 = time.time()
                looks = d.status()["guard"]["looks_total"]

                def settled() -> bool:
                    after = [fwd for start, _end, fwd in watch.windows if start >= wall0]
                    return (bool(after) and not _black(after[-1])
                            and d.status()["guard"]["looks_total"] >= looks + 3)
                wait_for(settled, 2 * SETTLE_S, interval=0.5,
                         what="every path forwarding and three more looks of the stack guard")
            finally:
                watch.stop()
            status = d.status()
            guard = status["guard"]
            refused = guard["refused"]
            print("paths not forwarding, per window (s from the flows offloaded): " + "; ".join(
                f"{start - wall0:+.0f}..{end - wall0:+.0f} {sorted(_black(fwd)) or 'all forward'}"
                for start, end, fwd in watch.windows))
            print(f"stack guard: {guard}")
            print(d.ctl("status").stdout)
            pppoe = {p.upper for p in g.paths if p.wan == "pppoe"}
            # Only the PPPoE side can swallow flows here; br-lan carries the
            # WireGuard flows, which forward: it must stay.
            assert set(refused) <= pppoe, refused
            ever_black = set().union(*(_black(fwd) for start, _end, fwd in watch.windows
                                       if start >= wall0))
            if ever_black:
                assert refused, f"{sorted(ever_black)} swallowed flows and nothing was refused"
            if refused:
                at = guard["last_refusal_timestamp"]
                seen = set().union(*(_swallowing(fwd) for start, _end, fwd in watch.windows
                                     if start < at))
                through = {p.name for p in g.paths if p.upper in refused}
                assert seen & through, (
                    f"refused {refused} {at - wall0:+.1f} s from the flows offloaded, although "
                    f"no path through it was seen swallowing its flows before")
                print(f"refused {at - wall0:+.1f} s from the flows offloaded; every path "
                      "forwarding since")
            _witnesses_anew(g, d, slow_ok=frozenset(refused))
            problems = _window(g, "after the guard", slow_ok=frozenset(refused))
            assert not problems, "\n".join(problems) + "\n" + _diagnose(g)
    finally:
        g.lan.run("ethtool", "-K", "eth0", "tx", "off")
