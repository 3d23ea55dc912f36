"""Full-system test: offloadd under systemd as PID 1, installed by its Debian package.

Runs inside the VM that lab/system-test.sh boots (a debootstrap root with the
package's dependencies; test_package.py installed the package with apt just
before, so the unit is the shipped one with only a test WatchdogSec=10 in a
drop-in), as root, started by offloadd-systemtest.service once the system is
up. Never collected on the host: tests/unit is the unit test path, and these
tests need a systemd that is PID 1.

The tests run in file order and share one system: start, hardening, reload,
bad reload, traffic, watchdog, stop.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

from .common import (
    NEEDS_SYSTEMD,
    UNIT,
    UNIT_FILE,
    Journal,
    flowtables,
    run,
    show,
    wait_for,
    write_config,
)

CAP_NET_ADMIN = 1 << 12
# systemd's DynamicUser= range (systemd 252).
DYNAMIC_UIDS = range(61184, 65520)

pytestmark = NEEDS_SYSTEMD


@pytest.fixture(scope="module", autouse=True)
def lab_config() -> Iterator[None]:
    """offloadd configured for the lab's lan* devices (conftest.network), stopped."""
    run("systemctl", "stop", UNIT, check=False)
    write_config(["lan*"])
    yield
    run("systemctl", "stop", UNIT, check=False)


def test_flowtable_modules_loaded() -> None:
    # The service cannot modprobe (no CAP_SYS_MODULE): systemd-modules-load did
    # it, with the package's modules-load.d file (at boot; after an install,
    # from the postinst).
    for mod in ("nf_flow_table", "nf_flow_table_inet", "nft_flow_offload"):
        assert os.path.exists(f"/sys/module/{mod}"), f"{mod} not loaded"
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
    assert os.path.realpath(props["FragmentPath"]) == str(UNIT_FILE)
    assert props["DropInPaths"].split() == [
        "/etc/systemd/system/offloadd.service.d/50-systemtest.conf"]
    assert "path=/usr/sbin/offloadd " in props["ExecStart"], props["ExecStart"]
    assert props["DynamicUser"] == "yes"
    assert props["CapabilityBoundingSet"] == "cap_net_admin"
    assert props["AmbientCapabilities"] == "cap_net_admin"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["ProtectKernelModules"] == "yes"
    assert props["ProtectKernelTunables"] == "yes"
    assert props["SystemCallFilter"] not in ("", "~")
    assert props["WatchdogUSec"] == "10s"

    with open(f"/proc/{props['MainPID']}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
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
    out = run("/usr/sbin/offloadctl", "--json", "status")
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
             "time.sleep(600)\n"
             "c.sendall(bytes(16384))\n"])

        def offloaded() -> str | None:
            out = run("conntrack", "-L", "-p", "tcp", "--dport", "5001", check=False)
            return out if "[OFFLOAD]" in out else None

        wait_for(f"the flow to be offloaded ({run('conntrack', '-L', check=False)})",
                 offloaded, timeout=60)
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

    after = wait_for("a restart by the watchdog", restarted, timeout=180)
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    text = journal.wait_for(r"Watchdog timeout")
    assert "offloadd.service: Watchdog timeout (limit 10s)!" in text, text
    assert not os.path.exists(f"/proc/{pid}")
    # The new instance took the table over; devices are as configured.
    wait_for("the flowtable after the restart",
             lambda: flowtables() == {"lan": {"lan0", "lan1", "wan0"}})


def test_stop_removes_the_table() -> None:
    journal = Journal()
    run("systemctl", "stop", UNIT)
    assert show("ActiveState")["ActiveState"] == "inactive"
    assert flowtables() is None
    journal.wait_for(r"table offloadd removed")
