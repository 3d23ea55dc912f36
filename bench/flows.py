"""Standalone UDP flow tool for the benchmarks, run inside a lab namespace.

echo   echoes every datagram back on one or more ports (conntrack sees a reply,
       the flow is ESTABLISHED and the router's flow rule offloads it).
hold   opens N flows, waits until each got its echo (retrying the ones that did
       not), prints one JSON line, then sends one datagram per flow every
       INTERVAL seconds until stdin closes: long-lived flows that stay offloaded.
open   creates N flows in batches (explicit source ports, several destination
       ports, so more than one port range of flows can exist), each one
       datagram + echo + one more datagram (what offloads it: offloadd's
       gate), and closes the sockets: conntrack keeps the entries.

No project imports: started with ``ip netns exec`` under the VM's Python.
Raises RLIMIT_NOFILE itself (the guest's soft limit is 1024; root may raise it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import selectors
import socket
import sys
import threading
import time
from typing import Any

PAYLOAD = b"offloadd-bench!!"


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


def _big_rcvbuf(s: socket.socket, size: int) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _big_sndbuf(s: socket.socket, size: int) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, 32, size)  # SO_SNDBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _send_all(s: socket.socket, data: bytes, peer: Any) -> None:
    """Sends one echo, waiting for room rather than dropping it.

    Dropping on EAGAIN lost the replies of the same flows round after round
    (the holder sends its 1000 flows in the same order each second and the
    echoes of the tail of each round found the send buffer full): measured
    on 7.3.4, some flows got about 1 reply per 6 datagrams for 10 s and
    more, so the gate (a reply must pass the forward path) kept them on the
    slow path long after a repair, an artefact of this server.
    """
    while True:
        try:
            s.sendto(data, peer)
            return
        except BlockingIOError:
            select.select([], [s], [], 0.05)


def echo(bind: str, ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _big_rcvbuf(s, 32 << 20)
        _big_sndbuf(s, 8 << 20)
        s.bind((bind, port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, s)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.data
            with contextlib.suppress(BlockingIOError):
                for _ in range(256):
                    data, peer = s.recvfrom(2048)
                    _send_all(s, data, peer)


def _establish(socks: list[socket.socket], tries: int, wait: float) -> int:
    """Sends one datagram per socket until each has its echo; returns how many did."""
    sel = selectors.DefaultSelector()
    pending = set(range(len(socks)))
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    for _ in range(tries):
        for i in pending:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                socks[i].send(PAYLOAD)
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                    key.fileobj.recv(2048)  # type: ignore[union-attr]
                    pending.discard(key.data)
        if not pending:
            break
    sel.close()
    return len(socks) - len(pending)


def _socket(dst: str, dport: int, sport: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
    s.connect((dst, dport))
    s.setblocking(False)
    return s


def hold(dst: str, port: int, flows: int, interval: float, progress: str | None) -> None:
    _raise_nofile(flows + 256)
    socks = [_socket(dst, port) for _ in range(flows)]
    t0 = time.monotonic()
    ok = _establish(socks, tries=5, wait=1.0)
    print(json.dumps({"flows": flows, "established": ok,
                      "setup_s": round(time.monotonic() - t0, 2),
                      "ports": sorted(s.getsockname()[1] for s in socks)}), flush=True)
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    sent = rounds = 0
    while not stop.is_set():
        start = time.monotonic()
        for s in socks:
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                s.send(PAYLOAD)
                sent += 1
            # Replies are not read: they crossed the router, which is all that counts.
        rounds += 1
        if progress:
            # Completed rounds, so a watcher knows every flow sent after a moment.
            with open(progress + ".tmp", "w") as f:
                f.write(str(rounds))
            os.replace(progress + ".tmp", progress)
        stop.wait(max(0.0, interval - (time.monotonic() - start)))
    print(json.dumps({"sent": sent}), flush=True)


def open_flows(dst: str, ports: list[int], flows: int, *, batch: int, first_sport: int,
               sports: int) -> dict[str, float]:
    _raise_nofile(batch + 256)
    t0 = time.monotonic()
    made = ok = 0
    while made < flows:
        socks = []
        for i in range(made, min(flows, made + batch)):
            dport = ports[i // sports]
            socks.append(_socket(dst, dport, first_sport + i % sports))
        ok += _establish(socks, tries=3, wait=0.5)
        made += len(socks)
        for s in socks:
            # A second datagram after the echo: offloadd's gate offloads a
            # flow once each direction has passed as established, i.e. on
            # the original direction's packet after the first reply.
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                s.send(PAYLOAD)
            s.close()
    return {"flows": flows, "established": ok, "setup_s": round(time.monotonic() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--bind", default="0.0.0.0")
    e.add_argument("--ports", required=True, help="comma-separated")
    h = sub.add_parser("hold")
    h.add_argument("--dst", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--flows", type=int, required=True)
    h.add_argument("--interval", type=float, default=1.0)
    h.add_argument("--progress", help="file updated with the number of completed rounds")
    o = sub.add_parser("open")
    o.add_argument("--dst", required=True)
    o.add_argument("--ports", required=True, help="comma-separated destination ports")
    o.add_argument("--flows", type=int, required=True)
    o.add_argument("--batch", type=int, default=500)
    o.add_argument("--first-sport", type=int, default=10000)
    o.add_argument("--sports", type=int, default=50000, help="source ports per dst port")
    a = ap.parse_args()
    if a.mode == "echo":
        echo(a.bind, [int(p) for p in a.ports.split(",")])
    elif a.mode == "hold":
        hold(a.dst, a.port, a.flows, a.interval, a.progress)
    else:
        ports = [int(p) for p in a.ports.split(",")]
        if a.flows > len(ports) * a.sports:
            ap.error(f"{a.flows} flows need more than {len(ports)} x {a.sports} port pairs")
        print(json.dumps(open_flows(a.dst, ports, a.flows, batch=a.batch,
                                    first_sport=a.first_sport, sports=a.sports)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
