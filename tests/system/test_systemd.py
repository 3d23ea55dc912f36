"""Full-system test: offloadd under systemd as PID 1, installed as a package is.

Runs inside the VM that lab/system-test.sh boots (a debootstrap root, offloadd
in /opt/offloadd from the wheel, the shipped unit with only ExecStart and a
test WatchdogSec=5 in drop-ins), as root, started by offloadd-systemtest.service
once the system is up. Never collected on the host: tests/unit is the unit
test path, and these tests need a systemd that is PID 1.

The tests run in file order and share one system: start, hardening, reload,
bad reload, traffic, watchdog, stop.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

UNIT = "offloadd.service"
CONFIG = Path("/etc/offloadd/offloadd.toml")
TABLE = "offloadd"
CAP_NET_ADMIN = 1 << 12
# systemd's DynamicUser= range (systemd 252).
DYNAMIC_UIDS = range(61184, 65520)

T = TypeVar("T")

pytestmark = pytest.mark.skipif(
    not Path("/run/systemd/system").is_dir() or os.getpid() == 1 or os.geteuid() != 0,
    reason="needs root on a system booted with systemd (lab/system-test.sh)")


def run(*args: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def show(*props: str) -> dict[str, str]:
    out = run("systemctl", "show", UNIT, *(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def flowtables() -> dict[str, set[str]] | None:
    """Flowtable name -> devices in offloadd's table; None if there is no table."""
    proc = subprocess.run(["nft", "-j", "list", "table", "inet", TABLE],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        return None
    fts: dict[str, set[str]] = {}
    for obj in json.loads(proc.stdout)["nftables"]:
        ft = obj.get("flowtable")
        if ft is not None:
            dev = ft.get("dev", [])
            fts[ft["name"]] = {dev} if isinstance(dev, str) else set(dev)
    return fts


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class Journal:
    """The journal from now on (offloadd's entries and systemd's about it)."""

    def __init__(self) -> None:
        out = run("journalctl", "--show-cursor", "-n", "0", "--no-pager")
        m = re.search(r"-- cursor: (\S+)", out)
        self._cursor = m.group(1) if m else None

    def text(self) -> str:
        # The whole journal, not -u: a message sent just before the process
        # exits can reach journald after its cgroup is gone (no _SYSTEMD_UNIT),
        # and PID 1's watchdog message did not match UNIT= here. The patterns
        # looked for are specific enough.
        args = ["journalctl", "--no-pager", "-o", "cat"]
        if self._cursor:
            args.append(f"--after-cursor={self._cursor}")
        return run(*args)

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        return wait_for(f"journal line /{pattern}/ (so far:\n{self.text()})",
                        lambda: re.search(pattern, self.text()) and self.text(), timeout)


def write_config(devices: list[str], *, bad: bool = False) -> None:
    devs = ", ".join(json.dumps(d) for d in devices)
    text = f"""\
[daemon]
table = "{TABLE}"
family = "inet"
priority = "auto"
on_exit = "remove"

[metrics]
listen = "127.0.0.1:9468"
enabled = true

[control]
socket = "/run/offloadd/control.sock"
group = ""

[[flowtable]]
name = "lan"
devices = [{devs}]
protocols = ["tcp", "udp"]
counter = true
hardware = "off"
"""
    if bad:
        # Valid TOML, invalid offloadd config: a second flowtable of the same name.
        text += '\n[[flowtable]]\nname = "lan"\ndevices = ["nothere"]\n'
    tmp = CONFIG.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(CONFIG)


def ip(*args: str) -> None:
    run("ip", *args)


@pytest.fixture(scope="module", autouse=True)
def lab() -> Iterator[None]:
    """A router (this, the initial netns) between netns a (via lan0) and b (via wan0),
    plus a dummy lan1: what offloadd is configured to manage."""
    for ns in ("a", "b"):
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    ip("link", "add", "lan0", "type", "veth", "peer", "name", "a0", "netns", "a")
    ip("link", "add", "wan0", "type", "veth", "peer", "name", "b0", "netns", "b")
    ip("link", "add", "lan1", "type", "dummy")
    for dev, addr in (("lan0", "10.1.0.1/24"), ("wan0", "10.2.0.1/24")):
        ip("addr", "add", addr, "dev", dev)
        ip("link", "set", dev, "up")
    ip("link", "set", "lan1", "up")
    for ns, dev, addr, gw in (("a", "a0", "10.1.0.2/24", "10.1.0.1"),
                              ("b", "b0", "10.2.0.2/24", "10.2.0.1")):
        ip("-n", ns, "addr", "add", addr, "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
        ip("-n", ns, "route", "add", "default", "via", gw)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    write_config(["lan*"])
    yield
    run("systemctl", "stop", UNIT, check=False)
    for ns in ("a", "b"):
        run("ip", "netns", "del", ns, check=False)


def test_flowtable_modules_loaded_at_boot() -> None:
    # The service cannot modprobe (no CAP_SYS_MODULE): modules-load.d did it.
    for mod in ("nf_flow_table", "nf_flow_table_inet", "nft_flow_offload"):
        assert Path("/sys/module", mod).exists(), f"{mod} not loaded at boot"
    assert show("ActiveState")["ActiveState"] == "inactive"
    assert flowtables() is None


def test_start_is_active_only_after_ready() -> None:
    """Type=notify: active only once READY=1 came, which is after the first
    reconcile put the table in place. Sampled while it starts under TCG."""
    journal = Journal()
    run("systemctl", "start", "--no-block", UNIT)
    samples: list[tuple[str, bool]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = show("ActiveState")["ActiveState"]
        fts = flowtables()  # read after the state: active must imply the table
        samples.append((state, fts is not None))
        if state == "active":
            assert fts == {"lan": {"lan0", "lan1"}}, f"active, but flowtables are {fts}"
            break
        assert state in ("inactive", "activating"), f"state {state}: {journal.text()}"
    else:
        raise AssertionError(f"not active after 120 s: {journal.text()}")
    assert ("activating", False) in samples, (
        f"never seen starting without a table (samples {samples[:5]}...)")
    props = show("SubState", "StatusText", "Type", "NotifyAccess", "MainPID")
    assert props["SubState"] == "running"
    assert props["Type"] == "notify"
    assert re.match(r"1 flowtable\(s\), 2 device\(s\); \d+ reconciles, 0 failed$",
                    props["StatusText"]), props["StatusText"]
    journal.wait_for(r"ready: table inet offloadd reconciled")


def test_runs_hardened_as_dynamic_user_with_only_cap_net_admin() -> None:
    props = show("MainPID", "DynamicUser", "FragmentPath", "DropInPaths", "ExecStart",
                 "CapabilityBoundingSet", "AmbientCapabilities", "NoNewPrivileges",
                 "ProtectSystem", "ProtectKernelModules", "ProtectKernelTunables",
                 "RestrictAddressFamilies", "SystemCallFilter", "WatchdogUSec")
    # /lib is /usr/lib on Debian 12 (merged /usr); systemd may name either.
    assert os.path.realpath(props["FragmentPath"]) == "/usr/lib/systemd/system/offloadd.service"
    assert sorted(props["DropInPaths"].split()) == [
        "/etc/systemd/system/offloadd.service.d/10-venv.conf",
        "/etc/systemd/system/offloadd.service.d/50-systemtest.conf"]
    assert "path=/opt/offloadd/bin/offloadd" in props["ExecStart"]
    assert props["DynamicUser"] == "yes"
    assert props["CapabilityBoundingSet"] == "cap_net_admin"
    assert props["AmbientCapabilities"] == "cap_net_admin"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["ProtectKernelModules"] == "yes"
    assert props["ProtectKernelTunables"] == "yes"
    assert props["SystemCallFilter"] not in ("", "~")
    assert props["WatchdogUSec"] == "5s"

    status = dict(line.split(":", 1)
                  for line in Path(f"/proc/{props['MainPID']}/status").read_text().splitlines())
    uids = {int(u) for u in status["Uid"].split()}
    gids = {int(g) for g in status["Gid"].split()}
    assert len(uids) == 1 and uids.pop() in DYNAMIC_UIDS, status["Uid"]
    assert len(gids) == 1 and gids.pop() in DYNAMIC_UIDS, status["Gid"]
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == CAP_NET_ADMIN, f"{field}: {status[field]}"
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # a filter is installed

    out = run("systemd-analyze", "security", "--no-pager", UNIT)
    m = re.search(r"Overall exposure level for offloadd\.service: (\d+\.\d+)", out)
    assert m, out[-500:]
    assert float(m.group(1)) <= 2.0, out[-2000:]


def test_metrics_and_control_socket_answer() -> None:
    with urllib.request.urlopen("http://127.0.0.1:9468/metrics", timeout=30) as resp:
        body = resp.read().decode()
    assert re.search(r"^offloadd_\w+", body, re.M), body[:500]
    out = run("/opt/offloadd/bin/offloadctl", "--json", "status")
    assert "lan0" in out, out


def test_reload_applies_new_config() -> None:
    journal = Journal()
    pid = show("MainPID")["MainPID"]
    write_config(["lan*", "wan*"])
    run("systemctl", "reload", UNIT)
    wait_for("wan0 in the flowtable", lambda: flowtables() == {"lan": {"lan0", "lan1", "wan0"}})
    journal.wait_for(r"config reloaded from /etc/offloadd/offloadd\.toml")
    journal.wait_for(r"flowtable lan: attach wan0")
    wait_for("active after the reload", lambda: show("ActiveState")["ActiveState"] == "active")
    props = show("MainPID", "StatusText")
    assert props["MainPID"] == pid, "a reload must not restart the daemon"
    assert "3 device(s)" in props["StatusText"], props["StatusText"]


def test_bad_config_reload_is_refused_and_service_stays() -> None:
    journal = Journal()
    before = show("MainPID", "NRestarts")
    write_config(["wan*"], bad=True)
    try:
        run("systemctl", "reload", UNIT)
        journal.wait_for(r"reload refused, keeping the running config")
        wait_for("active after the refused reload",
                 lambda: show("ActiveState")["ActiveState"] == "active")
        time.sleep(1)
        assert flowtables() == {"lan": {"lan0", "lan1", "wan0"}}
        after = show("MainPID", "NRestarts", "ActiveState", "SubState")
        assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"],
                                                          before["NRestarts"])
        assert (after["ActiveState"], after["SubState"]) == ("active", "running")
    finally:
        write_config(["lan*", "wan*"])


def test_forwarded_traffic_is_offloaded() -> None:
    """A TCP connection from netns a to b through this router ends up [OFFLOAD]
    in conntrack: the flowtable the hardened service made works."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", "b", "python3", "-c",
         "import socket\n"
         "s = socket.create_server(('10.2.0.2', 5001))\n"
         "c, _ = s.accept()\n"
         "while c.recv(65536): pass\n"])
    client = None
    try:
        time.sleep(1)
        client = subprocess.Popen(
            ["ip", "netns", "exec", "a", "python3", "-c",
             "import socket, time\n"
             "c = socket.create_connection(('10.2.0.2', 5001), timeout=30)\n"
             "for _ in range(64): c.sendall(bytes(16384))\n"
             "time.sleep(20)\n"
             "c.sendall(bytes(16384))\n"])

        def offloaded() -> str | None:
            out = run("conntrack", "-L", "-p", "tcp", "--dport", "5001", check=False)
            return out if "[OFFLOAD]" in out else None

        wait_for(f"the flow to be offloaded ({run('conntrack', '-L', check=False)})",
                 offloaded, timeout=20)
    finally:
        for p in (client, server):
            if p is not None:
                p.kill()
                p.wait()


def test_hung_main_loop_is_restarted_by_watchdog() -> None:
    journal = Journal()
    before = show("MainPID", "NRestarts")
    pid = int(before["MainPID"])
    os.kill(pid, signal.SIGSTOP)  # the loop stops pinging WATCHDOG=1

    def restarted() -> dict[str, str] | None:
        p = show("MainPID", "NRestarts", "ActiveState")
        ok = (int(p["NRestarts"]) > int(before["NRestarts"]) and p["ActiveState"] == "active"
              and p["MainPID"] not in ("0", before["MainPID"]))
        return p if ok else None

    after = wait_for("a restart by the watchdog", restarted, timeout=90)
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    text = journal.wait_for(r"Watchdog timeout")
    assert "offloadd.service: Watchdog timeout (limit 5s)!" in text, text
    assert not Path(f"/proc/{pid}").exists()
    # The new instance took the table over; devices are as configured.
    wait_for("the flowtable after the restart",
             lambda: flowtables() == {"lan": {"lan0", "lan1", "wan0"}})


def test_stop_removes_the_table() -> None:
    journal = Journal()
    run("systemctl", "stop", UNIT)
    assert show("ActiveState")["ActiveState"] == "inactive"
    assert flowtables() is None
    journal.wait_for(r"table offloadd removed")
