"""offloadctl with and without a config file: the daemon-only commands reach
the default socket, the others say they need a config, each error one line."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from offloadd.cli import ctl, ctlkernel
from offloadd.core.errors import ConfigError
from offloadd.service.control import ControlServer, Handler


def _report() -> dict[str, Any]:
    return {"daemon": {"version": "9.9", "uptime_seconds": 5, "config": "/x.toml"},
            "table": {"family": "inet", "name": "offloadd", "exists": False},
            "flowtables": [], "left_out": [], "problems": []}


async def _status(_req: Mapping[str, Any]) -> Any:
    return _report()


async def _reload(_req: Mapping[str, Any]) -> Any:
    return {"config": "/x.toml"}


@contextmanager
def _daemon(path: Path, handlers: Mapping[str, Handler]) -> Iterator[None]:
    """The daemon's real control server on `path`, served from a thread."""
    loop = asyncio.new_event_loop()
    server = ControlServer(path, handlers)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _main(tmp_path: Path, *argv: str) -> int:
    """offloadctl on a machine whose default config and socket are in tmp_path."""
    return ctl.main(list(argv), default_config=tmp_path / "etc" / "offloadd.toml",
                    default_socket=tmp_path / "run" / "control.sock")


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("command", ["status", "reload"])
def test_without_config_the_default_socket_is_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert _main(tmp_path, command) == ctl.EXIT_DOWN
    sock = tmp_path / "run" / "control.sock"
    assert _err_line(capsys) == f"offloadctl: offloadd is not running (no control socket at {sock})"


def test_without_config_status_json_says_not_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _main(tmp_path, "--json", "status") == ctl.EXIT_DOWN
    out = json.loads(capsys.readouterr().out)
    assert out["daemon"]["running"] is False
    assert "no control socket at" in out["daemon"]["reason"]


def test_without_config_a_running_daemon_answers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _daemon(tmp_path / "run" / "control.sock", {"status": _status, "reload": _reload}):
        assert _main(tmp_path, "status") == ctl.EXIT_OK
        assert capsys.readouterr().out.startswith("offloadd 9.9: running (up 5s), config /x.toml")
        assert _main(tmp_path, "--json", "status") == ctl.EXIT_OK
        assert json.loads(capsys.readouterr().out)["daemon"]["running"] is True
        assert _main(tmp_path, "reload") == ctl.EXIT_OK
        assert capsys.readouterr().out == "reloaded /x.toml\n"


def test_repair_asks_for_the_named_flowtable_and_says_what_follows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asked: list[Any] = []

    async def repair(req: Mapping[str, Any]) -> Any:
        asked.append(req.get("flowtables"))
        if req.get("flowtables") == ["nope"]:
            raise ConfigError("repair: no flowtable 'nope' in offloadd's table; its "
                              "flowtables: ft")
        return {"scheduled": True, "flowtables": req.get("flowtables") or ["ft"],
                "repairs_total": 0}

    with _daemon(tmp_path / "run" / "control.sock", {"repair": repair}):
        assert _main(tmp_path, "repair") == ctl.EXIT_OK
        assert capsys.readouterr().out.startswith(
            "replacement scheduled for ft: their flows take the forward path once")
        assert _main(tmp_path, "repair", "nope") == ctl.EXIT_FAILED
        assert "no flowtable 'nope'" in _err_line(capsys)
        assert _main(tmp_path, "--json", "repair", "ft") == ctl.EXIT_OK
        assert json.loads(capsys.readouterr().out)["flowtables"] == ["ft"]
    assert asked == [[], ["nope"], ["ft"]]


def test_a_stale_socket_is_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # bound, never listening: what a killed daemon leaves
        assert _main(tmp_path, "--socket", str(sock), "reload") == ctl.EXIT_DOWN
    assert _err_line(capsys) == f"offloadctl: offloadd is not running (nothing listens on {sock})"


def test_socket_option_wins_without_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "elsewhere.sock"
    assert _main(tmp_path, "--socket", str(other), "status") == ctl.EXIT_DOWN
    assert _err_line(capsys).endswith(f"(no control socket at {other})")


def test_default_config_names_the_socket(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = tmp_path / "from-config.sock"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "offloadd.toml").write_text(
        f'[control]\nsocket = "{sock}"\n[[flowtable]]\nname = "lan"\ndevices = ["eth0"]\n')
    assert _main(tmp_path, "reload") == ctl.EXIT_DOWN
    assert _err_line(capsys).endswith(f"(no control socket at {sock})")


@pytest.mark.parametrize("command", [["status"], ["reload"], ["flows"], ["check"],
                                     ["explain", "tcp", "192.0.2.1", "198.51.100.1"]])
def test_an_explicit_config_that_is_missing_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert _main(tmp_path, "--config", str(missing), *command) == ctl.EXIT_USAGE
    assert _err_line(capsys) == (f"offloadctl: {missing}: config file not found (given with "
                                 "--config); fix the path, or leave --config out")


@pytest.mark.parametrize("command", [["check"], ["explain", "tcp", "192.0.2.1", "198.51.100.1"]])
def test_commands_that_need_a_config_say_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    assert _main(tmp_path, *command) == ctl.EXIT_USAGE
    line = _err_line(capsys)
    default = tmp_path / "etc" / "offloadd.toml"
    assert line.startswith(f"offloadctl: {command[0]} needs ") and str(default) in line, line
    assert "does not exist" in line and "give one" in line, line


def test_check_of_a_missing_file_names_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "candidate.toml"
    assert _main(tmp_path, "check", str(missing)) == ctl.EXIT_USAGE
    assert _err_line(capsys) == f"offloadctl: {missing}: config file not found"


def test_flows_needs_no_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def fake_flows(args: Any) -> int:
        seen.append(args.top)
        return ctl.EXIT_OK

    # flows reads conntrack (root); here only that no config is asked for.
    monkeypatch.setattr(ctlkernel, "cmd_flows", fake_flows)
    assert _main(tmp_path, "flows", "--top", "3") == ctl.EXIT_OK
    assert seen == [3]


def test_status_of_a_daemon_that_cannot_be_asked_is_not_not_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only a daemon that is not there is NOT RUNNING (exit 3, the kernel's
    view): one that is there but does not answer as asked (here: a reply
    that is not JSON) is a one-line error and exit 1, not a false "down"."""
    sock = tmp_path / "c.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(sock))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"not json\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "offloadd.toml").write_text(
        f'[control]\nsocket = "{sock}"\n[[flowtable]]\nname = "lan"\ndevices = ["eth0"]\n')
    try:
        assert _main(tmp_path, "status") == ctl.EXIT_FAILED
    finally:
        t.join(5)
        srv.close()
    line = _err_line(capsys)
    assert line == f"offloadctl: offloadd sent an unreadable reply on {sock}", line
