"""Text for offloadctl's human output: status, repair line, flows table.

Why a module of its own: this is pure formatting of the report dicts the
daemon (or the kernel fallback) produces, with no kernel or socket access, so
it can be read and tested apart from the argument parsing and commands in
ctl.py.
"""

from __future__ import annotations

import time
from typing import Any

from offloadd.core.attach import wildcard_covering
from offloadd.core.gate import PASSED_SETS, sized_by


def format_status(r: dict[str, Any]) -> str:
    out = []
    d = r["daemon"]
    if d.get("running"):
        out.append(f"offloadd {d['version']}: running (up {_ago(d['uptime_seconds'])}), "
                   f"config {d['config']}")
    else:
        out.append(f"offloadd: NOT RUNNING ({d.get('reason')}); showing the kernel's view")
    t = r["table"]
    if t["exists"]:
        out.append(f"table {t['family']} {t['name']}: offload rule at forward priority "
                   f"{t['forward_priority']}")
    else:
        out.append(f"table {t['family']} {t['name']}: absent (nothing is offloaded)")
    k = r.get("kernel")
    if k:
        wild = f"; {k['wildcards_reason']}" if k.get("wildcards_reason") else ""
        out.append(f"kernel: {k['reason']}{wild}")
    for ft in r["flowtables"]:
        out.extend(_format_flowtable(ft))
    out.extend(format_gate(r.get("gate")))
    out.extend(format_stacks(r.get("stacks", [])))
    if r.get("left_out"):
        out.append("not offloaded:")
        out.extend(f"  {x['device']:<15} {x['reason']}" for x in r["left_out"])
    for p in r.get("problems", []):
        out.append(f"warning: {p}")
    rec = r.get("reconcile")
    if rec:
        when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["last_timestamp"]))
                if rec["last_timestamp"] else "never")
        out.append(f"reconcile: {rec['total']} runs, {rec['failures_total']} failed, "
                   f"{rec['transactions_total']} transactions; last {when} "
                   f"({rec['last_duration_seconds'] * 1000:.1f} ms)")
        out.append(format_check(rec))
    rep = r.get("repair")
    if rep:
        out.append(format_repair(rep))
    guard = r.get("guard")
    if guard and (guard["watched"] or guard["refused"]):
        out.extend(format_guard(guard))
    legacy = r.get("legacy")
    if legacy:
        out.extend(format_legacy(legacy))
    reval = r.get("revalidate")
    if reval:
        out.append(format_revalidate(reval))
    tasks = r.get("tasks")
    if tasks:
        out.append(format_tasks(tasks))
    if rec:
        errors = rec["recent_errors"]
        out.append("recent errors: " + ("none" if not errors else ""))
        out.extend(f"  {e}" for e in errors)
    return "\n".join(out) + "\n"


def format_gate(gate: dict[str, Any] | None) -> list[str]:
    """A line (none without a gate): how many flows the gate holds at most,
    why that many, and how many it held at the last count (a full set leaves
    new flows on the slow path)."""
    if not gate or not gate["sets"] or not gate["size"]:
        return []
    line = (f"gate: {gate['sets']} sets of up to {gate['size']} flows "
            f"({sized_by(gate['size'], gate['conntrack_max'])})")
    fill = gate.get("fill")
    if fill:
        line += "; " + format_fill(fill, gate["size"])
    return [line]


def format_fill(fill: dict[str, Any], size: int) -> str:
    """``holds 1234 / 567 (0.1 %), counted 12s ago``: each set's elements (in
    PASSED_SETS order), the fuller one against the size, the count's age."""
    elements = fill["elements"]
    if not elements:
        return f"not counted: {fill['error']}"
    held = " / ".join(str(elements.get(name, "?")) for name in PASSED_SETS)
    text = (f"holds {held} ({100 * max(elements.values()) / size:.1f} %), "
            f"counted {_ago(fill['age_seconds'] or 0)} ago")
    took = fill.get("duration_seconds") or 0.0
    if took >= 1.0:
        # Worth saying only when large: the kernel's walk of a big gate.
        text += f" (a {took:.1f}-s count)"
    if max(elements.values()) >= size:
        text += ("; FULL: flows it cannot record stay on the slow path (never offloaded "
                 "unchecked) until entries expire")
    if fill["stale"]:
        text += f"; STALE, the last count failed: {fill['error']}"
    return text


