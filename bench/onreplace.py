"""Runs inside the router namespace: starts prepared pktgen sends the moment
offloadd's flowtable is replaced.

Why: "offloaded again within 10 s of a re-validation" needs packets right
after the replacement. At 1M flows under TCG the box is ~90 % busy, and the
harness's own steps (a status poll each second, the generator set up through
a shell) took 18-29 s before the first packet left. Here the generators are
configured ahead, a shell waits in each generator's namespace, this process is
subscribed to nf_tables' events before the change that causes the
re-validation, and the transaction that deletes and
adds a flowtable of the table (a re-validation's replacement; an attach only
adds devices) starts them, in the order given (the original direction
first: the gate offloads a flow at its reply).

``python -m bench.onreplace --start ns-client --start ns-server`` prints
``ready`` once subscribed, then one JSON line: when the replacement was seen
and when the last generator finished (Unix time, the VM's clock, as offloadd
stamps its re-validation).
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
import time

from offloadd.core.revalidate import ObjectKind, Transaction, Verb
from offloadd.kernel.nftwatch import TransactionReader
from tests.lab.ftwatch import nftables_events


def replaces_flowtable(tx: Transaction, table: str) -> bool:
    verbs = {c.verb for c in tx.changes
             if c.kind is ObjectKind.FLOWTABLE and c.family == "inet" and c.table == table}
    return verbs == {Verb.ADD, Verb.DELETE}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="offloadd")
    ap.add_argument("--start", action="append", default=[],
                    help="a namespace whose prepared pktgen devices to start (in order)")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    # One shell per namespace, started now and waiting on its stdin: at the
    # replacement each only writes to pktgen (two process starts under TCG
    # on a box 85 % busy took 16 s).
    starters = [subprocess.Popen(
        ["ip", "netns", "exec", ns, "sh", "-c",
         "read go && echo start > /proc/net/pktgen/pgctrl && echo sent"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for ns in args.start]
    events = nftables_events()
    reader = TransactionReader()
    print("ready", flush=True)
    deadline = time.monotonic() + args.timeout
    seen = 0.0
    while not seen:
        left = deadline - time.monotonic()
        if left <= 0:
            for starter in starters:
                starter.kill()
            print(json.dumps({"error": f"no replacement of a flowtable of {args.table} "
                                       f"in {args.timeout:.0f} s"}), flush=True)
            return 1
        select.select([events], [], [], min(left, 1.0))
        try:
            data = events.recv(1 << 16)
        except BlockingIOError:
            continue
        except OSError:  # an overrun: what it dropped may have been the replacement
            reader = TransactionReader()
            continue
        if any(replaces_flowtable(tx, args.table) for tx in reader.feed(data)):
            seen = time.time()
    for ns, starter in zip(args.start, starters, strict=True):
        assert starter.stdin is not None and starter.stdout is not None
        starter.stdin.write("go\n")
        starter.stdin.flush()
        if starter.stdout.readline().strip() != "sent":
            print(json.dumps({"error": f"pktgen in {ns} did not start"}), flush=True)
            return 1
        starter.wait(timeout=60)
    print(json.dumps({"seen": seen, "sent": time.time()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
