"""Prometheus metrics for offloadd, collected at scrape time.

Why: the values that matter (offloaded flows, attached devices) live in the
kernel and change without offloadd doing anything, so they are collected when
Prometheus asks rather than pushed from the loop — from memory where the
daemon already holds them fresh (the flow count's background walk, the
gate's count, the event loop's latest read of the table), so a scrape waits
on no kernel walk. Each source sits behind a
small Protocol so the collector is testable with fakes; a failing source
reports ``offloadd_source_up 0`` and drops only its own metrics, so a scrape
never fails because conntrack or nftables could not be read. The HTTP(S)
endpoint that serves the registry is offloadd.service.exporter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from offloadd import __version__
from offloadd.core.attach import wildcard_covering
from offloadd.core.model import DesiredResult, TableState
from offloadd.kernel.conntrack import ConntrackTotals, OffloadCounts
from offloadd.service.status import Status
from offloadd.service.tableseen import TableSeen

log = logging.getLogger("offloadd.service.metrics")

SOURCES = ("conntrack", "nftables", "links")


# -- sources ------------------------------------------------------------------

class FlowCounter(Protocol):
    """conntrack, as the metrics need it (offloadd.kernel.conntrack.ConntrackCounter)."""

    def offloaded(self) -> OffloadCounts: ...

    def totals(self) -> ConntrackTotals: ...

    def age_seconds(self) -> float | None:
        """How old the offloaded count is (offloadd.service.flowcount); None: unknown."""


class LinkStats(Protocol):
    """The link watcher's counters (offloadd.kernel.links.WatcherStats has these)."""

    @property
    def events_total(self) -> int: ...

    @property
    def resyncs_total(self) -> int: ...


class EndpointStats(Protocol):
    """A listener's connection table (offloadd.service.connections.ConnectionTable)."""

    @property
    def endpoint(self) -> str: ...

    def dropped(self) -> Mapping[str, int]:
        """Connections the endpoint closed itself, by reason."""


@dataclass(frozen=True)
class DaemonCounters:
    reconciles_total: int = 0
    reconcile_failures_total: int = 0
    transactions_total: int = 0
    last_reconcile_seconds: float = 0.0
    last_reconcile_time: float = 0.0  # Unix time; 0 = no reconcile yet
    config_reloads_total: int = 0
    config_reloads_rejected_total: int = 0
    started: float = 0.0  # Unix time
    repairs_total: int = 0
    left_behind_flows: int = 0
    policy_changes_total: int = 0
    policy_changes_skipped_total: int = 0
    drift_repairs_total: int = 0
    revalidations_total: int = 0
    last_revalidation_time: float = 0.0  # Unix time; 0 = none yet
    write_failures_total: int = 0
    # Supervised tasks: name -> (up, restarts).
    tasks: Mapping[str, tuple[bool, int]] = field(default_factory=dict)
    tasks_stalled: tuple[str, ...] = ()
    # The stack guard: devices it watches, and those whose fast path beneath it refused.
    guard_watched: tuple[str, ...] = ()
    guard_refused: tuple[str, ...] = ()
    guard_refusals_total: int = 0
    # Elements each gate set holds at most, as the last reconcile left them (0: no gate).
    gate_capacity: int = 0
    # Elements per gate set at the last count (empty: none yet), and that
    # count's age in seconds (None: none yet).
    gate_elements: Mapping[str, int] = field(default_factory=dict)
    gate_count_age_s: float | None = None
    # Seconds since offloadd's table was last read (what the table's metrics
    # show); None: not read yet.
    table_read_age_s: float | None = None


def _time_of(record: dict[str, object] | None) -> float:
    when = record.get("time") if record else None
    return float(when) if isinstance(when, int | float) else 0.0


