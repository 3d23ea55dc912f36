"""The offloadctl commands that read the kernel themselves: flows, explain,
check, and status while the daemon is down.

Why a module of their own: they need libnftables, conntrack, rtnetlink and
the daemon's planner, and ``offloadctl status``/``reload``/``revalidate``
need none of it. offloadctl imports this only for these commands, so the
everyday ones start quickly (an operator's shell on a small router; each
offloadctl call cost seconds in the emulated lab VM).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import time
from pathlib import Path
from typing import Any

from offloadd.cli.ctlout import EXIT_OK, emit
from offloadd.cli.format import format_flows
from offloadd.core.attach import wildcard_prefix
from offloadd.core.config import Config, Revalidate
from offloadd.core.configparse import load_config
from offloadd.core.errors import ConfigError
from offloadd.core.explain import Passed, explain
from offloadd.core.flows import OffloadedFlow
from offloadd.core.gate import element, gate_size
from offloadd.core.model import SetKind, hooked_devices
from offloadd.core.render import render
from offloadd.core.revalidate import coverage
from offloadd.kernel.backend import NftBackend
from offloadd.kernel.capability import probe_hooks
from offloadd.kernel.conntrack import (
    conntrack_limit,
    list_by_status,
    list_offloaded,
    teardown_timeout_warnings,
)
from offloadd.kernel.links import current_links
from offloadd.kernel.nft import answer_of
from offloadd.kernel.nftstate import other_forward_priorities
from offloadd.kernel.routes import RouteLookup
from offloadd.service.gatecount import count_now
from offloadd.service.preview import preview
from offloadd.service.report import fill_report


# -- status, daemon down --------------------------------------------------------
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
    if (any(wildcard_prefix(d) is not None for d in listed)
            and probe_hooks(backend.nft).wildcards):
            specs = frozenset(d for d in listed if wildcard_prefix(d) is not None)
    fts = [{"name": ft.name, "hardware": ft.hardware, "counter": ft.counter,
            "desired": None, "in_sync": None, "devices": [],
            "attached": sorted(hooked_devices(ft.devices, present, specs)),
            "listed": sorted(ft.devices), "wildcards": sorted(ft.devices & specs)}
           for ft in (table.flowtables if table else ())]
    ct_max = conntrack_limit()
    sets = sum(1 for s in (table.sets if table else ()) if s.kind is SetKind.PASSED)
    gate = {"sets": sets,
            "size": table.passed_size if table else 0, "desired_size": gate_size(ct_max),
            "conntrack_max": ct_max,
            # Counted now, as the daemon counts it (two raw dumps, no listing).
            "fill": fill_report(count_now(backend), time.time()) if sets else None}
    return {"table": {"family": fam, "name": name, "exists": table is not None,
                      "forward_priority": table.chain.priority if table and table.chain
                      else None},
            "flowtables": fts, "gate": gate, "left_out": [], "problems": []}


# -- flows ----------------------------------------------------------------------
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
    routes = RouteLookup()
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
    emit(args, rows, format_flows(rows, bool(args.device or args.addr)))
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
    routes = RouteLookup()
    try:
        in_dev, out_dev = routes.device_towards(src), routes.device_towards(dst)
    finally:
        routes.close()
    backend = NftBackend(config.daemon.family.value, config.daemon.table)
    table = backend.read()
    gate = (backend.passed(element(flow.id, flow.orig.sport, flow.reply.sport), table)
            if flow is not None and table is not None else None)
    passed = Passed(*gate) if gate is not None else None
    result = explain(flow, in_dev, out_dev, config, table, passed=passed)
    data = {"verdict": result.verdict.value, "reasons": list(result.reasons),
            "flowtable": result.flowtable, "in_dev": in_dev, "out_dev": out_dev,
            "conntrack_id": flow.id if flow else None, "matches": len(candidates),
            "passed": {"original": passed.original, "reply": passed.reply} if passed else None}
    head = f"{args.proto} {args.src} -> {args.dst}: {result.verdict.value.upper()}"
    if len(candidates) > 1:
        head += f" ({len(candidates)} connections match; showing the largest)"
    emit(args, data, "\n".join([head, *(f"  - {r}" for r in result.reasons)]) + "\n")
    return EXIT_OK


# -- check ----------------------------------------------------------------------
def cmd_check(args: argparse.Namespace, path: Path) -> int:
    config = load_config(path)
    backend = NftBackend(config.daemon.family.value, config.daemon.table)
    # What the daemon would apply: planned with its probes, writing nothing.
    p = preview(config, backend, asyncio.run(current_links()), probe_hooks(backend.nft), path)
    desired, current, plan = p.desired, p.current, p.plan
    listing = backend.nft.list_json("chains")
    with answer_of("chains"):
        chains = [dict(i["chain"]) for i in listing if "chain" in i]
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
    legacy = p.legacy
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
    emit(args, data, "\n".join(human) + "\n")
    return EXIT_OK
