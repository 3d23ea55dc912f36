"""Firewalls beside offloadd, on the real kernel with real traffic (conntrack the oracle).

- iptables-legacy: legacy rules that drop the reply direction of some flows,
  loaded while those flows are offloaded and no nft forward chain exists. With
  priority = "auto", offloadd's chain must move after the legacy FORWARD hook
  (priority 1, not the hook's own 0) and re-validate by itself: the flows go
  back to the slow path and their replies stay dropped, the others are
  offloaded again. A legacy rule added later sends no event; `offloadctl
  revalidate` makes it reach offloaded flows.
- Input-only churn: a blocklist table that hooks input only gets an element
  every 0.5 s: no re-validation, the flows stay offloaded under the same
  conntrack entries, every change is counted as skipped; then one element in a
  table with a forward chain: exactly one re-validation.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab import conntrack
from tests.lab.daemon import RunningDaemon, offloadd
from tests.lab.prom import http_get
from tests.lab.topology import Lab
from tests.lab.traffic import Background, probe, tcp_echo_server, udp_echo_server, wait_for

CONFIG = """
[metrics]
listen = "127.0.0.1:9468"

[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
KEEP_UDP, DROP_UDP, DROP_TCP = 7000, 7002, 7102
# How long a blocked flow must stay silent once conntrack shows it back on
# the slow path; replies are due every 0.1 s, so a leak shows within it.
SILENT_S = 3.0


def _status(d: RunningDaemon) -> dict[str, Any]:
    out: dict[str, Any] = d.status()
    return out


def _entries(lab: Lab, port: int, family: int) -> list[conntrack.CtEntry]:
    return [e for e in conntrack.entries(lab.router, family) if e.dport == port]


def _offloaded(lab: Lab, port: int, family: int, want: int) -> bool:
    got = _entries(lab, port, family)
    return len(got) == want and all(e.offloaded for e in got)


def _slow(lab: Lab, port: int, family: int, want: int) -> bool:
    got = _entries(lab, port, family)
    return len(got) == want and not any(e.offloaded for e in got)


Group = tuple[int, int, int]  # (server port, IP family, flows)
KEPT: tuple[Group, ...] = ((KEEP_UDP, 4, 3), (KEEP_UDP, 6, 2))
BLOCKED: tuple[Group, ...] = ((DROP_UDP, 4, 3), (DROP_UDP, 6, 2), (DROP_TCP, 4, 2))


def _all_offloaded(lab: Lab, groups: tuple[Group, ...]) -> bool:
    return all(_offloaded(lab, *g) for g in groups)


def _all_slow(lab: Lab, groups: tuple[Group, ...]) -> bool:
    return all(_slow(lab, *g) for g in groups)


def _replies_after(res: dict[str, Any], t: float) -> int:
    return sum(1 for f in res["flows"] for r in f["replies"] if r > t)


def _legacy_dropped(lab: Lab, cmd: str) -> int:
    """Packets the legacy FORWARD rules dropped (their counters)."""
    out = lab.router.out(cmd, "-L", "FORWARD", "-v", "-n", "-x")
    return sum(int(ln.split()[0]) for ln in out.splitlines()
               if ln.split() and ln.split()[0].isdigit() and "DROP" in ln)


HOOK_VIEW = """
import json, os, tempfile
from pathlib import Path
from offloadd.kernel.xtables import legacy_tables
# What the unit's dynamic user gets: /proc/net/ip_tables_names unreadable (here:
# a directory where the file should be), so the kernel's forward hook list
# (nfnetlink_hook) is asked, and where that fails too every legacy hook assumed.
d = tempfile.mkdtemp()
os.mkdir(os.path.join(d, "ip_tables_names"))
seen = legacy_tables(Path(d))
print(json.dumps({"names": seen.names, "unreadable": seen.unreadable,
                  "priorities": seen.forward_priorities()}))
"""


def _hook_view(lab: Lab) -> dict[str, Any]:
    """The legacy tables as a daemon that may not read /proc/net sees them."""
    view: dict[str, Any] = json.loads(lab.router.out(sys.executable, "-c", HOOK_VIEW))
    return view


def test_a_legacy_reply_drop_holds_against_offloaded_flows(lab: Lab, tmp_path: Path) -> None:
    r = lab.router
    s4, s6 = lab.server_addr(4), lab.server_addr(6)
    with offloadd(r, CONFIG, tmp_path) as d, \
            udp_echo_server(lab.server, "::", KEEP_UDP), \
            udp_echo_server(lab.server, "::", DROP_UDP), \
            tcp_echo_server(lab.server, "0.0.0.0", DROP_TCP):
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        gens: dict[str, Background] = {
            "keep4": probe(lab.client, "udp", s4, KEEP_UDP, flows=3, seconds=600),
            "keep6": probe(lab.client, "udp", s6, KEEP_UDP, flows=2, seconds=600),
            "drop4": probe(lab.client, "udp", s4, DROP_UDP, flows=3, seconds=600),
            "drop6": probe(lab.client, "udp", s6, DROP_UDP, flows=2, seconds=600),
            "tcp4": probe(lab.client, "tcp", s4, DROP_TCP, flows=2, seconds=600),
        }
        try:
            wait_for(lambda: _all_offloaded(lab, KEPT + BLOCKED), 60, interval=0.5,
                     what="12 offloaded flows (udp v4/v6, tcp v4)")
            assert "forward chain at priority 0" in d.log_text()
            keep6_ids = {e.id for e in _entries(lab, KEEP_UDP, 6)}

            # 1. Legacy rules dropping the reply direction; the tables appear now.
            r.sh(f"iptables-legacy -A FORWARD -p udp --sport {DROP_UDP} -j DROP\n"
                 f"iptables-legacy -A FORWARD -p tcp --sport {DROP_TCP} -j DROP\n"
                 f"ip6tables-legacy -A FORWARD -p udp --sport {DROP_UDP} -j DROP\n")
            wait_for(lambda: "forward chain at priority 1" in (t := d.log_text())
                     and "re-validated offloaded flows after iptables-legacy" in t,
                     60, interval=0.3, what="the chain after the legacy hook, re-validated")
            wait_for(lambda: _all_slow(lab, BLOCKED), 60, interval=0.5,
                     what="the reply-dropped flows back on the slow path")
            t_slow = time.time()
            time.sleep(SILENT_S)
            still_slow = _all_slow(lab, BLOCKED)
            wait_for(lambda: _all_offloaded(lab, KEPT), 60, interval=0.5,
                     what="the other flows offloaded again")
            st1 = _status(d)
            dropped = (_legacy_dropped(lab, "iptables-legacy"),
                       _legacy_dropped(lab, "ip6tables-legacy"))
            # What a daemon that may not read /proc/net (the unit's) sees instead.
            hook_view = _hook_view(lab)

            # 2. One more legacy rule (no nftables event): offloadctl revalidate.
            r.run("iptables-legacy", "-A", "FORWARD", "-p", "udp", "--sport", str(KEEP_UDP),
                  "-j", "DROP")
            asked = d.ctl("revalidate", check=True).stdout
            wait_for(lambda: _slow(lab, KEEP_UDP, 4, 3), 60, interval=0.5,
                     what="the IPv4 flows of the new legacy rule back on the slow path")
            t_slow2 = time.time()
            time.sleep(SILENT_S)
            still_slow2 = _slow(lab, KEEP_UDP, 4, 3)
            wait_for(lambda: _offloaded(lab, KEEP_UDP, 6, 2), 60, interval=0.5,
                     what="the IPv6 flows offloaded again")
            keep6_same = {e.id for e in _entries(lab, KEEP_UDP, 6)} == keep6_ids
            results = {name: g.finish() for name, g in gens.items()}
        finally:
            for g in gens.values():
                g.stop()
            r.run("sh", "-c", "iptables-legacy -F; ip6tables-legacy -F", check=False)
    log = d.log_text()
    assert still_slow, f"a reply-dropped flow was offloaded again\n{log[-3000:]}"
    leaked = {n: _replies_after(results[n], t_slow) for n in ("drop4", "drop6", "tcp4")}
    assert leaked == {"drop4": 0, "drop6": 0, "tcp4": 0}, leaked
    assert all(n > 0 for n in dropped), f"legacy rules dropped nothing: {dropped}"
    assert st1["table"]["forward_priority"] == 1, st1["table"]
    assert {"ip filter", "ip6 filter"} <= set(st1["legacy"]["tables"]), st1["legacy"]
    assert st1["legacy"]["before"] == [], st1["legacy"]
    assert "re-validation scheduled" in asked
    assert still_slow2 and _replies_after(results["keep4"], t_slow2) == 0
    assert keep6_same, "the IPv6 flows lost their conntrack entries"
    assert "iptables-legacy tables loaded: ip filter (FORWARD priority 0)" in log, log[-2000:]
    print(f"without /proc/net: {hook_view}; legacy: chain at priority 1, "
          f"dropped {dropped[0]} IPv4 + {dropped[1]} IPv6 replies, 0 replies delivered in "
          f"{SILENT_S:.0f} s after the flows went back to the slow path")
    if hook_view["unreadable"]:
        # The kernel refused the hook list (6.1: EINVAL): every legacy
        # FORWARD hook is assumed, the latest at 50 (security).
        assert "nor list the forward hooks" in hook_view["unreadable"], hook_view
        assert max(hook_view["priorities"]) == 50, hook_view
    else:
        assert {"ip filter", "ip6 filter"} <= set(hook_view["names"]), hook_view


BOUNCER = """
table inet bouncer {
    set blocklist { type ipv4_addr; }
    chain input { type filter hook input priority 0; policy accept;
                  ip saddr @blocklist drop; }
}
table inet admin {
    set blocked4 { type ipv4_addr; }
    chain filter_fwd { type filter hook forward priority 0; policy accept;
                       ip saddr @blocked4 drop; }
}
"""
CHURN = 20  # elements, one every 0.5 s
BLOCKLIST = str(Path(__file__).parents[1] / "lab" / "blocklist.py")


def _metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


# offloadd's own decision (which tables a forwarded packet meets): once, on 7.x.
@pytest.mark.daemon_logic
def test_input_only_churn_costs_no_revalidation(lab: Lab, tmp_path: Path) -> None:
    r = lab.router
    r.nft(BOUNCER)
    s4 = lab.server_addr(4)
    skipped, revalidated = "not re-validated: ", "re-validated offloaded flows after"
    with offloadd(r, CONFIG, tmp_path) as d, udp_echo_server(lab.server, "::", KEEP_UDP):
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        gen = probe(lab.client, "udp", s4, KEEP_UDP, flows=6, seconds=600)
        try:
            wait_for(lambda: _offloaded(lab, KEEP_UDP, 4, 6), 60, interval=0.5,
                     what="6 offloaded udp flows")
            before = {e.id for e in _entries(lab, KEEP_UDP, 4)}
            runs0 = d.log_text().count(revalidated)
            # Like a bouncer: one element a transaction, every 0.5 s (one process).
            churn_s = float(r.out(sys.executable, BLOCKLIST, "--table", "bouncer", "--set",
                                  "blocklist", "--transactions", str(CHURN), "--per", "1",
                                  "--seconds", str(CHURN * 0.5), timeout=300))
            # Every change seen (the last one's event may still be on its way).
            wait_for(lambda: d.log_text().count(skipped) >= CHURN, 60, interval=0.3,
                     what=f"{CHURN} skipped policy changes in the log")
            time.sleep(1.5)  # a re-validation would be due 0.1 s after a change
            runs1 = d.log_text().count(revalidated)
            after = {e.id for e in _entries(lab, KEEP_UDP, 4)}
            all_offloaded = _offloaded(lab, KEEP_UDP, 4, 6)
            rv1 = _status(d)["revalidate"]
            text = http_get(r, "http://127.0.0.1:9468/metrics")

            # One element in a table with a forward chain: exactly one re-validation.
            r.nft("add element inet admin blocked4 { 203.0.113.200 }")
            wait_for(lambda: d.log_text().count(revalidated) > runs1, 60, interval=0.3,
                     what="the re-validation for the forward table's element")
            time.sleep(1.5)
            runs2 = d.log_text().count(revalidated)
            wait_for(lambda: _offloaded(lab, KEEP_UDP, 4, 6), 60, interval=0.5,
                     what="the flows offloaded again after the re-validation")
            gen.finish()
        finally:
            gen.stop()
    log = d.log_text()
    assert runs1 == runs0, f"re-validated during the churn\n{log[-3000:]}"
    assert rv1["policy_changes_skipped_total"] == CHURN, rv1
    assert rv1["revalidations_total"] == 0 and rv1["policy_changes_total"] == 0, rv1
    assert after == before and all_offloaded, "the flows left the fast path during the churn"
    assert _metric(text, "offloadd_policy_changes_skipped_total") == CHURN, text
    assert "inet bouncer" in log[log.index(skipped):]
    assert runs2 == runs1 + 1, log[-3000:]
    last = [ln for ln in log.splitlines() if revalidated in ln][-1]
    assert "1 element added in inet admin" in last, last
    print(f"input-only churn: {CHURN} elements in {churn_s:.1f} s -> 0 re-validations, "
          f"{CHURN} skipped, 6/6 flows offloaded under the same entries; one forward-table "
          "element -> 1 re-validation")