class DaemonView(Protocol):
    """What the daemon knows about itself, read-only, from the scrape thread."""

    def counters(self) -> DaemonCounters: ...

    def desired(self) -> DesiredResult | None:
        """The last planned state (None before the first reconcile)."""

    def attached(self) -> TableState | None:
        """offloadd's table as the kernel has it now (None: no table); may raise."""

    def links(self) -> LinkStats:
        """The link watcher's counters; may raise if the watcher is gone."""


class StatusView:
    """DaemonView over the daemon's Status.

    The table is the event loop's latest read (``seen``) while that is at most
    ``max_age_s()`` old; else read_table reads it, in the scrape thread: it
    must not share a libnftables context with the event loop (contexts are
    not thread-safe), so give it its own (or a lock).
    """

    def __init__(self, status: Status, read_table: Callable[[], TableState | None],
                 link_stats: LinkStats, wall: Callable[[], float] = time.time, *,
                 seen: TableSeen | None = None,
                 max_age_s: Callable[[], float] = lambda: 0.0) -> None:
        self._status = status
        self._read_table = read_table
        self._link_stats = link_stats
        self._wall = wall
        self._seen = seen
        self._max_age_s = max_age_s

    def counters(self) -> DaemonCounters:
        s = self._status
        fill = s.gate_fill  # one reference: the counter replaces it whole
        return DaemonCounters(
            reconciles_total=s.reconciles_total,
            reconcile_failures_total=s.reconcile_failures_total,
            transactions_total=s.writes.transactions_total,
            write_failures_total=s.writes.failures_total,
            tasks={n: (t.up, t.restarts_total) for n, t in s.tasks().items()},
            tasks_stalled=tuple(sorted(n for n, t in s.tasks().items() if t.stalled)),
            guard_watched=s.guard.watched,
            guard_refused=tuple(sorted(s.guard.refused)),
            guard_refusals_total=s.guard.refusals_total,
            gate_capacity=s.gate_size,
            gate_elements=dict(fill.elements) if fill is not None else {},
            gate_count_age_s=(max(0.0, self._wall() - fill.time)
                              if fill is not None and fill.time else None),
            last_reconcile_seconds=s.last_reconcile_seconds,
            last_reconcile_time=s.last_reconcile_time,
            config_reloads_total=s.reloads_total,
            config_reloads_rejected_total=s.reloads_rejected_total,
            started=s.started,
            repairs_total=s.repair.repairs_total,
            left_behind_flows=s.repair.left_behind_flows,
            policy_changes_total=s.revalidation.policy_changes_total,
            policy_changes_skipped_total=s.revalidation.policy_changes_skipped_total,
            drift_repairs_total=s.drift_repairs_total,
            revalidations_total=s.revalidation.revalidations_total,
            last_revalidation_time=_time_of(s.revalidation.last),
            table_read_age_s=self._seen.age_s() if self._seen is not None else None)

    def desired(self) -> DesiredResult | None:
        return self._status.desired

    def attached(self) -> TableState | None:
        if self._seen is not None:
            recent = self._seen.recent(self._max_age_s())
            if recent is not None:
                return recent.table
        return self._read_table()

    def links(self) -> LinkStats:
        return self._link_stats


# -- the collector --------------------------------------------------------------

_Family = GaugeMetricFamily | CounterMetricFamily


@dataclass(frozen=True)
class _Spec:
    name: str
    doc: str
    labels: tuple[str, ...] = ()
    counter: bool = False

    def family(self) -> _Family:
        if self.counter:
            return CounterMetricFamily(self.name, self.doc, labels=self.labels)
        return GaugeMetricFamily(self.name, self.doc, labels=self.labels)


def _g(name: str, doc: str, *labels: str) -> _Spec:
    return _Spec(name, doc, labels)


def _c(name: str, doc: str, *labels: str) -> _Spec:
    return _Spec(name, doc, labels, counter=True)


BUILD_INFO = _g("offloadd_build_info", "offloadd's version; always 1.", "version")
START_TIME = _g("offloadd_start_time_seconds", "When offloadd started (Unix time).")
SOURCE_UP = _g("offloadd_source_up",
               "1 if the source could be read at this scrape, 0 if not (its metrics are "
               "then left out).", "source")
