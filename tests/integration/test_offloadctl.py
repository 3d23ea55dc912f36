"""offloadctl against a running daemon in the lab router, human and --json output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lab.daemon import offloadd
from tests.lab.topology import Lab
from tests.lab.traffic import (
    LIFETIME_S,
    SETTLE_S,
    iperf3_client,
    iperf3_server,
    udp_echo_server,
    udp_flows,
    wait_for,
)

CONFIG = """
[[flowtable]]
name = "ft"
devices = ["lan*", "wan*"]
exclude = ["lan1"]
"""


@pytest.mark.one_kernel
def test_status_reload_check_and_daemon_down(lab: Lab, tmp_path: Path) -> None:
    with offloadd(lab.router, CONFIG, tmp_path) as d:
        d.wait_devices("ft", {"lan0", "wan0"})
        human = d.ctl("status")
        assert human.returncode == 0, human.stderr
        assert "offloadd 0.1.0: running" in human.stdout
        assert "flowtable ft (software, counter): 2/2 devices attached, in sync" in human.stdout
        assert "lan1" in human.stdout and "excluded by 'lan1'" in human.stdout
        js = json.loads(d.ctl("--json", "status", check=True).stdout)
        ft = js["flowtables"][0]
        assert js["daemon"]["running"] is True
        assert ft["attached"] == ["lan0", "wan0"] and ft["in_sync"] is True
        assert {x["device"]: x["mode"] for x in ft["devices"]} == {"lan0": "software",
                                                                   "wan0": "software"}

        # A good reload applies; a bad one is refused with the reason and changes nothing.
        d.config.write_text(d.config.read_text().replace('exclude = ["lan1"]', ""))
        ok = d.ctl("reload")
        assert ok.returncode == 0 and "reloaded" in ok.stdout, ok.stderr
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        good = d.config.read_text()
        d.config.write_text(good.replace('name = "ft"', 'name = "ft"\nhardware = "maybe"'))
        bad = d.ctl("--json", "reload")
        assert bad.returncode == 1, bad.stderr
        last = bad.stderr.strip().splitlines()[-1]
        assert last.startswith("offloadctl: reload refused:") and "hardware" in last
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        d.config.write_text(good)

        # check: a valid config prints the plan (nothing to change now) and warns
        # about other forward chains.
        lab.router.nft("table ip admin {\n chain admin_forward {\n type filter hook forward "
                       "priority 0; policy accept;\n }\n}\n")
        # offloadd notices the new chain by itself and moves its rule after it.
        wait_for(lambda: json.loads(d.ctl("--json", "status", check=True).stdout)
                 ["table"]["forward_priority"] == 1, SETTLE_S,
                 what="offload rule moved to priority 1")
        chk = json.loads(d.ctl("--json", "check", check=True).stdout)
        assert chk["valid"] and chk["plan"] == [], chk["plan"]
        assert any("ip admin admin_forward" in w and "after each ruleset change" in w
                   for w in chk["warnings"]), chk["warnings"]
        _says_what_revalidation_covers(chk["policy"])
        assert not any("timeout" in w for w in chk["warnings"]), chk["warnings"]
        # A flowtable UDP timeout at or above conntrack's makes every fallback
        # restart the flow's conntrack entry: check says so.
        lab.router.sysctl("net.netfilter.nf_flowtable_udp_timeout", 3600)
        human_chk = d.ctl("check", check=True).stdout
        assert "warning: net.netfilter.nf_flowtable_udp_timeout (3600 s) is not below" in \
            human_chk, human_chk
        assert "policy for offloaded flows (revalidate = on-change):" in human_chk
        assert "  NOT covered: rules that act on every packet" in human_chk
        bad_file = tmp_path / "bad.toml"
        bad_file.write_text('[[flowtable]]\nname = "x"\ndevices = []\n')
        res = d.ctl("check", str(bad_file))
        assert res.returncode == 2 and "empty device set" in res.stderr

        # Fuzzed control-socket input never kills the daemon.
        sock = str(tmp_path / "control.sock")
        for payload in [b"", b"\n", b"{", b"[]\n", b'{"version": 9}\n',
                        b'{"version": 1, "command": "nope"}\n', b"\xff\xfe\n",
                        b"x" * 200_000 + b"\n", b'{"version": 1, "command": 5}\n']:
            reply = _raw(lab, sock, payload)
            if payload.strip():
                assert '"ok": false' in reply, (payload[:40], reply)
        assert d.proc.poll() is None
        assert d.ctl("status").returncode == 0

    down = d.ctl("status")
    assert down.returncode == 3
    assert "NOT RUNNING" in down.stdout and "absent" in down.stdout


_RAW = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(sys.stdin.buffer.read())
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
except OSError as e:
    data = repr(e).encode()
sys.stdout.write(data.decode(errors="replace"))
"""


