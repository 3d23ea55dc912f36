"""``offloadctl``: the operator's console view of offloadd.

Asks the daemon over its control socket; when the daemon is down, shows what
can be read from the kernel directly and says so. Human output by default,
``--json`` for scripts.

Without a config file (the default one absent and no --config given),
status and reload still reach a daemon at the default control socket: an
operator on a machine where offloadd was never configured gets "not running",
not a config error. Commands that need the config (check, explain) say so.

Exit status: 0 ok; 1 the operation failed (reload refused, kernel error);
2 bad arguments or config; 3 the daemon is not running (status still prints
what the kernel shows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from offloadd import __version__
from offloadd.cli.ctlout import EXIT_DOWN, EXIT_FAILED, EXIT_OK, EXIT_STATUS, EXIT_USAGE, emit, fail
from offloadd.cli.format import format_status
from offloadd.core.config import DEFAULT_CONFIG_PATH, Config, ControlConfig
from offloadd.core.configparse import load_config, parse_config
from offloadd.core.errors import ConfigError, OffloaddError
from offloadd.service.controlclient import ControlError, NotRunningError, request

__all__ = ["EXIT_DOWN", "EXIT_FAILED", "EXIT_OK", "EXIT_STATUS", "EXIT_USAGE", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"offloadctl: {message} (see offloadctl --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="offloadctl", description="Look at and steer a running offloadd.",
                epilog="Exit status: " + "; ".join(f"{c} {t}" for c, t in EXIT_STATUS) + ".")
    # No default here: a --config given explicitly must exist, the default
    # one need not (see main).
    p.add_argument("--config", "-c", type=Path, metavar="FILE",
                   help=f"offloadd's config file, for the socket path and table name "
                        f"(default {DEFAULT_CONFIG_PATH}; where that does not exist, "
                        f"status and reload use the default socket)")
    p.add_argument("--socket", type=Path, metavar="PATH",
                   help=f"control socket (default: control.socket of the config, else "
                        f"{ControlConfig.socket})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--version", action="version", version=f"offloadctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)
    sub.add_parser("status", help="daemon, flowtables, devices (hardware/software, why), "
                                  "last reconcile and recent errors")
    sub.add_parser("reload", help="make the daemon re-read its config (a bad one is refused)")
    sub.add_parser("revalidate", help="send every offloaded flow through the forward chains "
                                      "again, e.g. after changing iptables-legacy rules "
                                      "(which send no nftables event)")
    rp = sub.add_parser("repair", help="replace flowtables now as a repair does: their flows "
                                       "take the forward path once and are offloaded again "
                                       "(flows stuck after a route flush no event announced)")
    rp.add_argument("flowtable", nargs="?", help="a kernel flowtable's name as status shows "
                                                 "it (default: all of offloadd's)")
    fl = sub.add_parser("flows", help="offloaded flows, largest first (read from conntrack)")
    fl.add_argument("--top", type=_positive, default=20, metavar="N",
                    help="show the N largest (default 20)")
    fl.add_argument("--device", help="only flows entering or leaving through this device")
    fl.add_argument("--addr", help="only flows with this address at either end")
    ex = sub.add_parser("explain", help="is this connection offloaded, and if not, why?")
    ex.add_argument("proto", choices=["tcp", "udp", "icmp", "sctp"], help="protocol")
    ex.add_argument("src", help="client ADDRESS[:PORT] as the router sees it "
                                "([v6]:port for IPv6)")
    ex.add_argument("dst", help="server ADDRESS[:PORT]")
    chk = sub.add_parser("check", help="validate a config file, show the plan, warn about "
                                       "forward chains that offloaded packets would skip")
    chk.add_argument("file", type=Path, nargs="?", help="config to check (default: --config)")
    return p


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be at least 1")
    return n


# Only flows, explain, check and a status without the daemon read the kernel
# (offloadd.cli.ctlkernel, imported by them alone): status, reload,
# revalidate and repair start without libnftables, conntrack, rtnetlink or the planner.
KERNEL_COMMANDS = ("check", "flows", "explain")


def _kernel_command(args: argparse.Namespace, path: Path) -> int:
    from offloadd.cli import ctlkernel  # noqa: PLC0415

    if args.command == "check":
        return ctlkernel.cmd_check(args, _check_path(args, path))
    if args.command == "flows":
        return ctlkernel.cmd_flows(args)  # conntrack and routes only: no config needed
    return ctlkernel.cmd_explain(args, load_config(_needed(path, "explain")))


def main(argv: list[str] | None = None, *, default_config: Path = DEFAULT_CONFIG_PATH,
         default_socket: Path = ControlConfig.socket) -> int:
    """Runs one command; `default_config`/`default_socket` are where offloadd's
    files are when none is given (tests point them into a temporary directory)."""
    args = build_parser().parse_args(argv)
    try:
        if args.config is not None and not args.config.exists():
            raise ConfigError(f"{args.config}: config file not found (given with --config); "
                              "fix the path, or leave --config out")
        path = args.config or default_config
        if args.command in KERNEL_COMMANDS:
            return _kernel_command(args, path)
        # status and reload only talk to the daemon: without a config, its default socket.
        config = _config_for_socket(path) if path.exists() else None
        sock = args.socket or (config.control.socket if config else default_socket)
        if args.command == "status":
            return cmd_status(args, config, sock)
        if args.command == "revalidate":
            return cmd_revalidate(args, sock)
        if args.command == "repair":
            return cmd_repair(args, sock)
        return cmd_reload(args, sock)
    except ConfigError as e:
        return fail(EXIT_USAGE, str(e))
    except OffloaddError as e:
        return fail(EXIT_FAILED, str(e))


def _needed(path: Path, command: str) -> Path:
    """The config file for a command that cannot work without one."""
    if not path.exists():
        raise ConfigError(f"{command} needs offloadd's config, and {path} does not exist; "
                          "give one with --config FILE")
    return path


def _check_path(args: argparse.Namespace, path: Path) -> Path:
    if args.file is not None:
        return Path(args.file)
    if not path.exists():
        raise ConfigError(f"check needs a config file, and {path} does not exist; "
                          "give one: offloadctl check FILE")
    return path


def _config_for_socket(path: Path) -> Config:
    """The config, for where the daemon listens and which table it owns.

    A config file that has just been broken must not stop offloadctl from
    reaching the daemon (that is when `reload` and `status` matter most), so
    an invalid file falls back to its [control]/[daemon] keys read leniently.
    """
    try:
        return load_config(path)
    except ConfigError as e:
        lenient = _lenient(path)
        if lenient is None:
            raise
        print(f"offloadctl: warning: {e}", file=sys.stderr)
        return lenient


def _lenient(path: Path) -> Config | None:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    control, daemon = doc.get("control", {}), doc.get("daemon", {})
    text = "[[flowtable]]\nname = \"x\"\ndevices = [\"x\"]\n"
    if isinstance(daemon, dict) and isinstance(daemon.get("table"), str):
        text = f"[daemon]\ntable = {json.dumps(daemon['table'])}\n" + text
    if isinstance(control, dict) and isinstance(control.get("socket"), str):
        text += f"[control]\nsocket = {json.dumps(control['socket'])}\n"
    try:
        return parse_config(text, str(path))
    except ConfigError:
        return None


# -- status ---------------------------------------------------------------------
def cmd_status(args: argparse.Namespace, config: Config | None, sock: Path) -> int:
    try:
        report = request(sock, "status")
        report["daemon"]["running"] = True
        emit(args, report, format_status(report))
        return EXIT_OK
    except ControlError as e:
        if not isinstance(e, NotRunningError):
            # Up but not answering as asked (permission, a full backlog, a
            # bad reply): not "not running", and the kernel's view would say so.
            return fail(EXIT_FAILED, str(e))
        down_reason = str(e)
        if config is None:
            # Without a config there is no table name to show the kernel's view of.
            if args.json:
                emit(args, {"daemon": {"running": False, "reason": down_reason}}, "")
                return EXIT_DOWN
            return fail(EXIT_DOWN, down_reason)
    from offloadd.cli.ctlkernel import kernel_only_status  # noqa: PLC0415

    report = kernel_only_status(config)
    report["daemon"] = {"running": False, "reason": down_reason}
    emit(args, report, format_status(report))
    return EXIT_DOWN


# -- reload ---------------------------------------------------------------------
def _ask(sock: Path, command: str, **args: Any) -> dict[str, Any] | int:
    """The daemon's answer to ``command``, or the exit code of why there is none."""
    try:
        answer: dict[str, Any] = request(sock, command, **args)
    except NotRunningError as e:
        return fail(EXIT_DOWN, str(e))
    except ControlError as e:
        return fail(EXIT_FAILED, str(e))
    return answer


def cmd_reload(args: argparse.Namespace, sock: Path) -> int:
    result = _ask(sock, "reload")
    if isinstance(result, int):
        return result
    emit(args, result, f"reloaded {result['config']}\n")
    return EXIT_OK


# -- revalidate -----------------------------------------------------------------
def cmd_revalidate(args: argparse.Namespace, sock: Path) -> int:
    result = _ask(sock, "revalidate")
    if isinstance(result, int):
        return result
    if result.get("revalidate") == "off":
        human = ("revalidate = \"off\" in the config: offloadd's forward priority is "
                 "computed again, offloaded flows are left alone\n")
    else:
        human = ("re-validation scheduled: offloaded flows meet the current policy "
                 "(nftables and iptables-legacy) at their next packet\n")
    emit(args, result, human)
    return EXIT_OK


# -- repair -----------------------------------------------------------------------
def cmd_repair(args: argparse.Namespace, sock: Path) -> int:
    result = _ask(sock, "repair", flowtables=[args.flowtable] if args.flowtable else [])
    if isinstance(result, int):
        return result
    emit(args, result, f"replacement scheduled for {', '.join(result['flowtables'])}: their "
                       "flows take the forward path once and are offloaded again (the "
                       "current policy applies); offloadctl status shows the repair\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
