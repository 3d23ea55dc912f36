"""Kernel-native attach: a configured name is hooked by the kernel itself when
its device appears, even while offloadd is stopped (kernels with name hooks);
where kernel and nftables hook by prefix, a "wan*" too.

The oracle for "does this kernel have name hooks" is the nft command itself
(a scratch flowtable naming a missing device), for wildcards the kernel's and
nftables' versions (tests.lab.nftns), never offloadd's probe; the oracle for
"attached" is traffic: conntrack-tools must show the flows offloaded.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.lab import conntrack
from tests.lab.daemon import offloadd, table_exists
from tests.lab.netns import CommandError, Netns
from tests.lab.nftns import nft_list, wildcard_hooks_here
from tests.lab.topology import Lab, recreate_leg
from tests.lab.traffic import LIFETIME_S, SETTLE_S, udp_echo_server, udp_flows, wait_for

# "lan?", not "lan*": a pattern the kernel never takes as a wildcard, so this
# is about the declared name alone whatever nftables the lab has.
CONFIG = """
[daemon]
on_exit = "keep"

[[flowtable]]
name = "ft"
devices = ["lan?", "uplink9"]
"""
FLOWS = 4


def _nft_takes_a_missing_device(ns: Netns) -> bool:
    """Asked after offloadd started, so the flowtable modules are loaded:
    the only refusal left is the missing device's (ENOENT)."""
    try:
        ns.nft("add table inet oracle\n"
               "add flowtable inet oracle f { hook ingress priority 0; "
               'devices = { "nosuchdev7" }; }\n')
    except CommandError as e:
        assert "No such file or directory" in str(e), e
        return False
    ns.nft("delete table inet oracle\n")
    return True


def _offloaded(lab: Lab) -> int:
    return sum(1 for e in conntrack.entries(lab.router, 4)
               if e.proto == "udp" and e.dport == 7000 and e.offloaded)


def _rename(ns: Netns, old: str, new: str) -> None:
    # A running device cannot be renamed; IPv4 addresses and their routes
    # come back with the link.
    ns.run("ip", "link", "set", old, "down")
    ns.run("ip", "link", "set", old, "name", new)
    ns.run("ip", "link", "set", new, "up")


def test_a_declared_name_attaches_when_its_device_appears_with_offloadd_stopped(
        lab: Lab, tmp_path: Path) -> None:
    r = lab.router
    with offloadd(r, CONFIG, tmp_path) as d:
        hooks = _nft_takes_a_missing_device(r)
        status = json.loads(d.ctl("--json", "status", check=True).stdout)
        (ft,) = status["flowtables"]
        assert status["kernel"]["name_hooks"] is hooks, status["kernel"]
        if hooks:
            d.wait_devices("ft", {"lan0", "lan1", "uplink9"})
            assert (ft["attach"], ft["declared"]) == ("mixed", ["uplink9"]), ft
            assert "uplink9" not in ft["attached"]
            assert "uplink9 declared to the kernel" in ft["attach_reason"]
        else:
            d.wait_devices("ft", {"lan0", "lan1"})
            assert (ft["attach"], ft["declared"]) == ("daemon", []), ft
            assert "Linux < 6.16" in status["kernel"]["reason"]
    # on_exit = "keep": the table stays; nothing of offloadd's runs now.
    _rename(r, "wan0", "uplink9")
    with udp_echo_server(lab.server, "::"):
        gen = udp_flows(lab.client, lab.server_addr(4), flows=FLOWS, seconds=LIFETIME_S,
                        interval=0.1)
        try:
            if hooks:
                # The kernel hooked uplink9 by its name: no daemon involved.
                wait_for(lambda: _offloaded(lab) == FLOWS, SETTLE_S,
                         what=f"{FLOWS} flows offloaded through uplink9 with offloadd stopped")
            else:
                time.sleep(4)
                assert _offloaded(lab) == 0, "offloaded without uplink9 in the flowtable"
                with offloadd(r, CONFIG, tmp_path) as d:
                    d.wait_devices("ft", {"lan0", "lan1", "uplink9"})
                    wait_for(lambda: _offloaded(lab) == FLOWS, SETTLE_S,
                             what=f"{FLOWS} flows offloaded once offloadd attached uplink9")
        finally:
            gen.stop()


