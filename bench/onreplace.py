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

Then the same sends again, round after round, until a round's packets took
the fast path (at most ``--share`` of them counted by the admin's witness
chain in the forward hook): flows that keep sending, as a gateway's do. At 1M
flows on 6.12 the first round, sent within a second of the replacement, was
offloaded 0 of 10,000 (2026-12-05): the kernel was still tearing down the old
flowtable's million flows, and a flow keeps its conntrack entry's offload
bit until then, so the new flowtable cannot take it. The rounds tell how
long after the re-validation a sending flow is offloaded again.

``python -m bench.onreplace --start ns-client --start ns-server --packets N``
prints ``ready`` once subscribed, then one JSON line: when the replacement
was seen and when the first round finished (Unix time, the VM's clock, as
offloadd stamps its re-validation), and each round's end and its packets in
the forward hook.
"""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import sys
import time
from typing import Any

from offloadd.core.revalidate import ObjectKind, Transaction, Verb
from offloadd.kernel.nft import Nft
from offloadd.kernel.nftwatch import TransactionReader
from tests.lab.ftwatch import nftables_events

# The admin's counters of every forwarded packet (bench.scale's witness).
WITNESS = "chain inet admin witness"


def replaces_flowtable(tx: Transaction, table: str) -> bool:
    verbs = {c.verb for c in tx.changes
             if c.kind is ObjectKind.FLOWTABLE and c.family == "inet" and c.table == table}
    return verbs == {Verb.ADD, Verb.DELETE}


def witness_counts(items: list[dict[str, Any]]) -> list[int]:
    """The witness's counters in rule order (originals, replies), from its
    JSON listing (``nft -j list`` WITNESS or libnftables')."""
    return [e["counter"]["packets"] for i in items if "rule" in i
            for e in i["rule"]["expr"] if "counter" in e]


def forwarded(nft: Nft) -> int:
    return sum(witness_counts(nft.list_json(WITNESS)))


def send_round(starters: list[subprocess.Popen[str]]) -> None:
    """Each namespace's prepared pktgen run once, in order (a start returns
    when its packets are sent)."""
    for starter in starters:
        assert starter.stdin is not None and starter.stdout is not None
        starter.stdin.write("go\n")
        starter.stdin.flush()
        if starter.stdout.readline().strip() != "sent":
            raise RuntimeError("pktgen did not start")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="offloadd")
    ap.add_argument("--start", action="append", default=[],
                    help="a namespace whose prepared pktgen devices to start (in order)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--packets", type=int, required=True,
                    help="packets one round sends (all namespaces together)")
    ap.add_argument("--share", type=float, default=0.01,
                    help="a round whose forwarded packets are at most this share ends it")
    ap.add_argument("--rounds-for", type=float, default=120,
                    help="seconds after the replacement to send rounds for at most")
    args = ap.parse_args()
    # One shell per namespace, started now and waiting on its stdin: at the
    # replacement each only writes to pktgen (two process starts under TCG
    # on a box 85 % busy took 16 s). pktgen keeps a device's setup between
    # runs, so each round sends the same packets.
    starters = [subprocess.Popen(
        ["ip", "netns", "exec", ns, "sh", "-c",
         "while read go; do echo start > /proc/net/pktgen/pgctrl && echo sent; done"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for ns in args.start]
    nft = Nft()
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
    rounds: list[tuple[float, int]] = []
    try:
        while True:
            before = forwarded(nft)
            send_round(starters)
            rounds.append((time.time(), forwarded(nft) - before))
            if ((len(rounds) > 1 and rounds[-1][1] <= args.share * args.packets)
                    or time.time() - seen > args.rounds_for):
                break
    except RuntimeError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    finally:
        for starter in starters:
            if starter.stdin is not None:
                starter.stdin.close()
            starter.wait(timeout=60)
    print(json.dumps({"seen": seen, "sent": rounds[0][0], "rounds": rounds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
