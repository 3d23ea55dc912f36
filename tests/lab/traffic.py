"""Real traffic through the lab: iperf3 for TCP, flowgen.py for UDP flows.

Servers are context managers that always stop their process; clients can run
in the background so a test can look at conntrack while packets still flow.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.lab import conntrack
from tests.lab.netns import CommandError, Netns
from tests.lab.topology import Lab

FLOWGEN = str(Path(__file__).with_name("flowgen.py"))

# How long a test waits for state that should come at once (a flow offloaded,
# a device attached, a log line). Tests assert the state, never the time it
# took: the lab VM runs under TCG on machines that differ ~2x from day to day,
# and a loaded CI machine is slower again. Waiting is free when the state is
# already there, so the bound is generous.
SETTLE_S = 60.0
# How long background traffic lasts: longer than any wait for it, since a test
# stops its clients itself (each client is stopped in a ``finally``).
LIFETIME_S = 900.0


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _await_ready(proc: subprocess.Popen[str], stream: IO[str] | None, marker: str, what: str,
                 timeout: float = SETTLE_S) -> None:
    """Waits for a server's line saying it is bound and listening.

    Read straight from the pipe, byte by byte (nothing is left in a buffer
    for a later ``communicate``): polling ``ss`` instead started a process
    every 0.1 s, CPU the starting server itself needed in a 1-vCPU VM.
    """
    assert stream is not None
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            continue
        ch = os.read(fd, 1)
        if not ch:
            raise CommandError(f"{what} exited ({proc.wait()}) before it was listening")
        line += ch
        if ch == b"\n":
            if marker.encode() in line:
                return
            line = b""
    raise CommandError(f"{what} not listening after {timeout}s")


def _drain(stream: IO[str] | None) -> None:
    """Reads a server's further output away, so that it never blocks on a full pipe."""
    assert stream is not None
    threading.Thread(target=_discard, args=(stream,), daemon=True).start()


def _discard(stream: IO[str]) -> None:
    for _line in stream:
        pass


@contextmanager
def iperf3_server(ns: Netns, port: int = 5201, bind: str | None = None) -> Iterator[None]:
    """``bind``: the address the server answers from, where its namespace
    has several (its UDP replies leave from the address the route to the
    client picks, which a client's connected socket drops if it is another)."""
    proc = ns.popen("iperf3", "-s", "-p", str(port), "--forceflush",
                    *(("-B", bind) if bind else ()), stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL)
    try:
        _await_ready(proc, proc.stdout, "Server listening", f"[{ns.name}] iperf3 -s -p {port}")
        _drain(proc.stdout)
        yield
    finally:
        stop_process(proc)


