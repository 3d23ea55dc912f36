"""Helpers shared by the bench cases: flow tool processes, /proc readings."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.daemon import RunningDaemon, offloadd
from tests.lab.netns import CommandError, Netns
from tests.lab.traffic import wait_for

FLOWS = str(Path(__file__).with_name("flows.py"))


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def echo_server(ns: Netns, ports: list[int], bind: str = "0.0.0.0") -> Iterator[None]:
    proc = ns.popen(sys.executable, FLOWS, "echo", "--bind", bind,
                    "--ports", ",".join(map(str, ports)),
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise CommandError(f"[{ns.name}] echo server did not start")
        yield
    finally:
        _stop(proc)


@dataclass
class HeldFlows:
    proc: subprocess.Popen[str]
    info: dict[str, Any]

    def stop(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            line = self.proc.stdout.readline()
            self.proc.wait(timeout=30)
            return dict(json.loads(line)) if line.strip() else {}
        return {}


@contextmanager
def held_flows(ns: Netns, dst: str, port: int, flows: int, *, interval: float,
               progress: Path) -> Iterator[HeldFlows]:
    proc = ns.popen(sys.executable, FLOWS, "hold", "--dst", dst, "--port", str(port),
                    "--flows", str(flows), "--interval", str(interval),
                    "--progress", str(progress),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip():
            err = proc.stderr.read() if proc.stderr else ""
            raise CommandError(f"[{ns.name}] flow holder failed: {err}")
        held = HeldFlows(proc, json.loads(line))
        yield held
        held.stop()
    finally:
        _stop(proc)


def open_flows(ns: Netns, dst: str, ports: list[int], flows: int,
               timeout: float = 900) -> dict[str, Any]:
    out = ns.out(sys.executable, FLOWS, "open", "--dst", dst,
                 "--ports", ",".join(map(str, ports)), "--flows", str(flows),
                 timeout=timeout)
    return json.loads(out)  # type: ignore[no-any-return]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat fields 14, 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_share(seconds: float) -> float:
    """The share of the machine's CPU time not idle over ``seconds`` (the
    kernel's own work included: set garbage collection, conntrack walks)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return round((b1 - b0) / max(t1 - t0, 1), 3)


def sysctl_init(key: str, value: int) -> None:
    """Sets a sysctl in the namespace this process runs in (the guest's initial one)."""
    Path("/proc/sys/" + key.replace(".", "/")).write_text(f"{value}\n")


def elapsed(t0: float) -> float:
    return round(time.monotonic() - t0, 1)


@contextmanager
def daemon(ns: Netns, config: str, workdir: Path,
           ready_timeout: float = 300) -> Iterator[tuple[RunningDaemon, float]]:
    """offloadd with a longer start-up allowance than the tests' 90 s, and its
    start-up time (process start -> "ready:" in its log) measured."""
    t0 = time.monotonic()
    with offloadd(ns, config, workdir, wait_ready=False) as d:
        try:
            wait_for(lambda: "ready:" in d.log_text() or d.proc.poll() is not None,
                     ready_timeout, interval=0.2, what="offloadd to report ready")
        except AssertionError:
            raise AssertionError(f"offloadd not ready after {ready_timeout}s:\n"
                                 f"{d.log_text()[-3000:]}") from None
        if d.proc.poll() is not None:
            raise AssertionError(f"offloadd exited {d.proc.returncode}:\n{d.log_text()}")
        yield d, time.monotonic() - t0


def modes_in_rotation(ns: Netns, workdir: Path, *, modes: tuple[str, ...], rounds: int,
                      flowtable: str, config: str, want: Mapping[str, frozenset[str]],
                      measure: Callable[[str], dict[str, Any]],
                      label: str) -> list[dict[str, Any]]:
    """Every mode measured back to back, each round starting one mode later
    (so no mode always runs first, on a cold or a warm VM): "slow" without
    offloadd, any other with offloadd started from ``config`` (``{stack}``
    set to the mode) once ``flowtable`` holds ``want[mode]``."""
    samples: list[dict[str, Any]] = []
    for r in range(rounds):
        for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
            if mode == "slow":
                sample = measure(mode)
            else:
                with daemon(ns, config.format(stack=mode), workdir) as (d, _s):
                    # The flowtable only: its ifname set holds the names the
                    # forward hook sees (the upper devices), not the lower ones.
                    wait_for(lambda d=d, m=mode: d.flowtable_devices(flowtable) == want[m], 60,
                             interval=0.3, what=f"{mode}: flowtable {flowtable} to hold "
                             f"{sorted(want[mode])}")
                    sample = measure(mode)
            sample["round"] = r
            samples.append(sample)
            print(f"  {label} round {r} {mode}: {json.dumps(sample)}", flush=True)
    return samples


def median_of(samples: list[dict[str, Any]], mode: str, key: str) -> float:
    """The median of ``key`` over the samples of ``mode``."""
    return float(statistics.median(s[key] for s in samples if s["mode"] == mode))
