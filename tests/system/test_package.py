"""The Debian package, installed as an operator would: `apt install ./offloadd_*.deb`.

First the previous build (this tree as <version>~test1, lab/build-deb.sh
--suffix): installed disabled and not started, everything in place. Then the
running service, with an edited config, upgraded to this build: the config
is kept as edited, the service restarted into the new version and still
enabled. Leaves the service stopped for test_systemd.py (conftest.ORDER).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from .common import (
    CONFIG,
    NEEDS_SYSTEMD,
    UNIT,
    UNIT_FILE,
    apt,
    config_text,
    deb_version,
    debs,
    flowtables,
    installed_version,
    run,
    show,
    wait_for,
)

pytestmark = NEEDS_SYSTEMD

INSTALLED = ("/usr/sbin/offloadd", "/usr/sbin/offloadctl", str(UNIT_FILE),
             "/usr/lib/modules-load.d/offloadd.conf", "/usr/lib/sysctl.d/60-offloadd.conf",
             "/usr/share/man/man8/offloadd.8.gz", "/usr/share/man/man8/offloadctl.8.gz",
             "/usr/share/man/man5/offloadd.toml.5.gz",
             "/usr/share/bash-completion/completions/offloadctl",
             "/usr/share/doc/offloadd/copyright")


def _daemon_version() -> str:
    status = json.loads(run("/usr/sbin/offloadctl", "--json", "status"))
    return str(status["daemon"]["version"])


def _active_with_lan_devices() -> dict[str, str] | None:
    props = show("ActiveState", "MainPID")
    ok = props["ActiveState"] == "active" and flowtables() == {"lan": {"lan0", "lan1"}}
    return props if ok else None


def test_install_previous_build_leaves_it_disabled_and_stopped() -> None:
    previous, _ = debs()
    version = deb_version(previous)
    assert installed_version() is None, "the image must not have offloadd yet"
    out = apt("install", str(previous))
    assert installed_version() == version, out

    for path in INSTALLED:
        assert os.path.exists(path), f"{path} not installed"
    # The example config, as a conffile, untouched.
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", "offloadd").split()
    assert conffiles[:2] == [str(CONFIG), hashlib.md5(CONFIG.read_bytes()).hexdigest()]
    # offloadd's modules and the vendored libraries are private: nothing in
    # the system's site-packages.
    proc = subprocess.run(["python3", "-c", "import pyroute2"], capture_output=True,
                          check=False)
    assert proc.returncode != 0, "pyroute2 importable from the system's Python"
    assert run("/usr/sbin/offloadd", "--version").strip() == f"offloadd {version}"

    # Installed, not enabled, not started: offloadd changes the forwarding
    # path, so it waits for an operator to review the config.
    assert run("systemctl", "is-enabled", UNIT, check=False).strip() == "disabled"
    props = show("ActiveState", "LoadState")
    assert (props["LoadState"], props["ActiveState"]) == ("loaded", "inactive")
    assert flowtables() is None
    # The postinst loaded the flowtable modules and switched conntrack
    # accounting on (systemd-modules-load / systemd-sysctl with the package's
    # files), so the service can start without a reboot.
    for mod in ("nf_flow_table", "nf_flow_table_inet", "nft_flow_offload"):
        assert os.path.exists(f"/sys/module/{mod}"), f"{mod} not loaded by the postinst"
    acct = Path("/proc/sys/net/netfilter/nf_conntrack_acct").read_text().strip()
    assert acct == "1"


def test_upgrade_keeps_the_edited_config_and_restarts_the_running_service() -> None:
    previous, current = debs()
    edited = "# edited before the upgrade: must survive it\n" + config_text(["lan*"])
    CONFIG.write_text(edited)
    run("systemctl", "enable", "--now", UNIT, timeout=180)
    before = wait_for("the previous build active with lan0 and lan1", _active_with_lan_devices,
                      timeout=120)
    assert _daemon_version() == deb_version(previous)

    out = apt("install", str(current))
    assert installed_version() == deb_version(current), out
    assert CONFIG.read_text() == edited, "the upgrade changed the edited config"
    leftovers = sorted(p.name for p in CONFIG.parent.iterdir() if p.name != CONFIG.name)
    assert leftovers == [], f"dpkg left {leftovers} (a conffile prompt?)"
    assert run("systemctl", "is-enabled", UNIT, check=False).strip() == "enabled"
    # Restarted by the postinst (try-restart): a new process, the new code.
    after = wait_for("the upgraded service active with lan0 and lan1",
                     _active_with_lan_devices, timeout=120)
    assert after["MainPID"] not in ("0", before["MainPID"]), (before, after)
    assert _daemon_version() == deb_version(current)

    # test_systemd.py starts from a stopped service; it stays enabled.
    run("systemctl", "stop", UNIT)
    assert flowtables() is None
