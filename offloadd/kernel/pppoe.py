"""The PPPoE sessions of this network namespace, for offloadd.core.stack.

Why a kernel edge of its own: pppd creates its ppp device through ioctls, so
rtnetlink says nothing of the Ethernet device beneath it; the kernel lists
the sessions of each namespace in /proc/net/pppoe (one small read, on each
reconcile: a session comes up before its ppp device appears).
"""

from __future__ import annotations

from pathlib import Path

from offloadd.core.stack import PppoeSessions, parse_pppoe

PROC_PPPOE = Path("/proc/net/pppoe")


def pppoe_sessions(path: Path = PROC_PPPOE) -> PppoeSessions:
    """The sessions; none where the pppoe module is not loaded (no file)
    or the file cannot be read (then a ppp device is used as it is)."""
    try:
        return parse_pppoe(path.read_text())
    except OSError:
        return PppoeSessions()
