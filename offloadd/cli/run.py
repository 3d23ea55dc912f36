"""``offloadd``: the daemon's command line (foreground run, --check).

Every failure an operator can cause or meet ends in one line on stderr and a
documented exit status, never a traceback: 0 ok, 1 runtime or kernel failure,
2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from offloadd import __version__
from offloadd.core.config import DEFAULT_CONFIG_PATH, Config
from offloadd.core.configparse import load_config
from offloadd.core.errors import ConfigError, OffloaddError
from offloadd.core.gate import gate_size
from offloadd.core.render import render
from offloadd.kernel.backend import NftBackend
from offloadd.kernel.capability import probe, probe_hooks
from offloadd.kernel.conntrack import ConntrackCounter, teardown_timeout_warnings
from offloadd.kernel.faults import Faults, FaultyBackend, FaultyNftEvents
from offloadd.kernel.flowsample import FlowSampler
from offloadd.kernel.leftbehind import ConntrackScanner
from offloadd.kernel.links import LinkWatcher, current_links
from offloadd.kernel.nft import Nft
from offloadd.kernel.nftwatch import NftEvents
from offloadd.service.connections import ConnectionTable
from offloadd.service.daemon import Daemon
from offloadd.service.exporter import LIMITS as METRICS_LIMITS
from offloadd.service.exporter import TlsOptions, start_exporter
from offloadd.service.flowcount import CachedFlowCounter
from offloadd.service.metrics import StatusView, register
from offloadd.service.preview import preview
from offloadd.service.sdnotify import Notifier, journal_logging
from offloadd.service.tableseen import TableSeen
from offloadd.service.timing import Timing

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
# For --help and offloadd(8), which is generated from it.
EXIT_STATUS = (
    (EXIT_OK, "ok (stopped by SIGTERM or SIGINT, or --check done)"),
    (EXIT_RUNTIME, "runtime or kernel failure"),
    (EXIT_CONFIG, "bad config or arguments"),
)

log = logging.getLogger("offloadd")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_CONFIG, f"offloadd: {message} (see offloadd --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="offloadd", description=(
        "Keep nftables flowtables in step with this machine's interfaces. Runs in the "
        "foreground; SIGHUP reloads the config, SIGTERM stops (and removes offloadd's "
        "table unless daemon.on_exit = \"keep\")."),
        epilog="Exit status: " + "; ".join(f"{c} {t}" for c, t in EXIT_STATUS) + ".")
    p.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG_PATH, metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--check", action="store_true",
                   help="validate the config, print the nft transaction that would be "
                        "applied now, and exit without applying it")
    p.add_argument("--log-level", default="info", metavar="LEVEL",
                   choices=["debug", "info", "warning", "error"], help="default: info")
    p.add_argument("--version", action="version", version=f"offloadd {__version__}")
    return p


def _fail(code: int, msg: str) -> int:
    print(f"offloadd: {msg}", file=sys.stderr)
    return code


def configure_logging(level: str) -> None:
    """The root logger, so pyroute2's warnings reach the journal too.

    Its per-message debug chatter must not: at ``--log-level debug`` it wrote
    5 MB for 500 new links and slowed the watcher enough (under TCG) to split
    one burst into 15 transactions. pyroute2 resets its logger's level when it
    is imported (pyroute2/config/log.py), which now happens late or never (its
    import alone took 2.4 s of a start under emulation), so the handler
    filters its records rather than trusting that level.
    """
    handler = journal_logging(logging.getLogger(), level=level.upper())
    handler.addFilter(quiet_pyroute2)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


def quiet_pyroute2(record: logging.LogRecord) -> bool:
    """Lets pyroute2's records through from WARNING up only."""
    if record.name == "pyroute2" or record.name.startswith("pyroute2."):
        return record.levelno >= logging.WARNING
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        return _fail(EXIT_CONFIG, str(e))
    try:
        if args.check:
            return check(config)
        return asyncio.run(run(args.config, config))
    except OffloaddError as e:
        return _fail(EXIT_RUNTIME, str(e))
    except KeyboardInterrupt:
        return EXIT_OK


def check(config: Config) -> int:
    """Prints the plan for the current links and kernel state; applies nothing."""
    backend = NftBackend(config.daemon.family.value, config.daemon.table)
    links = asyncio.run(current_links())
    p = preview(config, backend, links, probe_hooks(backend.nft))
    desired = p.desired
    print(f"# config OK: {len(config.flowtables)} flowtable(s); table "
          f"{config.daemon.family.value} {config.daemon.table} "
          f"{'exists' if p.current else 'does not exist yet'}")
    print(f"# kernel: {p.hooks.name_hooks_reason}")
    print(f"# kernel: {p.hooks.wildcards_reason}")
    print(f"# {p.legacy.describe()}")
    for a in desired.attach:
        print(f"# flowtable {a.flowtable}: {a.mode.value} attach ({a.reason})")
    for d in desired.decisions:
        print(f"# {d.device}: {d.flowtable or 'not offloaded'} ({d.reason})")
    for n in desired.problems:
        print(f"# warning: {n.message}")
    if p.plan.is_empty:
        print("# nothing to change")
    else:
        print(render(p.plan, config.daemon.family.value, config.daemon.table), end="")
    return EXIT_OK