OFFLOADED = _g("offloadd_offloaded_flows",
               "conntrack entries offloaded to a flowtable, in software (IPS_OFFLOAD only) "
               "or hardware (IPS_HW_OFFLOAD).", "family", "mode")
OFFLOADED_AGE = _g("offloadd_offloaded_flows_age_seconds",
                   "Seconds since the conntrack walk that offloadd_offloaded_flows comes from "
                   "ended (one walk every metrics.flow_count_interval while scraped).")
CT_ENTRIES = _g("offloadd_conntrack_entries", "Entries in the conntrack table.")
CT_LIMIT = _g("offloadd_conntrack_entries_limit",
              "nf_conntrack_max (left out where it cannot be read).")
FT_DEVICES = _g("offloadd_flowtable_devices",
                "Devices of each flowtable: desired by offloadd, attached in the kernel, or "
                "declared to the kernel ahead of the device (name hooks, no device yet). A "
                "device a kernel wildcard (\"wan*\") covers counts as desired and attached.",
                "flowtable", "state")
DEVICE_INFO = _g("offloadd_device_info",
                 "A device placed in a flowtable, in hardware or software mode, and why; "
                 "always 1.", "flowtable", "device", "mode", "reason")
IN_SYNC = _g("offloadd_kernel_state_matches",
             "1 if offloadd's table in the kernel equals the desired state, else 0.")
RECONCILES = _c("offloadd_reconciles_total", "Reconcile passes started.")
FAILURES = _c("offloadd_reconcile_failures_total", "Reconcile passes that failed.")
TRANSACTIONS = _c("offloadd_transactions_total", "nftables transactions applied.")
LAST_DURATION = _g("offloadd_last_reconcile_duration_seconds",
                   "How long the last reconcile pass took.")
LAST_TIME = _g("offloadd_last_reconcile_timestamp_seconds",
               "When the last reconcile pass ended (Unix time).")
LINK_EVENTS = _c("offloadd_link_events_total", "rtnetlink link messages received.")
LINK_RESYNCS = _c("offloadd_link_resyncs_total",
                  "Full link re-reads after a netlink receive buffer overrun (ENOBUFS).")
RELOADS = _c("offloadd_config_reloads_total", "Configuration reloads applied.")
RELOADS_REJECTED = _c("offloadd_config_reloads_rejected_total",
                      "Configuration reloads refused (the running config was kept).")
REPAIRS = _c("offloadd_flowtable_repairs_total",
             "Flowtables replaced to free flows the kernel left behind (forwarded by the "
             "flowtable but no longer marked offloaded in conntrack).")
LEFT_BEHIND = _g("offloadd_left_behind_flows",
                 "conntrack entries a flowtable of offloadd's still held without the offload "
                 "mark, at the last check.")
POLICY_CHANGES = _c("offloadd_policy_changes_total",
                    "nf_tables transactions by others that changed another table's rules, "
                    "chains, sets, elements or objects (each calls for a re-validation).")
POLICY_CHANGES_SKIPPED = _c(
    "offloadd_policy_changes_skipped_total",
    "nf_tables transactions by others that called for no re-validation: every table they "
    "changed has base chains only on hooks no forwarded packet passes (input, output).")
DRIFT_REPAIRS = _c(
    "offloadd_drift_repairs_total",
    "Periodic checks (daemon.check_interval) that found offloadd's table different from its "
    "desired state with no event having said so, and repaired it: a missed event.")
REVALIDATIONS = _c("offloadd_revalidations_total",
                   "Re-validations: offloadd's flowtables replaced so that offloaded flows meet "
                   "the current policy at their next packet (bursts of changes coalesced).")
LAST_REVALIDATION = _g("offloadd_last_revalidation_timestamp_seconds",
                       "Unix time of the last re-validation (absent before the first).")
