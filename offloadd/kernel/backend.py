"""The daemon's view of the kernel table: read, probe, apply — behind a Protocol.

Every write is one nft batch rendered from a plan; only offloadd's own table
is ever named in it. The daemon depends only on the ``daemon.Backend``
Protocol, so its reconcile loop is unit-tested against an in-memory fake.
"""

from __future__ import annotations

import errno
import logging

from offloadd.core.errors import NftError
from offloadd.core.gate import PASSED_ORIGINAL, PASSED_REPLY, PASSED_SETS
from offloadd.core.model import TableState
from offloadd.core.plan import Plan
from offloadd.core.render import render
from offloadd.kernel import conntrack
from offloadd.kernel.nft import Nft
from offloadd.kernel.nftstate import (
    ifname_sets,
    other_forward_priorities,
    parse_table,
    set_elements,
)

HW_PROBE_TABLE = "offloadd_hwprobe"
log = logging.getLogger("offloadd")


class NftBackend:
    def __init__(self, family: str, table: str, nft: Nft | None = None) -> None:
        self.family = family
        self.table = table
        self.nft = nft or Nft()

    def read(self) -> TableState | None:
        what = f"table {self.family} {self.table}"
        # Terse: without the gate's elements, one per flow on a busy gateway.
        # No "list tables" first: each libnftables call costs a netlink round
        # trip and a cache fill, and a reconcile reads the table twice.
        try:
            items = self.nft.list_json(what, terse=True)
        except NftError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        text = self.nft.list_text(what, terse=True)
        elements = {name: set_elements(self.nft.list_json(
                        f"set {self.family} {self.table} {name}"))
                    for name in ifname_sets(items, self.table)}
        return parse_table(items, text, self.family, self.table, elements)

    def passed(self, ct_id: int, state: TableState) -> tuple[bool, bool] | None:
        """Whether conntrack entry ``ct_id`` is in the gate's original and reply
        sets; None when ``state`` (the table as read) has no gate."""
        if not all(state.set(name) for name in PASSED_SETS):
            return None
        where = f"{self.family} {self.table}"
        return (self.nft.has_element(f"{where} {PASSED_ORIGINAL}", str(ct_id)),
                self.nft.has_element(f"{where} {PASSED_REPLY}", str(ct_id)))

    def other_forward_priorities(self) -> list[int]:
        return other_forward_priorities(self.nft.list_json("chains"), self.family, self.table)

    def hw_capable(self, device: str) -> tuple[bool, str]:
        """Dry-run a hardware flowtable on ``device``: nothing is changed."""
        script = (f"add table inet {HW_PROBE_TABLE}\n"
                  f"add flowtable inet {HW_PROBE_TABLE} probe {{ hook ingress priority 0; "
                  f'devices = {{ "{device}" }}; flags offload; }}\n')
        try:
            self.nft.run(script, dry_run=True)
        except NftError as e:
            if e.errno == errno.EOPNOTSUPP:
                return False, "driver has no flowtable hardware offload (EOPNOTSUPP)"
            return False, f"hardware probe refused: {e}"
        return True, "driver accepts flowtable hardware offload"

    def ensure_accounting(self) -> None:
        if conntrack.ensure_accounting():
            log.info("enabled conntrack accounting (net.netfilter.nf_conntrack_acct=1) "
                     "for elephant_packets")

    def check(self, plan: Plan) -> None:
        """Dry-runs the plan: the kernel checks the whole batch and keeps nothing."""
        script = render(plan, self.family, self.table)
        if script.strip():
            self.nft.run(script, dry_run=True)

    def apply(self, plan: Plan) -> str:
        """Runs the plan as one transaction; returns the script that was applied."""
        script = render(plan, self.family, self.table)
        if script.strip():
            self.nft.run(script)
        return script
