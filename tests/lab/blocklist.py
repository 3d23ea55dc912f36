"""Run inside a lab namespace: a blocklist tool adding set elements in a burst.

Like crowdsec or fail2ban with a large ban list: TRANSACTIONS nf_tables
transactions of PER addresses each, evenly paced over SECONDS, through
libnftables in this one process (no process start per transaction, so the
pace holds even in an emulated VM). Prints the seconds it took.
"""

from __future__ import annotations

import argparse
import sys
import time

import nftables


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="inet")
    ap.add_argument("--table", required=True)
    ap.add_argument("--set", required=True)
    ap.add_argument("--transactions", type=int, default=100)
    ap.add_argument("--per", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    nft = nftables.Nftables()
    t0 = time.monotonic()
    for i in range(a.transactions):
        elems = ", ".join(f"10.{(i * a.per + j) >> 16 & 255}.{(i * a.per + j) >> 8 & 255}."
                          f"{(i * a.per + j) & 255}" for j in range(a.per))
        rc, _out, err = nft.cmd(f"add element {a.family} {a.table} {a.set} {{ {elems} }}")
        if rc != 0:
            print(f"blocklist: transaction {i} refused: {err.strip()}", file=sys.stderr)
            return 1
        # Evenly paced: transaction i+1 starts at (i+1) * seconds / transactions.
        delay = t0 + (i + 1) * a.seconds / a.transactions - time.monotonic()
        if delay > 0 and i + 1 < a.transactions:
            time.sleep(delay)
    print(f"{time.monotonic() - t0:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