WRITE_FAILURES = _c("offloadd_table_write_failures_total",
                    "Writes of offloadd's table (reconcile, repair, re-validation) that the "
                    "kernel refused or that did not read back as written; each other than a "
                    "reconcile's asks for a reconcile.")
TASK_UP = _g("offloadd_task_up",
             "1 if the background task runs, 0 while it waits to be restarted after it "
             "stopped (nft-changes, revalidate, repair, legacy, periodic-check, "
             "stack-guard, gate-count).", "task")
TASK_STALLED = _g("offloadd_task_stalled",
                  "1 if the background task has been in one step (a kernel dump on a worker "
                  "thread) for longer than 300 s: it runs but does no work.", "task")
STACK_FAST_PATH = _g("offloadd_stack_fast_path_refused",
                     "Per selected device attached through the devices beneath it "
                     "(stack = lower/both): 1 if the stack guard refused that fast path "
                     "(offloaded flows through it went one way only: a black hole) and the "
                     "device itself is used until a reload, else 0.", "device")
GUARD_REFUSALS = _c("offloadd_stack_guard_refusals_total",
                    "Fast paths beneath a selected device that the stack guard refused.")
TABLE_AGE = _g("offloadd_table_read_age_seconds",
               "Seconds since offloadd last read its table from the kernel: the table's "
               "metrics (flowtable devices attached, in sync) come from that read. The "
               "event loop reads it at every pass and nf_tables event about it and every "
               "daemon.check_interval; a scrape reads it itself when that read is older.")
GATE_CAPACITY = _g("offloadd_gate_capacity",
                   "Elements each gate set (passed_original, passed_reply) holds at most; a "
                   "full set leaves new flows on the slow path.")
GATE_ELEMENTS = _g("offloadd_gate_elements",
                   "Elements each gate set held at the last count (one raw set-element dump "
                   "per set every 60 s, on a worker thread; absent before the first count). "
                   "Against offloadd_gate_capacity: a full set leaves new flows on the slow "
                   "path.", "set")
GATE_ELEMENTS_AGE = _g("offloadd_gate_elements_age_seconds",
                       "Seconds since the count offloadd_gate_elements comes from; it grows "
                       "past 60 while counts fail (the last count is kept).")
TASK_RESTARTS = _c("offloadd_task_restarts_total",
                   "Restarts of a background task after it stopped on an error.", "task")
CONNECTIONS_DROPPED = _Spec(
    "offloadd_connections_dropped_total",
    "Connections offloadd closed itself, per endpoint (metrics, control): the endpoint "
    "had its maximum open (limit; the one waiting longest for its request, or the new one), "
    "or the request or the taking of the reply passed its deadline (deadline).",
    ("endpoint", "reason"), counter=True)

SPECS = (BUILD_INFO, START_TIME, SOURCE_UP, OFFLOADED, OFFLOADED_AGE, CT_ENTRIES, CT_LIMIT,
         FT_DEVICES,
         DEVICE_INFO, IN_SYNC, RECONCILES, FAILURES, TRANSACTIONS, LAST_DURATION, LAST_TIME,
         LINK_EVENTS, LINK_RESYNCS, RELOADS, RELOADS_REJECTED, REPAIRS, LEFT_BEHIND,
         POLICY_CHANGES, POLICY_CHANGES_SKIPPED, REVALIDATIONS, LAST_REVALIDATION,
         CONNECTIONS_DROPPED, DRIFT_REPAIRS, WRITE_FAILURES, TASK_UP, TASK_RESTARTS,
         TASK_STALLED,
         STACK_FAST_PATH, GUARD_REFUSALS, GATE_CAPACITY, GATE_ELEMENTS, GATE_ELEMENTS_AGE,
         TABLE_AGE)