@dataclass
class Background:
    """A client running in the background; ``result()`` waits and parses its JSON."""

    proc: subprocess.Popen[str]

    def result(self, timeout: float = 120) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise CommandError(f"traffic client exit {self.proc.returncode}: {err or out}")
        return json.loads(out)  # type: ignore[no-any-return]

    def stop(self) -> None:
        stop_process(self.proc)

    def finish(self, timeout: float = 30) -> dict[str, Any]:
        """Asks the client to end now (SIGTERM) and returns its summary."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.result(timeout)


def iperf3_client(ns: Netns, dst: str, seconds: float, port: int = 5201,
                  extra: tuple[str, ...] = ()) -> Background:
    proc = ns.popen("iperf3", "-c", dst, "-p", str(port), "-t", str(seconds), "-J", *extra,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return Background(proc)


@contextmanager
def _echo_server(ns: Netns, proto: str, bind: str, port: int) -> Iterator[None]:
    proc = ns.popen(sys.executable, FLOWGEN, f"{proto}-echo", "--bind", bind, "--port", str(port),
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        _await_ready(proc, proc.stdout, "ready", f"[{ns.name}] {proto} echo server on {port}")
        yield
    finally:
        stop_process(proc)


def udp_echo_server(ns: Netns, bind: str, port: int = 7000) -> AbstractContextManager[None]:
    return _echo_server(ns, "udp", bind, port)


def tcp_echo_server(ns: Netns, bind: str, port: int) -> AbstractContextManager[None]:
    return _echo_server(ns, "tcp", bind, port)


def udp_push_server(ns: Netns, bind: str, port: int, interval: float = 0.1) -> Background:
    """A UDP server that keeps sending to its peers; ``finish()`` gives, per
    peer port, when their datagrams arrived (see flowgen.py udp-push)."""
    proc = ns.popen(sys.executable, FLOWGEN, "udp-push", "--bind", bind, "--port", str(port),
                    "--interval", str(interval), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _await_ready(proc, proc.stderr, "ready", f"[{ns.name}] udp push server on {port}")
    except CommandError:
        stop_process(proc)
        raise
    return Background(proc)


def probe(ns: Netns, proto: str, dst: str, port: int, *, flows: int, seconds: float,
          interval: float = 0.1) -> Background:
    """Flows that record when their replies came back (see flowgen.py probe)."""
    proc = ns.popen(sys.executable, FLOWGEN, "probe", "--proto", proto, "--dst", dst,
                    "--port", str(port), "--flows", str(flows), "--seconds", str(seconds),
                    "--interval", str(interval),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return Background(proc)


def udp_flows(ns: Netns, dst: str, *, port: int = 7000, flows: int = 1, seconds: float = 5,
              interval: float = 0.05, size: int = 64) -> Background:
    proc = ns.popen(sys.executable, FLOWGEN, "udp-flows", "--dst", dst, "--port", str(port),
                    "--flows", str(flows), "--seconds", str(seconds),
                    "--interval", str(interval), "--size", str(size),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return Background(proc)


# One iperf3 server per family: iperf3 serves one client at a time.
TCP_PORTS = {4: 5201, 6: 5202}


@dataclass(frozen=True)
class DualStack:
    """The clients of dual_stack_traffic, by family (4, 6)."""

    tcp: dict[int, Background]
    udp: dict[int, Background]


@contextmanager
def dual_stack_traffic(lab: Lab, *, udp_per_family: int,
                       udp_interval: float) -> Iterator[DualStack]:
    """IPv4 and IPv6 at once from the client to the server: per family one
    iperf3 stream (TCP_PORTS), capped at 20 Mbit/s so that both leave a
    1-vCPU VM room for the rest before they are offloaded, and UDP flows to an
    echo server on port 7000. Every client and server is stopped on exit."""
    with iperf3_server(lab.server, TCP_PORTS[4]), iperf3_server(lab.server, TCP_PORTS[6]), \
            udp_echo_server(lab.server, "::"):
        traffic = DualStack({}, {})
        try:
            for fam in (4, 6):
                traffic.tcp[fam] = iperf3_client(lab.client, lab.server_addr(fam),
                                                 seconds=LIFETIME_S, port=TCP_PORTS[fam],
                                                 extra=("-b", "20M"))
                traffic.udp[fam] = udp_flows(lab.client, lab.server_addr(fam),
                                             flows=udp_per_family, seconds=LIFETIME_S,
                                             interval=udp_interval)
            yield traffic
        finally:
            for g in (*traffic.tcp.values(), *traffic.udp.values()):
                g.stop()


@contextmanager
def offloaded_udp_flows(lab: Lab, v4: int, v6: int, interval: float = 0.2) -> Iterator[None]:
    """``v4`` IPv4 and ``v6`` IPv6 UDP flows from the client to an echo server
    that must already answer on port 7000, held until they are all offloaded
    (conntrack-tools the oracle); stopped on exit."""
    gens = [udp_flows(lab.client, lab.server_addr(fam), flows=n, seconds=LIFETIME_S,
                      interval=interval) for fam, n in ((4, v4), (6, v6))]
    try:
        wait_for(lambda: conntrack.offloaded_count(lab.router, 4) == v4
                 and conntrack.offloaded_count(lab.router, 6) == v6, SETTLE_S,
                 what=f"{v4} ipv4 and {v6} ipv6 offloaded flows")
        yield
    finally:
        for g in gens:
            g.stop()


def wait_for(pred: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Polls ``pred`` until it returns something truthy; raises with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def tx_packets(ns: Netns, device: str) -> int:
    """Packets ``device`` has sent (the kernel's counter): what crossed the
    router, whichever path it took."""
    (link,) = json.loads(ns.out("ip", "-s", "-j", "link", "show", "dev", device))
    return int(link["stats64"]["tx"]["packets"])
