"""sd_notify datagrams as systemd would receive them, on a real unix socket.

Both senders (libsystemd and our own) are checked against the same bytes, so
the fallback cannot drift from what libsystemd sends.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from offloadd.service.sdnotify import (
    LibsystemdSender,
    Notifier,
    SocketSender,
    journal_logging,
    under_journal,
)
from tests.unit.virtualtime import run_virtual

CLOCK = 123_456_789


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _recv_all(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


NotifierFactory = Callable[[], Notifier]


def _socket_notifier() -> Notifier:
    return Notifier(SocketSender(os.environ["NOTIFY_SOCKET"]), monotonic_usec=lambda: CLOCK)


def _libsystemd_notifier() -> Notifier:
    from systemd import daemon  # noqa: PLC0415 - only this variant needs it

    return Notifier(LibsystemdSender(daemon.notify), monotonic_usec=lambda: CLOCK)


@pytest.mark.parametrize("make", [_socket_notifier, _libsystemd_notifier],
                         ids=["socket", "libsystemd"])
def test_exact_datagrams(notify_socket: socket.socket, make: NotifierFactory) -> None:
    n = make()
    assert n.enabled
    n.ready("2 flowtables, 5 devices")
    n.status("reconciling")
    n.reloading()
    n.watchdog()
    n.stopping()
    assert _recv_all(notify_socket) == [
        "READY=1\nSTATUS=2 flowtables, 5 devices",
        "STATUS=reconciling",
        f"RELOADING=1\nMONOTONIC_USEC={CLOCK}",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_from_environ_sends_to_notify_socket(notify_socket: socket.socket) -> None:
    for use_lib in (True, False):
        Notifier.from_environ(use_libsystemd=use_lib).watchdog()
        assert notify_socket.recv(4096) == b"WATCHDOG=1"


def test_reloading_uses_clock_monotonic(notify_socket: socket.socket) -> None:
    import time  # noqa: PLC0415

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_environ(use_libsystemd=False).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    head, usec = notify_socket.recv(4096).decode().split("\n")
    assert head == "RELOADING=1"
    key, value = usec.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"offloadd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier.from_environ(use_libsystemd=False).ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        Notifier.from_environ().stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_environ()
    assert not n.enabled
    n.ready("x")
    n.status("x")
    n.reloading()
    n.watchdog()
    n.stopping()


def test_vanished_socket_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    n.watchdog()
    assert "WATCHDOG=1" in caplog.text


def test_unsupported_address_disables() -> None:
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid())}, 0.0005),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(None, env).watchdog_interval() == expected


def test_watchdog_pid_of_another_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(child.pid)}
    assert Notifier(None, env).watchdog_interval() is None


def test_run_watchdog_pings_until_cancelled(notify_socket: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": os.environ["NOTIFY_SOCKET"], "WATCHDOG_USEC": "20000"}
    n = Notifier.from_environ(env)

    async def main() -> None:
        task = asyncio.create_task(n.run_watchdog())
        await asyncio.sleep(0.055)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # On virtual time (the datagrams still go out on the real socket): at
    # once, then every half of WATCHDOG_USEC, exactly.
    run_virtual(main)
    pings = _recv_all(notify_socket)
    assert pings == ["WATCHDOG=1"] * 6, pings


def test_run_watchdog_returns_without_watchdog(notify_socket: socket.socket) -> None:
    asyncio.run(asyncio.wait_for(Notifier.from_environ().run_watchdog(), 1))
    assert _recv_all(notify_socket) == []


# -- journal logging --------------------------------------------------------

@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    lg = logging.getLogger(f"offloadd.test.{id(object())}")
    lg.propagate = False
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)


def test_journal_stream_must_match_stderr(tmp_path: Path) -> None:
    err = (tmp_path / "stderr").open("w")
    st = os.fstat(err.fileno())
    assert under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, err)
    assert not under_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, err)
    assert not under_journal({}, err)
    assert under_journal({"INVOCATION_ID": "0123abcd"}, err)
    err.close()


def test_journal_fields(logger: logging.Logger, tmp_path: Path) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def send(message: str, /, **fields: Any) -> None:
        sent.append((message, fields))

    journal_logging(logger, environ={"INVOCATION_ID": "x"}, journal_send=send,
                    journal_socket=tmp_path / "absent")
    logger.info("added %s to %s", "eth0", "lan",
                extra={"FLOWTABLE": "lan", "DEVICE": "eth0", "OPERATION": "add"})
    [(message, fields)] = sent
    assert message == "added eth0 to lan"
    assert fields["SYSLOG_IDENTIFIER"] == "offloadd"
    assert fields["PRIORITY"] == "6"
    assert (fields["FLOWTABLE"], fields["DEVICE"], fields["OPERATION"]) == ("lan", "eth0", "add")
    # LogRecord internals are not journal fields.
    assert all(k == k.upper() for k in fields), sorted(fields)


def test_stderr_outside_systemd(logger: logging.Logger) -> None:
    err = io.StringIO()
    journal_logging(logger, environ={}, stderr=err)
    logger.warning("hello", extra={"DEVICE": "eth0"})
    assert err.getvalue() == "offloadd: WARNING: hello\n"


def test_stderr_when_journald_is_absent(logger: logging.Logger, tmp_path: Path) -> None:
    err = io.StringIO()
    journal_logging(logger, environ={"INVOCATION_ID": "x"}, stderr=err,
                    journal_socket=tmp_path / "absent")
    logger.error("boom")
    assert err.getvalue() == "offloadd: ERROR: boom\n"
