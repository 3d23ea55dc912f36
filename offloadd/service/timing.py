"""The daemon's delays, in one immutable settings object.

Why one object: the retries, polls and backoffs of the loop and of its
background tasks interact (a failed pass's backoff against the watcher's
restart, the repair checks against the re-validation's), so they are read
and tuned in one place rather than hunted down as module constants. Why
injected: the Daemon takes one and hands it to its components, so a test can
run them with shorter delays (or, on a virtual clock, with these very ones)
without patching modules.

Counts and policies that are no delay stay with their code (VANISHED_RETRIES
in the daemon, the pure RepairPolicy and RevalidatePolicy in the core).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Seconds, all of them; the defaults are the daemon's."""

    # -- the reconcile loop (Daemon) ---------------------------------------------
    # "No such device": a device went away between plan and apply (the kernel
    # applied nothing); the pass is planned again after this.
    retry_vanished_s: float = 0.2
    # A failed pass is retried after this; a request for a reconcile does not
    # cut the wait short.
    retry_failed_s: float = 5.0
    # How often the iptables-legacy tables are looked at (two small /proc
    # reads): loading one sends no nf_tables event, and until offloadd's chain
    # moves after its FORWARD hook a new flow can be offloaded past it.
    legacy_poll_s: float = 2.0
    # A link watcher that failed is started again after this.
    watcher_restart_s: float = 1.0
    # With daemon.check_interval = 0, how often the setting is looked at again.
    check_off_poll_s: float = 60.0

    # -- one reconcile pass (Reconciler, Refusals) ---------------------------------
    # How long other tables' forward priorities are trusted without a fresh
    # read, while nf_tables change events flow (a backstop: each event that
    # touches another table's chains drops them at once).
    others_ttl_s: float = 5.0
    # Devices the kernel refused are tried again after this long (sooner if
    # the link is re-created or the config reloaded).
    retry_refused_s: float = 300.0

    # -- supervised background tasks (Supervisor) ----------------------------------
    # The first restart comes after restart_first_s, each next one after twice
    # the last, at most restart_max_s; a task that ran restart_healthy_s
    # without failing starts again at restart_first_s.
    restart_first_s: float = 1.0
    restart_max_s: float = 60.0
    restart_healthy_s: float = 60.0
    # A task whose marked step (a kernel dump on a worker thread) has run this
    # long is shown stalled: the longest such step measured is a gate count at
    # 2M elements, tens of seconds under TCG.
    task_stall_s: float = 300.0

    # -- flows left behind (Repairer) ------------------------------------------------
    # Checks after a link event that flushed the route cache (after the flows' next packets) and
    # after a replacement (a busy flow can lose the mark again a moment later).
    repair_after_flush_s: tuple[float, ...] = (1.0, 3.0)
    # Until the kernel is seen leaving flows behind, those checks take at most
    # this share of a CPU (each waits for the last scan's CPU seconds times
    # (1 - share) / share: 2 s at a million entries under TCG -> 38 s).
    repair_flush_scan_share: float = 0.05
    repair_after_repair_s: tuple[float, ...] = (2.5, 4.0)
    # Between deleting a flowtable and creating it again: how often to look
    # whether the kernel released the entries it held, and for how long at most.
    repair_release_poll_s: float = 0.25
    repair_release_max_s: float = 3.0
    # Route cache flushes offloadd cannot see are caught by a check this often.
    repair_periodic_s: float = 30.0
    # A repair that finds offloadd's table out of its desired state asks for a
    # reconcile and looks again after this.
    repair_not_in_sync_retry_s: float = 0.5

    # -- the gate's fill (GateCounter) --------------------------------------------------
    # Between two counts of the gate's sets' elements (a raw set-element dump
    # each, on a worker thread: offloadd's part is 0.2 s of CPU per million
    # elements; the kernel's walk of a large set costs more, see setcount).
    gate_count_interval_s: float = 60.0
    # Until offloadd's table has the gate (before the first pass), how often
    # the counter looks whether it has: a started daemon shows its fill within
    # seconds, not a period later. Such a look reads no kernel state.
    gate_count_until_gate_s: float = 2.0
    # At most this share of a CPU for counting: a count that took longer than
    # this share of the interval (the kernel's dump is quadratic in the
    # elements, seconds at 10^6) pushes the next one out (gatecount.next_delay).
    gate_count_max_duty: float = 0.01
    # ... and at most this share while a count runs: after each datagram the
    # count waits (1/share - 1) times the CPU the kernel's walk for it took.
    # Unpaced, the first count after a restart on 2 x 200k elements kept the
    # lab VM's CPU 83 % busy for 12 s (6.12) to 25 s (7.3.4), and attaches
    # meanwhile took 3x as long. Paced to 10 %, attaches during it took 1.15x
    # (7.3.4) and 1.17x (6.12) as long, after it 1.00x and 0.96x: each
    # datagram's walk is a stretch of kernel code that whatever arrives waits
    # behind; hence 5 %. A count of 2 x 1M then runs for an hour under TCG
    # (minutes on real hardware), each datagram telling the supervisor it works.
    gate_count_cpu_share: float = 0.05

    # -- re-validation (Revalidator) -------------------------------------------------
    # Out of sync: looks again after this, once the requested reconcile ran.
    revalidate_not_in_sync_retry_s: float = 0.2
    revalidate_failed_retry_s: float = 1.0

    # -- the control socket and the metrics exporter -----------------------------------
    # How often each looks for connections past their whole-request deadline
    # (the exporter's accept loop polls as often).
    connection_reap_s: float = 0.5
    # A scrape serves the event loop's latest read of the table while it is at
    # most daemon.check_interval (with 0: table_seen_without_check_s) plus this
    # old: the loop reads at least that often, so only a loop stuck in a long
    # transaction (or before its first pass) leaves the scrape to read.
    table_seen_margin_s: float = 5.0
    table_seen_without_check_s: float = 60.0

    # -- the link watcher (kernel.links) ---------------------------------------------
    # A link dump overrun again and again (a storm of changes) is retried after
    # this, doubling up to the max.
    link_resync_backoff_first_s: float = 0.05
    link_resync_backoff_max_s: float = 2.0

    # -- the offloaded-flow count (CachedFlowCounter) ----------------------------------
    # Walks pause when no scrape came for IDLE_PERIODS periods, and at least
    # this long: a Prometheus that scrapes once a minute (or every 5) must find
    # a count at most a period old each time, not the one its last scrape woke.
    flowcount_idle_min_s: float = 330.0
