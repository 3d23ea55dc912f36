"""The connection table: a cap that makes room by the oldest waiting request,
deadlines per phase, and counts of what it dropped (a virtual clock)."""

from __future__ import annotations

from offloadd.service.connections import (
    DEADLINE,
    LIMIT,
    ConnectionLimits,
    ConnectionTable,
    Ticket,
)

LIMITS = ConnectionLimits(max_connections=3, request_deadline_s=10.0, reply_deadline_s=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Conn:
    """A connection as its server sees it: cut once at most."""

    def __init__(self, table: ConnectionTable) -> None:
        self.cuts = 0
        ticket = table.admit(self.cut)
        assert ticket is not None
        self.ticket: Ticket = ticket

    def cut(self) -> None:
        self.cuts += 1


def _table() -> tuple[ConnectionTable, Clock]:
    clock = Clock()
    return ConnectionTable("metrics", LIMITS, clock), clock


def test_at_the_cap_the_oldest_waiting_request_makes_room() -> None:
    table, _clock = _table()
    a, b, c = Conn(table), Conn(table), Conn(table)
    d = Conn(table)  # a fourth: the oldest still reading (a) goes
    assert (a.cuts, b.cuts, c.cuts, d.cuts) == (1, 0, 0, 0)
    assert not table.is_open(a.ticket) and table.is_open(d.ticket)
    assert table.active == 3
    assert table.dropped() == {LIMIT: 1, DEADLINE: 0}


def test_connections_being_answered_are_never_made_room_from() -> None:
    table, _clock = _table()
    a, b, c = Conn(table), Conn(table), Conn(table)
    table.working(a.ticket)
    table.writing(b.ticket)
    d = Conn(table)
    assert (a.cuts, b.cuts, c.cuts) == (0, 0, 1)  # c was the oldest still reading
    table.working(d.ticket)
    # Every open connection is being answered: the new one is closed at once.
    assert table.admit(lambda: None) is None
    assert table.active == 3
    assert table.dropped() == {LIMIT: 2, DEADLINE: 0}


def test_the_request_deadline_is_for_the_whole_request() -> None:
    table, clock = _table()
    a = Conn(table)
    clock.now += 9.9  # however many bytes trickled in meanwhile
    assert table.reap() == 0
    clock.now += 0.1
    assert table.reap() == 1
    assert a.cuts == 1 and not table.is_open(a.ticket)
    assert table.dropped() == {LIMIT: 0, DEADLINE: 1}
    assert table.reap() == 0  # cut once


def test_working_has_no_deadline_and_the_reply_has_its_own() -> None:
    table, clock = _table()
    a = Conn(table)
    clock.now += 5
    table.working(a.ticket)
    clock.now += 3600  # a reconcile of offloadd's own is not the client's time
    assert table.reap() == 0
    table.writing(a.ticket)
    clock.now += 4.9
    assert table.reap() == 0
    clock.now += 0.1
    assert table.reap() == 1 and a.cuts == 1
    assert table.dropped()[DEADLINE] == 1


def test_leave_and_cut_all() -> None:
    table, clock = _table()
    a, b = Conn(table), Conn(table)
    table.leave(a.ticket)
    table.leave(a.ticket)  # twice is harmless
    clock.now += 60
    assert table.reap() == 1 and (a.cuts, b.cuts) == (0, 1)
    c = Conn(table)
    table.cut_all()
    assert c.cuts == 1 and table.active == 0
    assert table.dropped() == {LIMIT: 0, DEADLINE: 1}  # closing the endpoint is no drop
