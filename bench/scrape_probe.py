"""Runs inside the router namespace: one metrics scrape vs ``conntrack -L`` counting.

Alternating rounds; each times an HTTP GET of the daemon's /metrics and
``conntrack -L -u OFFLOAD | wc -l`` (what an operator would run), and records
what each says the number of offloaded flows is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request

METRICS_URL = "http://127.0.0.1:9468/metrics"


def scrape(url: str) -> tuple[float, int, int, float | None, int | None]:
    """(seconds, offloaded flows per the metric, response bytes, the count's age:
    offloadd serves it from its last conntrack walk, the gate's elements in
    both sets at its last count, if counted yet)."""
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=300) as resp:
        body = resp.read().decode()
    dt = time.monotonic() - t0
    total, age, gate = 0.0, None, None
    for line in body.splitlines():
        if line.startswith("offloadd_offloaded_flows{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("offloadd_offloaded_flows_age_seconds "):
            age = float(line.rsplit(" ", 1)[1])
        elif line.startswith("offloadd_gate_elements{"):
            gate = (gate or 0) + int(float(line.rsplit(" ", 1)[1]))
    return dt, int(total), len(body), age, gate


def conntrack_count() -> tuple[float, int]:
    t0 = time.monotonic()
    out = subprocess.run("conntrack -L -u OFFLOAD 2>/dev/null | wc -l", shell=True,
                         capture_output=True, text=True, check=True).stdout
    return time.monotonic() - t0, int(out.strip())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=METRICS_URL)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rounds = []
    for r in range(a.rounds):
        row: dict[str, float | int | None] = {"round": r}
        for what in (("scrape", "conntrack") if r % 2 == 0 else ("conntrack", "scrape")):
            if what == "scrape":
                dt, n, size, age, gate = scrape(a.url)
                row.update(scrape_s=round(dt, 3), metric_flows=n, scrape_bytes=size,
                           count_age_s=age if age is None else round(age, 3),
                           gate_elements=gate)
            else:
                dt, n = conntrack_count()
                row.update(conntrack_s=round(dt, 3), conntrack_flows=n)
        rounds.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    json.dump({"rounds": rounds}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
