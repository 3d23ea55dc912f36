"""Faults the lab's integration tests inject into a running offloadd.

Why: the behaviours that matter most when something breaks — a change watcher
that dies, libnftables answering garbage, a repair whose second transaction
the kernel refuses — cannot be provoked from outside on demand. A test names
the fault in the file ``OFFLOADD_FAULTS`` points at, one ``KIND COUNT`` per
line, when it wants it; each occurrence is consumed (the file is rewritten).
Without that variable (every real deployment) nothing here runs: run.py does
not even build these wrappers.

Kinds:
  nft-watch            the nf_tables change watcher fails on its next batch
                       (that batch's changes are lost, as in a real failure)
  garbage-read         a read of offloadd's table gets output that is not JSON
  misshapen-read       a read of offloadd's table gets JSON of an unexpected shape
  fail-chain-replace   a transaction that only replaces offloadd's chain (the
                       second step of a repair) is refused
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from offloadd.core.errors import KernelError, NftError
from offloadd.core.model import TableState
from offloadd.core.plan import CreateChain, DeleteChain, Plan
from offloadd.core.revalidate import NftChanges
from offloadd.kernel.backend import NftBackend
from offloadd.kernel.nft import Nft, parse_json_listing
from offloadd.kernel.nftwatch import NftEvents

log = logging.getLogger("offloadd")

ENV = "OFFLOADD_FAULTS"


class Faults:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_environ(cls) -> Faults | None:
        path = os.environ.get(ENV)
        return cls(Path(path)) if path else None

    def take(self, kind: str) -> bool:
        """True (and one fewer left) if the file names ``kind`` with a count > 0."""
        try:
            lines = self.path.read_text().split("\n")
        except OSError:
            return False
        counts: dict[str, int] = {}
        for line in lines:
            name, _, n = line.partition(" ")
            if name and n.strip().isdigit():
                counts[name] = int(n)
        if counts.get(kind, 0) <= 0:
            return False
        counts[kind] -= 1
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{k} {v}\n" for k, v in counts.items()))
        tmp.replace(self.path)
        log.warning("injected fault: %s (%s)", kind, self.path)
        return True


class FaultyBackend(NftBackend):
    """NftBackend with the garbage-read, misshapen-read and fail-chain-replace faults."""

    def __init__(self, family: str, table: str, nft: Nft | None, faults: Faults, *,
                 on_read: Callable[[TableState | None], None] | None = None) -> None:
        super().__init__(family, table, nft, on_read=on_read)
        self._faults = faults

    def read(self) -> TableState | None:
        if self._faults.take("garbage-read"):
            # Through the real parser: what a garbled libnftables answer meets.
            parse_json_listing("ruleset", "\x00{garbage")
        if self._faults.take("misshapen-read"):
            # Valid JSON, through the real parser: a flowtable without a name.
            self._parse([{"table": {"family": self.family, "name": self.table}},
                         {"flowtable": {"family": self.family, "table": self.table}}], "", {})
        return super().read()

    def apply(self, plan: Plan) -> str:
        kinds = tuple(type(op) for op in plan.ops)
        if kinds == (DeleteChain, CreateChain) and self._faults.take("fail-chain-replace"):
            raise NftError("nft refused the transaction: injected fault (fail-chain-replace)")
        return super().apply(plan)


class FaultyNftEvents:
    """The change watcher with the nft-watch fault."""

    def __init__(self, inner: NftEvents, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    async def changes(self) -> AsyncIterator[NftChanges]:
        async for batch in self._inner.changes():
            if batch.transactions and self._faults.take("nft-watch"):
                raise KernelError(0, "nftables change watch: injected fault (nft-watch)")
            yield batch
