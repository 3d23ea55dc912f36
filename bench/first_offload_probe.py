"""Runs inside the router namespace: time from a device appearing under a
configured name to the first offloaded packet of a flow through it.

Per sample: the router's server-side device is renamed to a name no
flowtable selects (``spare0``), a fresh UDP flow is started from the client
(one datagram per 10 ms, answered by the server) and established on the slow
path; then the device is renamed to the sample's target name and brought up,
and conntrack (conntrack-tools, the oracle) is polled until the flow shows
``[OFFLOAD]``. A target the daemon attaches (a name its pattern selects)
measures offloadd's path; a target declared to the kernel ahead of the device
(an exact name, on a kernel with name hooks) measures the kernel's own attach.
Both are stamped by this one process's clock.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SPARE = "spare0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def rename(old: str, new: str) -> None:
    # A running device cannot be renamed; its IPv4 address and connected
    # route come back with the link.
    _ip("link", "set", old, "down")
    _ip("link", "set", old, "name", new)
    _ip("link", "set", new, "up")


def _entry(sport: int, port: int) -> str:
    out = subprocess.run(["conntrack", "-L", "-p", "udp", "--dport", str(port),
                          "--sport", str(sport)], capture_output=True, text=True,
                         check=False).stdout
    return out.strip()


def _flow(client_ns: str, dst: str, port: int, sport: int) -> subprocess.Popen[str]:
    code = ("import socket,time,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0',{sport}))\n"
            "end=time.monotonic()+60\n"
            "while time.monotonic()<end:\n"
            f"    s.sendto(b'x'*64,('{dst}',{port}))\n"
            "    time.sleep(0.01)\n")
    return subprocess.Popen(["ip", "netns", "exec", client_ns, sys.executable, "-c", code],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def sample(a: argparse.Namespace, target: str, sport: int,
           timeout: float = 10.0) -> float | None:
    """ms from the renamed device coming up to the flow's first offloaded packet."""
    dev, port = a.device, a.port
    flow = _flow(a.client_ns, a.dst, port, sport)
    try:
        deadline = time.monotonic() + 10
        while "ASSURED" not in _entry(sport, port):
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow from port {sport} never established")
            time.sleep(0.05)
        if "OFFLOAD" in _entry(sport, port):
            raise AssertionError(f"flow from port {sport} offloaded before {target} appeared")
        rename(dev, target)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if "OFFLOAD" in _entry(sport, port):
                return round((time.monotonic() - t0) * 1000, 1)
            time.sleep(0.005)
        return None
    finally:
        flow.terminate()
        flow.wait()
        rename(target, dev)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", required=True, help="the server-side device, already spare")
    ap.add_argument("--targets", required=True, help="comma-separated names to measure")
    ap.add_argument("--client-ns", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--samples", type=int, default=10)
    a = ap.parse_args()
    out: dict[str, list[float | None]] = {t: [] for t in a.targets.split(",")}
    sport = 40000
    for _ in range(a.samples):
        for target, got in out.items():  # interleaved: both see the same machine state
            sport += 1
            got.append(sample(a, target, sport))
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
