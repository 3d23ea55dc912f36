"""The status report: what offloadctl shows and the control socket returns.

Pure: built from the daemon's Status and the table as the kernel has it, so
the same shape is unit-tested here and served by the daemon.
"""

from __future__ import annotations

import time
from typing import Any

from offloadd import __version__
from offloadd.core.gate import GateFill
from offloadd.core.model import SetKind, TableState, hooked_devices
from offloadd.service.status import Status


def status_report(status: Status, table_name: str, family: str,
                  kernel: TableState | None, now: float | None = None, *,
                  repair_mode: str = "auto",
                  revalidate_mode: str = "on-change",
                  check_interval: int = 60) -> dict[str, Any]:
    now = time.time() if now is None else now
    desired = status.desired
    flowtables = []
    # A name in the kernel's list is attached only if a device carries it: the
    # kernel (6.16+) also lists names declared ahead of their device, and
    # names of devices that went away. A kernel wildcard ("wan*") attaches
    # every present device it covers.
    present = {ln.name for ln in status.links}
    declared = desired.declared_only() if desired else frozenset()
    wild = desired.wildcards() if desired else frozenset()
    attach = {a.flowtable: a for a in (desired.attach if desired else ())}
    for ft in (desired.table.flowtables if desired else ()):
        have = kernel.flowtable(ft.name) if kernel else None
        devices = [
            {"device": d.device, "mode": "hardware" if d.hardware else "software",
             "reason": d.reason, "present": d.present,
             "hw_probe": status.hw_reasons.get(d.device, "")}
            for d in (desired.decisions if desired else ()) if d.flowtable == ft.name
        ]
        how = attach.get(ft.name)
        flowtables.append({
            "name": ft.name,
            "hardware": ft.hardware,
            "counter": ft.counter,
            "desired": sorted(ft.devices),
            "attached": sorted(hooked_devices(have.devices, present, wild)) if have else [],
            "declared": sorted(ft.devices & declared),
            "wildcards": sorted(ft.devices & wild),
            "in_sync": have is not None and have.devices == ft.devices,
            "attach": how.mode.value if how else "daemon",
            "attach_reason": how.reason if how else "",
            "devices": devices,
        })
    stacks = [
        {"flowtable": sel, "device": r.device, "paths": [str(p) for p in r.paths],
         "stacked": r.stacked, "note": r.note}
        for sel, r in (desired.stacks if desired else ())
    ]
    left_out = [
        {"device": d.device, "selector": d.selector, "reason": d.reason}
        for d in (desired.decisions if desired else ()) if d.flowtable is None
    ]
    return {
        "daemon": {
            "version": __version__,
            "config": str(status.config_path),
            "uptime_seconds": round(now - status.started, 1),
        },
        "kernel": {"name_hooks": status.hooks.name_hooks,
                   "reason": status.hooks.name_hooks_reason,
                   "wildcards": status.hooks.wildcards,
                   "wildcards_reason": status.hooks.wildcards_reason},
        "table": {"family": family, "name": table_name, "exists": kernel is not None,
                  "forward_priority": kernel.chain.priority if kernel and kernel.chain else None},
        "flowtables": flowtables,
        "gate": {
            # The gate's sets as the last reconcile left them.
            "sets": sum(1 for s in (desired.table.sets if desired else ())
                        if s.kind is SetKind.PASSED),
            "size": status.gate_size,
            "desired_size": desired.table.passed_size if desired else 0,
            "conntrack_max": status.conntrack_max,
            "fill": fill_report(status.gate_fill, now),
        },
        "stacks": stacks,
        "left_out": left_out,
        "problems": [n.message for n in (desired.problems if desired else ())],
        "reconcile": {
            "total": status.reconciles_total,
            "failures_total": status.reconcile_failures_total,
            "transactions_total": status.writes.transactions_total,
            "write_failures_total": status.writes.failures_total,
            "reconciles_requested_total": status.writes.reconciles_requested_total,
            "last_duration_seconds": round(status.last_reconcile_seconds, 6),
            "last_timestamp": status.last_reconcile_time,
            "last_error": status.last_error,
            "recent_errors": list(status.recent_errors),
            "check_interval_seconds": check_interval,
            "drift_repairs_total": status.drift_repairs_total,
            "last_drift": status.last_drift,
        },
        "links": {"count": len(status.links), "resyncs_total": status.resyncs_total},
        "reloads": {"total": status.reloads_total, "rejected_total": status.reloads_rejected_total},
        "repair": {
            "mode": repair_mode,
            "checks_total": status.repair.checks_total,
            "repairs_total": status.repair.repairs_total,
            "left_behind_flows": status.repair.left_behind_flows,
            "last": status.repair.last,
            "held": status.repair.held,
            # The periodic check runs once the kernel was seen leaving flows behind.
            "leaves_behind_since": status.repair.leaves_behind_since,
            "last_scan_seconds": _rounded(status.repair.last_scan_s),
            "last_scan_cpu_seconds": _rounded(status.repair.last_scan_cpu_s),
            "flush_checks_deferred_total": status.repair.flush_checks_deferred_total,
        },
        "legacy": _legacy(status, kernel),
        "guard": {
            "watched": list(status.guard.watched),
            "looks_total": status.guard.looks_total,
            "refused": dict(status.guard.refused),
            "refusals_total": status.guard.refusals_total,
            "last_refusal_timestamp": status.guard.last_refusal_time,
        },
        "revalidate": {
            "mode": revalidate_mode,
            "policy_changes_total": status.revalidation.policy_changes_total,
            "policy_changes_skipped_total": status.revalidation.policy_changes_skipped_total,
            "revalidations_total": status.revalidation.revalidations_total,
            "waited_total": status.revalidation.waited_total,
            "moot_total": status.revalidation.moot_total,
            "last": status.revalidation.last,
        },
        "tasks": {name: t.as_dict() for name, t in sorted(status.tasks().items())},
    }


def fill_report(fill: GateFill | None, now: float) -> dict[str, Any] | None:
    """The gate's fill as last counted (None: not counted, no gate): elements
    per set, when, and why the count is stale if the latest one failed."""
    if fill is None:
        return None
    return {"elements": dict(fill.elements),
            "timestamp": fill.time,
            "age_seconds": round(max(0.0, now - fill.time), 1) if fill.time else None,
            "stale": fill.stale, "error": fill.error,
            "duration_seconds": round(fill.duration_s, 3)}


def _legacy(status: Status, kernel: TableState | None) -> dict[str, Any]:
    """iptables-legacy tables beside offloadd, and whether its chain runs after
    their FORWARD hooks (it does with priority = "auto"; a fixed one may not)."""
    legacy = status.legacy
    if legacy is None:
        return {"read": False, "tables": [], "forward_hooks": {}, "unreadable": "",
                "summary": "not read yet", "before": []}
    hooks = legacy.forward_hooks()
    prio = kernel.chain.priority if kernel and kernel.chain else None
    return {"read": True, "tables": legacy.names, "forward_hooks": hooks,
            "unreadable": legacy.unreadable, "summary": legacy.describe(),
            # Legacy FORWARD hooks that offloadd's chain does not run after.
            "before": sorted(n for n, p in hooks.items() if prio is not None and p >= prio)}


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
