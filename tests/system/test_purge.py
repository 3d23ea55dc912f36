"""`apt purge offloadd` on a gateway where it runs: the service stopped and gone,
offloadd's table gone even when the daemon keeps it on exit (the prerm deletes
the table the config names, and only that one), the config gone.
Runs last (conftest.ORDER)."""

from __future__ import annotations

import os

from .common import (
    CONFIG,
    NEEDS_SYSTEMD,
    UNIT,
    UNIT_FILE,
    WANTS_LINK,
    apt,
    flowtables,
    installed_version,
    run,
    show,
    wait_for,
    write_config,
)

pytestmark = NEEDS_SYSTEMD

# Not the default name: the prerm must take it from the config.
OWN_TABLE = "gw_offload"
OTHER_TABLE = "admin_filter"


def test_purge_removes_service_table_and_config() -> None:
    assert installed_version() is not None
    run("nft", "add", "table", "inet", OTHER_TABLE)
    run("nft", "add", "chain", "inet", OTHER_TABLE, "forward",
        "{ type filter hook forward priority 0; policy accept; }")
    # on_exit = "keep": stopping the daemon leaves its table behind.
    write_config(["lan*"], table=OWN_TABLE, on_exit="keep")
    run("systemctl", "start", UNIT, timeout=180)
    wait_for(f"offloadd's table inet {OWN_TABLE}",
             lambda: flowtables(OWN_TABLE) == {"lan": {"lan0", "lan1"}}, timeout=60)
    assert os.path.lexists(WANTS_LINK), "test_package.py left the service enabled"

    out = apt("purge", "offloadd")

    assert installed_version() is None, out
    status = run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "offloadd", check=False)
    assert not status.strip().startswith(("ii", "rc")), f"dpkg status {status!r} after purge"
    # The service: stopped, its unit file and enablement gone.
    props = show("ActiveState", "MainPID", "FragmentPath")
    assert props["ActiveState"] in ("inactive", "failed"), props
    assert props["MainPID"] == "0", props
    assert props["FragmentPath"] == "", props
    assert not UNIT_FILE.exists()
    assert not os.path.lexists(WANTS_LINK), "enablement symlink left behind"
    # offloadd's table removed, the admin's table untouched.
    assert flowtables(OWN_TABLE) is None, run("nft", "list", "tables")
    assert flowtables(OTHER_TABLE) == {}, run("nft", "list", "tables")
    run("nft", "delete", "table", "inet", OTHER_TABLE)
    # The config and the package's files, byte-compiled modules included.
    assert not CONFIG.parent.exists(), sorted(os.listdir(CONFIG.parent))
    for path in ("/usr/sbin/offloadd", "/usr/sbin/offloadctl", "/usr/lib/offloadd",
                 "/usr/lib/modules-load.d/offloadd.conf", "/usr/lib/sysctl.d/60-offloadd.conf"):
        assert not os.path.exists(path), f"{path} left behind"
