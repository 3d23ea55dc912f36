"""One reconcile pass: read current → pure plan → one transaction → verify.

Kept apart from the event loop so the pass can be run and tested on its own
(``offloadd --check`` plans with it; unit tests drive it with a fake backend)
and so the loop only decides *when* to reconcile, never *how*.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from offloadd.core.attach import attach_plan
from offloadd.core.config import Config, Hardware, PriorityMode, Stack
from offloadd.core.errors import DeviceVanishedError, NftError, OffloaddError
from offloadd.core.gate import PASSED_SETS, gate_size, sized_by
from offloadd.core.model import (
    DesiredResult,
    SetKind,
    TableState,
    auto_forward_priority,
    desired_state,
)
from offloadd.core.plan import (
    AddFlowtableDevices,
    CreateChain,
    CreateFlowtable,
    CreateSet,
    DeleteFlowtable,
    Plan,
    RemoveFlowtableDevices,
    compute_plan,
)
from offloadd.core.stack import PppoeSessions
from offloadd.core.xtables import LegacyTables
from offloadd.service.ports import Backend
from offloadd.service.refusals import Refusals, isolate_refused
from offloadd.service.status import Status
from offloadd.service.timing import Timing
from offloadd.service.writer import TableWriter

log = logging.getLogger("offloadd")


def log_ops(plan: Plan) -> None:
    """One journal entry per device change, with fields to filter on."""
    for op in plan.ops:
        if isinstance(op, AddFlowtableDevices | RemoveFlowtableDevices):
            verb = "attach" if isinstance(op, AddFlowtableDevices) else "detach"
            for dev in sorted(op.devices):
                log.info("flowtable %s: %s %s", op.ft.name, verb, dev,
                         extra={"FLOWTABLE": op.ft.name, "DEVICE": dev, "OPERATION": verb})
        elif isinstance(op, CreateFlowtable):
            log.info("flowtable %s: created with %s", op.ft.name,
                     ", ".join(sorted(op.ft.devices)) or "no devices",
                     extra={"FLOWTABLE": op.ft.name, "OPERATION": "create"})
        elif isinstance(op, DeleteFlowtable):
            log.info("flowtable %s: deleted", op.name,
                     extra={"FLOWTABLE": op.name, "OPERATION": "delete"})
        elif isinstance(op, CreateChain):
            log.info("forward chain at priority %d with %d rule(s)", op.chain.priority,
                     len(op.chain.rules), extra={"OPERATION": "chain"})


def log_gate(plan: Plan, current: TableState | None, conntrack_max: int | None) -> None:
    """One journal entry when a pass creates the gate's sets, with their size
    and why (nf_conntrack_max raised: re-created larger)."""
    created = [op for op in plan.ops if isinstance(op, CreateSet) and op.kind is SetKind.PASSED]
    if not created:
        return
    size = max(op.size for op in created)
    names = sorted(op.name for op in created)
    what = ("gate sets" if names == sorted(PASSED_SETS)
            else "gate set " + ", ".join(names))
    again = current is not None and any(current.set(n) is not None for n in names)
    log.info("%s %s at size %d (%s)", what, "re-created" if again else "created", size,
             sized_by(size, conntrack_max), extra={"OPERATION": "gate"})


class Reconciler:
    """Brings the kernel's table to what the config selects for the current links."""

    def __init__(self, config: Config, backend: Backend, status: Status,
                 writer: TableWriter | None = None, timing: Timing = Timing(), *,
                 gate_sizing: Callable[[int | None], int] = gate_size) -> None:
        self.config = config
        # nf_conntrack_max -> the gate's size (the lab passes a small fixed
        # one to fill it; offloadd.core.gate.gate_size everywhere else).
        self._gate_sizing = gate_sizing
        self._others_ttl_s = timing.others_ttl_s
        self.backend = backend
        self.status = status
        # The loop retries a failed pass itself (with backoff): no reconcile
        # request from the writer for its own writes.
        self.writer = writer or TableWriter(backend, counts=status.writes)
        # What the passes found and left: this class alone writes it; status
        # and metrics read it (status.reconcile).
        self.state = status.reconcile
        self.refusals = Refusals(timing.retry_refused_s)
        self._hw_cache: dict[str, bool] = {}
        # Other tables' forward priorities, read with "list chains" (a whole
        # ruleset's chains). A device change does not change them, and that
        # read was one of the eight libnftables calls of an attach (~6.5 ms
        # each under TCG); the daemon says when they may have changed.
        self.others_watched = False
        self._others: tuple[float, list[int]] | None = None
        # The table as the last pass read it before planning, and as the last
        # successful pass verified it: where they differ, the kernel changed
        # in between (the periodic check's drift).
        self.last_read: TableState | None = None
        self.verified: TableState | None = None
        # Selected devices whose fast path beneath the stack guard refused
        # (device -> why): used as they are until a reload.
        self.shallow: Mapping[str, str] = {}
        # The PPPoE sessions the last pass planned with.
        self.pppoe = PppoeSessions()

    def configure(self, config: Config) -> None:
        """A reloaded config: hardware answers and refusals are asked again."""
        self.config = config
        self._hw_cache.clear()
        self.refusals.clear()
        self.shallow = {}

    def _hw_capable(self, device: str) -> bool:
        if device not in self._hw_cache:
            ok, why = self.backend.hw_capable(device)
            self._hw_cache[device] = ok
            self.state.hw_reasons[device] = why
        return self._hw_cache[device]

    def others_changed(self) -> None:
        """Another table's chains may have changed: read their priorities again."""
        self._others = None

    def _other_priorities(self) -> list[int]:
        now = time.monotonic()
        if (self.others_watched and self._others is not None
                and now - self._others[0] < self._others_ttl_s):
            return self._others[1]
        prios = self.backend.other_forward_priorities()
        self._others = (now, prios)
        return prios

    def _legacy(self) -> LegacyTables:
        """iptables-legacy tables, read on every pass (two small /proc reads):
        their loading sends no event. A change is logged."""
        legacy = self.backend.legacy_tables()
        if legacy != self.state.legacy:
            if self.state.legacy is not None or legacy.names or legacy.unreadable:
                log.info("%s", legacy.describe(), extra={"OPERATION": "legacy"})
            self.state.legacy = legacy
        return legacy

    def _forward_priority(self) -> int:
        prio = self.config.daemon.priority
        legacy = self._legacy()
        if isinstance(prio, PriorityMode):
            # Strictly after the nft forward chains and the legacy FORWARD hooks.
            return auto_forward_priority([*self._other_priorities(),
                                          *legacy.forward_priorities()])
        return prio

    def _desired(self, refused: Mapping[str, str], forward_priority: int) -> DesiredResult:
        uses_hw = any(f.hardware is not Hardware.OFF for f in self.config.flowtables)
        hw = self._hw_capable if uses_hw else (lambda _d: False)
        h = self.status.hooks
        attach = attach_plan(self.config, h.name_hooks, h.name_hooks_reason, h.wildcards,
                             h.wildcards_reason)
        stacked = any(f.stack is not Stack.AS_LISTED for f in self.config.flowtables)
        pppoe = self.backend.pppoe_sessions() if stacked else PppoeSessions()
        self.pppoe = pppoe
        return desired_state(self.config, self.status.links, hw, forward_priority,
                             refused=refused, attach=attach, pppoe=pppoe,
                             shallow=self.shallow,
                             gate_size=self._gate_sizing(self.state.conntrack_max))

    def plan_once(self, *, preview: bool = False) -> tuple[DesiredResult, TableState | None, Plan]:
        """Reads and plans; with ``preview`` nothing at all is written (no sysctl)."""
        # Per-flow counters: elephant_packets counts with them, and the stack
        # guard watches offloaded flows through stacked devices with them.
        if not preview and any(f.elephant_packets or f.stack is not Stack.AS_LISTED
                               for f in self.config.flowtables):
            self.backend.ensure_accounting()
        current = self.backend.read()
        self.last_read = current
        # Read on every pass (one /proc read, no event when it changes): a
        # raised limit grows the gate at the next pass.
        self.state.conntrack_max = self.backend.conntrack_limit()
        desired = self._desired(self.refusals.current(self.status.links),
                                self._forward_priority())
        return desired, current, compute_plan(desired.table, current)

    def reconcile(self) -> Plan:
        """One pass: read, plan, apply as one transaction, read back and verify.

        Raises OffloaddError on failure; nothing is half-applied because the
        kernel takes the batch whole or not at all.
        """
        t0 = time.monotonic()
        self.state.reconciles_total += 1
        try:
            desired, current, plan = self.plan_once()
            self._adopt(desired)
            if not plan.is_empty:
                try:
                    script = self.writer.apply(plan, "reconcile", reconcile_on_failure=False)
                except DeviceVanishedError:
                    raise
                except NftError:
                    # One device the kernel will not take must not hold back
                    # every other change: find it, leave it out, apply the rest.
                    if not self._leave_out_refused(current, plan, desired):
                        raise
                    desired, current, plan = self.plan_once()
                    self._adopt(desired)
                    script = self.writer.apply(plan, "reconcile", reconcile_on_failure=False)
            if not plan.is_empty:
                log.debug("applied %d operations:\n%s", len(plan.ops), script.rstrip())
                log_ops(plan)
                log_gate(plan, current, self.state.conntrack_max)
            self.verified = self.writer.verify(desired.table, "apply",
                                               reconcile_on_failure=False)
            self.state.gate_size = self.verified.passed_size
        except OffloaddError as e:
            self.state.reconcile_failures_total += 1
            self.status.record_error(str(e))
            raise
        finally:
            self.state.last_reconcile_seconds = time.monotonic() - t0
            self.state.last_reconcile_time = time.time()
        return plan

    def _leave_out_refused(self, current: TableState | None, plan: Plan,
                           desired: DesiredResult) -> bool:
        """Finds the devices the kernel refuses; True if any was left out."""
        # The priority of this pass: no kernel listing per dry run.
        prio = desired.table.chain.priority if desired.table.chain else 0
        refused = self.refusals.current(self.status.links)

        def table_without(devices: set[str]) -> TableState:
            return self._desired({**refused, **dict.fromkeys(devices, "")}, prio).table

        bad = isolate_refused(current, plan, table_without, self.backend.check)
        if not bad:
            return False
        self.refusals.add(bad, self.status.links)
        for dev, msg in sorted(bad.items()):
            self.status.record_error(
                f"the kernel refused to attach {dev} ({msg}); left out, retried in "
                f"{self.refusals.retry_s:.0f} s or when the link is re-created")
        return True

    def _adopt(self, desired: DesiredResult) -> None:
        self._report_problems(desired)
        self.state.desired = desired

    def _report_problems(self, desired: DesiredResult) -> None:
        """Logs device problems once, when they first appear (not every pass)."""
        old = set(self.state.desired.problems) if self.state.desired else set()
        for note in desired.problems:
            if note not in old:
                log.warning("flowtable %s: %s", note.selector, note.message)