def _fixed(size: int, _conntrack_max: int | None) -> int:
    return size


async def run(config_path: Path, config: Config) -> int:
    nft = Nft()
    cap = probe(nft)
    if not cap.can_flowtable:
        return _fail(EXIT_RUNTIME, cap.reason)
    for warning in teardown_timeout_warnings():
        log.warning("%s", warning)
    hooks = probe_hooks(nft)
    log.info("kernel: %s", hooks.name_hooks_reason)
    log.info("kernel: %s", hooks.wildcards_reason)
    # The lab's fault injection (kernel/faults.py); never set in a deployment.
    faults = Faults.from_environ()
    # Every read of the table by the event loop, for the scrape (see tableseen).
    seen = TableSeen()
    backend = (NftBackend(config.daemon.family.value, config.daemon.table, nft,
                          on_read=seen.record)
               if faults is None else
               FaultyBackend(config.daemon.family.value, config.daemon.table, nft, faults,
                             on_read=seen.record))
    # The lab's full-gate test: a gate this small (never set in a deployment).
    # A gate this small fills within seconds, so it is also counted every 2 s.
    lab_gate = os.environ.get("OFFLOADD_LAB_GATE_SIZE", "")
    sizing = gate_size
    timing = Timing()
    if lab_gate.isdigit() and int(lab_gate) > 0:
        log.warning("lab setting OFFLOADD_LAB_GATE_SIZE: each gate set holds %s flows at most",
                    lab_gate)
        sizing = functools.partial(_fixed, int(lab_gate))
        timing = Timing(gate_count_interval_s=2.0)
    # A small receive buffer provokes netlink overruns (ENOBUFS) on purpose
    # in tests of the resync path.
    rcvbuf = os.environ.get("OFFLOADD_NETLINK_RCVBUF")
    watcher = LinkWatcher(rcvbuf=int(rcvbuf) if rcvbuf else None,
                          resync_backoff=(timing.link_resync_backoff_first_s,
                                          timing.link_resync_backoff_max_s))
    # Without the nf_tables change watcher, as if it had died: the tests of
    # the periodic check (daemon.check_interval), which must then repair alone.
    nft_changes: NftEvents | FaultyNftEvents | None = None
    if not os.environ.get("OFFLOADD_NO_NFT_WATCH"):
        nft_changes = NftEvents() if faults is None else FaultyNftEvents(NftEvents(), faults)
    daemon = Daemon(config_path, config, backend, links=watcher, gate_sizing=sizing,
                    timing=timing,
                    on_ready=lambda: log.info("ready: table %s %s reconciled",
                                              config.daemon.family.value, config.daemon.table),
                    notify=Notifier.from_environ(), nft_changes=nft_changes,
                    left_behind=ConntrackScanner(), flow_samples=FlowSampler())
    daemon.status.hooks = hooks
    close_metrics = _start_metrics(config, daemon, watcher, seen)
    try:
        await daemon.run()
    finally:
        if close_metrics is not None:
            close_metrics()
        daemon.teardown()
    return EXIT_OK


def _start_metrics(config: Config, daemon: Daemon, watcher: LinkWatcher,
                   seen: TableSeen) -> Callable[[], None] | None:
    if not config.metrics.enabled:
        return None
    m = config.metrics
    tls = None
    if m.tls_cert_file is not None and m.tls_key_file is not None:
        tls = TlsOptions(m.tls_cert_file, m.tls_key_file, m.tls_client_ca_file,
                         m.tls_client_auth_required)
    # The scrape runs in the exporter's thread: when it must read the table
    # itself, with its own libnftables context, never the event loop's.
    scrape_backend = NftBackend(config.daemon.family.value, config.daemon.table,
                                on_read=seen.record)
    timing = daemon.timing

    def max_age_s() -> float:
        # The running config's (a reload may change the interval).
        every = daemon.config.daemon.check_interval or timing.table_seen_without_check_s
        return every + timing.table_seen_margin_s
    registry = CollectorRegistry()
    connections = ConnectionTable("metrics", METRICS_LIMITS)
    flows = CachedFlowCounter(ConntrackCounter(), m.flow_count_interval, timing=daemon.timing)
    register(registry, StatusView(daemon.status, scrape_backend.read, watcher.stats,
                                  seen=seen, max_age_s=max_age_s),
             flows, endpoints=(connections, daemon.control_connections))
    exporter = start_exporter(m, registry, tls=tls, connections=connections,
                              reap_s=daemon.timing.connection_reap_s)
    flows.start()
    log.info("metrics at %s (offloaded flows counted every %d s while scraped)",
             exporter.url, m.flow_count_interval)

    def close() -> None:
        exporter.close()
        flows.close()
    return close


if __name__ == "__main__":
    sys.exit(main())
