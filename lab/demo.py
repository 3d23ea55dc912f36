"""`make demo`, inside the lab VM: offloadd at work on a router namespace.

Starts the daemon with the shipped example config (etc/offloadd/offloadd.toml,
with ``veth`` added to its kinds: the lab's links are veth pairs, and the
control socket in the demo's temporary directory) in the router, sends TCP
and UDP traffic through it, hot-plugs a VLAN device, and prints what an
operator would look at: offloadctl status, conntrack's [OFFLOAD] entries and
the daemon's metrics.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lab import conntrack
from tests.lab.daemon import RunningDaemon, offloadd
from tests.lab.topology import lab_topology
from tests.lab.traffic import (
    iperf3_client,
    iperf3_server,
    udp_echo_server,
    udp_flows,
    wait_for,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "offloadd" / "offloadd.toml"
KINDS = 'kinds = ["ether", "vlan", "bridge"]'


def demo_config(tmp: Path) -> str:
    text = EXAMPLE.read_text()
    if (KINDS not in text or "/run/offloadd/control.sock" not in text
            or "flow_count_interval = 15" not in text):
        raise SystemExit(f"demo: {EXAMPLE} changed; update lab/demo.py's overrides")
    return (text.replace(KINDS, 'kinds = ["ether", "vlan", "bridge", "veth"]')
            .replace("/run/offloadd/control.sock", str(tmp / "control.sock"))
            .replace("flow_count_interval = 15", "flow_count_interval = 2"))


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def main() -> int:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, lab_topology() as lab:
        say("lab: client -- lan0 [router] wan0 -- server (router runs offloadd)")
        print(f"config: {EXAMPLE.relative_to(EXAMPLE.parents[2])}, kinds += veth (lab links)")
        with offloadd(lab.router, demo_config(Path(tmp)), Path(tmp)) as d:
            d.wait_devices("lan", {"lan0", "lan1", "wan0"})
            say("hot-plug: a VLAN appears on wan0; offloadd follows it in place")
            lab.router.run("ip", "link", "add", "link", "wan0", "name", "wan0.7",
                           "type", "vlan", "id", "7")
            # stack = "lower" (the default): the kernel's fast path runs on
            # the device beneath the VLAN, wan0, already attached; the VLAN
            # joins the flowtable's ifname set (its flows are offloaded) and
            # the flowtable stays as it was.
            _wait_members(d, {"lan0", "lan1", "wan0"}, {"lan0", "lan1", "wan0", "wan0.7"})
            print(f"flowtable lan: {sorted(d.flowtable_devices('lan') or ())}; "
                  "wan0.7 rides on wan0 (offloadctl status shows the stack)")
            dst = lab.server_addr(4)
            with iperf3_server(lab.server), udp_echo_server(lab.server, "::"):
                # 60 s: the flows are still there at the metrics step on a slow
                # day (with 40 s the iperf3 stream had ended by then once).
                tcp = iperf3_client(lab.client, dst, seconds=60)
                udp = udp_flows(lab.client, lab.server_addr(6), flows=5, seconds=60)
                wait_for(lambda: conntrack.offloaded_count(lab.router, 4) >= 1
                         and conntrack.offloaded_count(lab.router, 6) >= 5, 30,
                         what="TCP and UDP flows offloaded")
                say("metrics (curl http://127.0.0.1:9468/metrics | grep offloaded)")
                # The count comes from a walk every metrics.flow_count_interval
                # (2 s here) while scraped; the first scrape after a quiet spell
                # gets the last walk's (its age says so) and wakes the walks.
                # First, while the flows surely run; status and conntrack after.
                seen: list[str] = []
                try:
                    text = wait_for(lambda: _counted(_seen(seen, _metrics(lab.router.name))),
                                    30, what="the metrics to count the offloaded flows")
                except AssertionError as e:
                    raise AssertionError(f"{e}; the last scrape:\n{seen[-1:]}") from None
                print(text, end="")
                say("offloadctl status")
                print(d.ctl("status").stdout, end="")
                say("conntrack -L -u OFFLOAD (in the router)")
                print(lab.router.out("conntrack", "-L", "-u", "OFFLOAD"), end="")
                result = tcp.result()
                udp.result()
            gbit = result["end"]["sum_received"]["bits_per_second"] / 1e9
            say(f"iperf3 through the offloaded path: {gbit:.2f} Gbit/s (emulated CPU)")
    say(f"demo finished in {time.monotonic() - t0:.0f} s")
    return 0


def _wait_members(d: RunningDaemon, devices: set[str], names: set[str]) -> None:
    """Waits for flowtable lan to hold ``devices`` and its ifname set ``names``."""
    want = (frozenset(devices), frozenset(names))
    try:
        wait_for(lambda: d.members("lan") == want, 60, interval=0.3,
                 what=f"flowtable lan {sorted(devices)}, its ifname set {sorted(names)}")
    except AssertionError as e:
        raise AssertionError(f"{e}; now {d.members('lan')}\n--- offloadd log ---\n"
                             f"{d.log_text()[-3000:]}") from None


def _seen(seen: list[str], text: str) -> str:
    seen.append(text)
    return text


def _counted(text: str) -> str | None:
    """``text`` once it counts an IPv4 and five IPv6 offloaded flows."""
    got = {fam: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
           for fam in ("ipv4", "ipv6")
           if line.startswith(f'offloadd_offloaded_flows{{family="{fam}",mode="software"}}')}
    return text if got.get("ipv4", 0) >= 1 and got.get("ipv6", 0) >= 5 else None


def _metrics(netns: str) -> str:
    code = ("import urllib.request;print(urllib.request.urlopen("
            "'http://127.0.0.1:9468/metrics', timeout=10).read().decode())")
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                         capture_output=True, text=True, check=False).stdout
    return "".join(line + "\n" for line in out.splitlines()
                   if line.startswith(("offloadd_offloaded_flows", "offloadd_flowtable_devices",
                                       "offloadd_up", "offloadd_source_up")))


if __name__ == "__main__":
    sys.exit(main())
