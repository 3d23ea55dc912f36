"""The daemon's view of the kernel table: read, probe, apply — behind a Protocol.

Every write is one nft batch rendered from a plan; only offloadd's own table
is ever named in it. The daemon depends only on the ``daemon.Backend``
Protocol, so its reconcile loop is unit-tested against an in-memory fake.
"""

from __future__ import annotations

import errno
import logging

from offloadd.core.errors import NftError
from offloadd.core.model import TableState
from offloadd.core.plan import Plan
from offloadd.core.render import render
from offloadd.kernel import conntrack
from offloadd.kernel.nft import Nft
from offloadd.kernel.nftstate import other_forward_priorities, parse_table

HW_PROBE_TABLE = "offloadd_hwprobe"
log = logging.getLogger("offloadd")


class NftBackend:
    def __init__(self, family: str, table: str, nft: Nft | None = None) -> None:
        self.family = family
        self.table = table
        self.nft = nft or Nft()

    def read(self) -> TableState | None:
        items = self.nft.list_json("tables")
        if not any(i.get("table", {}).get("name") == self.table
                   and i["table"].get("family") == self.family for i in items):
            return None
        what = f"table {self.family} {self.table}"
        return parse_table(self.nft.list_json(what), self.nft.list_text(what),
                           self.family, self.table)

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