def _raw(lab: Lab, path: str, payload: bytes) -> str:
    proc = subprocess.run(lab.router.argv([sys.executable, "-c", _RAW, path]), input=payload,
                          capture_output=True, timeout=30, check=False)
    return proc.stdout.decode(errors="replace")



@pytest.mark.daemon_logic
def test_flows_and_explain(lab: Lab, tmp_path: Path) -> None:
    config = CONFIG.replace('exclude = ["lan1"]', 'elephant_packets = 30\nprotocols = ["udp"]')
    r = lab.router
    # elephant_packets makes offloadd turn on conntrack accounting, which
    # also gives flows/explain their packet counts.
    with offloadd(r, config, tmp_path) as d, udp_echo_server(lab.server, "0.0.0.0"):
        d.wait_devices("ft", {"lan0", "lan1", "wan0"})
        dst = lab.server_addr(4)
        big = udp_flows(lab.client, dst, flows=1, seconds=LIFETIME_S, interval=0.05)
        try:
            first = wait_for(lambda: json.loads(d.ctl("--json", "flows", check=True).stdout),
                             SETTLE_S, what="an offloaded flow listed")
            rows = json.loads(d.ctl("--json", "flows", "--addr", dst, check=True).stdout)
            assert len(rows) == 1, (first, rows, r.out("conntrack", "-L"), d.log_text()[-2000:])
            row = rows[0]
            assert (row["proto"], row["dst"], row["dport"]) == ("udp", dst, 7000)
            assert (row["in_dev"], row["out_dev"]) == ("lan0", "wan0")
            assert row["packets"] and row["packets"] > 30
            assert json.loads(d.ctl("--json", "flows", "--device", "lan1",
                                    check=True).stdout) == []
            human = d.ctl("flows", "--top", "5", check=True).stdout
            assert "lan0 -> wan0" in human and "software" in human

            src = f"{lab.lan.host_v4}:{row['sport']}"
            ex = json.loads(d.ctl("--json", "explain", "udp", src, f"{dst}:7000",
                                  check=True).stdout)
            assert ex["verdict"] == "offloaded" and ex["flowtable"] == "ft", (
                ex, lab.router.out("conntrack", "-L"))

            # A mouse below the threshold (a datagram every 5 s: its entry stays,
            # and 30 packets are minutes away), and TCP which this flowtable
            # does not offload.
            mouse = udp_flows(lab.client2, dst, flows=1, seconds=LIFETIME_S, interval=5)
            try:
                def mouse_explained() -> str | None:
                    out = d.ctl("explain", "udp", lab.lan2.host_v4, f"{dst}:7000",
                                check=True).stdout
                    return out if "NOT OFFLOADED" in out else None
                ex = wait_for(mouse_explained, SETTLE_S, interval=1, what="the mouse explained")
            finally:
                mouse.stop()
            assert "below the elephant threshold" in ex, ex
            with iperf3_server(lab.server):
                iperf3_client(lab.client, dst, seconds=2).result()
            ex = d.ctl("explain", "tcp", lab.lan.host_v4, f"{dst}:5201", check=True).stdout
            assert "offloads only udp, not tcp" in ex, ex
            ex = d.ctl("explain", "tcp", "192.0.2.1:1", "192.0.2.2:2", check=True).stdout
            assert "UNKNOWN" in ex and "no conntrack entry" in ex
            bad = d.ctl("explain", "tcp", "nonsense", "192.0.2.2:2")
            assert bad.returncode == 2 and "is not ADDRESS[:PORT]" in bad.stderr
        finally:
            big.stop()


def _says_what_revalidation_covers(policy: dict[str, Any]) -> None:
    assert policy["revalidate"] == "on-change"
    assert any("set elements" in c for c in policy["covered"]), policy
    assert any("iptables-legacy" in c for c in policy["not_covered"]), policy
