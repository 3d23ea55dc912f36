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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from offloadd.core.config import Config, OnExit, Repair, Revalidate
from offloadd.core.configparse import load_config
from offloadd.core.errors import ConfigError, DeviceVanishedError, OffloaddError
from offloadd.core.gate import gate_size
from offloadd.core.guard import GuardPolicy
from offloadd.core.model import DesiredResult, Link, TableState
from offloadd.core.plan import Plan, teardown_plan
from offloadd.core.revalidate import Skipped, announces_own, decide, needs_reconcile
from offloadd.service.connections import ConnectionTable
from offloadd.service.control import LIMITS as CONTROL_LIMITS
from offloadd.service.control import ControlServer, Handler
from offloadd.service.gatecount import GateCounter
from offloadd.service.policyscope import PolicyScope
from offloadd.service.ports import Backend, ChangeSource, LinkSource, Notify
from offloadd.service.reconciler import Reconciler
from offloadd.service.repairer import LeftBehindSource, Repairer
from offloadd.service.report import status_report
from offloadd.service.restack import StaleStacks
from offloadd.service.revalidator import Revalidator
from offloadd.service.sdnotify import Notifier
from offloadd.service.stackguard import FlowSampleSource, StackGuard
from offloadd.service.status import Status
from offloadd.service.supervisor import Supervisor
from offloadd.service.timing import Timing
from offloadd.service.writer import TableWriter

log = logging.getLogger("offloadd")

# "No such device" answers in a row, with no link change between them, after
# which it is a failure (Timing.retry_failed_s) rather than a race.
VANISHED_RETRIES = 5
# SIGHUP reloads the config, the others stop (offloadd(8) lists them from here).
SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)



def guard_policy(config: Config) -> GuardPolicy:
    """The stack guard's thresholds, from [daemon]."""
    d = config.daemon
    return GuardPolicy(min_packets=d.stack_guard_packets, min_flows=d.stack_guard_flows,
                       looks=d.stack_guard_looks)

