"""systemd integration: readiness/watchdog notifications and journal logging.

The unit is ``Type=notify`` so that ``systemctl start`` returns only once the
first reconcile has put the table in place, and ``WatchdogSec=`` restarts a
daemon whose loop has wedged (a stuck netlink read, a hung libnftables call).
Everything here is a no-op outside systemd, so the same binary runs in the
foreground, in the lab VM and under other supervisors.

libsystemd (systemd-python) is used when it is installed because it knows
every ``NOTIFY_SOCKET`` form systemd may hand out; without it we write the
datagram ourselves, which covers the path and abstract (``@``) forms that
systemd 252 uses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

log = logging.getLogger("offloadd")

SYSLOG_IDENTIFIER = "offloadd"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
STDERR_FORMAT = "offloadd: %(levelname)s: %(message)s"

# journald silently drops fields whose names are not like this; filtering
# first keeps LogRecord internals (msg, args, relativeCreated, ...) off the wire.
_JOURNAL_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]*")


class Sender(Protocol):
    """Delivers one sd_notify datagram."""

    def send(self, message: str) -> None: ...


class SocketSender:
    """Writes the datagram to NOTIFY_SOCKET without libsystemd."""

    def __init__(self, address: str) -> None:
        if not address.startswith(("/", "@")):
            # vsock: and other forms need libsystemd; systemd 252 never uses them.
            raise ValueError(f"NOTIFY_SOCKET={address!r}: unsupported address form")
        # A leading '@' names a socket in the abstract namespace (leading NUL).
        self._addr = "\0" + address[1:] if address.startswith("@") else address

    def send(self, message: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(self._addr)
            s.sendall(message.encode())


class LibsystemdSender:
    """sd_notify(3) through systemd-python; it reads NOTIFY_SOCKET from the process env."""

    def __init__(self, notify: Callable[[str], Any]) -> None:
        self._notify = notify

    def send(self, message: str) -> None:
        self._notify(message)


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _libsystemd_notify() -> Callable[[str], Any] | None:
    try:
        import systemd.daemon  # noqa: PLC0415 - optional at run time
    except ImportError:
        return None
    notify: Callable[[str], Any] = systemd.daemon.notify
    return notify


class Notifier:
    """sd_notify messages for the daemon's life cycle; silent when not under systemd.

    Failures to notify are logged, never raised: a lost READY or WATCHDOG is
    systemd's to act on, and must not take the data path down with it.
    """

    def __init__(self, sender: Sender | None, environ: Mapping[str, str] | None = None,
                 *, pid: int | None = None,
                 monotonic_usec: Callable[[], int] = _monotonic_usec) -> None:
        self._sender = sender
        self._environ = os.environ if environ is None else environ
        self._pid = os.getpid() if pid is None else pid
        self._monotonic_usec = monotonic_usec

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *,
                     use_libsystemd: bool = True) -> Notifier:
        """The notifier for this process: libsystemd if present, else our own socket."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address:
            return cls(None, env)
        # sd_notify reads the real process environment, so it is only right
        # when that is the environment we were asked about.
        notify = _libsystemd_notify() if use_libsystemd and env is os.environ else None
        if notify is not None:
            return cls(LibsystemdSender(notify), env)
        try:
            return cls(SocketSender(address), env)
        except ValueError as e:
            log.warning("systemd notifications disabled: %s", e)
            return cls(None, env)

    @property
    def enabled(self) -> bool:
        return self._sender is not None

    def _send(self, *fields: str) -> None:
        if self._sender is None:
            return
        message = "\n".join(fields)
        try:
            self._sender.send(message)
        except OSError as e:
            log.warning("systemd notification %r failed: %s", fields[0], e)

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def reloading(self) -> None:
        """Call when a reload starts; call ready() when it is done.

        MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) tell this
        reload from an earlier one; systemd 252 ignores the field.
        """
        self._send("RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings, or None if systemd wants none.

        Half of WatchdogSec, as sd_watchdog_enabled(3) advises, so one late
        loop turn does not get the daemon killed. WATCHDOG_PID, when set, must
        be us: a child that inherited the environment must not ping.
        """
        try:
            usec = int(self._environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = self._environ.get("WATCHDOG_PID")
        if pid is not None:
            try:
                if int(pid) != self._pid:
                    return None
            except ValueError:
                return None
        return usec / 2_000_000

    async def run_watchdog(self) -> None:
        """Pings WATCHDOG=1 at watchdog_interval() until cancelled; returns at once
        when systemd wants no pings.

        Run it as a task on the daemon's own event loop: a call that blocks the
        loop (a hung netlink read) then stops the pings and systemd restarts us.
        """
        interval = self.watchdog_interval() if self._sender is not None else None
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)


def under_journal(environ: Mapping[str, str] | None = None,
                  stderr: TextIO | None = None) -> bool:
    """True when systemd runs us and our log should go to the journal natively.

    JOURNAL_STREAM names the journald stream systemd connected stderr to; if
    stderr is no longer that file (redirected by a wrapper), it is not ours.
    INVOCATION_ID alone also counts: it is set for every systemd service.
    """
    env = os.environ if environ is None else environ
    err = sys.stderr if stderr is None else stderr
    stream = env.get("JOURNAL_STREAM", "")
    if stream:
        try:
            st = os.fstat(err.fileno())
        except (OSError, ValueError):
            pass
        else:
            if stream == f"{st.st_dev}:{st.st_ino}":
                return True
    return bool(env.get("INVOCATION_ID"))


JournalSend = Callable[..., Any]


def _journal_fields_only(send: JournalSend) -> JournalSend:
    def filtered(message: str, /, **fields: Any) -> Any:
        return send(message, **{k: v for k, v in fields.items()
                                if _JOURNAL_FIELD.fullmatch(k)})
    return filtered


def journal_logging(logger: logging.Logger, *, level: int | str = logging.INFO,
                    environ: Mapping[str, str] | None = None,
                    stderr: TextIO | None = None,
                    journal_send: JournalSend | None = None,
                    journal_socket: Path = JOURNAL_SOCKET) -> logging.Handler:
    """Attaches the journal (under systemd) or a stderr handler to ``logger``.

    In the journal, ``extra={"FLOWTABLE": ..., "DEVICE": ..., "OPERATION": ...}``
    on a log call become fields one can filter on
    (``journalctl -u offloadd FLOWTABLE=lan``). Returns the handler attached.
    """
    handler: logging.Handler | None = None
    # INVOCATION_ID is also set in containers without journald; sending there
    # would fail on every record, so stderr it is.
    reachable = journal_send is not None or journal_socket.exists()
    if reachable and under_journal(environ, stderr):
        handler = _journal_handler(journal_send)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr if stderr is None else stderr)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def _journal_handler(journal_send: JournalSend | None) -> logging.Handler | None:
    try:
        import systemd.journal  # noqa: PLC0415 - optional at run time
    except ImportError:
        return None
    send: JournalSend = systemd.journal.send if journal_send is None else journal_send
    handler: logging.Handler = systemd.journal.JournalHandler(
        sender_function=_journal_fields_only(send), SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    # Priority and identifier travel as fields; the text needs no prefix.
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler
