"""conntrack edge: settings the offload rules depend on.

``ct packets > N`` (the elephant threshold) reads conntrack's accounting
extension, which the kernel only attaches to new connections while
``nf_conntrack_acct`` is on in that network namespace.
"""

from __future__ import annotations

from pathlib import Path

from offloadd.errors import KernelError

ACCT = Path("/proc/sys/net/netfilter/nf_conntrack_acct")


def ensure_accounting(path: Path = ACCT) -> bool:
    """Turns conntrack accounting on; returns True if it had to be changed."""
    try:
        if path.read_text().strip() == "1":
            return False
        path.write_text("1\n")
    except OSError as e:
        raise KernelError(
            f"cannot enable conntrack accounting ({path}: {e.strerror}); elephant_packets "
            "needs it: load nf_conntrack and run offloadd with CAP_NET_ADMIN, or set "
            "net.netfilter.nf_conntrack_acct=1") from e
    return True