class Daemon:
    def __init__(self, config_path: Path, config: Config, backend: Backend, *,
                 links: LinkSource,
                 on_ready: Callable[[], None] = lambda: None,
                 notify: Notify | None = None,
                 nft_changes: ChangeSource | None = None,
                 left_behind: LeftBehindSource | None = None,
                 flow_samples: FlowSampleSource | None = None,
                 timing: Timing = Timing(),
                 clock: Callable[[], float] = time.monotonic,
                 gate_sizing: Callable[[int | None], int] = gate_size) -> None:
        self.config = config
        # Every delay of the loop and its tasks, in one place (tests shrink
        # them), and the clock deadlines are kept on: it must be the event
        # loop's (time.monotonic is asyncio's), so a test on a virtual-time
        # loop passes that loop's and waits out the delays without sleeping.
        self.timing = timing
        self._clock = clock
        self.backend = backend
        self.link_source = links
        self.status = Status(config_path=config_path)
        self._on_ready = on_ready
        self.notify: Notify = notify or Notifier(None)
        self._reloading = False
        self._nft_changes = nft_changes
        self._ready = False
        # While a failed pass waits for its retry (monotonic time), a request
        # for a reconcile does not cut the wait short.
        self._failing_until = 0.0
        # The one writer of the table: a failed repair or re-validation step
        # asks for a reconcile through it.
        self.writer = TableWriter(backend, self._reconcile_requested, self.status.writes)
        self.reconciler = Reconciler(config, backend, self.status, self.writer, timing,
                                     gate_sizing=gate_sizing)
        self.supervisor = Supervisor(timing=timing, clock=clock, on_failure=self._task_failed)
        self.status.tasks = lambda: self.supervisor.states
        self._refused_retry: asyncio.TimerHandle | None = None
        # The retry a failed pass scheduled; a pass that succeeds first drops it.
        self._retry: asyncio.TimerHandle | None = None
        # ENOENT answers in a row with the same links (see _safe_reconcile).
        self._vanished_in_a_row = 0
        self._vanished_links: tuple[Link, ...] = ()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_requested = False
        # Set by the periodic check: the next pass is its read-and-compare.
        self._check_due = False
        # Set when a repair or re-validation read the table and found it out
        # of its desired state: the pass it wakes compares like a check (a
        # deleted table frees its flows, and the repair may see that first).
        self._found_by_read = False
        # Set when the nf_tables watcher reported a change of offloadd's
        # table: what the next pass finds was announced, so it is no drift.
        self._announced = False
        # The control socket's connections; here so the metrics can count
        # what it drops before (and after) the socket exists.
        self.control_connections = ConnectionTable("control", CONTROL_LIMITS)
        # Without a source (unit tests, --check) nothing is ever repaired.
        steps = self.supervisor.steps
        self.repairer = (Repairer(self.writer, left_behind, self.status,
                                  enabled=self.repair_enabled, timing=timing, clock=clock,
                                  step=lambda: steps.running("repair"))
                         if left_behind is not None else None)
        self.revalidator = Revalidator(
            self.writer, self.status, enabled=self.revalidate_enabled,
            replaced=self.repairer.flowtables_replaced if self.repairer else lambda _n: None,
            timing=timing, clock=clock)
        # Without a sampler (unit tests, --check) no path is ever refused.
        self.guard = (StackGuard(flow_samples, self.status, self._stack_refused,
                                 interval_s=config.daemon.stack_guard_interval,
                                 policy=guard_policy(config),
                                 step=lambda: steps.running("stack-guard"))
                      if flow_samples is not None else None)
        # How full the gate is, counted now and then into status.gate_fill.
        self.gate_counter = GateCounter(backend, self.status, timing=timing,
                                        step=lambda: steps.running("gate-count"),
                                        progress=lambda: steps.progressed("gate-count"))
        # Flowtables to replace once the next pass applied a refusal.
        self._replace_after_pass: dict[str, str] = {}
        # What each stacked device was at the last pass.
        self.stale_stacks = StaleStacks()
        # Each component's counters, composed for status and metrics.
        if self.repairer is not None:
            self.status.repair = self.repairer.counts
        if self.guard is not None:
            self.status.guard = self.guard.counts
        self.status.revalidation = self.revalidator.counts
        # The thread that commits offloadd's transactions (the loop's), as the
        # kernel names it in NFT_MSG_NEWGEN; set when the loop starts.
        self._own_pid = 0
        self.scope = PolicyScope(backend.base_chain_hooks)
        self._skips_logged: set[tuple[str, str]] = set()

    def repair_enabled(self) -> bool:
        return self.config.daemon.repair is Repair.AUTO

    def revalidate_enabled(self) -> bool:
        return self.config.daemon.revalidate is Revalidate.ON_CHANGE

    # -- one reconcile pass (the Reconciler's) --------------------------------
    def plan_once(self) -> tuple[DesiredResult, TableState | None, Plan]:
        return self.reconciler.plan_once()

    def reconcile(self) -> Plan:
        return self.reconciler.reconcile()

    def _record_error(self, msg: str) -> None:
        self.status.record_error(msg)

    def status_line(self) -> str:
        """One line for systemd's STATUS= (shown by systemctl status)."""
        desired = self.status.desired
        fts = desired.table.flowtables if desired else ()
        # Devices, not list entries: a kernel wildcard ("wan*") counts what it covers.
        devs = len(desired.flowtable_of()) if desired else 0
        line = (f"{len(fts)} flowtable(s), {devs} device(s); "
                f"{self.status.reconciles_total} reconciles, "
                f"{self.status.reconcile_failures_total} failed")
        if self.status.last_error:
            line += f"; last error: {self.status.last_error}"
        return line

    def _safe_reconcile(self) -> Plan | None:
        """One pass; the plan it applied, or None if it failed (retry scheduled)."""
        try:
            plan = self.reconcile()
            self._vanished_in_a_row = 0
            self._failing_until = 0.0
            if self._retry is not None:
                # Its retry is done: woken later for nothing, a pass would
                # find an unannounced change without comparing (no drift).
                self._retry.cancel()
                self._retry = None
            if self.reconciler.refusals and self._refused_retry is None:
                # No link event may come; the refused devices get their retry anyway.
                self._refused_retry = asyncio.get_running_loop().call_later(
                    self.timing.retry_refused_s + 1, self._retry_refused)
        except DeviceVanishedError as e:
            # A device went away between plan and apply: the kernel applied
            # nothing. The watcher is about to report it; plan again then.
            # The same answer again and again with no link change in between
            # is no race: then it is a failure (backoff, in status), not a
            # retry every 0.2 s forever.
            links = self.status.links
            self._vanished_in_a_row = (self._vanished_in_a_row + 1
                                       if links == self._vanished_links else 1)
            self._vanished_links = links
            if self._vanished_in_a_row < VANISHED_RETRIES:
                log.warning("transaction refused (%s); re-planning shortly", e)
                self._retry_later()
                return None
            self._record_error(f"reconcile: {e} ({self._vanished_in_a_row} times with no "
                               "link change)")
            log.error("reconcile failed: %s, %d times in a row with no link change in "
                      "between; retrying in %.0f s", e, self._vanished_in_a_row,
                      self.timing.retry_failed_s)
            self._retry_failed()
            self.notify.status(self.status_line())
            return None
        except OffloaddError as e:
            log.error("reconcile failed: %s", e)
            self._retry_failed()
            self.notify.status(self.status_line())
            if self._reloading and self._ready:
                self._reloading = False
                self.notify.ready(self.status_line())
            return None
        if not self._ready or self._reloading:
            first = not self._ready
            self._ready = True
            self._reloading = False
            self.notify.ready(self.status_line())
            if first:
                self._on_ready()
        else:
            self.notify.status(self.status_line())
        return plan

    def _pass(self) -> None:
        """What a wake-up does: a requested reload, then one reconcile pass."""
        if self._reload_requested:
            self._reload_requested = False
            # systemd waits in "reloading" until READY=1 follows,
            # which comes after the next reconcile even if refused.
            self.notify.reloading()
            self._reloading = True
            self.reload()
        check, self._check_due = self._check_due, False
        found, self._found_by_read = self._found_by_read, False
        announced, self._announced = self._announced, False
        verified = self.reconciler.verified
        plan = self._safe_reconcile()
        if plan is None:
            # A failed pass compared nothing: the pass that retries it (or
            # whatever wakes one first) compares in its place.
            self._check_due = self._check_due or check
            self._found_by_read = self._found_by_read or found
            self._announced = self._announced or announced
        else:
            self._free_stale_stacks()
        if plan is not None and self._replace_after_pass and self.repairer is not None:
            # The refused device is attached as it is now: free the flows the
            # path beneath it still holds.
            for name, why in self._replace_after_pass.items():
                self.repairer.replace_soon((name,), why)
            self._replace_after_pass = {}
        # Drift: the table the pass found is not the one the last good pass
        # left, and no event said so (a plan because links or the config
        # moved is none).
        if ((check or found) and not announced and verified is not None and plan is not None
                and not plan.is_empty and self.reconciler.last_read != verified):
            self._drift_repaired(plan, "periodic check" if check
                                 else "a repair's or re-validation's read")

    def _free_stale_stacks(self) -> None:
        """A stacked device re-made (a PPPoE reconnect): its flowtables are
        replaced after this pass, as after a guard refusal (service.restack)."""
        desired = self.status.desired
        if desired is None:
            return
        for name, why in self.stale_stacks.after_pass(desired, self.status.links,
                                                      self.reconciler.pppoe).items():
            log.info("flowtable %s: %s; replaced to free them", name, why,
                     extra={"OPERATION": "restack", "FLOWTABLE": name})
            self._replace_after_pass.setdefault(name, why)

    def _drift_repaired(self, plan: Plan, found_by: str) -> None:
        """A pass that compared had to change the table: an event that should
        have said so never came (or came while a pass was failing)."""
        what = sorted({type(op).__name__ for op in plan.ops})
        self.status.drift_repairs_total += 1
        self.status.last_drift = {"time": time.time(), "operations": what,
                                  "found_by": found_by}
        log.warning("%s: offloadd's table differed from its desired state and no "
                    "event had said so; repaired (%s)", found_by, ", ".join(what),
                    extra={"OPERATION": "drift"})

    async def _check_periodically(self, _restarted: bool = False) -> None:
        """Wakes a full read-and-compare every daemon.check_interval seconds
        (read again each time: a reload may change it)."""
        while True:
            interval = self.config.daemon.check_interval
            await asyncio.sleep(interval or self.timing.check_off_poll_s)
            if interval and self.config.daemon.check_interval:
                self._check_due = True
                self._wake.set()

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
        self.reconciler.configure(new)
        if self.guard is not None:
            self.guard.configure(new.daemon.stack_guard_interval, guard_policy(new))
            self.guard.clear()
        self.status.reloads_total += 1
        log.info("config reloaded from %s", self.status.config_path)
        if self.repairer is not None:
            # repair may have just been turned on: look now, not at the next period.
            self.repairer.check_in(0.0)
        return True

    def _stack_refused(self, new: Mapping[str, str]) -> None:
        """The stack guard refused the fast path beneath these devices: the
        next pass attaches them as they are, and their flowtables are replaced
        after it."""
        desired = self.status.desired
        if desired is not None:
            flowtable_of = desired.flowtable_of()
            for _sel, resolved in desired.stacks:
                if resolved.device in new:
                    for bottom in resolved.bottoms:
                        name = flowtable_of.get(bottom)
                        if name is not None:
                            self._replace_after_pass[name] = new[resolved.device]
        # Both forget refusals only at a reload, so adding the new ones keeps
        # the reconciler's set the guard's.
        self.reconciler.shallow = {**self.reconciler.shallow, **new}
        self._wake.set()

    def _task_failed(self, name: str, why: str) -> None:
        self._record_error(f"task {name} stopped: {why}")

    def _retry_failed(self) -> None:
        self._failing_until = self._clock() + self.timing.retry_failed_s
        self._retry_later(self.timing.retry_failed_s)

    def _reconcile_requested(self, why: str, out_of_sync: bool) -> None:
        """The writer's callback: a step of a repair or re-validation failed, or
        one found the table out of its desired state (``out_of_sync``)."""
        log.debug("reconcile requested: %s", why)
        self._found_by_read = self._found_by_read or out_of_sync
        if self._clock() >= self._failing_until:
            self._wake.set()

    def _retry_refused(self) -> None:
        self._refused_retry = None
        self._wake.set()

    def _retry_later(self, delay: float | None = None) -> None:
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(
            self.timing.retry_vanished_s if delay is None else delay, self._wake.set)

    # -- control socket commands ----------------------------------------------
    def control_handlers(self) -> dict[str, Handler]:
        return {"status": self._cmd_status, "reload": self._cmd_reload,
                "revalidate": self._cmd_revalidate, "repair": self._cmd_repair}

    async def _cmd_repair(self, req: Mapping[str, Any]) -> Any:
        """Replaces flowtables now as a repair does (two steps: their flows are
        released through the forward path, then the flowtable is created
        again), whatever the last check found: for flows an operator sees stuck
        (a flush no event announced) without waiting for the periodic check.
        Refused with the reason when it cannot run; nothing is changed then."""
        desired = self.status.desired
        if self.repairer is None or desired is None:
            raise ConfigError("repair: offloadd has not built its table yet; try again "
                              "once `offloadctl status` says ready")
        known = [ft.name for ft in desired.table.flowtables]
        asked = req.get("flowtables") or known
        if not isinstance(asked, list) or not all(isinstance(n, str) for n in asked):
            raise ConfigError("repair: 'flowtables' must be a list of flowtable names")
        unknown = sorted(set(asked) - set(known))
        if unknown:
            raise ConfigError(f"repair: no flowtable {', '.join(map(repr, unknown))} in "
                              f"offloadd's table; its flowtables: {', '.join(known) or 'none'}")
        who = str(req.get("by") or "offloadctl")
        names = sorted(set(asked))
        self.repairer.replace_soon(names, f"a request ({who} repair)")
        return {"scheduled": True, "flowtables": names,
                "repairs_total": self.status.repair.repairs_total}

    async def _cmd_revalidate(self, req: Mapping[str, Any]) -> Any:
        """Re-validates as after a change by others (legacy rules send no event);
        the forward priority is computed again first."""
        who = str(req.get("by") or "offloadctl")
        self.reconciler.others_changed()
        self._wake.set()
        self.revalidator.changed(f"a request ({who} revalidate)")
        return {"scheduled": True, "revalidate": self.config.daemon.revalidate.value,
                "revalidations_total": self.status.revalidation.revalidations_total}

    async def _cmd_status(self, _req: Mapping[str, Any]) -> Any:
        try:
            kernel = self.backend.read()
        except OffloaddError as e:
            kernel = None
            self._record_error(f"status: cannot read the table: {e}")
        return status_report(self.status, self.config.daemon.table,
                             self.config.daemon.family.value, kernel,
                             repair_mode=self.config.daemon.repair.value,
                             revalidate_mode=self.config.daemon.revalidate.value,
                             check_interval=self.config.daemon.check_interval)

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
        # Through the one writer like every other write (counted there).
        if self.writer.read() is None:
            return
        self.writer.apply(teardown_plan(self.config.daemon.table,
                                        self.config.daemon.family.value),
                          "teardown", reconcile_on_failure=False)
        log.info("table %s removed; flows use the normal forward path",
                 self.config.daemon.table)

    # -- the loop -----------------------------------------------------------
    async def _consume_links(self) -> None:
        """Feeds link snapshots to the loop; a failed watcher is restarted, not fatal."""
        while True:
            snaps = self.link_source.snapshots()
            # Each watcher counts its own flushes from 0.
            flushes_seen = 0
            try:
                async for snap in snaps:
                    if snap.resync and self.status.links:
                        self.status.resyncs_total += 1
                        log.warning("netlink receive buffer overrun (ENOBUFS): links re-read "
                                    "from a full dump")
                    gone = ({ln.index for ln in self.status.links}
                            - {ln.index for ln in snap.links})
                    # A restarted watcher's first dump counts no flush: what
                    # went missing meanwhile is seen as links gone.
                    flushed = bool(gone) or snap.route_flushes > flushes_seen
                    flushes_seen = snap.route_flushes
                    if flushed and self.repairer is not None:
                        # A route cache flush (a device gone, up or down, a
                        # carrier, MTU or address change) is what leaves
                        # flows behind on some kernels.
                        self.repairer.route_cache_flushed()
                    if snap.resync or snap.links != self.status.links:
                        self.status.links = tuple(snap.links)
                        self._wake.set()
                return
            except OffloaddError as e:
                self._record_error(f"link watcher: {e}")
                log.error("link watcher failed (%s); restarting it in %.0fs", e,
                          self.timing.watcher_restart_s)
            finally:
                # Closes the netlink socket.
                aclose = getattr(snaps, "aclose", None)
                if aclose is not None:
                    await aclose()
            await asyncio.sleep(self.timing.watcher_restart_s)

    async def _consume_nft_changes(self, restarted: bool = False) -> None:
        """Others' committed transactions → reconciles and re-validations.

        Supervised: an error ends it and the supervisor starts it again; a
        restarted watcher may have missed changes, so once it watches again
        (its first batch) it re-reads others' chains and re-validates.
        """
        assert self._nft_changes is not None
        daemon = self.config.daemon
        missed = restarted
        try:
            self.reconciler.others_watched = True
            async for batch in self._nft_changes.changes():
                if missed:
                    missed = False
                    self.reconciler.others_changed()
                    self._wake.set()
                    self.revalidator.changed("the nftables change watcher restarted (changes "
                                             "while it was down are unknown)")
                if announces_own(batch, daemon.family.value, daemon.table, self._own_pid):
                    self._announced = True
                if needs_reconcile(batch, daemon.family.value, daemon.table, self._own_pid):
                    self.reconciler.others_changed()
                    self._wake.set()
                reaches = self.scope.verdicts(batch, daemon.family.value, daemon.table,
                                              self._own_pid)
                decision = decide(batch, daemon.family.value, daemon.table, self._own_pid,
                                  reaches)
                for trigger in decision.triggers:
                    self.revalidator.changed(trigger)
                for what in decision.skipped:
                    self._skipped(what)
            raise OffloaddError("the nftables change stream ended")
        finally:
            # Until it runs again, others' priorities are read on every pass.
            self.reconciler.others_watched = False

    def _skipped(self, skip: Skipped) -> None:
        """A change no forwarded packet can meet: counted, logged once per table
        (then at debug level: a bouncer adds an element every few seconds)."""
        self.revalidator.skipped()
        new = skip.tables - self._skips_logged
        self._skips_logged |= skip.tables
        (log.info if new else log.debug)(
            "not re-validated: %s (no base chain of %s hooks where a forwarded packet "
            "passes: only input/output, or none)", skip.summary,
            ", ".join(f"{f} {t}" for f, t in sorted(skip.tables)),
            extra={"OPERATION": "revalidate-skipped"})

    async def _watch_legacy(self, _restarted: bool = False) -> None:
        """Moves offloadd's chain after iptables-legacy tables that appear
        (no nf_tables event says so) and re-validates: a new table's rules may
        drop what was offloaded.

        What it compares against is its own last look, not the state the
        reconcile pass keeps: a pass that read a new table first (on a slow
        day, 12 s of a re-validation ran between `iptables-legacy` and
        `ip6tables-legacy` loading their tables) must not hide it from here.
        """
        seen = self.status.legacy  # the first pass's, if it ran already
        while True:
            await asyncio.sleep(self.timing.legacy_poll_s)
            now = self.backend.legacy_tables()
            if seen is None or now == seen:
                seen = now
                continue
            old, seen = seen, now
            # The reconcile it wakes logs the new state.
            log.debug("iptables-legacy tables changed: %s", now.describe())
            self.reconciler.others_changed()
            self._wake.set()
            # Any new table, not only those with a FORWARD hook: a raw or
            # mangle PREROUTING drop is skipped by offloaded packets too.
            if set(now.names) - set(old.names) or now.unreadable != old.unreadable:
                self.revalidator.changed(f"iptables-legacy table(s) loaded: "
                                         f"{', '.join(now.names) or now.unreadable}")

    async def run(self, signals: Sequence[signal.Signals] = SIGNALS,
                  control: bool = True) -> None:
        loop = asyncio.get_running_loop()
        server = None
        if control:
            server = ControlServer(self.config.control.socket, self.control_handlers(),
                                   self.config.control.group, self.control_connections,
                                   reap_s=self.timing.connection_reap_s)
            await server.start()
        for sig in signals:
            handler = self.request_reload if sig == signal.SIGHUP else self.request_stop
            loop.add_signal_handler(sig, handler)
        watcher = asyncio.create_task(self._consume_links(), name="links")
        watcher.add_done_callback(lambda _t: self._wake.set())
        # On this loop on purpose: a wedged loop stops the pings and
        # systemd restarts the service.
        watchdog = asyncio.create_task(self.notify.run_watchdog(), name="watchdog")
        self._own_pid = threading.get_native_id()
        if self._nft_changes is not None:
            self.supervisor.start("nft-changes", self._consume_nft_changes)
        self.supervisor.start("revalidate", lambda _r: self.revalidator.run())
        if self.repairer is not None:
            repairer = self.repairer
            self.supervisor.start("repair", lambda _r: repairer.run())
        self.supervisor.start("legacy", self._watch_legacy)
        if self.guard is not None:
            guard = self.guard
            self.supervisor.start("stack-guard", lambda _r: guard.run())
        self.supervisor.start("gate-count", lambda _r: self.gate_counter.run())
        self.supervisor.start("periodic-check", self._check_periodically)
        try:
            while not self._stop.is_set():
                await self._wake.wait()
                self._wake.clear()
                if watcher.done():
                    exc = watcher.exception()
                    raise exc if exc else OffloaddError("the link watcher stopped")
                if self._stop.is_set():
                    break
                self._pass()
        finally:
            self.notify.stopping()
            watchdog.cancel()
            await self.supervisor.stop()
            if server is not None:
                await server.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for sig in signals:
                loop.remove_signal_handler(sig)