def _first_transaction(log: str) -> list[str]:
    """The script of offloadd's first transaction, from its debug log
    ("applied N operations:" and the script's lines, up to the next record)."""
    lines = log.splitlines()
    start = next((i for i, ln in enumerate(lines) if "applied" in ln and "operations:" in ln),
                 None)
    assert start is not None, log[-3000:]
    script = []
    for ln in lines[start + 1:]:
        if ln.startswith("offloadd: "):
            break
        if ln.strip():
            script.append(ln)
    return script


@pytest.mark.one_kernel
def test_only_exact_names_are_declared_and_status_tells_why(lab: Lab, tmp_path: Path) -> None:
    """A pattern is handed to the kernel only where kernel and nftables hook by
    prefix (old userspace would send "wan*" as a literal name); a flowtable
    with kinds falls back to the daemon. ``offloadd --check`` and ``offloadctl
    check`` print the transaction the daemon then applies (with the same
    probes: exact names on 7.3.4 with nftables 1.1.3, wildcards on forky) and
    write nothing."""
    config = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*", "ppp3"]

[[flowtable]]
name = "vlans"
devices = ["vl5"]
kinds = ["vlan"]
"""
    r = lab.router
    wild = wildcard_hooks_here()[0]
    # Before offloadd runs: both previews plan the same transaction, and
    # neither writes anything (the accounting sysctl offloadd turns on stays
    # off, no table appears).
    r.run("nft", "delete", "table", "inet", "offloadd", check=False)
    r.run("modprobe", "nf_conntrack")  # its sysctls exist once it is loaded
    r.sysctl("net.netfilter.nf_conntrack_acct", 0)
    path = tmp_path / "preview.toml"
    path.write_text(config)
    check = r.run(sys.executable, "-m", "offloadd.cli.run", "--config", str(path),
                  "--check").stdout
    previewed = [ln for ln in check.splitlines() if ln.strip() and not ln.startswith("#")]
    ctl = json.loads(r.run(sys.executable, "-m", "offloadd.cli.ctl", "--config", str(path),
                           "--json", "check").stdout)
    assert [ln for ln in ctl["plan"] if ln.strip()] == previewed, (ctl["plan"], check)
    assert r.out("sysctl", "-n", "net.netfilter.nf_conntrack_acct").strip() == "0"
    assert not table_exists(r)
    with offloadd(r, config, tmp_path) as d:
        # ... and what offloadd then applied first is that transaction.
        applied = _first_transaction(d.log_text())
        assert applied == previewed, ("offloadd applied:\n" + "\n".join(applied)
                                      + "\noffloadd --check planned:\n" + check)
        hooks = _nft_takes_a_missing_device(r)
        by_name = {"lan*", "wan*"} if wild else {"lan0", "lan1", "wan0"}
        d.wait_devices("ft", by_name | ({"ppp3"} if hooks else set()))
        d.wait_devices("vlans", set())
        listing = r.out("nft", "list", "table", "inet", "offloadd")
        assert ("*" in listing) is wild, listing
        status = json.loads(d.ctl("--json", "status", check=True).stdout)
        assert status["kernel"]["wildcards"] is wild, status["kernel"]
        ft, vlans = sorted(status["flowtables"], key=lambda f: f["name"])
        # Without name hooks every flowtable falls back for that reason first.
        why = "kinds" if hooks else "no name hooks"
        assert vlans["attach"] == "daemon" and vlans["attach_reason"].startswith(why), vlans
        assert ft["attach"] == ("kernel" if wild else "mixed" if hooks else "daemon")
        text = d.ctl("status", check=True).stdout
        assert f"attach: {ft['attach']}" in text and f"attach: daemon ({why}" in text, text
        check = r.run(sys.executable, "-m", "offloadd.cli.run", "--config", str(d.config),
                      "--check").stdout
        assert f"# flowtable vlans: daemon attach ({why}" in check, check
        assert ("# ppp3: ft (declared" in check) is hooks, check
        # offloadctl check plans as the daemon does (its probes too): nothing
        # to change while the daemon runs, ppp3 declared where the kernel can.
        ctl = json.loads(d.ctl("--json", "check", check=True).stdout)
        assert ctl["plan"] == [], ctl["plan"]
        assert any(x["device"] == "ppp3" and x["flowtable"] == "ft"
                   for x in ctl["devices"]) is hooks, ctl["devices"]


WILDCARD_CONFIG = """
[daemon]
on_exit = "keep"