def format_tasks(tasks: dict[str, Any]) -> str:
    """One line: the background tasks, with any that is down, was restarted or
    is stalled (in one step for longer than the daemon allows)."""
    down = [n for n, t in tasks.items() if not t["up"]]
    line = (f"tasks: {len(tasks) - len(down)}/{len(tasks)} running"
            + (f"; DOWN: {', '.join(down)}" if down else ""))
    restarted = [f"{n} {t['restarts_total']}x (last: {t['last_error']})"
                 for n, t in tasks.items() if t["restarts_total"] or not t["up"]]
    if restarted:
        line += "; restarted: " + "; ".join(restarted)
    stalled = [f"{n} (one step for {t['step_seconds']:.0f} s)"
               for n, t in tasks.items() if t.get("stalled")]
    if stalled:
        line += "; STALLED: " + ", ".join(stalled)
    return line


def _format_flowtable(ft: dict[str, Any]) -> list[str]:
    out = []
    kind = "hardware" if ft["hardware"] else "software"
    declared = ft.get("declared", [])
    wildcards = ft.get("wildcards", [])
    present = [d["device"] for d in ft["devices"] if d.get("present", True)]
    if ft["desired"] is None:
        sync = f"{len(ft['attached'])} attached"
    else:
        state = "in sync" if ft["in_sync"] else "OUT OF SYNC"
        # Out of the devices offloadd placed: listed ones and those a kernel
        # wildcard covers (never listed themselves).
        sync = f"{len(ft['attached'])}/{len(present)} devices attached, {state}"
        if declared:
            sync += f", {len(declared)} name(s) declared ahead of their device"
        if wildcards:
            sync += f", {len(wildcards)} kernel wildcard(s)"
    out.append(f"flowtable {ft['name']} ({kind}{', counter' if ft['counter'] else ''}): "
               f"{sync}")
    if ft.get("attach_reason"):
        out.append(f"  attach: {ft['attach']} ({ft['attach_reason']})")
    if ft["desired"] is None:
        # The kernel's own view (offloadd not running): what it lists, and
        # which of it a device carries.
        attached = set(ft["attached"])
        for name in ft.get("listed", ft["attached"]):
            if name in wildcards:
                covered = sorted(d for d in attached if wildcard_covering((name,), d))
                hooked = f": {', '.join(covered)}" if covered else ", no device yet"
                out.append(f"  {name:<15} [KERNEL WILDCARD{hooked}]")
            else:
                out.append(f"  {name}" + ("" if name in attached else "  [listed, no device]"))
        return out
    for spec in wildcards:
        covered = [d for d in present if wildcard_covering((spec,), d) is not None]
        hooked = f": {', '.join(covered)}" if covered else ", no device yet"
        out.append(f"  {spec:<15} [KERNEL WILDCARD{hooked}]")
    if ft["devices"]:
        for dev in ft["devices"]:
            if not dev.get("present", True):
                mark = "  [DECLARED, no device yet]"
            elif dev["device"] in ft["attached"]:
                mark = ""
            else:
                mark = "  [NOT ATTACHED]"
            out.append(f"  {dev['device']:<15} {dev['mode']:<8} {dev['reason']}{mark}")
    else:
        out.extend(f"  {name}" for name in ft["attached"])
    return out


def format_check(rec: dict[str, Any]) -> str:
    """The periodic check's line: how often, and the drift it found."""
    every = rec.get("check_interval_seconds")
    head = f"periodic check: every {every} s" if every else "periodic check: off"
    n = rec.get("drift_repairs_total", 0)
    if not n:
        return f"{head}; no drift found"
    last = rec.get("last_drift") or {}
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"]))
            if last.get("time") else "?")
    found = f", found by {last['found_by']}" if last.get("found_by") else ""
    return (f"{head}; drift repaired {n} time(s), last {when} "
            f"({', '.join(last.get('operations', []))}{found}): an event was missed")


def format_repair(rep: dict[str, Any]) -> str:
    """One line (two if something is held back) on flows the kernel left behind."""
    line = (f"repair ({rep['mode']}): {rep['repairs_total']} flowtable replacement(s) in "
            f"{rep['checks_total']} checks; {rep['left_behind_flows']} flow(s) left behind "
            "at the last check")
    last = rep.get("last")
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"]))
        flows = ", ".join(f"{n} ({c} flows)" for n, c in sorted(last["flows"].items()))
        line += f"; last {when}: {flows}: {last['reason']}"
    if rep["mode"] != "off":
        since = rep.get("leaves_behind_since")
        line += ("\n  periodic check: on, this kernel left flows behind first "
                 + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
                 if since is not None else
                 "\n  periodic check: off until this kernel leaves a flow behind (checks "
                 "follow route cache flushes and re-validations)")
        scan = rep.get("last_scan_seconds")
        if scan is not None:
            line += (f"\n  last scan {scan:.2f} s ({rep.get('last_scan_cpu_seconds') or 0:.2f} s "
                     "CPU)")
            deferred = rep.get("flush_checks_deferred_total", 0)
            if deferred and since is None:
                line += (f"; {deferred} route cache flush(es) checked later than asked, "
                         "scans kept to a small share of the time until a flow is left behind")
    if rep.get("held"):
        line += f"\n  held back: {rep['held']}"
    return line


