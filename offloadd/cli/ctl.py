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
import asyncio
import ipaddress
import json
import socket
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offloadd import __version__
from offloadd.cli.format import format_flows, format_status
from offloadd.core.attach import wildcard_prefix
from offloadd.core.config import DEFAULT_CONFIG_PATH, Config, ControlConfig, Revalidate
from offloadd.core.configparse import load_config, parse_config
from offloadd.core.errors import ConfigError, OffloaddError
from offloadd.core.explain import Passed, explain
from offloadd.core.flows import OffloadedFlow
from offloadd.core.model import hooked_devices
from offloadd.core.render import render
from offloadd.core.revalidate import coverage
from offloadd.core.xtables import LegacyTables
from offloadd.kernel.backend import NftBackend
from offloadd.kernel.capability import probe_name_hooks, probe_wildcard_hooks
from offloadd.kernel.conntrack import list_by_status, list_offloaded, teardown_timeout_warnings
from offloadd.kernel.links import current_links
from offloadd.kernel.nftstate import other_forward_priorities
from offloadd.service.control import ControlError, NotRunningError, request
from offloadd.service.daemon import Daemon

if TYPE_CHECKING:
    from offloadd.kernel.routes import RouteLookup

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DOWN = 0, 1, 2, 3
# For --help and offloadctl(8), which is generated from it.
EXIT_STATUS = (
    (EXIT_OK, "ok"),
    (EXIT_FAILED, "the operation failed (reload refused, kernel error)"),
    (EXIT_USAGE, "bad arguments or config"),
    (EXIT_DOWN, "the daemon is not running (status then shows what the kernel holds, "
                "given a config)"),
)


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


def _fail(code: int, msg: str) -> int:
    print(f"offloadctl: {msg}", file=sys.stderr)
    return code


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(human)


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
        if args.command == "check":
            return cmd_check(args, _check_path(args, path))
        if args.command == "flows":
            return cmd_flows(args)  # conntrack and routes only: no config needed
        if args.command == "explain":
            return cmd_explain(args, load_config(_needed(path, "explain")))
        # status and reload only talk to the daemon: without a config, its default socket.
        config = _config_for_socket(path) if path.exists() else None
        sock = args.socket or (config.control.socket if config else default_socket)
        if args.command == "status":
            return cmd_status(args, config, sock)
        if args.command == "revalidate":
            return cmd_revalidate(args, sock)
        return cmd_reload(args, sock)
    except ConfigError as e:
        return _fail(EXIT_USAGE, str(e))
    except OffloaddError as e:
        return _fail(EXIT_FAILED, str(e))


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
        _emit(args, report, format_status(report))
        return EXIT_OK
    except ControlError as e:
        down_reason = str(e)
        if config is None:
            # Without a config there is no table name to show the kernel's view of.
            code = EXIT_DOWN if isinstance(e, NotRunningError) else EXIT_FAILED
            if args.json:
                _emit(args, {"daemon": {"running": False, "reason": down_reason}}, "")
                return code
            return _fail(code, down_reason)
    report = kernel_only_status(config)
    report["daemon"] = {"running": False, "reason": down_reason}
    _emit(args, report, format_status(report))
    return EXIT_DOWN


def kernel_only_status(config: Config) -> dict[str, Any]:
    """What the kernel itself shows when the daemon cannot be asked.

    A listed name counts as attached only if a device carries it (7.x keeps
    names without a device), and a "wan*" covers the devices it starts only
    where kernel and libnftables hook by prefix: probed here as offloadd
    does, since older libnftables stores "wan*" as a literal name.
    """
    fam, name = config.daemon.family.value, config.daemon.table
    backend = NftBackend(fam, name)
    table = backend.read()
    present = {link.name for link in asyncio.run(current_links())}
    specs: frozenset[str] = frozenset()
    listed = {d for ft in (table.flowtables if table else ()) for d in ft.devices}
    if any(wildcard_prefix(d) is not None for d in listed):
        hooks = probe_name_hooks(backend.nft)
        if probe_wildcard_hooks(backend.nft, hooks.name_hooks).wildcards:
            specs = frozenset(d for d in listed if wildcard_prefix(d) is not None)
    fts = [{"name": ft.name, "hardware": ft.hardware, "counter": ft.counter,
            "desired": None, "in_sync": None, "devices": [],
            "attached": sorted(hooked_devices(ft.devices, present, specs)),
            "listed": sorted(ft.devices), "wildcards": sorted(ft.devices & specs)}
           for ft in (table.flowtables if table else ())]
    return {"table": {"family": fam, "name": name, "exists": table is not None,
                      "forward_priority": table.chain.priority if table and table.chain
                      else None},
            "flowtables": fts, "left_out": [], "problems": []}


