"""A yardstick for the few tests that must bound a duration.

Why: a policy must stop an offloaded flow "promptly", and a bound tuned on one
machine fails on a slower one (the lab VM runs under TCG on machines that
differ ~2x from day to day, and a loaded CI machine is slower again). So such
a bound is derived from a reference measured in the same VM run: the time of
the work offloadd itself does to re-validate, an nftables transaction that
creates and deletes a table with a flowtable, started as a process (``nft``)
as an admin's change is. It is measured in a namespace offloadd does not
watch, so the reference is not a policy change. Tests print the reference and
the bound it gave, so the margin is in the JUnit file.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from tests.lab.netns import Netns

_TABLE = "offloadd_pace"


@dataclass(frozen=True)
class Pace:
    """The median wall time of one reference transaction in this run."""

    reference_s: float
    samples: tuple[float, ...]

    def bound(self, fixed_s: float, transactions: float) -> float:
        """``fixed_s`` (what no machine speed changes: a probe's send interval)
        plus the time of ``transactions`` reference transactions."""
        return fixed_s + transactions * self.reference_s

    def describe(self, fixed_s: float, transactions: float) -> str:
        return (f"reference transaction {self.reference_s * 1000:.0f} ms (median of "
                f"{len(self.samples)}, max {max(self.samples) * 1000:.0f} ms) -> bound "
                f"{fixed_s} s + {transactions} x reference = "
                f"{self.bound(fixed_s, transactions):.2f} s")


def measure(ns: Netns, device: str = "eth0", rounds: int = 7) -> Pace:
    """Times ``rounds`` create+delete transactions of a table with a
    flowtable on ``device`` in ``ns`` (which must not be offloadd's)."""
    create = (f"table inet {_TABLE} {{\n flowtable f {{\n hook ingress priority 0\n"
              f" devices = {{ {device} }}\n }}\n}}\n")
    samples = []
    for _ in range(rounds):
        t0 = time.monotonic()
        ns.run("nft", "-f", "-", input=create)
        ns.run("nft", "delete", "table", "inet", _TABLE)
        samples.append(time.monotonic() - t0)
    return Pace(statistics.median(samples), tuple(samples))
