"""The control socket: a small versioned JSON protocol between offloadctl and the daemon.

One request per connection, one JSON object per line each way:
    -> {"version": 1, "command": "status"}
    <- {"version": 1, "ok": true, "result": {...}}
    <- {"version": 1, "ok": false, "error": "unknown command 'x'; known: reload, status"}
Anything malformed, oversized or unknown gets an error reply and the daemon
keeps running: a client can never take the daemon down, nor hold it up: at
most LIMITS.max_connections are open at once, and a request must arrive whole
within its deadline (offloadd.service.connections), however it trickles in.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from offloadd.core.errors import OffloaddError
from offloadd.service.connections import ConnectionLimits, ConnectionTable, Ticket
from offloadd.service.controlclient import PROTOCOL_VERSION, ControlError
from offloadd.service.timing import Timing

MAX_REQUEST_BYTES = 64 * 1024
# offloadctl sends its one line at once and waits 10 s for the answer; only
# root (or control.group) can connect, so few connections are ever needed.
LIMITS = ConnectionLimits(max_connections=32, request_deadline_s=5.0, reply_deadline_s=5.0)
# What is read and dropped of an oversized request before the error reply.
DISCARD_MAX_BYTES = 16 * 1024 * 1024

log = logging.getLogger("offloadd")

Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]


def _reply(ok: bool, payload: Any) -> bytes:
    body: dict[str, Any] = {"version": PROTOCOL_VERSION, "ok": ok}
    body["result" if ok else "error"] = payload
    return (json.dumps(body, sort_keys=True, default=str) + "\n").encode()


async def handle_request(raw: bytes, handlers: Mapping[str, Handler]) -> bytes:
    """Answers one raw request line; never raises."""
    if len(raw) > MAX_REQUEST_BYTES:
        return _reply(False, f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        req = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return _reply(False, f"request is not JSON: {e}")
    if not isinstance(req, dict):
        return _reply(False, "request must be a JSON object")
    version = req.get("version")
    if version != PROTOCOL_VERSION:
        return _reply(False, f"unsupported protocol version {version!r}; "
                             f"this daemon speaks {PROTOCOL_VERSION}")
    command = req.get("command")
    handler = handlers.get(command) if isinstance(command, str) else None
    if handler is None:
        return _reply(False, f"unknown command {command!r}; known: {', '.join(sorted(handlers))}")
    try:
        return _reply(True, await handler(req))
    except OffloaddError as e:
        return _reply(False, str(e))
    except Exception as e:  # a handler bug must not kill the daemon
        log.exception("control command %s failed", command)
        return _reply(False, f"internal error in {command}: {type(e).__name__}: {e}")


class ControlServer:
    def __init__(self, path: Path, handlers: Mapping[str, Handler], group: str = "",
                 connections: ConnectionTable | None = None,
                 reap_s: float = Timing().connection_reap_s) -> None:
        self.path = path
        self._reap_s = reap_s
        self.handlers = handlers
        self.group = group
        self.connections = connections or ConnectionTable("control", LIMITS)
        self._server: asyncio.AbstractServer | None = None
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        gid = -1
        if self.group:
            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise ControlError(f"control.group: no such group {self.group!r}; create it "
                                   "or set group = \"\" for root only") from None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if self.path.is_socket():
                    self.path.unlink()
            old = os.umask(0o177 if gid < 0 else 0o117)
            try:
                # The backlog is also how many connections the loop accepts in
                # one go: each past the cap cuts an older one, whose socket
                # closes only on a later turn of the loop, so a flood after a
                # busy spell held up to asyncio's default 100 more descriptors
                # (165 in all under 300 slow clients). At the cap it holds as
                # many as the cap more, at most.
                self._server = await asyncio.start_unix_server(
                    self._serve, path=str(self.path),
                    backlog=self.connections.limits.max_connections)
            finally:
                os.umask(old)
            if gid >= 0:
                os.chown(self.path, -1, gid)
        except OSError as e:
            raise ControlError(f"cannot listen on control socket {self.path}: "
                               f"{e.strerror or e}") from e
        self._reaper = asyncio.create_task(self._reap(), name="control-deadlines")

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self._reap_s)
            self.connections.reap()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A cut aborts the transport: a read then sees EOF, a drain or close
        # returns, and the ticket says the connection is no longer ours.
        ticket = self.connections.admit(writer.transport.abort)
        if ticket is None:
            writer.transport.abort()
            return
        try:
            raw = await self._read_request(reader, ticket)
            if raw is None:
                return
            self.connections.working(ticket)
            reply = await handle_request(raw, self.handlers)
            if not self.connections.is_open(ticket):
                return
            self.connections.writing(ticket)
            writer.write(reply)
            await writer.drain()
            writer.close()
            # Until the client has taken the reply (or the deadline cuts it).
            await writer.wait_closed()
        except ConnectionError:
            pass
        finally:
            self.connections.leave(ticket)
            writer.transport.abort()

    async def _read_request(self, reader: asyncio.StreamReader, ticket: Ticket
                            ) -> bytes | None:
        """The request line; None if the client left or was cut off."""
        try:
            raw = await reader.readline()
        except (asyncio.LimitOverrunError, ValueError):
            raw = b"x" * (MAX_REQUEST_BYTES + 1)  # answered "larger than"
            await _discard_rest(reader)
        # A line cut short by EOF is still a request, unless the EOF was our cut.
        if not raw or not self.connections.is_open(ticket):
            return None
        return raw.rstrip(b"\n")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._server is not None:
            self._server.close()
            self.connections.cut_all()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def _discard_rest(reader: asyncio.StreamReader) -> None:
    """Reads what is left of an oversized request (to its newline or EOF).

    Closing a Unix socket with unread data resets it, and a client still
    sending then lost the error reply (ECONNRESET: seen with a 200 kB request
    in the lab). Bounded in bytes, and in time by the request's deadline: a
    client that never stops gets the reset after all.
    """
    dropped = 0
    with contextlib.suppress(ConnectionError):
        while dropped < DISCARD_MAX_BYTES:
            chunk = await reader.read(65536)
            if not chunk or b"\n" in chunk:
                return
            dropped += len(chunk)


