"""The HTTP(S) endpoint that serves offloadd's metrics registry.

Why apart from the collector (metrics.py): what is measured and how it is
served change for different reasons. This half is sockets, threads and TLS:
a listener whose handshakes cannot stall other scrapes, whose slow clients
cannot pile up (a cap and a whole-request deadline, offloadd.service.connections),
and TLS files checked before anything binds; it knows nothing of conntrack or
nftables.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from offloadd.core.config import MetricsConfig
from offloadd.core.errors import OffloaddError
from offloadd.service.connections import ConnectionLimits, ConnectionTable, Ticket
from offloadd.service.timing import Timing

# The collector's logger: operators filter on one name for the metrics subsystem.
log = logging.getLogger("offloadd.service.metrics")


class MetricsError(OffloaddError, OSError):
    """The metrics endpoint cannot be served (address in use, bad TLS files)."""


# prometheus_client's start_http_server is not used: with TLS it wraps the
# listening socket, so the handshake runs in the accept loop with no timeout
# and one idle TCP connection stalls every scrape (measured: a scrape then
# times out). Here the handshake runs in the connection's own thread, within
# the request deadline, and plain HTTP connections get the same deadline.

# One thread and one descriptor per connection: 64 scrapers at once is far
# more than any setup has, and far below the unit's LimitNOFILE and TasksMax.
# A request (TLS handshake included) is sent at once by any scraper; 10 s
# leaves room for a slow link. Taking a reply of a few hundred kB is as quick.
LIMITS = ConnectionLimits(max_connections=64, request_deadline_s=10.0, reply_deadline_s=10.0)


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


def _cut(fd: int) -> None:
    """Shuts a connection down under the thread blocked on it, which then
    returns at once. By descriptor number: with TLS the socket object that
    owns it changes, the number does not (and it stays open until the
    connection has left its table, see ConnectionTable)."""
    sock = socket.socket(fileno=fd)
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()


class _Server(WSGIServer):
    """A thread per admitted connection, at most LIMITS.max_connections of them."""

    # Connections waiting to be accepted cost the process nothing; with
    # socketserver's 5 a burst of slow clients made a scraper's SYN wait.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily,
                 context: ssl.SSLContext | None, connections: ConnectionTable) -> None:
        self.address_family = family
        self.context = context
        self.connections = connections
        self._current = threading.local()  # the Ticket of this thread's connection
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # The accept loop: admit or close at once, never wait.
        ticket = self.connections.admit(functools.partial(_cut, request.fileno()))
        if ticket is None:
            self.shutdown_request(request)
            return
        try:
            threading.Thread(target=self._serve_one, args=(request, client_address, ticket),
                             name="metrics-conn", daemon=True).start()
        except RuntimeError as e:
            # No thread to be had (TasksMax): refuse this one, keep its slot free.
            self.connections.leave(ticket)
            self.shutdown_request(request)
            log.warning("metrics: connection from %s refused: %s", client_address, e)

    def service_actions(self) -> None:
        # Every poll interval of the accept loop.
        self.connections.reap()

    def _serve_one(self, request: Any, client_address: Any, ticket: Ticket) -> None:
        # A backstop per read or write, should the accept loop stop reaping;
        # later than any deadline, so the table's cut (and count) comes first.
        limits = self.connections.limits
        request.settimeout(2 * max(limits.request_deadline_s, limits.reply_deadline_s))
        self._current.ticket = ticket
        conn = request
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(request, server_side=True)
            self.finish_request(conn, client_address)
        except OSError as e:
            log.debug("metrics: connection from %s ended: %s", client_address, e)
        except Exception:
            self.handle_error(conn, client_address)
        finally:
            # Before the close: the descriptor number must not be cut once reused.
            self.connections.leave(ticket)
            self.shutdown_request(conn)

    def app_for_connection(self, app: Callable[..., Iterable[bytes]]
                           ) -> Callable[..., Iterable[bytes]]:
        """``app`` telling this connection's ticket when the request was read
        (wsgiref calls the app only then) and when the reply is ready."""
        def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]
                    ) -> Iterable[bytes]:
            ticket: Ticket | None = getattr(self._current, "ticket", None)
            if ticket is not None:
                if not self.connections.is_open(ticket):
                    # Cut mid-request: wsgiref reads a request line that EOF
                    # ended ("GET /metrics") as a whole one, and a scrape's
                    # conntrack dumps would be spent on a closed socket.
                    # wsgiref ends the connection quietly on this one.
                    raise ConnectionAbortedError("connection cut before its request was read")
                self.connections.working(ticket)
            body = list(app(environ, start_response))
            if ticket is not None:
                self.connections.writing(ticket)
            return body
        return wrapped


@dataclass(frozen=True)
class Exporter:
    """A running metrics endpoint; close() stops it and frees the port."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int  # the bound port (differs from the config's when that was 0)
    tls: bool
    connections: ConnectionTable

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.connections.cut_all()
        self.thread.join(timeout=5)


def start_exporter(config: MetricsConfig, registry: CollectorRegistry, *,
                   tls: TlsOptions | None = None,
                   connections: ConnectionTable | None = None,
                   reap_s: float = Timing().connection_reap_s) -> Exporter:
    """Serves `registry` at /metrics on config.host:config.port from a daemon thread.

    ``connections``: the table that bounds its connections (one with LIMITS
    if not given); pass one to count what it drops in the registry.
    """
    context = tls_context(tls) if tls is not None else None
    table = connections or ConnectionTable("metrics", LIMITS)
    try:
        info = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
        family, _type, _proto, _canon, sockaddr = info[0]
        server = _Server((str(sockaddr[0]), int(sockaddr[1])), family, context, table)
    except OSError as e:
        raise MetricsError(f"metrics: cannot serve on {config.listen}: "
                           f"{e.strerror or e}; change [metrics] host/port") from e
    server.set_app(server.app_for_connection(make_wsgi_app(registry)))
    thread = threading.Thread(target=server.serve_forever, args=(reap_s,),
                              name="metrics", daemon=True)
    thread.start()
    return Exporter(server=server, thread=thread, host=config.host,
                    port=int(server.server_address[1]), tls=tls is not None,
                    connections=table)
