"""Standalone traffic generator run inside a lab namespace (no project imports).

udp-echo   echoes every datagram back (so conntrack sees replies: ESTABLISHED)
udp-flows  opens K UDP flows and keeps each sending every INTERVAL seconds for
           SECONDS, then prints a JSON summary of datagrams sent and echoed.
tcp-echo   echoes every byte back on each accepted connection
probe      K UDP or TCP flows, each sending every INTERVAL seconds for SECONDS;
           prints each flow's local port and the wall-clock times its replies
           came back (when a flow stopped, and whether it came back).
udp-push   a UDP server that sends to every peer it has heard from every
           INTERVAL seconds, whether or not the peer still gets through (reply
           direction traffic of its own); on SIGTERM prints, per peer port, the
           wall-clock times datagrams from it arrived.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import selectors
import signal
import socket
import sys
import time


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def udp_echo(bind: str, port: int) -> None:
    s = socket.socket(_family(bind), socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((bind, port))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(65535)
        # No route back for a moment (the ISP end during a PPPoE reconnect):
        # the next datagram is answered again.
        with contextlib.suppress(OSError):
            s.sendto(data, peer)


def _drain(socks: list[socket.socket], timeout: float) -> int:
    """Reads every waiting reply (up to ``timeout`` for the first); returns how many."""
    got = 0
    ready, _, _ = select.select(socks, [], [], timeout)
    for s in ready:
        try:
            while True:
                s.recv(65535)
                got += 1
        except OSError:
            # BlockingIOError: all read. Others: an ICMP error the socket
            # reports once (a gateway without a route for a moment, e.g. a
            # PPPoE reconnect); the flow goes on.
            pass
    return got


def udp_flows(dst: str, port: int, *, flows: int, seconds: float, interval: float,
              size: int) -> dict[str, int]:
    socks = []
    for _ in range(flows):
        s = socket.socket(_family(dst), socket.SOCK_DGRAM)
        s.connect((dst, port))
        s.setblocking(False)
        socks.append(s)
    payload = b"x" * size
    sent = received = 0
    end = time.monotonic() + seconds
    next_send = time.monotonic()
    # SIGTERM ends the run early and still prints what was seen (finish()).
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        now = time.monotonic()
        if now >= next_send:
            # At least one datagram per flow, however late this process ran.
            if now >= end and sent:
                break
            for s in socks:
                try:
                    s.send(payload)
                    sent += 1
                except OSError:
                    # Full, or an ICMP error reported once (see _drain).
                    pass
            next_send = now + interval
        received += _drain(socks, max(0.0, min(next_send, end) - now))
    # Let the last replies in.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        received += _drain(socks, 0.1)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return {"sent": sent, "received": received, "first_port": min(ports), "flows": flows}


def tcp_echo(bind: str, port: int) -> None:
    srv = socket.socket(_family(bind), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((bind, port))
    srv.listen(256)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is srv:
                conn, _peer = srv.accept()
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65535)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            try:
                sock.sendall(data)
            except OSError:
                sel.unregister(sock)
                sock.close()


def udp_push(bind: str, port: int, interval: float) -> dict[str, object]:
    s = socket.socket(_family(bind), socket.SOCK_DGRAM)
    s.bind((bind, port))
    s.setblocking(False)
    # On stderr: stdout carries the summary only.
    print("ready", file=sys.stderr, flush=True)
    arrivals: dict[tuple[object, ...], list[float]] = {}
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    next_push = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now >= next_push:
            for peer in arrivals:
                with contextlib.suppress(OSError):
                    s.sendto(b"push", peer)
            next_push = now + interval
        try:
            ready, _, _ = select.select([s], [], [], max(0.0, next_push - now))
        except InterruptedError:
            continue
        while ready:
            try:
                _data, peer = s.recvfrom(65535)
            except BlockingIOError:
                break
            arrivals.setdefault(peer, []).append(round(time.time(), 3))
    return {"peers": {str(peer[1]): times for peer, times in arrivals.items()}}


def probe(proto: str, dst: str, port: int, *, flows: int, seconds: float,
          interval: float) -> dict[str, object]:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    socks = []
    for _ in range(flows):
        s = socket.socket(_family(dst), kind)
        s.connect((dst, port))
        s.setblocking(False)
        socks.append(s)
    replies: dict[socket.socket, list[float]] = {s: [] for s in socks}
    sent = 0
    end = time.monotonic() + seconds
    next_send = time.monotonic()
    stop: list[int] = []
    # SIGTERM ends the run early and still prints what was seen.
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while time.monotonic() < end and not stop:
        now = time.monotonic()
        if now >= next_send:
            for s in socks:
                try:
                    s.send(b"probe...")
                    sent += 1
                except OSError:
                    pass  # full, refused, or an ICMP error reported once
            next_send = now + interval
        ready, _, _ = select.select(socks, [], [], max(0.0, min(next_send, end) - now))
        for s in ready:
            try:
                while s.recv(65535):
                    replies[s].append(round(time.time(), 3))
                    if kind == socket.SOCK_STREAM:
                        break
            except OSError:
                pass  # all read, or an ICMP error reported once (see _drain)
    out = [{"port": s.getsockname()[1], "replies": replies[s]} for s in socks]
    for s in socks:
        s.close()
    return {"sent": sent, "flows": out}


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("udp-echo")
    e.add_argument("--bind", required=True)
    e.add_argument("--port", type=int, required=True)
    f = sub.add_parser("udp-flows")
    f.add_argument("--dst", required=True)
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--flows", type=int, default=1)
    f.add_argument("--seconds", type=float, default=5)
    f.add_argument("--interval", type=float, default=0.05)
    f.add_argument("--size", type=int, default=64)
    t = sub.add_parser("tcp-echo")
    t.add_argument("--bind", required=True)
    t.add_argument("--port", type=int, required=True)
    u = sub.add_parser("udp-push")
    u.add_argument("--bind", required=True)
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--interval", type=float, default=0.1)
    p = sub.add_parser("probe")
    p.add_argument("--proto", choices=("udp", "tcp"), required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--flows", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--interval", type=float, default=0.1)
    a = ap.parse_args()
    if a.mode == "udp-echo":
        udp_echo(a.bind, a.port)
        return 0
    if a.mode == "tcp-echo":
        tcp_echo(a.bind, a.port)
        return 0
    if a.mode == "udp-push":
        print(json.dumps(udp_push(a.bind, a.port, a.interval)))
        return 0
    if a.mode == "probe":
        print(json.dumps(probe(a.proto, a.dst, a.port, flows=a.flows, seconds=a.seconds,
                               interval=a.interval)))
        return 0
    print(json.dumps(udp_flows(a.dst, a.port, flows=a.flows, seconds=a.seconds,
                                interval=a.interval, size=a.size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