def format_stacks(stacks: list[dict[str, Any]]) -> list[str]:
    """The stacks of the selected devices. A plain device stands for itself:
    only stacks, and what stopped short (a note, a port-less bridge), are
    worth a line."""
    shown = [st for st in stacks if st["stacked"] or st.get("note") or not st["paths"]]
    if not shown:
        return []
    out = ["stacks (the fast path runs on the last device of each):"]
    for st in shown:
        paths = "; ".join(st["paths"]) or f"{st['device']}: nothing beneath it carries packets"
        note = f"  ({st['note']})" if st.get("note") else ""
        out.append(f"  {paths}  [flowtable {st['flowtable']}]{note}")
    return out


def format_guard(g: dict[str, Any]) -> list[str]:
    """The stack guard: which stacked devices it watches, and what it refused."""
    watched = ", ".join(g["watched"]) or "none"
    lines = [f"stack guard: watching {watched} ({g['looks_total']} looks); "
             f"{len(g['refused'])} fast path(s) beneath refused"]
    lines += [f"  REFUSED {dev}: {why}" for dev, why in sorted(g["refused"].items())]
    return lines


def format_legacy(lg: dict[str, Any]) -> list[str]:
    """iptables-legacy: shown when tables are loaded or cannot be read."""
    if not lg.get("read") or not (lg["tables"] or lg["unreadable"]):
        return []
    if lg["before"]:
        verdict = (f"WARNING: offloadd's forward chain does NOT run after "
                   f"{', '.join(lg['before'])} (daemon.priority): a flow can be offloaded "
                   "before their rules see it")
    else:
        verdict = "offloadd's forward chain runs after their FORWARD hooks"
    return [f"iptables-legacy: {lg['summary']}; {verdict}",
            "  legacy rule changes send no nftables event: run `offloadctl revalidate` "
            "after changing them"]


def format_revalidate(rv: dict[str, Any]) -> str:
    """One line on re-validating offloaded flows after others' ruleset changes."""
    if rv["mode"] == "off":
        line = ("revalidate (off): offloaded flows do NOT meet rules or set elements added "
                "after they were offloaded, until they end")
    else:
        line = (f"revalidate ({rv['mode']}): {rv['revalidations_total']} re-validation(s) "
                f"for {rv['policy_changes_total']} ruleset change(s) by others")
        if rv.get("policy_changes_skipped_total"):
            line += (f", {rv['policy_changes_skipped_total']} more skipped (tables no "
                     "forwarded packet meets)")
        if rv.get("moot_total"):
            line += (f", {rv['moot_total']} moot (offloadd's table created after the "
                     "change: every flow in it passed the current policy)")
    last = rv.get("last")
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"]))
        line += (f"; last {when}, {last['delay_seconds'] * 1000:.0f} ms after "
                 f"{last['trigger']}")
    return line


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_flows(rows: list[dict[str, Any]], filtered: bool) -> str:
    """The flows table; `filtered`: a --device/--addr filter was given."""
    lines = [f"{'PROTO':<5} {'SOURCE':<41} {'DESTINATION':<41} {'PACKETS':>9} {'BYTES':>11} "
             f"{'MODE':<8} DEVICES"]
    for r in rows:
        src, dst = _endpoint(r["src"], r["sport"]), _endpoint(r["dst"], r["dport"])
        pk = "-" if r["packets"] is None else str(r["packets"])
        by = "-" if r["bytes"] is None else _size(r["bytes"])
        lines.append(f"{r['proto']:<5} {src:<41} {dst:<41} {pk:>9} {by:>11} {r['mode']:<8} "
                     f"{r['in_dev'] or '?'} -> {r['out_dev'] or '?'}")
    if not rows:
        lines.append("(no offloaded flows" + (" match" if filtered else "") + ")")
    elif rows[0]["packets"] is None:
        lines.append("(packet/byte counts need net.netfilter.nf_conntrack_acct = 1)")
    return "\n".join(lines) + "\n"


def _endpoint(addr: str, port: int) -> str:
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{port}" if port else host


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
