"""Which flowtables hold flows a re-made stack left stale (a PPPoE reconnect).

Why: pppd deletes ppp0 and creates a new one, over a new session, within about
a second, often before a reconcile pass sees the gap. The devices beneath
(eth1.7, eth1) stay, and the flows the flowtable holds through them keep the
encapsulation resolved when they were offloaded (the old session id); the
kernel frees none of them, since it keys a flow on the devices beneath. This
keeps, from pass to pass, what each stacked device was (offloadd.core.stack.
stack_identities) and names the flowtables to replace when one was re-made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from offloadd.core.model import DesiredResult, Link
from offloadd.core.stack import PppoeSessions, stack_identities, stale_stacks


class StaleStacks:
    def __init__(self) -> None:
        self._ids: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._fts: dict[str, frozenset[str]] = {}
        self._bottoms: dict[str, tuple[str, ...]] = {}

    def after_pass(self, desired: DesiredResult, links: Iterable[Link],
                   pppoe: PppoeSessions) -> Mapping[str, str]:
        """Kernel flowtable -> why it is to be replaced, after a pass that
        planned ``desired`` from these links and sessions."""
        links = tuple(links)
        index = {link.name: link.index for link in links}
        kinds = {link.name: link.kind for link in links}
        stacks = [r for _sel, r in desired.stacks]
        now = stack_identities(stacks, index, kinds, pppoe)
        flowtable_of = desired.flowtable_of()
        fts = {r.device: frozenset(ft for b in r.bottoms
                                   if (ft := flowtable_of.get(b)) is not None)
               for r in stacks if r.device in now}
        bottoms = {r.device: r.bottoms for r in stacks if r.device in now}
        listed = {dev for ft in desired.table.flowtables for dev in ft.devices}
        out: dict[str, str] = {}
        for dev in stale_stacks(self._ids, now, index, self._bottoms, listed):
            for name in self._fts.get(dev, frozenset()):
                out.setdefault(name, f"{dev} went or came back as another device or session: "
                                     "the flows offloaded through it carry its old encapsulation")
        self._ids, self._fts, self._bottoms = now, fts, bottoms
        return out
