"""Hotplug case: link appears → attached (100 samples); 500 links at once;
device appears → first offloaded packet, by offloadd and by the kernel.

Runs the real daemon in the lab router. The burst's transaction count comes
from the daemon itself (offloadctl --json status), so it counts what was
really sent to the kernel. The last part (bench/first_offload_probe.py)
times a flow's first offloaded packet after its device appears under a name
offloadd attaches (``first_offload_ms_daemon_*``), on a kernel with name
hooks under a name declared to the kernel ahead of the device
(``first_offload_ms_kernel_*``), and where kernel and nftables hook by prefix
under a name a kernel wildcard covers (``first_offload_ms_wildcard_*``),
interleaved in one run. That part alone is the ``first_offload`` case: on a
root whose nftables has wildcards (``lab/vm-bench.sh 7 --userspace forky
first_offload``) the attach and burst parts would time the kernel, not
offloadd, since their ``"wan*"`` becomes a kernel wildcard there.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tests.lab.daemon import offloadd
from tests.lab.topology import Lab, lab_topology
from tests.lab.traffic import udp_echo_server

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
"""
# "lan?" and "wan?": patterns offloadd matches itself on every kernel and
# nftables ("wan*" would be a kernel wildcard where nftables has them).
FIRST_OFFLOAD_CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan?", "wan?", "up9", "wild*"]
"""
DAEMON_TARGET = "wan9"  # selected by the pattern: offloadd attaches it
KERNEL_TARGET = "up9"  # an exact name: declared to the kernel where it has name hooks
WILDCARD_TARGET = "wild9"  # "wild*": a kernel wildcard where kernel and nftables have them
BURST = 500
# A burst that has not converged by then will not: the daemon retries the same
# refused transaction (e.g. EFBIG: nf_tables takes at most 256 devices per
# flowtable hook message).
BURST_TIMEOUT = 240


def _transactions(d: Any) -> int:
    return int(json.loads(d.ctl("--json", "status", check=True).stdout)
               ["reconcile"]["transactions_total"])


def _stats(prefix: str, ms: list[float | None]) -> dict[str, Any]:
    got = [m for m in ms if m is not None]
    return {f"{prefix}_p50": round(statistics.median(got), 1) if got else None,
            f"{prefix}_max": round(max(got), 1) if got else None,
            f"{prefix}_missed": len(ms) - len(got)}


def first_offload(lab: Lab, workdir: Path, samples: int = 10) -> dict[str, Any]:
    """Device appears → first offloaded packet: by offloadd, by a name declared to
    the kernel (name hooks) and by a kernel wildcard (wildcard hooks)."""
    r = lab.router
    r.run("ip", "link", "set", "wan0", "down")
    r.run("ip", "link", "set", "wan0", "name", "spare0")
    r.run("ip", "link", "set", "spare0", "up")
    with offloadd(r, FIRST_OFFLOAD_CONFIG, workdir) as d, \
            udp_echo_server(lab.server, "0.0.0.0"):
        status = json.loads(d.ctl("--json", "status", check=True).stdout)
        hooks = bool(status["kernel"]["name_hooks"])
        # The daemon's own verdict, not a guess: "wild*" went to the kernel as is.
        wild = "wild*" in status["flowtables"][0]["wildcards"]
        targets = ([DAEMON_TARGET] + ([KERNEL_TARGET] if hooks else [])
                   + ([WILDCARD_TARGET] if wild else []))
        d.wait_devices("ft", {"lan0", "lan1"} | ({KERNEL_TARGET} if hooks else set())
                       | ({"wild*"} if wild else set()))
        probe = r.run(sys.executable, "-m", "bench.first_offload_probe", "--device", "spare0",
                      "--targets", ",".join(targets), "--client-ns", lab.client.name,
                      "--dst", lab.server_addr(4), "--samples", str(samples), timeout=900)
    ms = json.loads(probe.stdout)
    res: dict[str, Any] = {"name_hooks": hooks, "wildcard_hooks": wild,
                           "first_offload_samples": ms}
    res.update(_stats("first_offload_ms_daemon", ms[DAEMON_TARGET]))
    if hooks:
        res.update(_stats("first_offload_ms_kernel", ms[KERNEL_TARGET]))
    if wild:
        res.update(_stats("first_offload_ms_wildcard", ms[WILDCARD_TARGET]))
    return res


def run_first_offload(workdir: Path) -> dict[str, Any]:
    """The ``first_offload`` case: the last part of ``hotplug`` alone."""
    with lab_topology() as lab:
        first = first_offload(lab, workdir)
    samples = first.pop("first_offload_samples")
    return {"case": "first_offload", "samples": {"first_offload_ms": samples}, **first}


def run(workdir: Path, samples: int = 100) -> dict[str, Any]:
    with lab_topology() as lab, offloadd(lab.router, CONFIG, workdir) as d:
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        probe = lab.router.run(sys.executable, "-m", "bench.attach_probe",
                               "--samples", str(samples), timeout=1800)
        attach = json.loads(probe.stdout)["attach_ms"]
        tx0 = _transactions(d)
        batch = "".join(f"link add lanb{i} type veth peer name qb{i}\n" for i in range(BURST))
        t0 = time.monotonic()
        lab.router.run("ip", "-batch", "-", input=batch, timeout=600)
        # How long the kernel took to create them: a burst that lasts longer
        # than the watcher's max_delay reaches the daemon as several snapshots.
        create_s = round(time.monotonic() - t0, 2)
        want = {"lan0", "lan1", "wan0"} | {f"lanb{i}" for i in range(BURST)}
        error = None
        try:
            d.wait_devices("ft", want, timeout=BURST_TIMEOUT)
            burst_s: float | None = round(time.monotonic() - t0, 2)
        except AssertionError:
            burst_s = None
            errors = [ln for ln in d.log_text().splitlines() if "ERROR" in ln]
            error = (f"{BURST} links not attached within {BURST_TIMEOUT}s; "
                     f"last daemon error: {errors[-1] if errors else 'none'}")
        attached = len(d.flowtable_devices("ft") or ())
        tx = _transactions(d) - tx0
    res: dict[str, Any] = {
        "case": "hotplug",
        "samples": {"attach_ms": attach},
        "attach_ms_p50": round(statistics.median(attach), 1),
        "attach_ms_max": round(max(attach), 1),
        "burst500_s": burst_s,
        "burst500_tx": tx,
        "burst500_attached": attached,
        "burst500_create_s": create_s,
    }
    if error:
        res["error"] = error
    with lab_topology() as lab:
        first = first_offload(lab, workdir)
    res["samples"]["first_offload_ms"] = first.pop("first_offload_samples")
    res.update(first)
    return res
