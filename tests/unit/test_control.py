"""The control protocol: every input gets a reply, none raises (fuzzed)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from offloadd.core.errors import ConfigError
from offloadd.service.connections import ConnectionLimits, ConnectionTable
from offloadd.service.control import (
    MAX_REQUEST_BYTES,
    ControlServer,
    handle_request,
)
from offloadd.service.controlclient import ControlError, request
from offloadd.service.timing import Timing


async def _status(_req: Mapping[str, Any]) -> Any:
    return {"hello": "world"}


async def _refuse(_req: Mapping[str, Any]) -> Any:
    raise ConfigError("reload refused: bad key")


async def _bug(_req: Mapping[str, Any]) -> Any:
    raise KeyError("oops")


HANDLERS = {"status": _status, "reload": _refuse, "bug": _bug}


def _ask(raw: bytes) -> dict[str, Any]:
    return json.loads(asyncio.run(handle_request(raw, HANDLERS)))  # type: ignore[no-any-return]


def test_good_request() -> None:
    assert _ask(b'{"version": 1, "command": "status"}') == {
        "version": 1, "ok": True, "result": {"hello": "world"}}


def test_errors_are_replies() -> None:
    assert "not JSON" in _ask(b"{")["error"]
    assert "JSON object" in _ask(b"[1]")["error"]
    assert "protocol version 2" in _ask(b'{"version": 2, "command": "status"}')["error"]
    assert "unknown command 'x'; known: bug, reload, status" in _ask(
        b'{"version": 1, "command": "x"}')["error"]
    assert _ask(b'{"version": 1, "command": "reload"}') == {
        "version": 1, "ok": False, "error": "reload refused: bad key"}
    assert "internal error in bug" in _ask(b'{"version": 1, "command": "bug"}')["error"]
    assert "larger than" in _ask(b"x" * (MAX_REQUEST_BYTES + 1))["error"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                              lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.text(max_size=8), c, max_size=4),
                              max_leaves=12).map(lambda v: json.dumps(v).encode())))
def test_fuzz_never_raises(raw: bytes) -> None:
    reply = _ask(raw)
    assert reply["version"] == 1 and isinstance(reply["ok"], bool)


def test_server_round_trip_and_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.sock"

    async def scenario() -> None:
        server = ControlServer(path, HANDLERS)
        await server.start()
        assert path.stat().st_mode & 0o777 == 0o600  # root only by default
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, request, path, "status") == {"hello": "world"}
        try:
            await loop.run_in_executor(None, request, path, "reload")
        except ControlError as e:
            assert str(e) == "reload refused: bad key"
        else:
            raise AssertionError("refused reload did not raise")
        await server.close()
        assert not path.exists()

    asyncio.run(scenario())


def test_an_oversized_request_gets_its_error_reply_not_a_reset(tmp_path: Path) -> None:
    """The client sends all of it before reading (as the lab's fuzz test
    does); the server reads the rest before replying and closing."""
    path = tmp_path / "control.sock"

    def client() -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(b"x" * 1_000_000 + b"\n")
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data

    async def scenario() -> bytes:
        server = ControlServer(path, HANDLERS)
        await server.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, client)
        finally:
            await server.close()

    for _ in range(5):
        reply = json.loads(asyncio.run(scenario()))
        assert reply["ok"] is False and "larger than" in reply["error"], reply


def test_client_says_daemon_not_running(tmp_path: Path) -> None:
    try:
        request(tmp_path / "none.sock", "status")
    except ControlError as e:
        assert "offloadd is not running" in str(e)
    else:
        raise AssertionError("expected ControlError")


def test_unknown_group_is_a_clear_error(tmp_path: Path) -> None:
    async def scenario() -> str:
        try:
            await ControlServer(tmp_path / "c.sock", HANDLERS, group="no-such-grp").start()
        except ControlError as e:
            return str(e)
        return ""

    assert "no such group 'no-such-grp'" in asyncio.run(scenario())


CAP = 3
DEADLINE_S = 1.0
# At most one reap interval after the deadline; the rest is slack for a busy
# machine (a bound on waiting, not an assertion on time).
CUT_WITHIN_S = DEADLINE_S + Timing().connection_reap_s + 5.0


def _bounded(path: Path) -> ControlServer:
    return ControlServer(path, HANDLERS, connections=ConnectionTable(
        "control", ConnectionLimits(CAP, DEADLINE_S, DEADLINE_S)))


def _eof_or_reset(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionError:
        return True


def test_a_trickling_request_is_cut_off_at_its_deadline(tmp_path: Path) -> None:
    """A byte every 0.2 s never lets a per-read timeout fire; the whole-request
    deadline still ends it."""
    path = tmp_path / "control.sock"

    def client() -> tuple[bool, float]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            s.settimeout(0.2)
            start = time.monotonic()
            for byte in itertools.cycle(b'{"version": 1, '):
                try:
                    s.send(bytes([byte]))
                except OSError:
                    return True, time.monotonic() - start
                try:
                    if _eof_or_reset(s):
                        return True, time.monotonic() - start
                except TimeoutError:
                    pass
                if time.monotonic() - start > CUT_WITHIN_S:
                    return False, time.monotonic() - start
        raise AssertionError("unreachable")

    async def scenario() -> tuple[bool, float, Mapping[str, int]]:
        server = _bounded(path)
        await server.start()
        try:
            cut, after = await asyncio.get_running_loop().run_in_executor(None, client)
            return cut, after, server.connections.dropped()
        finally:
            await server.close()

    cut, after, dropped = asyncio.run(scenario())
    assert cut, f"still open after {after:.1f} s of trickling"
    assert after >= DEADLINE_S
    assert dropped == {"limit": 0, "deadline": 1}


def test_idle_connections_beyond_the_cap_do_not_lock_offloadctl_out(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"

    async def scenario() -> tuple[Any, list[bool], Mapping[str, int]]:
        server = _bounded(path)
        await server.start()
        loop = asyncio.get_running_loop()
        idle = []
        try:
            for _ in range(2 * CAP):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(path))
                idle.append(s)
                await asyncio.sleep(0.01)  # accepted in order: the oldest make room
            answer = await loop.run_in_executor(None, request, path, "status")
            closed = []
            for s in idle:
                s.settimeout(5)
                closed.append(await loop.run_in_executor(None, _eof_or_reset, s))
            return answer, closed, server.connections.dropped()
        finally:
            for s in idle:
                s.close()
            await server.close()

    answer, closed, dropped = asyncio.run(scenario())
    assert answer == {"hello": "world"}
    # The first ones made room for the later ones and for offloadctl; the
    # rest reached their deadline.
    assert all(closed)
    assert dropped["limit"] == CAP + 1


def test_a_cut_connection_is_asked_again_not_taken_for_a_daemon_down(tmp_path: Path) -> None:
    """A daemon at its connection limit cuts a new connection (the slow-client
    test, 2026-12-02: offloadctl then said NOT RUNNING); the client asks again."""
    path = tmp_path / "c.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    served: list[int] = []

    def serve() -> None:
        for i in range(3):
            conn, _ = srv.accept()
            with conn:
                if i < 2:
                    continue  # cut: closed without a reply
                conn.recv(65536)
                conn.sendall(b'{"version": 1, "ok": true, "result": {"n": 3}}\n')
            served.append(i)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert request(path, "status") == {"n": 3}
    t.join(5)
    srv.close()
    assert served == [2]


def test_a_full_backlog_is_asked_again_not_taken_for_a_daemon_down(tmp_path: Path) -> None:
    """A daemon whose listen backlog is full (a flood of clients) refuses a
    connect with EAGAIN (the slow-client test, 2026-12-03: offloadctl said
    NOT RUNNING); the client asks again once the daemon has caught up."""
    path = tmp_path / "c.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(0)
    fillers: list[socket.socket] = []
    while True:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(str(path))
        except BlockingIOError:
            c.close()
            break
        fillers.append(c)
    assert fillers, "the backlog never filled"

    def serve() -> None:
        time.sleep(0.3)  # past the client's first try
        for _ in fillers:
            conn, _ = srv.accept()
            conn.close()
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b'{"version": 1, "ok": true, "result": {"n": 1}}\n')

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert request(path, "status") == {"n": 1}
    finally:
        t.join(5)
        for c in fillers:
            c.close()
        srv.close()
