"""Runs the real offloadd inside a lab namespace, as an operator would.

The daemon is started with ``ip netns exec`` so it sees only that namespace's
links and tables; its stderr goes to a log file that a failing test prints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offloadd.core.configparse import load_config
from offloadd.service.controlclient import request
from tests.lab.netns import Netns
from tests.lab.nftns import nft_list
from tests.lab.traffic import SETTLE_S, wait_for


@dataclass
class RunningDaemon:
    ns: Netns
    proc: subprocess.Popen[str]
    config: Path
    log: Path
    table: str = "offloadd"

    def cpu_seconds(self) -> float:
        """The daemon's CPU time so far (user + system), from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def members(self, flowtable: str) -> tuple[frozenset[str] | None, frozenset[str] | None]:
        """(flowtable devices, ifname set elements) as the kernel lists them now.

        The ruleset tersely, then the one ifname set with its elements: a
        full listing carries the gate's elements too (2M in the scale bench:
        `nft -j list ruleset` ran past 300 s under TCG)."""
        devs = elems = None
        family = None
        for item in nft_list(self.ns, "ruleset", terse=True):
            ft = item.get("flowtable")
            if ft and ft["table"] == self.table and ft["name"] == flowtable:
                dev = ft.get("dev", [])
                devs = frozenset([dev] if isinstance(dev, str) else dev)
            st = item.get("set")
            if st and st["table"] == self.table and st["name"] == f"{flowtable}_ifs":
                family = st["family"]
        if family is not None:
            for item in nft_list(self.ns, f"set {family} {self.table} {flowtable}_ifs"):
                st = item.get("set")
                if st:
                    el = st.get("elem", [])
                    elems = frozenset([el] if isinstance(el, str) else el)
        return devs, elems

    def flowtable_devices(self, name: str) -> frozenset[str] | None:
        return self.members(name)[0]

    def wait_devices(self, flowtable: str, want: set[str] | frozenset[str],
                     timeout: float = SETTLE_S) -> None:
        """Waits until flowtable and its ifname set both hold exactly ``want``."""
        def ok() -> bool:
            return self.members(flowtable) == (frozenset(want), frozenset(want))
        try:
            wait_for(ok, timeout, interval=0.3,
                     what=f"flowtable {flowtable} devices == {sorted(want)}")
        except AssertionError as e:
            raise AssertionError(f"{e}; now {self.flowtable_devices(flowtable)}\n"
                                 f"--- offloadd log ---\n{self.log_text()[-3000:]}") from None

    def status(self) -> dict[str, Any]:
        """What ``offloadctl --json status`` prints of a running daemon: its
        control socket's status reply, asked from this process (an offloadctl
        process costs seconds in the emulated VM; tests that poll a counter ask
        this way, tests of the CLI run offloadctl). offloadd answers on its
        loop, after whatever transaction is under way: a re-validation's took
        4 s of a slow day's VM, and the answer 10+ s; so the wait is SETTLE_S."""
        sock = load_config(self.config).control.socket
        report: dict[str, Any] = request(sock, "status", timeout=SETTLE_S)
        report["daemon"]["running"] = True
        return report

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Runs offloadctl (in the daemon's namespace) against this daemon's config."""
        return self.ns.run(sys.executable, "-m", "offloadd.cli.ctl", "--config", str(self.config),
                           *args, check=check)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("offloadd did not stop on SIGTERM") from None
        return self.proc.returncode


def table_exists(ns: Netns, table: str = "offloadd", family: str = "inet") -> bool:
    return any(i.get("table", {}).get("name") == table and i["table"]["family"] == family
               for i in nft_list(ns, "tables"))


# How much of the daemon's (debug) log a failing test prints.
LOG_TAIL = 300


@contextmanager
def offloadd(ns: Netns, config_text: str, workdir: Path, *, table: str = "offloadd",
             wait_ready: bool = True,
             env: dict[str, str] | None = None) -> Iterator[RunningDaemon]:
    config = workdir / "offloadd.toml"
    if "[control]" not in config_text:
        # Each test's daemon gets its own control socket.
        config_text += f'\n[control]\nsocket = "{workdir}/control.sock"\n'
    config.write_text(config_text)
    log = workdir / f"offloadd-{time.monotonic_ns()}.log"
    with log.open("w") as logf:
        proc = ns.popen(sys.executable, "-m", "offloadd.cli.run", "--config", str(config),
                        "--log-level", "debug", stdout=logf, stderr=subprocess.STDOUT,
                        env={**os.environ, **(env or {})})
    d = RunningDaemon(ns, proc, config, log, table)
    try:
        if wait_ready:
            try:
                wait_for(lambda: "ready:" in d.log_text() or proc.poll() is not None, 90,
                         what="offloadd to report ready")
            except AssertionError:
                raise AssertionError(f"offloadd not ready:\n{d.log_text()}") from None
            if proc.poll() is not None:
                raise AssertionError(f"offloadd exited {proc.returncode}:\n{d.log_text()}")
        yield d
    except BaseException:
        # A failing test's daemon log and table go to its captured output
        # (JUnit): the log file lives in the guest's /tmp and dies with it.
        lines = d.log_text().splitlines()
        table_now = ns.run("nft", "-t", "list", "table", "inet", table, check=False)
        print(f"--- offloadd log ({log}, last {min(len(lines), LOG_TAIL)} of {len(lines)} "
              "lines) ---\n" + "\n".join(lines[-LOG_TAIL:]) + f"\n--- nft list table inet "
              f"{table} ---\n{table_now.stdout or table_now.stderr}")
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
