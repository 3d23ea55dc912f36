"""The event loop: link snapshots and signals in, reconciles out.

Level-triggered on purpose: every reconcile starts from the whole current
link set and the table as the kernel has it, so a lost event, a restart or a
failed apply is repaired by the next pass. Each pass is read current → pure
plan → one transaction → read back and verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from offloadd.core.config import Config, Hardware, OnExit, PriorityMode, Repair
from offloadd.core.configparse import load_config
from offloadd.core.errors import (
    ConfigError,
    DeviceVanishedError,
    NftError,
    OffloaddError,
    VerifyError,
)
from offloadd.core.model import (
    DesiredResult,
    Link,
    TableState,
    auto_forward_priority,
    desired_state,
)
from offloadd.core.plan import (
    AddFlowtableDevices,
    CreateChain,
    CreateFlowtable,
    DeleteFlowtable,
    Plan,
    RemoveFlowtableDevices,
    UpdateFlowtableFlags,
    compute_plan,
    teardown_plan,
)
from offloadd.service.control import ControlServer, Handler
from offloadd.service.repairer import LeftBehindSource, Repairer
from offloadd.service.report import status_report
from offloadd.service.sdnotify import Notifier
from offloadd.service.status import Status

log = logging.getLogger("offloadd")

RETRY_VANISHED_S = 0.2
RETRY_FAILED_S = 5.0
# Devices the kernel refused are tried again after this long (sooner if the
# link is re-created or the config reloaded).
RETRY_REFUSED_S = 300.0
WATCHER_RESTART_S = 1.0


class Snapshot(Protocol):
    @property
    def links(self) -> tuple[Link, ...]: ...

    @property
    def resync(self) -> bool: ...


class Notify(Protocol):
    """The service manager (systemd) side: readiness, status, watchdog."""

    def ready(self, status: str) -> None: ...

    def status(self, text: str) -> None: ...

    def reloading(self) -> None: ...

    def stopping(self) -> None: ...

    async def run_watchdog(self) -> None: ...


class ChangeSource(Protocol):
    """Changes outside offloadd (other tables' chains) that need a reconcile."""

    def changes(self) -> AsyncIterator[None]: ...


class LinkSource(Protocol):
    def snapshots(self) -> AsyncIterator[Snapshot]: ...


class Backend(Protocol):
    def read(self) -> TableState | None: ...

    def other_forward_priorities(self) -> list[int]: ...

    def hw_capable(self, device: str) -> tuple[bool, str]: ...

    def apply(self, plan: Plan) -> str: ...

    def check(self, plan: Plan) -> None: ...

    def ensure_accounting(self) -> None: ...


def describe_diff(desired: TableState, current: TableState | None) -> str:
    """A one-line desired-vs-current summary for the log on verify mismatch."""
    if current is None:
        return "table is missing"
    parts = []
    for ft in desired.flowtables:
        have = current.flowtable(ft.name)
        if have != ft:
            parts.append(f"flowtable {ft.name}: want {ft} have {have}")
    for st in desired.sets:
        have_set = current.set(st.name)
        if have_set != st:
            parts.append(f"set {st.name}: want {sorted(st.elements)} have "
                         f"{sorted(have_set.elements) if have_set else None}")
    if desired.chain != current.chain:
        parts.append(f"chain: want {desired.chain} have {current.chain}")
    return "; ".join(parts) or "differs outside flowtables/sets/chain"


def _log_ops(plan: Plan) -> None:
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


class Daemon:
    def __init__(self, config_path: Path, config: Config, backend: Backend, *,
                 links: LinkSource,
                 on_ready: Callable[[], None] = lambda: None,
                 notify: Notify | None = None,
                 nft_changes: ChangeSource | None = None,
                 left_behind: LeftBehindSource | None = None) -> None:
        self.config = config
        self.backend = backend
        self.link_source = links
        self.status = Status(config_path=config_path)
        self._on_ready = on_ready
        self.notify: Notify = notify or Notifier(None)
        self._reloading = False
        self._nft_changes = nft_changes
        self._ready = False
        self._hw_cache: dict[str, bool] = {}
        # device -> (its ifindex, the kernel's message) while it is left out
        self._refused: dict[str, tuple[int, str]] = {}
        self._refused_at = 0.0
        self._refused_retry: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_requested = False
        # Without a source (unit tests, --check) nothing is ever repaired.
        self.repairer = (Repairer(backend, left_behind, self.status, enabled=self.repair_enabled)
                         if left_behind is not None else None)

    def repair_enabled(self) -> bool:
        return self.config.daemon.repair is Repair.AUTO

    # -- one reconcile pass -------------------------------------------------
    def _hw_capable(self, device: str) -> bool:
        if device not in self._hw_cache:
            ok, why = self.backend.hw_capable(device)
            self._hw_cache[device] = ok
            self.status.hw_reasons[device] = why
        return self._hw_cache[device]

    def _forward_priority(self) -> int:
        prio = self.config.daemon.priority
        if isinstance(prio, PriorityMode):
            return auto_forward_priority(self.backend.other_forward_priorities())
        return prio

    def _refused_now(self) -> dict[str, str]:
        """Refused devices still worth leaving out: same link, not yet due a retry."""
        if self._refused and time.monotonic() - self._refused_at > RETRY_REFUSED_S:
            self._refused.clear()
        index = {link.name: link.index for link in self.status.links}
        self._refused = {d: v for d, v in self._refused.items() if index.get(d) == v[0]}
        return {d: msg for d, (_i, msg) in self._refused.items()}

    def plan_once(self) -> tuple[DesiredResult, TableState | None, Plan]:
        if any(f.elephant_packets for f in self.config.flowtables):
            self.backend.ensure_accounting()
        current = self.backend.read()
        desired = self._desired(self._refused_now(), self._forward_priority())
        return desired, current, compute_plan(desired.table, current)

    def _desired(self, refused: Mapping[str, str], forward_priority: int) -> DesiredResult:
        uses_hw = any(f.hardware is not Hardware.OFF for f in self.config.flowtables)
        hw = self._hw_capable if uses_hw else (lambda _d: False)
        return desired_state(self.config, self.status.links, hw, forward_priority, refused)

    def _isolate_refused(self, current: TableState | None, plan: Plan,
                         refused: Mapping[str, str], forward_priority: int) -> dict[str, str]:
        """Which devices this plan adds make the kernel refuse it, and why.

        Dry runs only: first without any of the devices the plan adds (if
        that is refused too, the devices are not the cause: {}), then halves
        of them until each refused device stands alone. Two devices that are
        refused only together are not found; the whole plan then fails as
        before and is retried.
        """
        added = sorted(plan.attached_devices)

        def refusal(leave_out: set[str]) -> NftError | None:
            desired = self._desired({**refused, **dict.fromkeys(leave_out, "")},
                                    forward_priority)
            trial = compute_plan(desired.table, current)
            if trial.is_empty and current is not None:
                # Nothing left to send proves nothing: re-sending the flags
                # asks the kernel whether it takes any batch now.
                trial = Plan(tuple(UpdateFlowtableFlags(ft) for ft in current.flowtables))
            try:
                self.backend.check(trial)
            except DeviceVanishedError:
                raise
            except NftError as e:
                return e
            return None

        if not added or refusal(set(added)) is not None:
            return {}
        bad: dict[str, str] = {}

        def search(group: list[str]) -> None:
            err = refusal(set(added) - set(group))
            if err is None:
                return
            if len(group) == 1:
                bad[group[0]] = str(err).removeprefix("nft refused the transaction: ")
                return
            half = len(group) // 2
            search(group[:half])
            search(group[half:])

        search(added)
        return bad

    def reconcile(self) -> Plan:
        """One pass: read, plan, apply as one transaction, read back and verify.

        Raises OffloaddError on failure; nothing is half-applied because the
        kernel takes the batch whole or not at all.
        """
        t0 = time.monotonic()
        self.status.reconciles_total += 1
        try:
            desired, current, plan = self.plan_once()
            self._adopt(desired)
            if not plan.is_empty:
                try:
                    script = self.backend.apply(plan)
                except DeviceVanishedError:
                    raise
                except NftError:
                    # One device the kernel will not take must not hold back
                    # every other change: find it, leave it out, apply the rest.
                    # The priority of this pass: no kernel listing per dry run.
                    prio = desired.table.chain.priority if desired.table.chain else 0
                    bad = self._isolate_refused(current, plan, self._refused_now(), prio)
                    if not bad:
                        raise
                    index = {link.name: link.index for link in self.status.links}
                    if not self._refused:
                        self._refused_at = time.monotonic()
                    self._refused.update({d: (index.get(d, 0), m) for d, m in bad.items()})
                    for dev, msg in sorted(bad.items()):
                        self._record_error(f"the kernel refused to attach {dev} ({msg}); "
                                           f"left out, retried in {RETRY_REFUSED_S:.0f} s "
                                           "or when the link is re-created")
                    desired, current, plan = self.plan_once()
                    self._adopt(desired)
                    script = self.backend.apply(plan)
            if not plan.is_empty:
                self.status.transactions_total += 1
                log.debug("applied %d operations:\n%s", len(plan.ops), script.rstrip())
                _log_ops(plan)
            after = self.backend.read()
            if after != desired.table:
                raise VerifyError("kernel state differs after apply: "
                                  + describe_diff(desired.table, after))
        except OffloaddError as e:
            self.status.reconcile_failures_total += 1
            self._record_error(str(e))
            raise
        finally:
            self.status.last_reconcile_seconds = time.monotonic() - t0
            self.status.last_reconcile_time = time.time()
        return plan

    def _adopt(self, desired: DesiredResult) -> None:
        self._report_problems(desired)
        self.status.desired = desired

    def _report_problems(self, desired: DesiredResult) -> None:
        """Logs device problems once, when they first appear (not every pass)."""
        old = set(self.status.desired.problems) if self.status.desired else set()
        for note in desired.problems:
            if note not in old:
                log.warning("flowtable %s: %s", note.selector, note.message)

    def _record_error(self, msg: str) -> None:
        self.status.last_error = msg
        self.status.recent_errors = [*self.status.recent_errors[-9:],
                                     f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}"]

    def status_line(self) -> str:
        """One line for systemd's STATUS= (shown by systemctl status)."""
        desired = self.status.desired
        fts = desired.table.flowtables if desired else ()
        devs = sum(len(f.devices) for f in fts)
        line = (f"{len(fts)} flowtable(s), {devs} device(s); "
                f"{self.status.reconciles_total} reconciles, "
                f"{self.status.reconcile_failures_total} failed")
        if self.status.last_error:
            line += f"; last error: {self.status.last_error}"
        return line

    def _safe_reconcile(self) -> None:
        try:
            self.reconcile()
            if self._refused and self._refused_retry is None:
                # No link event may come; the refused devices get their retry anyway.
                self._refused_retry = asyncio.get_running_loop().call_later(
                    RETRY_REFUSED_S + 1, self._retry_refused)
        except DeviceVanishedError as e:
            # A device went away between plan and apply: the kernel applied
            # nothing. The watcher is about to report it; plan again then.
            log.warning("transaction refused (%s); re-planning shortly", e)
            self._retry_later()
            return
        except OffloaddError as e:
            log.error("reconcile failed: %s", e)
            self._retry_later(RETRY_FAILED_S)
            self.notify.status(self.status_line())
            if self._reloading and self._ready:
                self._reloading = False
                self.notify.ready(self.status_line())
            return
        if not self._ready or self._reloading:
            first = not self._ready
            self._ready = True
            self._reloading = False
            self.notify.ready(self.status_line())
            if first:
                self._on_ready()
        else:
            self.notify.status(self.status_line())

    # -- reload / stop ------------------------------------------------------
    def reload(self) -> bool:
        """Loads the config file again; a bad one is refused and nothing changes."""
        try:
            new = load_config(self.status.config_path)
        except ConfigError as e:
            self.status.reloads_rejected_total += 1
            self._record_error(f"reload refused: {e}")
            log.error("reload refused, keeping the running config: %s", e)
            return False
        if (new.daemon.table, new.daemon.family) != (self.config.daemon.table,
                                                     self.config.daemon.family):
            self.status.reloads_rejected_total += 1
            msg = ("reload refused: daemon.table/family cannot change while running; "
                   "restart offloadd to move to another table")
            self._record_error(msg)
            log.error("%s", msg)
            return False
        self.config = new
        self._hw_cache.clear()
        self._refused.clear()
        self.status.reloads_total += 1
        log.info("config reloaded from %s", self.status.config_path)
        if self.repairer is not None:
            # repair may have just been turned on: look now, not at the next period.
            self.repairer.check_in(0.0)
        return True

    def _retry_refused(self) -> None:
        self._refused_retry = None
        self._wake.set()

    def _retry_later(self, delay: float = RETRY_VANISHED_S) -> None:
        asyncio.get_running_loop().call_later(delay, self._wake.set)

    # -- control socket commands ----------------------------------------------
    def control_handlers(self) -> dict[str, Handler]:
        return {"status": self._cmd_status, "reload": self._cmd_reload}

    async def _cmd_status(self, _req: Mapping[str, Any]) -> Any:
        try:
            kernel = self.backend.read()
        except OffloaddError as e:
            kernel = None
            self._record_error(f"status: cannot read the table: {e}")
        return status_report(self.status, self.config.daemon.table,
                             self.config.daemon.family.value, kernel,
                             repair_mode=self.config.daemon.repair.value)

    async def _cmd_reload(self, _req: Mapping[str, Any]) -> Any:
        if not self.reload():
            raise ConfigError(self.status.last_error)
        self._safe_reconcile()
        return {"reloaded": True, "config": str(self.status.config_path),
                "last_error": self.status.last_error}

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def teardown(self) -> None:
        if self.config.daemon.on_exit is OnExit.KEEP:
            log.info("leaving table %s in place (on_exit = keep)", self.config.daemon.table)
            return
        if self.backend.read() is None:
            return
        self.backend.apply(teardown_plan(self.config.daemon.table,
                                         self.config.daemon.family.value))
        log.info("table %s removed; flows use the normal forward path",
                 self.config.daemon.table)

    # -- the loop -----------------------------------------------------------
    async def _consume_links(self) -> None:
        """Feeds link snapshots to the loop; a failed watcher is restarted, not fatal."""
        while True:
            snaps = self.link_source.snapshots()
            try:
                async for snap in snaps:
                    if snap.resync and self.status.links:
                        self.status.resyncs_total += 1
                        log.warning("netlink receive buffer overrun (ENOBUFS): links re-read "
                                    "from a full dump")
                    gone = ({ln.index for ln in self.status.links}
                            - {ln.index for ln in snap.links})
                    self.status.links = tuple(snap.links)
                    if gone and self.repairer is not None:
                        # A device unregistering flushes the route cache,
                        # which is what leaves flows behind on some kernels.
                        self.repairer.links_removed()
                    self._wake.set()
                return
            except OffloaddError as e:
                self._record_error(f"link watcher: {e}")
                log.error("link watcher failed (%s); restarting it in %.0fs", e,
                          WATCHER_RESTART_S)
            finally:
                # Closes the netlink socket.
                aclose = getattr(snaps, "aclose", None)
                if aclose is not None:
                    await aclose()
            await asyncio.sleep(WATCHER_RESTART_S)

    async def _consume_nft_changes(self) -> None:
        if self._nft_changes is None:
            return
        try:
            async for _ in self._nft_changes.changes():
                self._wake.set()
        except OffloaddError as e:
            # Without it, a new admin chain is noticed at the next link event.
            self._record_error(str(e))
            log.error("%s; other tables' changes are picked up at the next link event", e)

    async def run(self, signals: Sequence[signal.Signals] = (signal.SIGHUP, signal.SIGTERM,
                                                             signal.SIGINT),
                  control: bool = True) -> None:
        loop = asyncio.get_running_loop()
        server = None
        if control:
            server = ControlServer(self.config.control.socket, self.control_handlers(),
                                   self.config.control.group)
            await server.start()
        for sig in signals:
            handler = self.request_reload if sig == signal.SIGHUP else self.request_stop
            loop.add_signal_handler(sig, handler)
        watcher = asyncio.create_task(self._consume_links(), name="links")
        watcher.add_done_callback(lambda _t: self._wake.set())
        # On this loop on purpose: a wedged loop stops the pings and
        # systemd restarts the service.
        watchdog = asyncio.create_task(self.notify.run_watchdog(), name="watchdog")
        nft_changes = asyncio.create_task(self._consume_nft_changes(), name="nft-changes")
        repairs = (asyncio.create_task(self.repairer.run(), name="repair")
                   if self.repairer is not None else None)
        try:
            while not self._stop.is_set():
                await self._wake.wait()
                self._wake.clear()
                if watcher.done():
                    exc = watcher.exception()
                    raise exc if exc else OffloaddError("the link watcher stopped")
                if self._stop.is_set():
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    # systemd waits in "reloading" until READY=1 follows,
                    # which comes after the next reconcile even if refused.
                    self.notify.reloading()
                    self._reloading = True
                    self.reload()
                self._safe_reconcile()
        finally:
            self.notify.stopping()
            watchdog.cancel()
            nft_changes.cancel()
            if repairs is not None:
                repairs.cancel()
            if server is not None:
                await server.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for sig in signals:
                loop.remove_signal_handler(sig)
