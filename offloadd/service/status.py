"""What the daemon knows about itself, shared by status reports and metrics.

Owned by the Daemon and written only from its event loop. It composes what
each component keeps on its own and alone writes: the writer's counts
(WriteCounts), the reconcile pass's (ReconcileState: the desired state among
them), the repairer's (RepairCounts), the re-validator's (RevalidateCounts),
the stack guard's, the gate count's, the supervised tasks' states, and the
kernel hooks probed at start (an immutable KernelHooks); the loop keeps its
own (links, reloads, drift) here directly, and every component records its
errors through ``record_error``. The
control socket reads it on that loop; the metrics scrape reads it from the
exporter's thread, copying plain numbers and swapping whole references, which
the GIL keeps consistent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from offloadd.core.attach import KernelHooks
from offloadd.core.gate import GateFill
from offloadd.core.model import DesiredResult, Link
from offloadd.core.xtables import LegacyTables
from offloadd.service.supervisor import TaskState
from offloadd.service.writer import WriteCounts


@dataclass
class RepairCounts:
    """Flows the kernel left behind (offloadd.core.repair) and what was done:
    the Repairer's."""

    checks_total: int = 0
    repairs_total: int = 0
    left_behind_flows: int = 0  # at the last check
    last: dict[str, object] | None = None
    held: str = ""  # why the last check repaired nothing it found, if so
    # When this kernel was first seen leaving flows behind (wall clock): from
    # then on the periodic check runs; before, only events call for one.
    leaves_behind_since: float | None = None
    # The last check's scan (wall and CPU seconds), and route cache flushes
    # whose check waited for the scan budget (Timing.repair_flush_scan_share).
    last_scan_s: float | None = None
    last_scan_cpu_s: float | None = None
    flush_checks_deferred_total: int = 0


@dataclass
class RevalidateCounts:
    """Re-validation of offloaded flows after others' ruleset changes: the
    Revalidator's."""

    policy_changes_total: int = 0  # transactions by others that called for one
    # ... and those that did not: no forwarded packet meets their tables.
    policy_changes_skipped_total: int = 0
    revalidations_total: int = 0
    waited_total: int = 0  # re-validations that waited for a reconcile
    # Pending changes older than offloadd's table (re-created after them, as
    # after `flush ruleset`): no flow in it passed an older policy.
    moot_total: int = 0
    last: dict[str, object] | None = None


@dataclass
class GuardCounts:
    """The stack guard's (offloadd.core.guard): what it watches and refused."""

    looks_total: int = 0
    watched: tuple[str, ...] = ()
    # Device -> why its fast path beneath was refused (until a reload).
    refused: dict[str, str] = field(default_factory=dict)
    refusals_total: int = 0
    last_refusal_time: float = 0.0  # Unix time; 0 = none yet


@dataclass
class ReconcileState:
    """What the reconcile pass found and left: the Reconciler's (it alone
    writes it; the daemon hands it to status and metrics)."""

    desired: DesiredResult | None = None
    reconciles_total: int = 0
    reconcile_failures_total: int = 0
    last_reconcile_seconds: float = 0.0
    last_reconcile_time: float = 0.0
    # Per device, why hardware offload was not used (the last probe's answer).
    hw_reasons: dict[str, str] = field(default_factory=dict)
    # nf_conntrack_max as the last pass read it (None: not readable), and the
    # flows the gate's sets hold at most as its pass left them (0: no gate):
    # offloadd.core.gate.gate_size.
    conntrack_max: int | None = None
    gate_size: int = 0
    # iptables-legacy tables as the last pass saw them (None: not read yet).
    legacy: LegacyTables | None = None


@dataclass
class GateCounts:
    """How full the gate's sets were at the last count: the GateCounter's
    (offloadd.service.gatecount), replaced whole; None: not counted (no gate
    yet, or none any more)."""

    fill: GateFill | None = None


@dataclass
class Status:
    """What the daemon knows about itself, for status and metrics (owned by Daemon)."""

    config_path: Path
    started: float = field(default_factory=time.time)
    links: tuple[Link, ...] = ()
    # The one writer's counters (offloadd.service.writer.TableWriter owns them).
    writes: WriteCounts = field(default_factory=WriteCounts)
    # The reconcile pass's (the Reconciler owns it) and the gate count's.
    reconcile: ReconcileState = field(default_factory=ReconcileState)
    gate: GateCounts = field(default_factory=GateCounts)
    last_error: str = ""
    recent_errors: list[str] = field(default_factory=list)
    resyncs_total: int = 0
    reloads_total: int = 0
    reloads_rejected_total: int = 0
    # Probed at start (offloadd.kernel.capability.probe_hooks): name hooks
    # and kernel wildcards; an immutable value, replaced whole.
    hooks: KernelHooks = field(default_factory=KernelHooks)
    # The repairer's and the re-validator's own counters (each owns and alone
    # writes its object; report and collector compose them).
    repair: RepairCounts = field(default_factory=RepairCounts)
    revalidation: RevalidateCounts = field(default_factory=RevalidateCounts)
    guard: GuardCounts = field(default_factory=GuardCounts)
    # The periodic check (daemon.check_interval): passes that found drift no
    # event had announced, and the last of them.
    drift_repairs_total: int = 0
    last_drift: dict[str, object] | None = None
    # The supervised background tasks (offloadd.service.supervisor), by name.
    tasks: Callable[[], Mapping[str, TaskState]] = dict

    @property
    def transactions_total(self) -> int:
        return self.writes.transactions_total

    # Read-only views of what the components own (no setters: each is
    # written by its owner alone).
    @property
    def desired(self) -> DesiredResult | None:
        return self.reconcile.desired

    @property
    def reconciles_total(self) -> int:
        return self.reconcile.reconciles_total

    @property
    def reconcile_failures_total(self) -> int:
        return self.reconcile.reconcile_failures_total

    @property
    def last_reconcile_seconds(self) -> float:
        return self.reconcile.last_reconcile_seconds

    @property
    def last_reconcile_time(self) -> float:
        return self.reconcile.last_reconcile_time

    @property
    def hw_reasons(self) -> Mapping[str, str]:
        return self.reconcile.hw_reasons

    @property
    def conntrack_max(self) -> int | None:
        return self.reconcile.conntrack_max

    @property
    def gate_size(self) -> int:
        return self.reconcile.gate_size

    @property
    def legacy(self) -> LegacyTables | None:
        return self.reconcile.legacy

    @property
    def gate_fill(self) -> GateFill | None:
        return self.gate.fill

    def record_error(self, msg: str) -> None:
        """The last error, and the ten most recent with their time, for status."""
        self.last_error = msg
        self.recent_errors = [*self.recent_errors[-9:],
                              f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}"]
