"""Slow clients, run inside a lab namespace (no project imports).

Opens N connections to a TCP address and M to a Unix socket. Each sends one
byte of a request that never ends (an HTTP head without its blank line, a
JSON line without its newline) every INTERVAL seconds; one the server closed
is opened again at its next turn. Prints "ready <open>" once every connection
was opened, and on SIGTERM a JSON summary: connections opened, closed by the
server, connects that failed, bytes sent, open at the end.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import sys
import time
from collections.abc import Callable

HTTP_HEAD = b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Slow: "
JSON_HEAD = b'{"version": 1, "command": "status", "pad": "'
CONNECT_TIMEOUT_S = 2.0


class Client:
    def __init__(self, make: Callable[[], socket.socket], head: bytes, first_at: float) -> None:
        self.make = make
        self.head = head
        self.sock: socket.socket | None = None
        self.sent = 0
        self.next_at = first_at

    def byte(self) -> bytes:
        i = self.sent
        return self.head[i:i + 1] if i < len(self.head) else b"a"

    def closed_by_server(self) -> bool:
        assert self.sock is not None
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            return self.sock.recv(4096) == b""  # a reply is no reason to stop trickling
        except OSError:
            return True


def _tcp(addr: str) -> Callable[[], socket.socket]:
    host, _, port = addr.rpartition(":")

    def make() -> socket.socket:
        return socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
    return make


def _unix(path: str) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(CONNECT_TIMEOUT_S)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise
        return s
    return make


class Crowd:
    """Every client, and what happened to them."""

    def __init__(self, clients: list[Client], interval: float) -> None:
        self.clients = clients
        self.interval = interval
        self.stats = {"opened": 0, "closed_by_server": 0, "connect_failures": 0, "bytes": 0}

    def open(self, c: Client) -> None:
        try:
            c.sock = c.make()
        except OSError:
            self.stats["connect_failures"] += 1
            return
        c.sock.setblocking(False)
        c.sent = 0
        self.stats["opened"] += 1

    def drop(self, c: Client) -> None:
        assert c.sock is not None
        c.sock.close()
        c.sock = None
        self.stats["closed_by_server"] += 1

    def turn(self, c: Client, now: float) -> None:
        """One byte, or a new connection if the server closed the old one."""
        c.next_at = now + self.interval
        if c.sock is not None and c.closed_by_server():
            self.drop(c)
        if c.sock is None:
            # A new connection sends its first byte at once: on a slow day
            # the server cut each one before its next turn, and no byte was
            # ever sent.
            self.open(c)
            if c.sock is None:
                return
        try:
            c.sock.send(c.byte())
        except BlockingIOError:
            return
        except OSError:
            self.drop(c)
            return
        c.sent += 1
        self.stats["bytes"] += 1

    def open_now(self) -> int:
        return sum(c.sock is not None for c in self.clients)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tcp", required=True, help="HOST:PORT")
    p.add_argument("--tcp-count", type=int, required=True)
    p.add_argument("--unix", required=True, help="socket path")
    p.add_argument("--unix-count", type=int, required=True)
    p.add_argument("--interval", type=float, default=2.0)
    a = p.parse_args()

    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)

    now = time.monotonic()
    n = a.tcp_count + a.unix_count
    crowd = Crowd([Client(_tcp(a.tcp) if i < a.tcp_count else _unix(a.unix),
                          HTTP_HEAD if i < a.tcp_count else JSON_HEAD,
                          now + a.interval * i / n)
                   for i in range(n)], a.interval)
    for c in crowd.clients:
        crowd.open(c)
    print(f"ready {crowd.open_now()}", flush=True)
    while not stop:
        time.sleep(0.05)
        now = time.monotonic()
        for c in crowd.clients:
            if stop:
                break
            if c.next_at <= now:
                crowd.turn(c, now)
    print(json.dumps({**crowd.stats, "open_at_end": crowd.open_now()}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
