"""`make bench` entry inside the lab VM: runs the cases, writes JSON and a summary.

Each case returns its raw samples and derived figures; the file also records
the kernel and the date, since only ratios measured in one run compare.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    churn,
    dataplane,
    footprint,
    gate,
    hotplug,
    policy,
    scale,
    scrape,
    stack,
    stackgw,
    survival,
)
from bench.common import sysctl_init

CASES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "dataplane": dataplane.run,
    "hotplug": hotplug.run,
    "first_offload": hotplug.run_first_offload,
    "survival": survival.run,
    "policy": policy.run,
    "scrape": scrape.run,
    "footprint": footprint.run,
    "gate": gate.run,
    "stack": stack.run,
    "stack_pppoe": stackgw.run_alone,
    "churn": churn.run,
    "scale": scale.run,
}
# first_offload is hotplug's last part alone (for a root whose nftables turns
# hotplug's "wan*" into a kernel wildcard): not run twice by default;
# stack_pppoe takes about 10 minutes (bench/stackgw.py), scale about 30 and a
# guest with 8 GiB (bench/scale.py): each on its own.
DEFAULT_CASES = [c for c in CASES if c not in ("first_offload", "stack_pppoe", "scale")]
# Conntrack's size limits live in the initial namespace only (the guest's),
# and must be set before the namespaces that use them exist.
CT_MAX = 400_000
CT_BUCKETS = 131_072


def prepare_guest(cases: list[str]) -> None:
    subprocess.run(["modprobe", "nf_conntrack"], check=False)
    big = "scale" in cases
    sysctl_init("net.netfilter.nf_conntrack_max", scale.CT_MAX if big else CT_MAX)
    sysctl_init("net.netfilter.nf_conntrack_buckets", scale.CT_BUCKETS if big else CT_BUCKETS)
    if big:
        sysctl_init("net.core.netdev_max_backlog", scale.BACKLOG)
    # Inherited by every process started from here (sockets of many flows).
    resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("cases", nargs="*", default=DEFAULT_CASES)
    ap.add_argument("--scale-flows", type=int, default=scale.FLOWS,
                    help="flows of the scale case (a rehearsal: fewer)")
    ap.add_argument("--scale-soak", type=float, default=scale.SOAK_S,
                    help="seconds of the scale case's soak")
    a = ap.parse_args()
    scaled: Callable[[Path], dict[str, Any]] = functools.partial(
        scale.run, flows=a.scale_flows, soak_s=a.scale_soak)
    cases = {**CASES, "scale": scaled}
    unknown = [c for c in a.cases if c not in CASES]
    if unknown:
        print(f"bench: unknown case(s) {unknown}; known: {sorted(CASES)}", file=sys.stderr)
        return 2
    prepare_guest(a.cases)
    results: list[dict[str, Any]] = []
    start = time.monotonic()
    doc: dict[str, Any] = {"kernel": platform.release(),
                           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "cpus": os.cpu_count(), "cases": results}
    for name in a.cases:
        t0 = time.monotonic()
        print(f"bench {name}: running", flush=True)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                res = {"case": name, **cases[name](Path(tmp))}
        except Exception as e:
            traceback.print_exc()
            res = {"case": name, "error": f"{type(e).__name__}: {e}"[:4000]}
        res["wall_s"] = round(time.monotonic() - t0, 1)
        results.append(res)
        figures = {k: v for k, v in res.items() if k not in ("samples", "case")}
        print(f"bench {name}: {json.dumps(figures)}", flush=True)
        doc["guest_wall_s"] = round(time.monotonic() - start, 1)
        # Written after every case: a run cut short still leaves what it measured.
        a.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