class OffloaddCollector:
    """Reads every source once per scrape; concurrent scrapes are serialised so
    a burst of them cannot stack conntrack dumps on the kernel."""

    def __init__(self, view: DaemonView, flows: FlowCounter, version: str = __version__,
                 endpoints: Sequence[EndpointStats] = ()) -> None:
        self._view = view
        self._flows = flows
        self._version = version
        self._endpoints = tuple(endpoints)
        self._lock = threading.Lock()
        self._was_up = dict.fromkeys(SOURCES, True)

    def describe(self) -> Iterator[Metric]:
        # Names without touching the kernel: registration and ?name[]= filters use them.
        for spec in SPECS:
            yield spec.family()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            fams = {spec.name: spec.family() for spec in SPECS}
            fams[BUILD_INFO.name].add_metric([self._version], 1)
            up = {"conntrack": self._conntrack(fams), "nftables": self._nftables(fams),
                  "links": self._links(fams)}
            # After the sources: the table's age then counts a read this scrape made.
            counters = self._view.counters()
            self._daemon(fams, counters)
            for ep in self._endpoints:
                for reason, n in sorted(ep.dropped().items()):
                    fams[CONNECTIONS_DROPPED.name].add_metric([ep.endpoint, reason], n)
            for source in SOURCES:
                fams[SOURCE_UP.name].add_metric([source], 1 if up[source] else 0)
            # Families with no samples are left out of the exposition entirely.
            metrics = [m for m in fams.values() if m.samples]
        yield from metrics

    # Each source: add its samples, return whether it could be read. A source
    # failing must never fail the scrape, hence the broad except.
    def _conntrack(self, fams: dict[str, _Family]) -> bool:
        ok = True
        try:
            counts = self._flows.offloaded()
        except Exception as e:
            ok = self._down("conntrack", e)
        else:
            for label, per in (("ipv4", counts.ipv4), ("ipv6", counts.ipv6)):
                fams[OFFLOADED.name].add_metric([label, "software"], per.software)
                fams[OFFLOADED.name].add_metric([label, "hardware"], per.hardware)
            age = self._flows.age_seconds()
            if age is not None:
                fams[OFFLOADED_AGE.name].add_metric([], round(age, 3))
        try:
            totals = self._flows.totals()
        except Exception as e:
            ok = self._down("conntrack", e)
        else:
            fams[CT_ENTRIES.name].add_metric([], totals.count)
            if totals.limit is not None:
                fams[CT_LIMIT.name].add_metric([], totals.limit)
        return self._up("conntrack") if ok else False

    def _nftables(self, fams: dict[str, _Family]) -> bool:
        desired = self._view.desired()
        # Names declared to the kernel ahead of their device are in a
        # flowtable's list but attach nothing until the device appears.
        declared = desired.declared_only() if desired is not None else frozenset()
        # A kernel wildcard is no device; the present devices it covers are.
        wild = desired.wildcards() if desired is not None else frozenset()
        present = ({d.device for d in desired.decisions if d.present and d.flowtable}
                   if desired is not None else set())

        def count(listed: frozenset[str]) -> int:
            specs = listed & wild
            covered = {d for d in present if wildcard_covering(specs, d) is not None}
            return len(listed - declared - wild) + len(covered)

        if desired is not None:
            for ft in desired.table.flowtables:
                fams[FT_DEVICES.name].add_metric([ft.name, "desired"], count(ft.devices))
                fams[FT_DEVICES.name].add_metric([ft.name, "declared"],
                                                 len(ft.devices & declared))
            for d in desired.decisions:
                if d.flowtable is not None:
                    mode = "hardware" if d.hardware else "software"
                    fams[DEVICE_INFO.name].add_metric([d.flowtable, d.device, mode, d.reason], 1)
        try:
            attached = self._view.attached()
        except Exception as e:
            return self._down("nftables", e)
        names = {ft.name for ft in desired.table.flowtables} if desired else set()
        have = {ft.name: count(ft.devices) for ft in attached.flowtables} if attached else {}
        for name in sorted(names | have.keys()):
            fams[FT_DEVICES.name].add_metric([name, "attached"], have.get(name, 0))
        if desired is not None:
            fams[IN_SYNC.name].add_metric([], 1 if attached == desired.table else 0)
        return self._up("nftables")

    def _links(self, fams: dict[str, _Family]) -> bool:
        try:
            stats = self._view.links()
            events, resyncs = stats.events_total, stats.resyncs_total
        except Exception as e:
            return self._down("links", e)
        fams[LINK_EVENTS.name].add_metric([], events)
        fams[LINK_RESYNCS.name].add_metric([], resyncs)
        return self._up("links")

    def _daemon(self, fams: dict[str, _Family], c: DaemonCounters) -> None:
        fams[START_TIME.name].add_metric([], c.started)
        for spec, value in ((RECONCILES, c.reconciles_total),
                            (FAILURES, c.reconcile_failures_total),
                            (TRANSACTIONS, c.transactions_total),
                            (RELOADS, c.config_reloads_total),
                            (RELOADS_REJECTED, c.config_reloads_rejected_total),
                            (REPAIRS, c.repairs_total),
                            (LEFT_BEHIND, c.left_behind_flows),
                            (POLICY_CHANGES, c.policy_changes_total),
                            (POLICY_CHANGES_SKIPPED, c.policy_changes_skipped_total),
                            (DRIFT_REPAIRS, c.drift_repairs_total),
                            (WRITE_FAILURES, c.write_failures_total),
                            (GUARD_REFUSALS, c.guard_refusals_total),
                            (REVALIDATIONS, c.revalidations_total)):
            fams[spec.name].add_metric([], value)
        if c.gate_capacity:
            fams[GATE_CAPACITY.name].add_metric([], c.gate_capacity)
        for name, n in sorted(c.gate_elements.items()):
            fams[GATE_ELEMENTS.name].add_metric([name], n)
        if c.gate_count_age_s is not None:
            fams[GATE_ELEMENTS_AGE.name].add_metric([], round(c.gate_count_age_s, 3))
        if c.table_read_age_s is not None:
            fams[TABLE_AGE.name].add_metric([], round(c.table_read_age_s, 3))
        for dev in sorted({*c.guard_watched, *c.guard_refused}):
            fams[STACK_FAST_PATH.name].add_metric([dev], 1 if dev in c.guard_refused else 0)
        for task, (up, restarts) in sorted(c.tasks.items()):
            fams[TASK_UP.name].add_metric([task], 1 if up else 0)
            fams[TASK_RESTARTS.name].add_metric([task], restarts)
            fams[TASK_STALLED.name].add_metric([task], 1 if task in c.tasks_stalled else 0)
        if c.last_revalidation_time:
            fams[LAST_REVALIDATION.name].add_metric([], c.last_revalidation_time)
        if c.last_reconcile_time:
            fams[LAST_DURATION.name].add_metric([], c.last_reconcile_seconds)
            fams[LAST_TIME.name].add_metric([], c.last_reconcile_time)

    # Logged on change only: a scrape every 15 s must not repeat the same line.
    def _down(self, source: str, e: Exception) -> bool:
        if self._was_up[source]:
            log.warning("metrics: cannot read %s: %s", source, e)
        self._was_up[source] = False
        return False

    def _up(self, source: str) -> bool:
        if not self._was_up[source]:
            log.info("metrics: %s readable again", source)
        self._was_up[source] = True
        return True


def register(registry: CollectorRegistry, view: DaemonView, flows: FlowCounter,
             version: str = __version__, *,
             endpoints: Sequence[EndpointStats] = ()) -> OffloaddCollector:
    """Creates offloadd's collector and registers it on `registry` (never the global one).

    ``endpoints``: the listeners whose dropped connections it reports.
    """
    collector = OffloaddCollector(view, flows, version, endpoints)
    registry.register(collector)
    return collector
