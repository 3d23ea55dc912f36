"""The daemon's view of the kernel table: read, probe, apply — behind a Protocol.

Every write is one nft batch rendered from a plan; only offloadd's own table
is ever named in it. The daemon depends only on the ``daemon.Backend``
Protocol, so its reconcile loop is unit-tested against an in-memory fake.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

from offloadd.core.config import device_name_problem
from offloadd.core.errors import NftError
from offloadd.core.gate import PASSED_ORIGINAL, PASSED_REPLY, PASSED_SETS
from offloadd.core.model import TableState
from offloadd.core.plan import Plan
from offloadd.core.render import render
from offloadd.core.stack import PppoeSessions
from offloadd.core.xtables import LegacyTables
from offloadd.kernel import conntrack, pppoe, setcount, xtables
from offloadd.kernel.nft import Nft, answer_of
from offloadd.kernel.nftstate import (
    base_chain_hooks,
    ifname_sets,
    other_forward_priorities,
    parse_table,
    set_elements,
    table_listed,
    table_text,
)

HW_PROBE_TABLE = "offloadd_hwprobe"
log = logging.getLogger("offloadd")


class NftBackend:
    def __init__(self, family: str, table: str, nft: Nft | None = None, *,
                 on_read: Callable[[TableState | None], None] | None = None) -> None:
        self.family = family
        self.table = table
        self.nft = nft or Nft()
        # Told every table read (None: no table): the scrape serves the event
        # loop's latest (offloadd.service.tableseen) instead of reading again.
        self._on_read = on_read

    def read(self) -> TableState | None:
        state = self._read()
        if self._on_read is not None:
            self._on_read(state)
        return state

    def _read(self) -> TableState | None:
        # Terse "list ruleset <family>": with nftables 1.0.6 it is the one
        # listing that fetches no named set's elements (terse "list table" and
        # "list chain" still fetch them: 6.8 s under the lab's TCG with 100k
        # ids in each gate set, every reconcile, verify and scrape). So the
        # read costs the same with an empty gate as with a million ids.
        # Anonymous sets' elements are still fetched (rules print them).
        what = f"ruleset {self.family}"
        items = self.nft.list_json(what, terse=True)
        with answer_of(what):
            if not table_listed(items, self.family, self.table):
                return None
            text = table_text(self.nft.list_text(what, terse=True), self.family, self.table)
            names = ifname_sets(items, self.table)
        # The ifname sets one by one: "list set" fetches that set alone.
        elements = {}
        for name in names:
            where = f"set {self.family} {self.table} {name}"
            listing = self.nft.list_json(where)
            with answer_of(where):
                elements[name] = set_elements(listing)
        return self._parse(items, text, elements)

    def _parse(self, items: list[dict[str, Any]], text: str,
               elements: dict[str, frozenset[str]]) -> TableState | None:
        with answer_of(f"ruleset {self.family}"):
            return parse_table(items, text, self.family, self.table, elements)

    def passed(self, key: str, state: TableState) -> tuple[bool, bool] | None:
        """Whether a flow's gate element ``key`` (offloadd.core.gate.element)
        is in the gate's original and reply sets; None when ``state`` (the
        table as read) has no gate."""
        if not all(state.set(name) for name in PASSED_SETS):
            return None
        where = f"{self.family} {self.table}"
        return (self.nft.has_element(f"{where} {PASSED_ORIGINAL}", key),
                self.nft.has_element(f"{where} {PASSED_REPLY}", key))

    def count_elements(self, name: str,
                       after_datagram: Callable[[float], None] | None = None) -> int | None:
        """Elements of set ``name`` (None: absent), by a raw netlink dump of
        its own: never through libnftables, which would decode and print
        each one; so any thread may call it."""
        return setcount.count_elements(self.family, self.table, name,
                                       after_datagram=after_datagram)

    def other_forward_priorities(self) -> list[int]:
        items = self.nft.list_json("chains")
        with answer_of("chains"):
            return other_forward_priorities(items, self.family, self.table)

    def base_chain_hooks(self) -> dict[tuple[str, str], frozenset[str]]:
        """Every table's base chain hooks: ``list chains``, no rules, no elements."""
        items = self.nft.list_json("chains")
        with answer_of("chains"):
            return base_chain_hooks(items)

    def legacy_tables(self) -> LegacyTables:
        return xtables.legacy_tables()

    def pppoe_sessions(self) -> PppoeSessions:
        return pppoe.pppoe_sessions()

    def conntrack_limit(self) -> int | None:
        return conntrack.conntrack_limit()

    def hw_capable(self, device: str) -> tuple[bool, str]:
        """Dry-run a hardware flowtable on ``device``: nothing is changed."""
        problem = device_name_problem(device)
        if problem is not None:
            # Never written into a script, not even a dry run's.
            return False, f"not probed: the name {problem}"
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
                     "for elephant_packets and the stack guard's per-direction counts")

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
