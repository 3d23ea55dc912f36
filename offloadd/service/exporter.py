"""The HTTP(S) endpoint that serves offloadd's metrics registry.

Why apart from the collector (metrics.py): what is measured and how it is
served change for different reasons. This half is sockets, threads and TLS:
a listener whose handshakes cannot stall other scrapes, and TLS files checked
before anything binds; it knows nothing of conntrack or nftables.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from offloadd.core.config import MetricsConfig
from offloadd.core.errors import OffloaddError

# The collector's logger: operators filter on one name for the metrics subsystem.
log = logging.getLogger("offloadd.service.metrics")


class MetricsError(OffloaddError, OSError):
    """The metrics endpoint cannot be served (address in use, bad TLS files)."""


# prometheus_client's start_http_server is not used: with TLS it wraps the
# listening socket, so the handshake runs in the accept loop with no timeout
# and one idle TCP connection stalls every scrape (measured: a scrape then
# times out). Here the handshake runs in the connection's own thread, under a
# timeout, and plain HTTP connections get the same timeout.

CONNECTION_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TlsOptions:
    """HTTPS for the endpoint; with client_cafile and client_auth_required, mutual TLS."""

    certfile: Path
    keyfile: Path
    client_cafile: Path | None = None
    client_auth_required: bool = False


def tls_context(tls: TlsOptions) -> ssl.SSLContext:
    """The server context, checked before anything binds (bad files fail here)."""
    if tls.client_auth_required and tls.client_cafile is None:
        raise MetricsError("metrics: client_auth_required needs a client CA file "
                           "(client_cafile)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=tls.certfile, keyfile=tls.keyfile)
        if tls.client_cafile is not None:
            ctx.load_verify_locations(cafile=tls.client_cafile)
            ctx.verify_mode = (ssl.CERT_REQUIRED if tls.client_auth_required
                               else ssl.CERT_OPTIONAL)
    except (OSError, ValueError) as e:
        raise MetricsError(f"metrics: cannot load TLS files (certfile {tls.certfile}, keyfile "
                           f"{tls.keyfile}, client_cafile {tls.client_cafile}): "
                           f"{getattr(e, 'strerror', None) or e}") from e
    return ctx


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds does not belong in the journal


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily,
                 context: ssl.SSLContext | None) -> None:
        self.address_family = family
        self.context = context
        super().__init__(address, _QuietHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's thread, so a slow client only stalls itself.
        request.settimeout(CONNECTION_TIMEOUT_S)
        if self.context is None:
            super().finish_request(request, client_address)
            return
        try:
            conn = self.context.wrap_socket(request, server_side=True)
        except OSError as e:
            log.debug("metrics: TLS handshake with %s failed: %s", client_address, e)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()


@dataclass(frozen=True)
class Exporter:
    """A running metrics endpoint; close() stops it and frees the port."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int  # the bound port (differs from the config's when that was 0)
    tls: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_exporter(config: MetricsConfig, registry: CollectorRegistry, *,
                   tls: TlsOptions | None = None) -> Exporter:
    """Serves `registry` at /metrics on config.host:config.port from a daemon thread."""
    context = tls_context(tls) if tls is not None else None
    try:
        info = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
        family, _type, _proto, _canon, sockaddr = info[0]
        server = _Server((str(sockaddr[0]), int(sockaddr[1])), family, context)
    except OSError as e:
        raise MetricsError(f"metrics: cannot serve on {config.listen}: "
                           f"{e.strerror or e}; change [metrics] host/port") from e
    server.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return Exporter(server=server, thread=thread, host=config.host,
                    port=int(server.server_address[1]), tls=tls is not None)