# -- reload ---------------------------------------------------------------------
def _ask(sock: Path, command: str) -> dict[str, Any] | int:
    """The daemon's answer to ``command``, or the exit code of why there is none."""
    try:
        answer: dict[str, Any] = request(sock, command)
    except NotRunningError as e:
        return _fail(EXIT_DOWN, str(e))
    except ControlError as e:
        return _fail(EXIT_FAILED, str(e))
    return answer


def cmd_reload(args: argparse.Namespace, sock: Path) -> int:
    result = _ask(sock, "reload")
    if isinstance(result, int):
        return result
    _emit(args, result, f"reloaded {result['config']}\n")
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
    _emit(args, result, human)
    return EXIT_OK


# -- flows ----------------------------------------------------------------------
def _routes() -> RouteLookup:
    # pyroute2 is imported only by the commands that look up routes: under
    # emulation its import alone took 2.4 s of every offloadctl call.
    from offloadd.kernel.routes import RouteLookup  # noqa: PLC0415

    return RouteLookup()


def _flow_dict(f: OffloadedFlow, routes: RouteLookup) -> dict[str, Any]:
    return {"id": f.id, "family": "ipv4" if f.family == socket.AF_INET else "ipv6",
            "proto": f.proto_name, "src": f.orig.src, "sport": f.orig.sport,
            "dst": f.orig.dst, "dport": f.orig.dport,
            "mode": "hardware" if f.hardware else "software",
            "packets": f.packets, "bytes": f.bytes if f.packets is not None else None,
            "in_dev": routes.device_towards(f.orig.src),
            "out_dev": routes.device_towards(f.orig.dst)}


def cmd_flows(args: argparse.Namespace) -> int:
    # With a filter, look at every offloaded flow (memory stays bounded by
    # the heap in list_offloaded); without, only the top N are parsed.
    limit = args.top if not (args.device or args.addr) else 1_000_000
    flows = [f for fam in (socket.AF_INET, socket.AF_INET6) for f in list_offloaded(fam, limit)]
    routes = _routes()
    try:
        rows = []
        for f in flows:
            if args.addr and args.addr not in (f.orig.src, f.orig.dst):
                continue
            row = _flow_dict(f, routes)
            if args.device and args.device not in (row["in_dev"], row["out_dev"]):
                continue
            rows.append(row)
    finally:
        routes.close()
    rows.sort(key=lambda r: (r["bytes"] or 0, r["packets"] or 0), reverse=True)
    rows = rows[: args.top]
    _emit(args, rows, format_flows(rows, bool(args.device or args.addr)))
    return EXIT_OK


# -- explain --------------------------------------------------------------------
def _parse_endpoint(text: str, what: str) -> tuple[str, int | None]:
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], what)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, what)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not ADDRESS[:PORT] "
                          "(e.g. 192.0.2.1:443 or [2001:db8::1]:443)") from None


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{what}: port {text!r} is not 1..65535")
    return int(text)


def cmd_explain(args: argparse.Namespace, config: Config) -> int:
    src, sport = _parse_endpoint(args.src, "source")
    dst, dport = _parse_endpoint(args.dst, "destination")
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    if (":" in dst) != (fam == socket.AF_INET6):
        raise ConfigError("source and destination must both be IPv4 or both IPv6")
    proto = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132}[args.proto]
    if fam == socket.AF_INET6 and proto == 1:
        proto = 58

    def matches(f: OffloadedFlow) -> bool:
        t = f.orig
        return (t.proto == proto and t.src == src and t.dst == dst
                and sport in (None, t.sport) and dport in (None, t.dport))

    candidates = [f for f in list_by_status(fam, 0, 0, 1_000_000) if matches(f)]
    flow = candidates[0] if candidates else None
    routes = _routes()
    try:
        in_dev, out_dev = routes.device_towards(src), routes.device_towards(dst)
    finally:
        routes.close()
    backend = NftBackend(config.daemon.family.value, config.daemon.table)
    table = backend.read()
    gate = backend.passed(flow.id, table) if flow is not None and table is not None else None
    passed = Passed(*gate) if gate is not None else None
    result = explain(flow, in_dev, out_dev, config, table, passed=passed)
    data = {"verdict": result.verdict.value, "reasons": list(result.reasons),
            "flowtable": result.flowtable, "in_dev": in_dev, "out_dev": out_dev,
            "conntrack_id": flow.id if flow else None, "matches": len(candidates),
            "passed": {"original": passed.original, "reply": passed.reply} if passed else None}
    head = f"{args.proto} {args.src} -> {args.dst}: {result.verdict.value.upper()}"
    if len(candidates) > 1:
        head += f" ({len(candidates)} connections match; showing the largest)"
    _emit(args, data, "\n".join([head, *(f"  - {r}" for r in result.reasons)]) + "\n")
    return EXIT_OK


