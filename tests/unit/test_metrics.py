"""The collector on fake sources: exact exposition, failing sources, promtool lint.

Why: metric names and labels are an interface dashboards and alerts depend
on, so they are pinned here sample by sample; and a source failing must cost
only its own metrics, never the scrape.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from offloadd import __version__
from offloadd.core.attach import attach_plan
from offloadd.core.config import Config, FlowtableConfig
from offloadd.core.gate import GateFill
from offloadd.core.model import (
    DesiredResult,
    DeviceDecision,
    FlowtableState,
    Link,
    SetState,
    TableState,
    desired_state,
)
from offloadd.kernel.conntrack import ConntrackTotals, FlowCounts, OffloadCounts
from offloadd.kernel.links import WatcherStats
from offloadd.service.connections import ConnectionLimits, ConnectionTable
from offloadd.service.metrics import (
    SOURCES,
    SPECS,
    DaemonCounters,
    LinkStats,
    StatusView,
    register,
)
from offloadd.service.status import ReconcileState, Status
from offloadd.service.supervisor import TaskState
from offloadd.service.tableseen import TableSeen
from offloadd.service.writer import WriteCounts


class BoomError(RuntimeError):
    pass


COUNTS = OffloadCounts(FlowCounts(120, 30), FlowCounts(7, 0))
TOTALS = ConntrackTotals(5000, 262144)
COUNTERS = DaemonCounters(
    reconciles_total=12, reconcile_failures_total=2, transactions_total=5,
    last_reconcile_seconds=0.25, last_reconcile_time=1_700_000_000.5,
    config_reloads_total=3, config_reloads_rejected_total=1, started=1_699_999_000.0,
    repairs_total=4, left_behind_flows=17,
    policy_changes_total=9, policy_changes_skipped_total=4, revalidations_total=3,
    last_revalidation_time=1_700_000_100.0, write_failures_total=2,
    tasks={"nft-changes": (True, 0), "repair": (False, 3)}, tasks_stalled=("nft-changes",),
    guard_watched=("br-lan",), guard_refused=("ppp0",), guard_refusals_total=1,
    gate_capacity=2_097_152,
    gate_elements={"passed_original": 1234, "passed_reply": 567}, gate_count_age_s=12.5)


@dataclass
class FakeFlows:
    counts: OffloadCounts = COUNTS
    totals_: ConntrackTotals = TOTALS
    fail: bool = False
    calls: int = 0

    def offloaded(self) -> OffloadCounts:
        self.calls += 1
        if self.fail:
            raise BoomError("ctnetlink: EPERM")
        return self.counts

    def totals(self) -> ConntrackTotals:
        if self.fail:
            raise BoomError("no /proc")
        return self.totals_

    def age_seconds(self) -> float | None:
        return 3.25


def table(lan: frozenset[str], hw: frozenset[str]) -> TableState:
    return TableState("offloadd", "inet", flowtables=(
        FlowtableState("lan", lan, hardware=False, counter=True),
        FlowtableState("lan_hw", hw, hardware=True, counter=True)),
        sets=(SetState("lan_ifs", lan), SetState("lan_hw_ifs", hw)))


DESIRED = DesiredResult(
    table=table(frozenset({"eth1", "eth2"}), frozenset({"eth0"})),
    decisions=(
        DeviceDecision("eth0", "lan_hw", True, "name matches 'eth*'; can offload in hardware",
                       "lan"),
        DeviceDecision("eth1", "lan", False,
                       "name matches 'eth*'; cannot offload in hardware, software", "lan"),
        DeviceDecision("eth2", "lan", False,
                       "name matches 'eth*'; cannot offload in hardware, software", "lan"),
        DeviceDecision("eth9", None, False, "name matches 'eth*', but excluded by 'eth9'",
                       "lan"),
    ))


@dataclass
class FakeView:
    desired_: DesiredResult | None = DESIRED
    kernel: TableState | None = field(
        default_factory=lambda: table(frozenset({"eth1"}), frozenset({"eth0"})))
    counters_: DaemonCounters = COUNTERS
    stats: WatcherStats = field(default_factory=lambda: WatcherStats(events_total=40,
                                                                      resyncs_total=1))
    nft_fails: bool = False
    links_fail: bool = False

    def counters(self) -> DaemonCounters:
        return self.counters_

    def desired(self) -> DesiredResult | None:
        return self.desired_

    def attached(self) -> TableState | None:
        if self.nft_fails:
            raise BoomError("libnftables: Operation not permitted")
        return self.kernel

    def links(self) -> LinkStats:
        if self.links_fail:
            raise BoomError("watcher gone")
        return self.stats


def scrape(view: FakeView, flows: FakeFlows) -> str:
    reg = CollectorRegistry()
    register(reg, view, flows, version="1.2.3")
    return generate_latest(reg).decode()


def samples(text: str) -> set[str]:
    return {ln for ln in text.splitlines() if ln and not ln.startswith("#")}


REASON_SW = "name matches 'eth*'; cannot offload in hardware, software"
EXPECTED = {
    'offloadd_build_info{version="1.2.3"} 1.0',
    "offloadd_start_time_seconds 1.699999e+09",
    'offloadd_source_up{source="conntrack"} 1.0',
    'offloadd_source_up{source="nftables"} 1.0',
    'offloadd_source_up{source="links"} 1.0',
    'offloadd_offloaded_flows{family="ipv4",mode="software"} 120.0',
    'offloadd_offloaded_flows{family="ipv4",mode="hardware"} 30.0',
    'offloadd_offloaded_flows{family="ipv6",mode="software"} 7.0',
    'offloadd_offloaded_flows{family="ipv6",mode="hardware"} 0.0',
    "offloadd_offloaded_flows_age_seconds 3.25",
    "offloadd_conntrack_entries 5000.0",
    "offloadd_conntrack_entries_limit 262144.0",
    'offloadd_flowtable_devices{flowtable="lan",state="desired"} 2.0',
    'offloadd_flowtable_devices{flowtable="lan_hw",state="desired"} 1.0',
    'offloadd_flowtable_devices{flowtable="lan",state="declared"} 0.0',
    'offloadd_flowtable_devices{flowtable="lan_hw",state="declared"} 0.0',
    'offloadd_flowtable_devices{flowtable="lan",state="attached"} 1.0',
    'offloadd_flowtable_devices{flowtable="lan_hw",state="attached"} 1.0',
    'offloadd_device_info{device="eth0",flowtable="lan_hw",mode="hardware",'
    "reason=\"name matches 'eth*'; can offload in hardware\"} 1.0",
    f'offloadd_device_info{{device="eth1",flowtable="lan",mode="software",'
    f'reason="{REASON_SW}"}} 1.0',
    f'offloadd_device_info{{device="eth2",flowtable="lan",mode="software",'
    f'reason="{REASON_SW}"}} 1.0',
    "offloadd_kernel_state_matches 0.0",
    "offloadd_reconciles_total 12.0",
    "offloadd_reconcile_failures_total 2.0",
    "offloadd_transactions_total 5.0",
    "offloadd_last_reconcile_duration_seconds 0.25",
    "offloadd_last_reconcile_timestamp_seconds 1.7000000005e+09",
    "offloadd_link_events_total 40.0",
    "offloadd_link_resyncs_total 1.0",
    "offloadd_config_reloads_total 3.0",
    "offloadd_config_reloads_rejected_total 1.0",
    "offloadd_flowtable_repairs_total 4.0",
    "offloadd_left_behind_flows 17.0",
    "offloadd_policy_changes_total 9.0",
    "offloadd_policy_changes_skipped_total 4.0",
    "offloadd_drift_repairs_total 0.0",
    "offloadd_table_write_failures_total 2.0",
    "offloadd_stack_guard_refusals_total 1.0",
    'offloadd_stack_fast_path_refused{device="br-lan"} 0.0',
    'offloadd_stack_fast_path_refused{device="ppp0"} 1.0',
    'offloadd_task_up{task="nft-changes"} 1.0',
    'offloadd_task_up{task="repair"} 0.0',
    'offloadd_task_restarts_total{task="nft-changes"} 0.0',
    'offloadd_task_restarts_total{task="repair"} 3.0',
    'offloadd_task_stalled{task="nft-changes"} 1.0',
    'offloadd_task_stalled{task="repair"} 0.0',
    "offloadd_revalidations_total 3.0",
    "offloadd_last_revalidation_timestamp_seconds 1.7000001e+09",
    "offloadd_gate_capacity 2.097152e+06",
    'offloadd_gate_elements{set="passed_original"} 1234.0',
    'offloadd_gate_elements{set="passed_reply"} 567.0',
    "offloadd_gate_elements_age_seconds 12.5",
}


def test_exposition_exact() -> None:
    text = scrape(FakeView(), FakeFlows())
    assert samples(text) == EXPECTED
    assert "# TYPE offloadd_reconciles_total counter" in text
    assert "# TYPE offloadd_offloaded_flows gauge" in text
    assert "# HELP offloadd_offloaded_flows conntrack entries offloaded" in text


def test_in_sync_table_and_missing_table() -> None:
    assert "offloadd_kernel_state_matches 1.0" in samples(
        scrape(FakeView(kernel=DESIRED.table), FakeFlows()))
    got = samples(scrape(FakeView(kernel=None), FakeFlows()))
    assert 'offloadd_flowtable_devices{flowtable="lan",state="attached"} 0.0' in got
    assert "offloadd_kernel_state_matches 0.0" in got


def test_before_first_reconcile() -> None:
    view = FakeView(desired_=None, kernel=None, counters_=DaemonCounters(started=5.0))
    got = samples(scrape(view, FakeFlows()))
    names = {ln.split("{")[0].split(" ")[0] for ln in got}
    assert "offloadd_last_reconcile_timestamp_seconds" not in names
    assert "offloadd_device_info" not in names and "offloadd_kernel_state_matches" not in names
    assert "offloadd_gate_capacity" not in names  # no gate yet
    assert "offloadd_gate_elements" not in names  # not counted yet
    assert "offloadd_gate_elements_age_seconds" not in names
    assert "offloadd_reconciles_total 0.0" in got
    assert 'offloadd_source_up{source="nftables"} 1.0' in got


def test_devices_a_kernel_wildcard_covers_count_as_desired_and_attached() -> None:
    cfg = Config(flowtables=(FlowtableConfig("edge", devices=("lan0", "ppp0", "wan*")),))
    links = [Link(i, n, "veth") for i, n in enumerate(("lan0", "wan0", "wan1"), 1)]
    desired = desired_state(cfg, links, {}, 0,
                            attach=attach_plan(cfg, True, wildcards=True))
    assert desired.table.flowtable("edge").devices == {  # type: ignore[union-attr]
        "lan0", "ppp0", "wan*"}
    got = samples(scrape(FakeView(desired_=desired, kernel=desired.table), FakeFlows()))
    for state, n in (("desired", 3), ("attached", 3), ("declared", 1)):
        assert f'offloadd_flowtable_devices{{flowtable="edge",state="{state}"}} {n}.0' in got
    assert "offloadd_kernel_state_matches 1.0" in got


@pytest.mark.parametrize("source", SOURCES)
def test_failing_source_reports_down_and_keeps_the_rest(source: str) -> None:
    view = FakeView(nft_fails=source == "nftables", links_fail=source == "links")
    flows = FakeFlows(fail=source == "conntrack")
    got = samples(scrape(view, flows))
    gone = {
        "conntrack": ("offloadd_offloaded_flows", "offloadd_conntrack_entries"),
        "nftables": ('state="attached"', "offloadd_kernel_state_matches"),
        "links": ("offloadd_link_events_total", "offloadd_link_resyncs_total"),
    }[source]
    want = {ln for ln in EXPECTED if not any(g in ln for g in gone)}
    want = (want - {f'offloadd_source_up{{source="{source}"}} 1.0'}) | {
        f'offloadd_source_up{{source="{source}"}} 0.0'}
    assert got == want


def test_totals_without_limit() -> None:
    got = samples(scrape(FakeView(), FakeFlows(totals_=ConntrackTotals(9, None))))
    assert "offloadd_conntrack_entries 9.0" in got
    assert not any(ln.startswith("offloadd_conntrack_entries_limit") for ln in got)


def test_registration_reads_nothing_and_stays_off_the_global_registry() -> None:
    flows = FakeFlows()
    before = set(REGISTRY._names_to_collectors)
    reg = CollectorRegistry(auto_describe=True)
    register(reg, FakeView(), flows)
    assert flows.calls == 0
    assert set(REGISTRY._names_to_collectors) == before
    # ?name[]= scrapes work because describe() names every metric.
    only = samples(generate_latest(reg.restricted_registry(["offloadd_offloaded_flows"]))
                   .decode())
    assert len(only) == 4 and all(ln.startswith("offloadd_offloaded_flows{") for ln in only)
    assert 'offloadd_build_info{version="%s"} 1.0' % __version__ in samples(  # noqa: UP031
        generate_latest(reg).decode())


def test_names_follow_conventions() -> None:
    for spec in SPECS:
        assert spec.name.startswith("offloadd_")
        assert spec.name.endswith("_total") == spec.counter
        if "time" in spec.name:
            assert spec.name.endswith("_timestamp_seconds") or spec.name.endswith(
                "_time_seconds")


def test_status_view_reads_the_daemons_status() -> None:
    st = Status(config_path=Path("/etc/offloadd.toml"), started=10.0,
                reconcile=ReconcileState(desired=DESIRED, reconciles_total=4,
                                         reconcile_failures_total=1,
                                         last_reconcile_seconds=0.5, last_reconcile_time=20.0,
                                         gate_size=8_388_608),
                writes=WriteCounts(transactions_total=2, failures_total=3),
                reloads_total=6, reloads_rejected_total=7,
                tasks=lambda: {"repair": TaskState("repair", up=False, restarts_total=2)})
    ws = WatcherStats(events_total=9, resyncs_total=8)
    view = StatusView(st, lambda: DESIRED.table, ws)
    assert view.counters() == DaemonCounters(4, 1, 2, 0.5, 20.0, 6, 7, 10.0,
                                             write_failures_total=3,
                                             tasks={"repair": (False, 2)},
                                             gate_capacity=8_388_608)
    assert view.desired() is DESIRED and view.attached() is DESIRED.table
    assert view.links() is ws
    got = samples(scrape_view(view))
    assert "offloadd_kernel_state_matches 1.0" in got
    assert "offloadd_link_events_total 9.0" in got
    assert 'offloadd_task_up{task="repair"} 0.0' in got
    assert 'offloadd_task_restarts_total{task="repair"} 2.0' in got
    assert "offloadd_table_write_failures_total 3.0" in got
    # From the state the last reconcile left: no kernel read at scrape time.
    assert "offloadd_gate_capacity 8.388608e+06" in got
    assert not any(ln.startswith("offloadd_gate_elements") for ln in got)  # not counted


def test_gate_elements_come_from_the_last_count_and_stay_while_counts_fail() -> None:
    """No kernel read at scrape time: the elements the gate counter kept, and
    how old they are (growing while counts fail; the last values stay)."""
    st = Status(config_path=Path("/etc/offloadd.toml"),
                reconcile=ReconcileState(gate_size=2_097_152))
    st.gate.fill = GateFill({"passed_original": 1234, "passed_reply": 567}, 1_000.0)
    now = [1_012.5]
    view = StatusView(st, lambda: None, WatcherStats(), wall=lambda: now[0])
    assert view.counters().gate_elements == {"passed_original": 1234, "passed_reply": 567}
    got = samples(scrape_view(view))
    assert {ln for ln in got if ln.startswith("offloadd_gate_")} == {
        "offloadd_gate_capacity 2.097152e+06",
        'offloadd_gate_elements{set="passed_original"} 1234.0',
        'offloadd_gate_elements{set="passed_reply"} 567.0',
        "offloadd_gate_elements_age_seconds 12.5"}
    st.gate.fill = st.gate.fill.failed("EPERM")
    now[0] = 1_300.0
    got = samples(scrape_view(view))
    assert 'offloadd_gate_elements{set="passed_reply"} 567.0' in got
    assert "offloadd_gate_elements_age_seconds 300.0" in got
    st.gate.fill = GateFill(error="EPERM")  # a first count that failed: nothing to show
    got = samples(scrape_view(view))
    assert not any(ln.startswith("offloadd_gate_elements") for ln in got)


def scrape_view(view: StatusView) -> str:
    reg = CollectorRegistry()
    register(reg, view, FakeFlows())
    return generate_latest(reg).decode()


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: install the Debian package 'prometheus' "
                    "(apt-get install prometheus); lab/setup.sh should list it")
    for view, flows in ((FakeView(), FakeFlows()),
                        (FakeView(nft_fails=True, links_fail=True), FakeFlows(fail=True))):
        proc = subprocess.run([promtool, "check", "metrics"], input=scrape(view, flows),
                              capture_output=True, text=True, check=False, timeout=30)
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
            proc.stdout + proc.stderr)


def test_connections_dropped_per_endpoint_and_reason() -> None:
    metrics = ConnectionTable("metrics", ConnectionLimits(1, 10.0, 10.0))
    control = ConnectionTable("control", ConnectionLimits(1, 10.0, 10.0))
    metrics.admit(lambda: None)
    metrics.admit(lambda: None)  # at the cap: the first one makes room
    reg = CollectorRegistry()
    register(reg, FakeView(), FakeFlows(), endpoints=(metrics, control))
    text = generate_latest(reg).decode()
    got = {ln for ln in samples(text) if ln.startswith("offloadd_connections_dropped")}
    assert got == {
        'offloadd_connections_dropped_total{endpoint="metrics",reason="limit"} 1.0',
        'offloadd_connections_dropped_total{endpoint="metrics",reason="deadline"} 0.0',
        'offloadd_connections_dropped_total{endpoint="control",reason="limit"} 0.0',
        'offloadd_connections_dropped_total{endpoint="control",reason="deadline"} 0.0',
    }
    assert "# TYPE offloadd_connections_dropped_total counter" in text


def test_the_table_comes_from_the_loops_latest_read_while_it_is_recent() -> None:
    """A scrape serves the event loop's latest read of the table (no kernel
    read: half a scrape's time under TCG) while it is at most max_age_s old,
    reads the kernel itself when older or before any read, and says how old
    the read it shows is."""
    st = Status(config_path=Path("/etc/offloadd.toml"), reconcile=ReconcileState(desired=DESIRED))
    now = [100.0]
    seen = TableSeen(clock=lambda: now[0])
    reads: list[float] = []

    def read() -> TableState | None:
        # What the scrape's own backend does: read, and record what it read.
        reads.append(now[0])
        seen.record(None)
        return None

    view = StatusView(st, read, WatcherStats(), seen=seen, max_age_s=lambda: 65.0)
    assert view.attached() is None and reads == [100.0]  # nothing read yet: reads
    seen.record(DESIRED.table)  # the loop's pass
    now[0] = 160.0
    got = samples(scrape_view(view))
    assert reads == [100.0]
    assert "offloadd_kernel_state_matches 1.0" in got
    assert "offloadd_table_read_age_seconds 60.0" in got
    now[0] = 170.0  # 70 s: older than max_age_s, read again
    got = samples(scrape_view(view))
    assert reads == [100.0, 170.0]
    assert "offloadd_kernel_state_matches 0.0" in got  # the table the scrape found: none
    assert "offloadd_table_read_age_seconds 0.0" in got  # the read this scrape made


def test_table_seen_is_the_latest_read_and_its_age() -> None:
    now = [5.0]
    seen = TableSeen(clock=lambda: now[0])
    assert seen.recent(1e9) is None and seen.age_s() is None
    seen.record(DESIRED.table)
    now[0] = 7.5
    recent = seen.recent(2.5)
    assert recent is not None and recent.table is DESIRED.table and recent.at == 5.0
    assert seen.age_s() == 2.5
    now[0] = 7.6
    assert seen.recent(2.5) is None
    seen.record(None)  # the table gone: a read that found none is a read too
    recent = seen.recent(0.0)
    assert recent is not None and recent.table is None
