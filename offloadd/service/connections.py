"""How many connections a listener holds, and for how long (exporter, control socket).

Why: each open connection costs a descriptor, and in the exporter a thread.
With a timeout per read only, a client sending one byte every 25 s held its
connection forever; about 1000 such clients used up the process's 1024
descriptors, and then conntrack scans, the link watcher's reopen and the
control socket failed. So each listener gets a cap on open connections and a
deadline for the client's whole request (and one for taking the reply), not
one per read.

At the cap, the connection that has waited longest for its request is closed
to make room, not the new one: a scraper sends its request at once, a slow
client never finishes its own, so refusing the newest would let a few
hundred slow clients lock Prometheus out for as long as they keep coming.
Only when every open connection is being answered is the new one closed.

Both servers share this table and differ only in how a connection is cut (a
socket shut down under a blocked thread, a transport aborted on the loop).
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Why a connection was closed by offloadd rather than by its client: the label
# values of offloadd_connections_dropped_total.
LIMIT = "limit"  # the endpoint had its maximum of connections open
DEADLINE = "deadline"  # the request (or the taking of the reply) took too long
REASONS = (LIMIT, DEADLINE)


class Phase(enum.Enum):
    READING = "reading"  # the request is still coming: its deadline runs; may make room
    WORKING = "working"  # offloadd is answering: its own time, no deadline
    WRITING = "writing"  # the reply is going out: the reply deadline runs


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    request_deadline_s: float  # from accept to the whole request read
    reply_deadline_s: float  # from the reply ready to the reply taken


class Ticket:
    """One admitted connection (opaque to its server)."""

    __slots__ = ("cut", "deadline", "phase", "seq")

    def __init__(self, seq: int, cut: Callable[[], None], deadline: float) -> None:
        self.seq = seq
        self.cut = cut
        self.phase = Phase.READING
        self.deadline = deadline


class ConnectionTable:
    """The open connections of one endpoint; thread-safe.

    ``cut`` callbacks run under the table's lock, and a server must call
    leave() before it closes a connection's socket: a cut then never reaches
    a descriptor number that was closed and handed to someone else.
    """

    def __init__(self, endpoint: str, limits: ConnectionLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, Ticket] = {}  # by seq: insertion order is age
        self._seq = itertools.count(1)
        self._dropped = dict.fromkeys(REASONS, 0)

    def admit(self, cut: Callable[[], None]) -> Ticket | None:
        """A new connection; None if it must be closed at once (counted)."""
        with self._lock:
            if len(self._open) >= self.limits.max_connections:
                oldest = next((t for t in self._open.values() if t.phase is Phase.READING),
                              None)
                self._dropped[LIMIT] += 1
                if oldest is None:
                    return None
                self._drop(oldest)
            ticket = Ticket(next(self._seq), cut,
                            self._clock() + self.limits.request_deadline_s)
            self._open[ticket.seq] = ticket
            return ticket

    def working(self, ticket: Ticket) -> None:
        """The request is read: what follows is offloadd's time, not the client's."""
        with self._lock:
            ticket.phase = Phase.WORKING

    def writing(self, ticket: Ticket) -> None:
        """The reply is ready: the client has reply_deadline_s to take it."""
        with self._lock:
            ticket.phase = Phase.WRITING
            ticket.deadline = self._clock() + self.limits.reply_deadline_s

    def leave(self, ticket: Ticket) -> None:
        """The connection ends (call before closing its socket)."""
        with self._lock:
            self._open.pop(ticket.seq, None)

    def is_open(self, ticket: Ticket) -> bool:
        """False once the table cut it (or it left)."""
        with self._lock:
            return ticket.seq in self._open

    def reap(self) -> int:
        """Cuts every connection past its deadline; how many it cut."""
        now = self._clock()
        with self._lock:
            late = [t for t in self._open.values()
                    if t.phase is not Phase.WORKING and t.deadline <= now]
            for t in late:
                self._dropped[DEADLINE] += 1
                self._drop(t)
            return len(late)

    def cut_all(self) -> None:
        """Cuts every open connection (the endpoint closes; not counted)."""
        with self._lock:
            for t in list(self._open.values()):
                del self._open[t.seq]
                t.cut()

    def _drop(self, ticket: Ticket) -> None:
        del self._open[ticket.seq]
        ticket.cut()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._open)

    def dropped(self) -> Mapping[str, int]:
        """Connections offloadd closed, by reason (every reason present)."""
        with self._lock:
            return dict(self._dropped)