# -- check ----------------------------------------------------------------------
def cmd_check(args: argparse.Namespace, path: Path) -> int:
    config = load_config(path)
    backend = NftBackend(config.daemon.family.value, config.daemon.table)
    daemon = Daemon(path, config, backend, links=_NoLinks())
    daemon.status.links = asyncio.run(current_links())
    desired, current, plan = daemon.plan_once()
    chains = [i["chain"] for i in backend.nft.list_json("chains") if "chain" in i]
    others = [c for c in chains if c.get("hook") == "forward"
              and not (c.get("table") == config.daemon.table
                       and c.get("family") == config.daemon.family.value)]
    on_change = config.daemon.revalidate is Revalidate.ON_CHANGE
    seen = ("until it is offloaded and again after each ruleset change by others"
            if on_change else "until it is offloaded (revalidate = \"off\")")
    warnings = [
        f"forward chain {c['family']} {c['table']} {c['name']} (priority {c.get('prio')}) "
        f"does not see offloaded packets: its rules see a flow's packets {seen}"
        for c in others if c.get("family") in ("ip", "ip6", "inet")
    ] + teardown_timeout_warnings()
    covered, not_covered = coverage(on_change)
    priorities = other_forward_priorities(chains, config.daemon.family.value,
                                          config.daemon.table)
    legacy = daemon.status.legacy or LegacyTables()
    prio = desired.table.chain.priority if desired.table.chain else None
    warnings += [f"offloadd's forward chain (priority {prio}) does not run after the "
                 f"iptables-legacy FORWARD hook of {name} (priority {p}): set "
                 "daemon.priority = \"auto\" or above it"
                 for name, p in sorted(legacy.forward_hooks().items())
                 if prio is not None and p >= prio]
    script = "" if plan.is_empty else render(plan, config.daemon.family.value,
                                             config.daemon.table)
    data: dict[str, Any] = {"config": str(path), "valid": True,
            "table_exists": current is not None,
            "forward_priority": desired.table.chain.priority if desired.table.chain else None,
            "other_forward_priorities": sorted(priorities),
            "legacy": {"tables": legacy.names, "forward_hooks": legacy.forward_hooks(),
                       "unreadable": legacy.unreadable, "summary": legacy.describe()},
            "devices": [{"device": d.device, "flowtable": d.flowtable, "reason": d.reason}
                        for d in desired.decisions],
            "warnings": warnings + [n.message for n in desired.problems],
            "policy": {"revalidate": config.daemon.revalidate.value, "covered": covered,
                       "not_covered": not_covered},
            "plan": script.splitlines()}
    human = [f"{path}: valid; {len(config.flowtables)} flowtable(s)"]
    human += [f"  {d['device']:<15} -> {d['flowtable'] or 'not offloaded'} ({d['reason']})"
              for d in data["devices"]]
    human += [f"warning: {w}" for w in data["warnings"]]
    human.append(f"{legacy.describe()}" + (
        "; their rule changes send no nftables event: run `offloadctl revalidate` after "
        "changing them" if legacy.names or legacy.unreadable else ""))
    human.append(f"policy for offloaded flows (revalidate = {config.daemon.revalidate.value}):")
    human += [f"  covered: {c}" for c in covered]
    human += [f"  NOT covered: {c}" for c in not_covered]
    human.append("plan: nothing to change" if plan.is_empty else "plan (one transaction):")
    human += [f"  {line}" for line in data["plan"]]
    _emit(args, data, "\n".join(human) + "\n")
    return EXIT_OK


class _NoLinks:
    async def snapshots(self) -> Any:
        return
        yield


if __name__ == "__main__":
    sys.exit(main())
