"""The metrics endpoint served for real on 127.0.0.1 and scraped over HTTP(S).

Why: the unit tests pin the exposition; this checks the serving path (bind,
ephemeral port, TLS, close frees the port) and a scrape that reads the real
conntrack of this machine through ctnetlink.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from offloadd.core.config import MetricsConfig
from offloadd.core.model import DesiredResult, TableState
from offloadd.kernel.conntrack import ConntrackCounter
from offloadd.kernel.links import WatcherStats
from offloadd.service.exporter import Exporter, MetricsError, TlsOptions, start_exporter
from offloadd.service.metrics import DaemonCounters, LinkStats, register


class View:
    def counters(self) -> DaemonCounters:
        return DaemonCounters(reconciles_total=1, started=1.0)

    def desired(self) -> DesiredResult | None:
        return None

    def attached(self) -> TableState | None:
        return None

    def links(self) -> LinkStats:
        return WatcherStats(events_total=3)


@pytest.fixture
def registry() -> CollectorRegistry:
    if os.geteuid() != 0:
        pytest.fail("the metrics host test reads conntrack and needs root (CAP_NET_ADMIN)")
    reg = CollectorRegistry()
    register(reg, View(), ConntrackCounter())
    return reg


@pytest.fixture
def exporter(registry: CollectorRegistry) -> Iterator[Exporter]:
    exp = start_exporter(MetricsConfig(host="127.0.0.1", port=0), registry)
    try:
        yield exp
    finally:
        exp.close()


def test_scrape_over_http(exporter: Exporter) -> None:
    assert exporter.port > 0 and exporter.url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(exporter.url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body = resp.read().decode()
    assert 'offloadd_source_up{source="conntrack"} 1.0' in body
    assert 'offloadd_offloaded_flows{family="ipv4",mode="software"} 0.0' in body
    assert 'offloadd_offloaded_flows{family="ipv6",mode="hardware"} 0.0' in body
    assert "offloadd_conntrack_entries " in body
    assert "offloadd_link_events_total 3.0" in body
    assert "offloadd_reconciles_total 1.0" in body


def test_port_in_use_is_one_clear_error(exporter: Exporter) -> None:
    with pytest.raises(MetricsError, match=r"127\.0\.0\.1:\d+: Address already in use"):
        start_exporter(MetricsConfig(host="127.0.0.1", port=exporter.port),
                       CollectorRegistry())


def test_close_frees_the_port(registry: CollectorRegistry) -> None:
    exp = start_exporter(MetricsConfig(host="127.0.0.1", port=0), registry)
    port = exp.port
    exp.close()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def make_cert(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_scrape_over_https_an_idle_client_does_not_stall_it(
        registry: CollectorRegistry, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "server")
    exp = start_exporter(MetricsConfig(host="127.0.0.1", port=0), registry,
                         tls=TlsOptions(certfile=cert, keyfile=key))
    try:
        assert exp.url.startswith("https://")
        # A connection that never starts its handshake (prometheus_client's own
        # server would block every scrape behind it).
        with socket.create_connection(("127.0.0.1", exp.port)):
            ctx = ssl.create_default_context(cafile=str(cert))
            with urllib.request.urlopen(exp.url, timeout=5, context=ctx) as resp:
                assert 'offloadd_source_up{source="conntrack"} 1.0' in resp.read().decode()
    finally:
        exp.close()


def test_mutual_tls(registry: CollectorRegistry, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "server")
    ccert, ckey = make_cert(tmp_path, "client")
    exp = start_exporter(MetricsConfig(host="127.0.0.1", port=0), registry,
                         tls=TlsOptions(cert, key, client_cafile=ccert,
                                        client_auth_required=True))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        with pytest.raises(OSError):  # no client certificate
            urllib.request.urlopen(exp.url, timeout=5, context=ctx).read()
        ctx.load_cert_chain(ccert, ckey)
        with urllib.request.urlopen(exp.url, timeout=5, context=ctx) as resp:
            assert resp.status == 200
    finally:
        exp.close()


def test_bad_tls_files_fail_before_binding(registry: CollectorRegistry,
                                          tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match="cannot load TLS files"):
        start_exporter(MetricsConfig(host="127.0.0.1", port=0), registry,
                       tls=TlsOptions(tmp_path / "none.pem", tmp_path / "none.key"))


def test_ipv6_loopback(registry: CollectorRegistry) -> None:
    exp = start_exporter(MetricsConfig(host="::1", port=0), registry)
    try:
        assert exp.url.startswith("http://[::1]:")
        with urllib.request.urlopen(exp.url, timeout=5) as resp:
            assert resp.status == 200
    finally:
        exp.close()


def test_client_auth_without_ca_is_refused(registry: CollectorRegistry) -> None:
    with pytest.raises(MetricsError, match="client_cafile"):
        start_exporter(MetricsConfig(host="127.0.0.1", port=0), registry,
                       tls=TlsOptions(Path("c"), Path("k"), client_auth_required=True))
