"""The plan preview that `offloadd --check` and `offloadctl check` print.

Why one module: both must show what the daemon would apply now, so both plan
with the daemon's own reconcile pass, from the same inputs — the config, the
current links, the kernel's table, and the kernel hooks probed as the daemon
probes them at start (a check that skipped the name-hook probe printed, on
7.x, a plan the daemon would never apply). A preview writes nothing: no
transaction, no sysctl, no daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from offloadd.core.attach import KernelHooks
from offloadd.core.config import Config
from offloadd.core.model import DesiredResult, Link, TableState
from offloadd.core.plan import Plan
from offloadd.core.xtables import LegacyTables
from offloadd.service.ports import Backend
from offloadd.service.reconciler import Reconciler
from offloadd.service.status import Status


@dataclass(frozen=True)
class Preview:
    desired: DesiredResult
    current: TableState | None
    plan: Plan
    hooks: KernelHooks
    legacy: LegacyTables


def preview(config: Config, backend: Backend, links: tuple[Link, ...],
            hooks: KernelHooks, config_path: Path = Path("-")) -> Preview:
    """What the daemon's next reconcile pass would apply, read-only."""
    status = Status(config_path=config_path, links=links, hooks=hooks)
    desired, current, plan = Reconciler(config, backend, status).plan_once(preview=True)
    return Preview(desired, current, plan, hooks, status.legacy or LegacyTables())
