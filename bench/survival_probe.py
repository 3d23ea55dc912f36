"""Runs inside the router namespace: device churn under N long-lived offloaded flows.

One process does the whole churn so no sample pays a process start: links
come and go through pyroute2, the flowtable and the witness set are read with
libnftables, conntrack through the conntrack binary (the independent oracle).

Witness: table ``inet witness`` has a forward chain at priority -300 that puts
every flow whose packet took the slow path into a dynamic set (keyed on the
client's address and port, in both directions). An offloaded packet never
reaches the forward hook, so a flow absent from the set never left the fast
path while the set was filled.

Each cycle: add a matching device, wait until it is in the flowtable, let
every flow send once more, read+flush the set (join phase); delete the
device, wait until it left, let every flow send again, read+flush (leave
phase), and once every flow is offloaded again read+flush once more (still
the leave phase: a repair's slow-path trip is the removal's cost); then
count the flows still offloaded, and those whose conntrack entry
was never destroyed: conntrack's own DESTROY events (``conntrack -E``) are the
identity oracle, the ctnetlink ids a second view.
With ``--rebuild`` the table is additionally rebuilt after each change the
way rebuild-on-event tools do (delete table + full listing, one transaction).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from pyroute2 import IPRoute

from offloadd.kernel.nft import Nft
from tests.lab.conntrack import parse_line

WITNESS = """
table inet witness {
    set slow { type ipv4_addr . inet_service; flags dynamic; size 262144; }
    chain slowpath {
        type filter hook forward priority -300; policy accept;
        udp dport %(port)d update @slow { ip saddr . udp sport }
        udp sport %(port)d update @slow { ip daddr . udp dport }
    }
}
"""


def _devices(nft: Nft, table: str, flowtable: str) -> set[str]:
    for item in nft.list_json(f"flowtable inet {table} {flowtable}"):
        ft = item.get("flowtable")
        if ft:
            dev = ft.get("dev", [])
            return {dev} if isinstance(dev, str) else set(dev)
    return set()


def _wait_member(nft: Nft, table: str, ft: str, name: str, present: bool) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        if (name in _devices(nft, table, ft)) == present:
            return time.monotonic() - t0
        time.sleep(0.01)
    raise TimeoutError(f"{name} {'never joined' if present else 'never left'} {ft}")


def _rounds(progress: str) -> int:
    try:
        with open(progress) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


def _after_change(progress: str) -> float:
    """Waits until every flow sent at least one datagram after now.

    Two more completed rounds: the second started after this moment. Then a
    little for the last datagrams (and their echoes) to cross the router.
    """
    t0 = time.monotonic()
    want = _rounds(progress) + 2
    while _rounds(progress) < want:
        if time.monotonic() - t0 > 60:
            raise TimeoutError("the flow holder stopped sending")
        time.sleep(0.05)
    time.sleep(0.3)
    return time.monotonic() - t0


def _slow_ports(nft: Nft) -> set[int]:
    ports: set[int] = set()
    for item in nft.list_json("set inet witness slow"):
        st = item.get("set")
        if not st:
            continue
        for el in st.get("elem", []):
            val = el.get("elem", {}).get("val", el) if isinstance(el, dict) else el
            if isinstance(val, dict) and "concat" in val:
                ports.add(int(val["concat"][1]))
    nft.run("flush set inet witness slow")
    return ports


def offloaded_ids(port: int) -> dict[int, int]:
    """client source port -> conntrack id, for the offloaded flows to `port`."""
    out = subprocess.run(["conntrack", "-L", "-p", "udp", "--dport", str(port), "-o", "id"],
                         capture_output=True, text=True, check=False).stdout
    ids = {}
    for line in out.splitlines():
        e = parse_line(line)
        if e is not None and e.offloaded:
            ids[e.sport] = e.id
    return ids


REOFFLOAD_WITHIN_S = 5.0


def _reoffloaded(port: int, base: dict[int, int], since: float
                 ) -> tuple[dict[int, int], float | None]:
    """Offloaded flows once every flow offloaded at the start is again (or after
    REOFFLOAD_WITHIN_S since the removal), and how long that took (None: never)."""
    while True:
        now = offloaded_ids(port)
        took = time.monotonic() - since
        if all(p in now for p in base):
            return now, round(took, 2)
        if took > REOFFLOAD_WITHIN_S:
            return now, None
        time.sleep(0.1)


class DestroyWatch:
    """``conntrack -E -e DESTROY`` for the flows' port, in the background."""

    def __init__(self, port: int, path: str) -> None:
        self.path = path
        self._out = open(path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["conntrack", "-E", "-e", "DESTROY", "-p", "udp", "--dport", str(port)],
            stdout=self._out, stderr=subprocess.DEVNULL)

    def destroyed(self) -> set[int]:
        """Client source ports of the entries destroyed so far."""
        self._out.flush()
        ports = set()
        with open(self.path) as f:
            for line in f:
                e = parse_line(line.split("]", 1)[-1].strip() if line.startswith("[") else line)
                if e is not None:
                    ports.add(e.sport)
        return ports

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._out.close()


