"""A real gateway in the lab VM: a bridged LAN, PPPoE over a VLAN, a WireGuard site.

    lan [eth0] --- [lan0] br-lan                                      (LAN, bridged)
                          gw   eth1 -- eth1.7 -- ppp0 (pppd, kernel PPPoE)
    isp [eth0] -------------- eth1     eth0.7 <- pppoe-server (user space, pppd over a pty)
                          gw   eth2 (underlay) -- wg0 (WireGuard)
    site [eth0] ------------- eth2     wg0 (the peer)

Everything is built from Debian's own packages, the way a gateway runs them:
``pppd`` with the ``pppoe.so`` plugin (the kernel's PPPoE: ppp0 over eth1.7
over eth1), ``pppoe-server`` at the ISP end, ``wg`` for the site. The
servers a LAN host talks to sit behind each WAN: 203.0.113.1 and
2001:db8:ff::1 on the ISP's loopback (reached through the PPPoE session),
198.18.20.1 and fd0f:20::1 on the site's (reached through the tunnel). The
gateway does no NAT: the ISP and the site route the LAN prefixes back.

Bring-up waits for states, never for a time: ppp0 up with its IPv4 address
and IPv6CP done on both ends, a WireGuard handshake, and every server
answering a ping from the LAN host; each with the lab's generous bound
(SETTLE_S), since TCG runs 2x slower on a slow day. What pppd and
pppoe-server logged is in the error when the session does not come up.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from tests.lab import conntrack
from tests.lab.netns import Netns, create_netns, delete_netns, host_run
from tests.lab.nftns import counters
from tests.lab.traffic import (
    SETTLE_S,
    stop_process,
    tcp_echo_server,
    udp_echo_server,
    wait_for,
)

_ids = itertools.count()

# The kernel modules the gateway needs (Debian's kernels build them as modules).
MODULES = ("8021q", "bridge", "ppp_generic", "pppoe", "wireguard")

LAN_V4, LAN_V6 = "198.18.1.0/24", "fd0f:1::/64"
GW_LAN_V4, GW_LAN_V6 = "198.18.1.1", "fd0f:1::1"
HOST_V4, HOST_V6 = "198.18.1.2", "fd0f:1::2"
ISP_SERVER_V4, ISP_SERVER_V6 = "203.0.113.1", "2001:db8:ff::1"
ISP_NET_V6 = "2001:db8:ff::/64"
ISP_PPP_V4 = "100.64.0.1"
SITE_SERVER_V4, SITE_SERVER_V6 = "198.18.20.1", "fd0f:20::1"
PPPOE_VLAN = 7
PPP_MTU = 1492

_NO_DAD = "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"


@dataclass(frozen=True)
class GwPath:
    """One routed path from the LAN host through the gateway to a server."""

    name: str  # "pppoe4", "pppoe6", "wg4", "wg6"
    wan: str  # "pppoe" or "wg"
    family: int
    server: Netns
    server_addr: str
    upper: str  # the gateway's L3 device towards the server: ppp0 or wg0


@dataclass
class Gateway:
    gw: Netns
    lan: Netns
    isp: Netns
    site: Netns
    isp_mac: str  # the ISP end's MAC (eth0 in the isp namespace): the PPPoE peer
    gw_eth1_mac: str
    isp_ppp: str  # the ISP end's ppp device (server-side pppd)
    paths: tuple[GwPath, ...]
    workdir: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    pppd: subprocess.Popen[str] | None = None  # the gateway's PPPoE client
    # Device names in the gateway namespace.
    bridge: str = "br-lan"
    port: str = "lan0"
    wan_eth: str = "eth1"
    wan_vlan: str = "eth1.7"
    ppp: str = "ppp0"
    wg: str = "wg0"
    wg_eth: str = "eth2"

    @property
    def namespaces(self) -> tuple[Netns, ...]:
        return (self.gw, self.lan, self.isp, self.site)

    @property
    def l3_devices(self) -> tuple[str, ...]:
        """The devices that carry the gateway's addresses and routes."""
        return (self.bridge, self.ppp, self.wg)

    def pppoe_session(self) -> str:
        """/proc/net/pppoe of the gateway: session id, peer MAC, device."""
        return self.gw.out("cat", "/proc/net/pppoe")

    def logs(self) -> str:
        out = []
        for name in ("pppd-client.log", "pppd-server.log"):
            p = FsPath(self.workdir, name)
            if p.exists():
                out.append(f"--- {name} (last lines)\n" + "\n".join(
                    p.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(out)


def load_modules() -> None:
    host_run("modprobe", "-a", *MODULES)


def _wg_keys(workdir: str, who: str) -> str:
    """A WireGuard key pair: writes the private key to a file, returns the public key."""
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
    path = FsPath(workdir, f"{who}.key")
    path.write_text(priv)
    os.chmod(path, 0o600)
    return subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True,
                          check=True).stdout.strip()


# pppoe-server's user mode runs ``pppd pty "pppoe -n -I IF -e SESS:MAC ..."
# OPTIONS...``; this pppd attaches the kernel's PPPoE to that session instead
# (the plugin's rp_pppoe_sess, what the -k mode of pppoe-server 4.0 passes).
_KERNEL_PPPD = """#!/bin/bash
set -euo pipefail
rest=()
while [ $# -gt 0 ]; do
    if [ "$1" = pty ]; then
        read -r -a cmd <<< "$2"
        shift 2
        for ((i = 0; i < ${#cmd[@]}; i++)); do
            case ${cmd[i]} in
                -I) nic=${cmd[i+1]} ;;
                -e) sess=${cmd[i+1]} ;;
            esac
        done
        continue
    fi
    rest+=("$1")
    shift
done
exec /usr/sbin/pppd plugin pppoe.so "nic-$nic" rp_pppoe_sess "$sess" "${rest[@]}"
"""


def _kernel_isp_args(workdir: str) -> tuple[str, ...]:
    """pppoe-server's options for kernel-mode sessions: a pppd that makes its
    user-mode session kernel-mode (_KERNEL_PPPD). Not ``-k``: Debian 12's
    3.15 lacks it, and with Debian 13's 4.0 the ISP end's pppd it started
    hung up on the first LCP request (7.3.4, 2026-12-03)."""
    wrapper = FsPath(workdir, "pppd-kernel-session")
    wrapper.write_text(_KERNEL_PPPD)
    wrapper.chmod(0o755)
    return ("-q", str(wrapper))


def _mac(ns: Netns, dev: str) -> str:
    (link,) = json.loads(ns.out("ip", "-j", "link", "show", "dev", dev))
    return str(link["address"])


def _addrs(ns: Netns, dev: str) -> list[dict[str, object]]:
    proc = ns.run("ip", "-j", "addr", "show", "dev", dev, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    data = json.loads(proc.stdout)
    return list(data[0].get("addr_info", [])) if data else []


def _ppp_ready(ns: Netns, dev: str, v4: bool = True) -> bool:
    """``dev`` is up with an IPv4 address (IPCP done) and an IPv6 link-local
    one (IPv6CP done)."""
    info = _addrs(ns, dev)
    fams = {a.get("family") for a in info}
    return ("inet" in fams or not v4) and "inet6" in fams


def _isp_ppp_device(isp: Netns) -> str:
    """The server-side pppd's device: the one holding the ISP end's address."""
    for link in json.loads(isp.out("ip", "-j", "addr", "show")):
        for a in link.get("addr_info", []):
            if a.get("local") == ISP_PPP_V4:
                return str(link["ifname"])
    return ""


def _pings(src: Netns, addr: str) -> bool:
    return src.run("ping", "-c", "1", "-W", "1", addr, check=False, timeout=30).returncode == 0


def _wg_handshake(ns: Netns, dev: str) -> bool:
    out = ns.out("wg", "show", dev, "latest-handshakes")
    return any(int(line.split()[1]) > 0 for line in out.splitlines() if line.split())


@contextlib.contextmanager
def gateway_lab(vlan_filtering: bool = False, lan_partial_csum: bool = False,
                kernel_isp: bool = False) -> Iterator[Gateway]:
    """Builds the gateway lab, yields it once every path answers, and always
    stops pppd and pppoe-server and removes every namespace.

    The LAN host's eth0 sends complete checksums (``ethtool -K eth0 tx off``),
    as frames from a physical LAN always carry them. With
    ``lan_partial_csum`` it keeps veth's checksum offload: its UDP datagrams
    then reach the gateway as CHECKSUM_PARTIAL skbs, and where a flowtable
    sends such an skb through PPPoE itself (7.x kernels, eth1 in the
    flowtable) the unfinished checksum reaches the ISP end, whose user-space
    pppoe reads raw frames from a packet socket: its kernel then drops every
    datagram (bad UDP checksum). 6.12 sends them through ppp0, which has no
    checksum offload, so the checksum is completed there. Measured with
    lab/gateway-wire.py on 2026-12-02.

    With ``kernel_isp`` the ISP end's sessions are the kernel's PPPoE too
    (_kernel_isp_args), as a BRAS's are: no frame crosses user space there,
    so the ISP end no longer caps what the gateway forwards (make bench)."""
    load_modules()
    prefix = f"gw{os.getpid() % 100000}x{next(_ids)}"
    made: list[Netns] = []
    procs: list[subprocess.Popen[str]] = []
    workdir = tempfile.mkdtemp(prefix="offloadd-gw-")
    gateway: Gateway | None = None
    try:
        for role in ("gw", "lan", "isp", "site"):
            made.append(create_netns(f"{prefix}-{role}"))
        gw, lan, isp, site = made
        gw_pub = _wg_keys(workdir, "gw")
        site_pub = _wg_keys(workdir, "site")
        gw.sh("\n".join([
            f"sysctl -q -w {_NO_DAD} net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1",
            # LAN: a bridge with one port.
            f"ip link add lan0 type veth peer name eth0 netns {lan.name}",
            "ip link add br-lan type bridge" + (" vlan_filtering 1" if vlan_filtering else ""),
            "ip link set lan0 master br-lan",
            "ip link set lan0 up",
            "ip link set br-lan up",
            f"ip addr add {GW_LAN_V4}/24 dev br-lan",
            f"ip addr add {GW_LAN_V6}/64 dev br-lan nodad",
            # WAN: PPPoE over VLAN 7 on eth1 (pppd comes later).
            f"ip link add eth1 type veth peer name eth0 netns {isp.name}",
            "ip link set eth1 up",
            f"ip link add link eth1 name eth1.{PPPOE_VLAN} type vlan id {PPPOE_VLAN}",
            f"ip link set eth1.{PPPOE_VLAN} up",
            # Site: WireGuard over eth2.
            f"ip link add eth2 type veth peer name eth0 netns {site.name}",
            "ip addr add 198.18.250.1/30 dev eth2",
            "ip link set eth2 up",
            "ip link add wg0 type wireguard",
            f"wg set wg0 listen-port 51820 private-key {workdir}/gw.key peer {site_pub} "
            "allowed-ips 10.99.0.2/32,fd0f:99::2/128,198.18.20.0/24,fd0f:20::/64 "
            "endpoint 198.18.250.2:51820",
            "ip addr add 10.99.0.1/24 dev wg0",
            "ip addr add fd0f:99::1/64 dev wg0 nodad",
            "ip link set wg0 up",
            "ip route add 198.18.20.0/24 dev wg0",
            "ip -6 route add fd0f:20::/64 dev wg0",
        ]))
        lan.sh("\n".join([
            f"sysctl -q -w {_NO_DAD}",
            f"ip addr add {HOST_V4}/24 dev eth0",
            f"ip addr add {HOST_V6}/64 dev eth0 nodad",
            "ip link set eth0 up",
            *([] if lan_partial_csum else ["ethtool -K eth0 tx off >/dev/null"]),
            f"ip route add default via {GW_LAN_V4}",
            f"ip -6 route add default via {GW_LAN_V6}",
        ]))
        isp.sh("\n".join([
            f"sysctl -q -w {_NO_DAD}",
            "ip link set eth0 up",
            f"ip link add link eth0 name eth0.{PPPOE_VLAN} type vlan id {PPPOE_VLAN}",
            f"ip link set eth0.{PPPOE_VLAN} up",
            f"ip addr add {ISP_SERVER_V4}/32 dev lo",
            f"ip addr add {ISP_SERVER_V6}/128 dev lo nodad",
        ]))
        site.sh("\n".join([
            f"sysctl -q -w {_NO_DAD}",
            "ip addr add 198.18.250.2/30 dev eth0",
            "ip link set eth0 up",
            "ip link add wg0 type wireguard",
            f"wg set wg0 listen-port 51820 private-key {workdir}/site.key peer {gw_pub} "
            f"allowed-ips 10.99.0.1/32,fd0f:99::1/128,{LAN_V4},{LAN_V6} "
            "endpoint 198.18.250.1:51820",
            "ip addr add 10.99.0.2/24 dev wg0",
            "ip addr add fd0f:99::2/64 dev wg0 nodad",
            "ip link set wg0 up",
            f"ip route add {LAN_V4} dev wg0",
            f"ip -6 route add {LAN_V6} dev wg0",
            f"ip addr add {SITE_SERVER_V4}/32 dev lo",
            f"ip addr add {SITE_SERVER_V6}/128 dev lo nodad",
        ]))

        # The ISP end: user-space pppoe-server (this build has no kernel mode),
        # pppd over a pty per session. Both ends need noauth (Debian's
        # /etc/ppp/options says auth); ::1/::2 are the IPv6CP interface ids.
        server_opts = FsPath(workdir, "pppoe-server-options")
        server_opts.write_text("\n".join([
            "noauth", "nodefaultroute", f"mtu {PPP_MTU}", f"mru {PPP_MTU}", "+ipv6",
            "ipv6 ::1,::2", f"logfile {workdir}/pppd-server.log", "debug", ""]))
        procs.append(isp.popen(
            "pppoe-server", "-F", "-I", f"eth0.{PPPOE_VLAN}", "-L", ISP_PPP_V4,
            "-R", "100.64.0.10", "-N", "4", "-O", str(server_opts),
            "-X", f"{workdir}/pppoe-server.pid",
            *(_kernel_isp_args(workdir) if kernel_isp else ()),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # The gateway: kernel PPPoE (the pppoe.so plugin) over eth1.7.
        pppd = gw.popen(
            "pppd", "nodetach", "plugin", "pppoe.so", f"nic-eth1.{PPPOE_VLAN}", "noauth",
            "user", "x", "defaultroute", "persist", "maxfail", "0", "holdoff", "1",
            "ifname", "ppp0", "mtu", str(PPP_MTU), "mru", str(PPP_MTU), "noipdefault",
            "+ipv6", "logfile", f"{workdir}/pppd-client.log", "debug",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(pppd)
        gateway = Gateway(gw=gw, lan=lan, isp=isp, site=site, isp_mac=_mac(isp, "eth0"),
                          gw_eth1_mac=_mac(gw, "eth1"), isp_ppp="", paths=(),
                          workdir=workdir, procs=procs, pppd=pppd)
        try:
            wait_for(lambda: _ppp_ready(gw, "ppp0"), SETTLE_S, interval=0.5,
                     what="ppp0 up with IPv4 and IPv6 addresses (PPPoE session)")
            isp_ppp = wait_for(lambda: _isp_ppp_device(isp), SETTLE_S, interval=0.5,
                               what=f"the ISP end's ppp device with {ISP_PPP_V4}")
            wait_for(lambda: _ppp_ready(isp, isp_ppp), SETTLE_S, interval=0.5,
                     what=f"IPv6CP on the ISP end ({isp_ppp})")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{gateway.logs()}") from None
        gateway.isp_ppp = isp_ppp
        isp.sh(f"ip route add {LAN_V4} dev {isp_ppp}\nip -6 route add {LAN_V6} dev {isp_ppp}")
        gw.sh(f"ip -6 route add {ISP_NET_V6} dev ppp0")

        # WireGuard: a handshake (the first packet starts it).
        wait_for(lambda: _pings(gw, "10.99.0.2") and _wg_handshake(gw, "wg0"), SETTLE_S,
                 interval=0.5, what="a WireGuard handshake on wg0")
        gateway.paths = (
            GwPath("pppoe4", "pppoe", 4, isp, ISP_SERVER_V4, "ppp0"),
            GwPath("pppoe6", "pppoe", 6, isp, ISP_SERVER_V6, "ppp0"),
            GwPath("wg4", "wg", 4, site, SITE_SERVER_V4, "wg0"),
            GwPath("wg6", "wg", 6, site, SITE_SERVER_V6, "wg0"),
        )
        for p in gateway.paths:
            try:
                wait_for(lambda p=p: _pings(lan, p.server_addr), SETTLE_S, interval=0.5,
                         what=f"{p.server_addr} ({p.name}) answering the LAN host")
            except AssertionError as e:
                raise AssertionError(f"{e}\n{gateway.logs()}") from None
        yield gateway
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        for ns in reversed(made):
            delete_netns(ns)
        with contextlib.suppress(OSError):
            for f in FsPath(workdir).iterdir():
                f.unlink()
            os.rmdir(workdir)


def ifindex(ns: Netns, dev: str) -> int | None:
    proc = ns.run("ip", "-j", "link", "show", "dev", dev, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    (link,) = json.loads(proc.stdout)
    return int(link["ifindex"])


def reconnect_pppoe(g: Gateway) -> float:
    """Ends the PPPoE session from the gateway's side and waits for the next
    one, as an ISP's forced reconnect does: SIGHUP makes pppd end the link
    (ppp0 goes away) and, with ``persist``, dial again; a new session
    gets a new ppp0 (a new ifindex) and a new session id. The ISP end's pppd
    ends with the session, and pppoe-server starts one for the new session,
    so the routes to the LAN are added again on both ends. Returns the
    monotonic time at which the new ppp0 had both its addresses."""
    assert g.pppd is not None
    old_index, old_isp = ifindex(g.gw, g.ppp), g.isp_ppp
    old_session = g.pppoe_session()
    g.pppd.send_signal(signal.SIGHUP)
    try:
        wait_for(lambda: ifindex(g.gw, g.ppp) not in (None, old_index)
                 and _ppp_ready(g.gw, g.ppp), SETTLE_S, interval=0.2,
                 what="a new ppp0 with IPv4 and IPv6 after the reconnect")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{g.logs()}") from None
    up = time.monotonic()
    isp_ppp = wait_for(lambda: _isp_ppp_device(g.isp), SETTLE_S, interval=0.2,
                       what=f"the ISP end's ppp device with {ISP_PPP_V4} after the reconnect")
    wait_for(lambda: _ppp_ready(g.isp, isp_ppp), SETTLE_S, interval=0.2,
             what=f"IPv6CP on the ISP end ({isp_ppp}) after the reconnect")
    g.isp_ppp = isp_ppp
    g.isp.sh(f"ip route replace {LAN_V4} dev {isp_ppp}\n"
             f"ip -6 route replace {LAN_V6} dev {isp_ppp}")
    g.gw.sh(f"ip -6 route replace {ISP_NET_V6} dev {g.ppp}")
    new_session = g.pppoe_session()
    assert new_session != old_session or isp_ppp != old_isp, (old_session, new_session)
    return up


@contextlib.contextmanager
def watch_attach(ns: Netns, flowtable: str, device: str, want: frozenset[str],
                 table: str = "offloadd") -> Iterator[Callable[[], dict[str, Any]]]:
    """Runs tests.lab.ftwatch in ``ns`` while the block runs (a reconnect):
    it stamps the new ``device``'s arrival and the first read of
    ``flowtable`` holding ``want`` after it, by one clock. Yields a function
    that waits for its answer (``attach_ms``, the timeline)."""
    proc = ns.popen(sys.executable, "-m", "tests.lab.ftwatch", "--table", table,
                    "--flowtable", flowtable, "--device", device, "--want", ",".join(sorted(want)),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"ftwatch did not start: {line!r} {err}")

        def result() -> dict[str, Any]:
            out, err = proc.communicate(timeout=SETTLE_S * 3)
            if proc.returncode != 0 or not out.strip():
                raise AssertionError(f"ftwatch failed ({proc.returncode}): {err[-2000:]}")
            return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]
        yield result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def gateway_with_servers(port: int, *, tcp: bool = False) -> Iterator[Gateway]:
    """The gateway lab with its witnesses (add_witnesses) and an echo server
    on ``port`` at each path's server address, UDP (and TCP with ``tcp``).
    Each server returns once its own address is bound (two share a
    namespace's port)."""
    with gateway_lab() as g:
        add_witnesses(g, port)
        with contextlib.ExitStack() as servers:
            for p in g.paths:
                servers.enter_context(udp_echo_server(p.server, p.server_addr, port))
                if tcp:
                    servers.enter_context(tcp_echo_server(p.server, p.server_addr, port))
            yield g


# -- witnesses -----------------------------------------------------------------
# Counters that show where a path's packets went: nft counters in each
# namespace, read in one listing per namespace.

def snapshot(g: Gateway) -> dict[str, int]:
    snap: dict[str, int] = {}
    for ns in g.namespaces:
        snap.update(counters(ns))
    return snap


def match(p: GwPath, direction: str, port: int, l4: str = "meta l4proto { tcp, udp }") -> str:
    """nft match for the path's requests ("req") or replies ("rep") to
    ``port`` (UDP and TCP, or as ``l4`` says: "udp", "tcp")."""
    ip = "ip" if p.family == 4 else "ip6"
    th = l4 if l4 in ("udp", "tcp") else f"{l4} th"
    if direction == "req":
        return f"{ip} daddr {p.server_addr} {th} dport {port}"
    return f"{ip} saddr {p.server_addr} {th} sport {port}"


def add_witnesses(g: Gateway, port: int) -> None:
    """Counters that stay for the whole test: the LAN host's sent (req_PATH)
    and received (rep_PATH), the servers' arrivals (arr_PATH) and answers
    (ans_PATH), the gateway's
    upper devices' ingress (in_brlan_PATH, in_ppp0_PATH, in_wg0_PATH), the
    PPPoE frames on the ISP's wire (to_peer, misaddressed)."""
    names = [p.name for p in g.paths]
    g.lan.nft("table inet hostw {\n" + "".join(
        f"counter req_{n} {{}}\ncounter rep_{n} {{}}\n" for n in names)
        + "chain out { type filter hook output priority 0; policy accept;\n"
        + "".join(f"{match(p, 'req', port)} counter name \"req_{p.name}\"\n"
                  for p in g.paths)
        + "}\nchain in { type filter hook input priority 0; policy accept;\n"
        + "".join(f"{match(p, 'rep', port)} counter name \"rep_{p.name}\"\n"
                  for p in g.paths)
        + "}\n}\n")
    for server in (g.isp, g.site):
        mine = [p for p in g.paths if p.server == server]
        server.nft("table inet srvw {\n" + "".join(f"counter arr_{p.name} {{}}\n"
                                                    f"counter ans_{p.name} {{}}\n" for p in mine)
                   + "chain in { type filter hook input priority 0; policy accept;\n"
                   + "".join(f"{match(p, 'req', port)} counter name \"arr_{p.name}\"\n"
                             for p in mine)
                   + "}\nchain out { type filter hook output priority 0; policy accept;\n"
                   + "".join(f"{match(p, 'rep', port)} counter name \"ans_{p.name}\"\n"
                             for p in mine) + "}\n}\n")
    add_gw_witnesses(g, port)
    # The wire at the ISP end: PPPoE session frames on VLAN 7, addressed to
    # the ISP end's MAC or not.
    sess = f"ether type 8021q vlan id {PPPOE_VLAN} vlan type 0x8864"
    g.isp.nft("table netdev wire {\ncounter to_peer {}\ncounter misaddressed {}\n"
              "chain in { type filter hook ingress device \"eth0\" priority -500; "
              "policy accept;\n"
              f"{sess} ether daddr {g.isp_mac} counter name \"to_peer\"\n"
              f"{sess} ether daddr != {g.isp_mac} counter name \"misaddressed\"\n"
              "}\n}\n")


def add_gw_witnesses(g: Gateway, port: int) -> None:
    """The gateway's ingress counters on its upper devices (br-lan, ppp0,
    wg0), UDP only, made again if they are there: a netdev chain goes with the device it
    hooks (a PPPoE reconnect's new ppp0 needs a new one before 6.16) and with a
    ``flush ruleset``."""
    # Hooked before the flowtable (priority -500 < 0): what reaches each
    # upper device's ingress, offloaded there or not. One transaction (the
    # old table, if any, deleted in it): one change for offloadd to see.
    chains = [(g.bridge, "req", g.paths)] + [
        (dev, "rep", [p for p in g.paths if p.upper == dev]) for dev in (g.ppp, g.wg)]
    script = "add table netdev gww\ndelete table netdev gww\ntable netdev gww {\n"
    for dev, direction, paths in chains:
        tag = dev.replace("-", "")
        script += "".join(f"counter in_{tag}_{p.name} {{}}\n" for p in paths)
        script += (f"chain in_{tag} {{ type filter hook ingress device \"{dev}\" priority -500; "
                   "policy accept;\n")
        script += "".join(f"{match(p, direction, port, 'udp')} counter name "
                          f"\"in_{tag}_{p.name}\"\n" for p in paths) + "}\n"
    g.gw.nft(script + "}\n")


def offloaded_per_path(g: Gateway, port: int) -> dict[str, int]:
    """Per path, how many of its conntrack entries (to ``port``) say [OFFLOAD]."""
    by_family = {4: conntrack.entries(g.gw, 4), 6: conntrack.entries(g.gw, 6)}
    return {p.name: sum(1 for e in by_family[p.family]
                        if e.dst == p.server_addr and e.dport == port and e.offloaded)
            for p in g.paths}
