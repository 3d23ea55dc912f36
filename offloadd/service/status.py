"""What the daemon knows about itself, shared by status reports and metrics.

Owned by the Daemon and written only from its event loop. It composes what
each component keeps on its own: the writer's counts (WriteCounts), the
repairer's (RepairCounts), the re-validator's (RevalidateCounts), the
supervised tasks' states, and the kernel hooks probed at start (an immutable
KernelHooks); the reconcile pass and the loop keep theirs here directly. The
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


@dataclass
class RevalidateCounts:
    """Re-validation of offloaded flows after others' ruleset changes: the
    Revalidator's."""

    policy_changes_total: int = 0  # transactions by others that called for one
    # ... and those that did not: no forwarded packet meets their tables.
    policy_changes_skipped_total: int = 0
    revalidations_total: int = 0
    waited_total: int = 0  # re-validations that waited for a reconcile
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
class Status:
    """What the daemon knows about itself, for status and metrics (owned by Daemon)."""

    config_path: Path
    started: float = field(default_factory=time.time)
    links: tuple[Link, ...] = ()
    desired: DesiredResult | None = None
    reconciles_total: int = 0
    reconcile_failures_total: int = 0
    # The one writer's counters (offloadd.service.writer.TableWriter owns them).
    writes: WriteCounts = field(default_factory=WriteCounts)
    last_reconcile_seconds: float = 0.0
    last_reconcile_time: float = 0.0
    last_error: str = ""
    recent_errors: list[str] = field(default_factory=list)
    resyncs_total: int = 0
    reloads_total: int = 0
    reloads_rejected_total: int = 0
    hw_reasons: dict[str, str] = field(default_factory=dict)
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
    # nf_conntrack_max as the last reconcile read it (None: not readable), and
    # the flows the gate's sets hold at most as its pass left them (0: no
    # gate): offloadd.core.gate.gate_size.
    conntrack_max: int | None = None
    gate_size: int = 0
    # How full the gate's sets were at the last count (offloadd.service.gatecount:
    # the GateCounter alone writes it, replacing it whole); None: not counted
    # (no gate yet, or none any more).
    gate_fill: GateFill | None = None
    # iptables-legacy tables as the last reconcile saw them (None: not read yet).
    legacy: LegacyTables | None = None
    # The supervised background tasks (offloadd.service.supervisor), by name.
    tasks: Callable[[], Mapping[str, TaskState]] = dict

    @property
    def transactions_total(self) -> int:
        return self.writes.transactions_total

    def record_error(self, msg: str) -> None:
        """The last error, and the ten most recent with their time, for status."""
        self.last_error = msg
        self.recent_errors = [*self.recent_errors[-9:],
                              f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}"]