def main() -> int:  # noqa: PLR0915
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="offloadd")
    ap.add_argument("--flowtable", default="ft")
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--ports", required=True, help="file with the flows' client ports (JSON)")
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--progress", required=True,
                    help="the flow holder's file of completed send rounds")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--prefix", default="lanc")
    a = ap.parse_args()
    with open(a.ports) as f:
        flows = set(json.load(f))
    nft = Nft()
    try:
        nft.list_json("table inet witness")
    except Exception:
        nft.run(WITNESS % {"port": a.port})
    watch = DestroyWatch(a.port, a.progress + ".destroy")
    time.sleep(0.5)  # subscribed before the first change
    base = {p: i for p, i in offloaded_ids(a.port).items() if p in flows}
    _slow_ports(nft)

    def rebuild() -> None:
        listing = nft.list_text(f"table inet {a.table}")
        nft.run(f"delete table inet {a.table}\n{listing}")

    prev = base
    join_slow: set[int] = set()
    leave_slow: set[int] = set()
    cycles: list[dict[str, Any]] = []
    for c in range(a.cycles):
        name = f"{a.prefix}{c}"
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="veth", peer=f"{a.prefix}p{c}")
        attach_s = _wait_member(nft, a.table, a.flowtable, name, True)
        if a.rebuild:
            rebuild()
        wait_s = _after_change(a.progress)
        js = _slow_ports(nft) & flows
        join_slow |= js
        after_join = offloaded_ids(a.port)
        kept_join = sum(1 for p, i in prev.items() if after_join.get(p) == i)
        with IPRoute() as ipr:
            ipr.link("del", ifname=name)
        detach_at = time.monotonic()
        detach_s = _wait_member(nft, a.table, a.flowtable, name, False)
        if a.rebuild:
            rebuild()
        wait_s += _after_change(a.progress)
        ls = _slow_ports(nft) & flows
        leave_slow |= ls
        # Where the kernel leaves flows behind (7.3), offloadd's repair needs
        # its check (1 s after the removal) and each flow's next packet.
        now, reoffload_s = _reoffloaded(a.port, base, detach_at)
        # Trips after the leave phase's read until the flows are offloaded
        # again (a repair on 7.3) belong to the removal, not to the next join.
        ls = ls | (_slow_ports(nft) & flows)
        leave_slow |= ls
        destroyed = watch.destroyed() & flows
        alive = sum(1 for p in base if p in now and p not in destroyed)
        same = sum(1 for p, i in base.items() if now.get(p) == i)
        kept_leave = sum(1 for p, i in prev.items() if now.get(p) == i)
        prev = {p: i for p, i in now.items() if p in flows}
        cycles.append({"cycle": c, "attach_s": round(attach_s, 3), "detach_s": round(detach_s, 3),
                       "join_slow_flows": len(js), "leave_slow_flows": len(ls),
                       "offloaded_same_entry": alive, "destroyed_so_far": len(destroyed),
                       "offloaded_same_id": same,
                       "offloaded_now": sum(1 for p in now if p in flows),
                       "id_kept_join": kept_join, "id_kept_leave": kept_leave,
                       "reoffload_s": reoffload_s,
                       "traffic_wait_s": round(wait_s, 2)})
        print(json.dumps(cycles[-1]), file=sys.stderr, flush=True)
    watch.stop()
    json.dump({"flows": len(flows), "offloaded_at_start": len(base), "cycles": cycles,
               "join_slow_flows": len(join_slow), "leave_slow_flows": len(leave_slow)},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