[[flowtable]]
name = "ft"
devices = ["lan0", "wan*"]
"""


def _flowtable_devices(ns: Netns, table: str, name: str) -> set[str]:
    """The flowtable's devices as ``nft -j list flowtables`` gives them (a
    string for one device, a list otherwise)."""
    for item in nft_list(ns, "flowtables"):
        ft = item.get("flowtable")
        if ft and ft["table"] == table and ft["name"] == name:
            dev = ft.get("dev", [])
            return {dev} if isinstance(dev, str) else set(dev)
    raise AssertionError(f"no flowtable {name} in table {table}")


@pytest.mark.wildcards
def test_a_kernel_wildcard_hooks_a_device_that_appears_with_offloadd_stopped(
        lab: Lab, tmp_path: Path) -> None:
    """The kernel gets "wan*" as it is, in place of wan0; with offloadd
    stopped, a wan7 that registers afterwards is hooked by the kernel alone."""
    r = lab.router
    with offloadd(r, WILDCARD_CONFIG, tmp_path) as d:
        d.wait_devices("ft", {"lan0", "wan*"})
        status = json.loads(d.ctl("--json", "status", check=True).stdout)
        assert status["kernel"]["wildcards"] is True, status["kernel"]
        (ft,) = status["flowtables"]
        assert (ft["attach"], ft["wildcards"]) == ("kernel", ["wan*"]), ft
        assert ft["attached"] == ["lan0", "wan0"] and ft["in_sync"], ft
        # wan0 is the wildcard's: listed beside it, it would be the same hook.
        listed = _flowtable_devices(r, "offloadd", "ft")
        assert listed == {"lan0", "wan*"}, listed
    assert table_exists(r)  # on_exit = "keep"
    # Not a rename: a device the kernel has never seen registers now.
    recreate_leg(r, lab.wan, "wan7")
    assert _flowtable_devices(r, "offloadd", "ft") == {"lan0", "wan*"}
    # offloadctl with offloadd down reads the kernel, and knows "wan*" for
    # the wildcard it is (it probes, as offloadd does).
    down = d.ctl("--json", "status")
    assert down.returncode == 3, down.stderr
    (ft,) = json.loads(down.stdout)["flowtables"]
    assert (ft["attached"], ft["wildcards"]) == (["lan0", "wan7"], ["wan*"]), ft
    with udp_echo_server(lab.server, "::"):
        gen = udp_flows(lab.client, lab.server_addr(4), flows=FLOWS, seconds=LIFETIME_S,
                        interval=0.1)
        try:
            wait_for(lambda: _offloaded(lab) == FLOWS, SETTLE_S,
                     what=f"{FLOWS} flows offloaded through wan7 with offloadd stopped")
        finally:
            gen.stop()


def _offloaded_ids(lab: Lab) -> set[int]:
    return {e.id for e in conntrack.entries(lab.router, 4)
            if e.proto == "udp" and e.dport == 7000 and e.offloaded}


@pytest.mark.wildcards
def test_switching_a_flowtable_to_a_wildcard_keeps_its_flows(lab: Lab, tmp_path: Path) -> None:
    """A reload from "wan0" to "wan*" swaps the device for the wildcard and the
    plain ifname set for an interval one in one transaction; the flowtable
    stays, and the flows through wan0 stay offloaded under their entries."""
    r = lab.router
    exact = WILDCARD_CONFIG.replace('"wan*"', '"wan0"')
    with offloadd(r, exact, tmp_path) as d, udp_echo_server(lab.server, "::"):
        d.wait_devices("ft", {"lan0", "wan0"})
        gen = udp_flows(lab.client, lab.server_addr(4), flows=FLOWS, seconds=LIFETIME_S,
                        interval=0.1)
        try:
            wait_for(lambda: len(_offloaded_ids(lab)) == FLOWS, SETTLE_S,
                     what=f"{FLOWS} flows offloaded through wan0")
            ids = _offloaded_ids(lab)
            handle = _flowtable_handle(r)
            d.config.write_text(d.config.read_text().replace('"wan0"', '"wan*"'))
            d.ctl("reload", check=True)
            d.wait_devices("ft", {"lan0", "wan*"})
            assert _flowtable_handle(r) == handle, "the flowtable was re-created"
            wait_for(lambda: _offloaded_ids(lab) == ids, SETTLE_S,
                     what="the same conntrack entries offloaded after the switch")
        finally:
            gen.stop()


def _flowtable_handle(ns: Netns) -> int:
    for item in nft_list(ns, "flowtables"):
        ft = item.get("flowtable")
        if ft and ft["table"] == "offloadd" and ft["name"] == "ft":
            return int(ft["handle"])
    raise AssertionError("no flowtable ft in table offloadd")
