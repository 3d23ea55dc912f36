"""The metrics endpoint under slow and too many clients, on real localhost sockets.

Why here and not only in the lab: the cap, the whole-request deadline and
making room by the oldest waiting request are offloadd's own logic; the
lab's slow-client test (tests/integration/test_slow_clients.py) shows the
same with the real daemon, its reconciles and the control socket.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

from offloadd.core.config import MetricsConfig
from offloadd.service.connections import DEADLINE, LIMIT, ConnectionLimits, ConnectionTable
from offloadd.service.exporter import Exporter, TlsOptions, start_exporter
from offloadd.service.timing import Timing

CAP = 4
DEADLINE_S = 1.0
# A cut comes at most one reap interval after the deadline; the rest is slack
# for a busy test machine (an upper bound on waiting, not an assertion on time).
CUT_WITHIN_S = DEADLINE_S + Timing().connection_reap_s + 5.0


def _registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Gauge("unit_test_up", "1", registry=reg).set(1)
    return reg


def _table() -> ConnectionTable:
    return ConnectionTable("metrics", ConnectionLimits(CAP, DEADLINE_S, DEADLINE_S))


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    exp = start_exporter(MetricsConfig(host="127.0.0.1", port=0), _registry(),
                         connections=_table())
    try:
        yield exp
    finally:
        exp.close()


def _closed_by_server(s: socket.socket) -> bool:
    if not select.select([s], [], [], 0)[0]:
        return False
    try:
        return s.recv(1) == b""
    except OSError:
        return True


def _trickle(socks: list[socket.socket], byte: bytes = b"G") -> None:
    """One byte on each socket the server has not closed."""
    for s in socks:
        if not _closed_by_server(s):
            with contextlib.suppress(OSError):
                s.send(byte)


def _scrape(url: str, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=10, context=context) as resp:
        assert resp.status == 200
        return resp.read().decode()  # type: ignore[no-any-return]


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_slow_clients_are_cut_off_and_a_scrape_still_answers(exporter: Exporter) -> None:
    threads = threading.active_count()
    slow = [_connect(exporter.port) for _ in range(3 * CAP)]
    try:
        for _ in range(3):
            _trickle(slow)
            time.sleep(0.1)
        # Never more threads than the cap, however many clients wait.
        assert threading.active_count() <= threads + CAP
        # The cap made room by the oldest waiting ones, so a scrape gets in.
        assert "unit_test_up 1.0" in _scrape(exporter.url)
        assert exporter.connections.dropped()[LIMIT] >= 2 * CAP

        # Whole-request deadline: bytes keep coming, yet each is cut off.
        end = time.monotonic() + CUT_WITHIN_S
        while time.monotonic() < end and not all(_closed_by_server(s) for s in slow):
            _trickle(slow)
            time.sleep(0.2)
        assert all(_closed_by_server(s) for s in slow)
        assert exporter.connections.dropped()[DEADLINE] >= 1
        assert exporter.connections.active == 0
        assert "unit_test_up 1.0" in _scrape(exporter.url)
    finally:
        for s in slow:
            s.close()


def test_a_scrape_answers_while_the_cap_is_full_of_idle_connections(
        exporter: Exporter) -> None:
    idle = [_connect(exporter.port) for _ in range(CAP)]
    try:
        for _ in range(3):
            assert "unit_test_up 1.0" in _scrape(exporter.url)
    finally:
        for s in idle:
            s.close()


def test_close_cuts_the_open_connections() -> None:
    exp = start_exporter(MetricsConfig(host="127.0.0.1", port=0), _registry(),
                         connections=ConnectionTable("metrics", ConnectionLimits(CAP, 60, 60)))
    s = _connect(exp.port)
    try:
        s.send(b"GET /met")
        end = time.monotonic() + 5
        while exp.connections.active == 0 and time.monotonic() < end:
            time.sleep(0.05)
        exp.close()
        s.settimeout(5)
        assert s.recv(1) == b""
        assert exp.connections.dropped() == {LIMIT: 0, DEADLINE: 0}
    finally:
        s.close()


def _cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=server", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_a_handshake_that_never_comes_is_cut_off(tmp_path: Path) -> None:
    """The TLS socket replaces the accepted one mid-connection; the cut
    still reaches it (by descriptor), during the handshake too."""
    cert, key = _cert(tmp_path)
    exp = start_exporter(MetricsConfig(host="127.0.0.1", port=0), _registry(),
                         tls=TlsOptions(certfile=cert, keyfile=key), connections=_table())
    ctx = ssl.create_default_context(cafile=str(cert))
    silent = [_connect(exp.port) for _ in range(2)]
    try:
        assert "unit_test_up 1.0" in _scrape(exp.url, context=ctx)
        end = time.monotonic() + CUT_WITHIN_S
        while time.monotonic() < end and not all(_closed_by_server(s) for s in silent):
            time.sleep(0.1)
        assert all(_closed_by_server(s) for s in silent)
        assert exp.connections.dropped()[DEADLINE] == 2
    finally:
        for s in silent:
            s.close()
        exp.close()


class CountingCollector:
    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> Iterator[Metric]:
        self.calls += 1
        yield GaugeMetricFamily("unit_test_collections", "collections", value=self.calls)


def test_a_request_cut_short_costs_no_collection() -> None:
    """wsgiref takes a request line ended by EOF ("GET /metrics") for a whole
    one; a cut connection must not cost a scrape's work."""
    reg = CollectorRegistry()
    counting = CountingCollector()
    reg.register(counting)
    exp = start_exporter(MetricsConfig(host="127.0.0.1", port=0), reg,
                         connections=ConnectionTable("metrics", ConnectionLimits(1, 60, 60)))
    try:
        with _connect(exp.port) as first:
            first.sendall(b"GET /metrics")
            end = time.monotonic() + 5
            while exp.connections.active == 0 and time.monotonic() < end:
                time.sleep(0.05)
            assert "unit_test_collections 1.0" in _scrape(exp.url)  # made room by the first
            first.settimeout(5)
            assert first.recv(1) == b""
        assert exp.connections.dropped()[LIMIT] == 1
        assert counting.calls == 1
    finally:
        exp.close()
