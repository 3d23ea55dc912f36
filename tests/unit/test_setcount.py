"""Counting a set's elements (offloadd.kernel.setcount) on crafted nf_tables datagrams:
several messages and datagrams, an empty set, an absent one, a dump the
ruleset interrupts (the set replaced or not), the pause after each datagram,
errors, and the speed of the walk over a million elements.

Why here: the count must hold for a million elements, which no unit test can
put in a kernel set; a fake socket that speaks the wire format (as
test_conntrack's ctnetlink kernel does) can send them.
"""

from __future__ import annotations

import errno
import functools
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from offloadd.core.errors import KernelError
from offloadd.kernel import ctnetlink as nl
from offloadd.kernel import setcount as sc
from tests.unit.fakes import FakeNetlinkSocket as FakeSocket
from tests.unit.test_conntrack import NESTED, msg, nla

TABLE, SET = "offloadd", "passed_original"


def element(ct_id: int) -> bytes:
    """One gate element as a dump of a dynamic set with timeouts carries it:
    the key (ct id . sport . dport, each in a 4-byte register), its timeout
    and its expiration (48 bytes)."""
    key = struct.pack(">III", ct_id, 1000 << 16, 443 << 16)
    return nla(sc.NFTA_LIST_ELEM | NESTED,
               nla(1 | NESTED, nla(1, key))  # NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }
               + nla(4, struct.pack(">Q", 120_000))  # NFTA_SET_ELEM_TIMEOUT
               + nla(5, struct.pack(">Q", 99_000)))  # NFTA_SET_ELEM_EXPIRATION


def elements_message(elements: bytes, family: int = 1, flags: int = 0x2) -> bytes:
    body = (struct.pack("=BBH", family, 0, 0)
            + nla(sc.NFTA_SET_ELEM_LIST_TABLE, TABLE.encode() + b"\0")
            + nla(sc.NFTA_SET_ELEM_LIST_SET, SET.encode() + b"\0")
            + nla(sc.NFTA_SET_ELEM_LIST_ELEMENTS | NESTED, elements))
    return msg(sc.NEWSETELEM, body, flags=flags)


def set_message(handle: int) -> bytes:
    """The kernel's NEWSET answer to a GETSET: a few attributes, the handle among them."""
    body = (struct.pack("=BBH", 1, 0, 0)
            + nla(sc.NFTA_SET_TABLE, TABLE.encode() + b"\0")
            + nla(sc.NFTA_SET_NAME, SET.encode() + b"\0")
            + nla(sc.NFTA_SET_HANDLE, struct.pack(">Q", handle))
            + nla(3, struct.pack(">I", 0x1a)))  # NFTA_SET_FLAGS: not the handle
    return msg(sc.NEWSET, body, flags=0)


def is_describe(request: bytes) -> bool:
    mtype: int = struct.unpack_from("=H", request, 4)[0]
    return mtype == sc.GETSET


def done(code: int = 0, flags: int = 0x2) -> bytes:
    return msg(nl.NLMSG_DONE, struct.pack("=i", -code), flags=flags)


def error(code: int) -> bytes:
    return msg(nl.NLMSG_ERROR, struct.pack("=i", -code) + b"\0" * 16, flags=0)


@dataclass
class FakeNfTables:
    """Answers a set-element dump like nf_tables: ``per_message`` elements per
    NEWSETELEM message, one message per datagram (DONE in the last one)."""

    sets: dict[tuple[int, str, str], int]
    per_message: int = 600
    # The next dumps' answers: "intr-error" (NLMSG_ERROR EINTR), "intr-flag"
    # (NLM_F_DUMP_INTR on its messages), "replaced" (that, and the set
    # replaced: a new handle), "deleted" (DONE with -ENOENT after some
    # elements), or an errno to refuse with.
    next: list[str | int] = field(default_factory=list)
    handles: dict[tuple[int, str, str], int] = field(default_factory=dict)
    sent: list[bytes] = field(default_factory=list)
    sockets: int = 0
    closed: int = 0

    def factory(self) -> FakeSocket:
        self.sockets += 1
        return FakeSocket(self)

    def answer(self, request: bytes) -> list[bytes]:
        key = self._key(request)
        if is_describe(request):
            return ([set_message(self.handles.get(key, 1))] if key in self.sets
                    else [error(errno.ENOENT)])
        what = self.next.pop(0) if self.next else ""
        if isinstance(what, int):
            return [error(what)]
        if what == "intr-error":
            return [elements_message(element(1) * 3), error(errno.EINTR)]
        if what == "deleted":
            return [elements_message(element(1) * 4), done(errno.ENOENT)]
        if what == "replaced":
            self.handles[key] = self.handles.get(key, 1) + 1
        if key not in self.sets:
            return [error(errno.ENOENT)]
        flags = 0x2 | (sc.NLM_F_DUMP_INTR if what in ("intr-flag", "replaced") else 0)
        left = self.sets[key]
        grams = []
        while left > 0:
            n = min(left, self.per_message)
            grams.append(elements_message(element(7) * n, key[0], flags))
            left -= n
        # The kernel's last message: the nest it opened, with nothing in it.
        grams.append(elements_message(b"", key[0], flags) + done(flags=flags))
        return grams

    @staticmethod
    def _key(request: bytes) -> tuple[int, str, str]:
        family = request[16]
        strings = {}
        off = 20
        while off < len(request):
            alen, kind = struct.unpack_from("=HH", request, off)
            strings[kind] = request[off + 4:off + alen].rstrip(b"\0").decode()
            off += (alen + 3) & ~3
        return (family, strings[sc.NFTA_SET_ELEM_LIST_TABLE], strings[sc.NFTA_SET_ELEM_LIST_SET])


def _same(sock: FakeSocket) -> FakeSocket:
    return sock


class Prepared(FakeSocket):
    """Answers a GETSET with handle 1 (or ``describe``), the dump with prepared
    datagrams."""

    def __init__(self, k: FakeNfTables, grams: list[bytes],
                 describe: bytes | None = None) -> None:
        super().__init__(k)
        self.grams = grams
        self.describe = describe if describe is not None else set_message(1)

    def send(self, data: bytes, /) -> int:
        self.queue = [self.describe] if is_describe(data) else self.grams
        return len(data)


def count(k: FakeNfTables, family: str = "inet", name: str = SET) -> int | None:
    return sc.count_elements(family, TABLE, name, factory=k.factory)


def test_requests_name_the_table_and_the_set() -> None:
    names = (struct.pack("=HH", 13, 1) + b"offloadd\0" + b"\0" * 3
             + struct.pack("=HH", 20, 2) + b"passed_original\0")
    for req, mtype, flags in ((sc.dump_request(1, TABLE, SET), (10 << 8) | 13, 0x301),
                              (sc.handle_request(1, TABLE, SET), (10 << 8) | 10, 0x1)):
        assert struct.unpack_from("=IHH", req) == (len(req), mtype, flags)
        assert req[16:20] == bytes([1, 0, 0, 0])
        assert req[20:] == names


@pytest.mark.parametrize("n", [0, 1, 599, 600, 601, 2500])
def test_counts_every_element_over_messages_and_datagrams(n: int) -> None:
    k = FakeNfTables({(1, TABLE, SET): n})
    assert count(k) == n
    assert k.sockets == k.closed == 2  # the set's handle, then its elements


def test_the_family_decides_which_table() -> None:
    k = FakeNfTables({(10, TABLE, SET): 5, (2, TABLE, SET): 3})
    assert count(k, "ip6") == 5 and count(k, "ip") == 3
    assert count(k, "inet") is None
    with pytest.raises(sc.SetCountError, match="unknown nftables family"):
        count(k, "nope")


def test_an_absent_set_or_table_is_none() -> None:
    k = FakeNfTables({(1, TABLE, SET): 5})
    assert count(k, name="passed_reply") is None
    k.next = [errno.ENOENT]
    assert count(k) is None


def test_a_set_deleted_during_the_dump_is_none() -> None:
    """The kernel ends a dump whose set went away with DONE carrying -ENOENT."""
    k = FakeNfTables({(1, TABLE, SET): 5}, next=["deleted"])
    assert count(k) is None


def test_others_commits_during_the_dump_keep_its_count() -> None:
    """Every attach commits: a long count on a busy router would never finish
    if any commit voided it. The set's handle, unchanged, says it was not
    replaced; nothing is asked again."""
    k = FakeNfTables({(1, TABLE, SET): 1500}, next=["intr-flag"])
    assert count(k) == 1500
    dumps = [r for r in k.sent if not is_describe(r)]
    assert len(dumps) == 1 and len(k.sent) == 3 and k.sockets == k.closed == 3


@pytest.mark.parametrize("how", ["intr-error", "replaced"])
def test_a_dump_of_a_replaced_set_or_one_the_kernel_gave_up_is_asked_for_again(
        how: str) -> None:
    k = FakeNfTables({(1, TABLE, SET): 1500}, next=[how, how])
    assert count(k) == 1500  # not 1500 plus what the interrupted dumps sent
    assert len([r for r in k.sent if not is_describe(r)]) == 3
    assert k.sockets == k.closed


def test_a_set_replaced_during_every_dump_fails_the_count() -> None:
    k = FakeNfTables({(1, TABLE, SET): 10}, next=["replaced"] * 10)
    with pytest.raises(sc.SetCountError, match=r"changed during .* 4 times in a row"):
        count(k)
    assert len([r for r in k.sent if not is_describe(r)]) == 1 + sc.INTR_RETRIES
    assert k.closed == k.sockets


def test_each_datagram_but_the_last_is_followed_by_the_pause_with_its_cpu() -> None:
    """The caller paces a long count by the kernel's walk for each datagram
    (this thread's CPU around its receipt); what the pause raises ends the
    count, its socket closed."""
    k = FakeNfTables({(1, TABLE, SET): 1500}, per_message=600)
    ticks = iter(range(100))
    walked: list[float] = []
    n = sc.count_elements("inet", TABLE, SET, factory=k.factory, after_datagram=walked.append,
                          cpu=lambda: float(next(ticks)) ** 2)
    assert n == 1500
    # Datagrams of 600, 600, 300 and the last (DONE): a pause after the first three,
    # each given its own receipt's CPU (t**2 read before and after: 1, 5, 9).
    assert walked == [1.0, 5.0, 9.0]

    class Stop(sc.SetCountError):
        pass

    def stop(_cpu: float) -> None:
        raise Stop("stopping")

    with pytest.raises(Stop):
        sc.count_elements("inet", TABLE, SET, factory=k.factory, after_datagram=stop)
    assert k.sockets == k.closed


def test_refusals_are_kernel_errors_that_say_what_to_do() -> None:
    k = FakeNfTables({(1, TABLE, SET): 10}, next=[errno.EPERM, errno.EINVAL])
    with pytest.raises(sc.SetCountError, match="needs CAP_NET_ADMIN"):
        count(k)
    with pytest.raises(KernelError, match="refused the element dump of set inet offloadd "
                                          "passed_original: EINVAL"):
        count(k)
    assert k.closed == k.sockets == 4  # each count: the handle, then the dump


def test_a_datagram_larger_than_the_buffer_is_an_error() -> None:
    class Huge(FakeSocket):
        def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int:
            return len(buffer) + 1

    k = FakeNfTables({(1, TABLE, SET): 10})
    with pytest.raises(sc.SetCountError, match="exceeds"):
        sc.count_elements("inet", TABLE, SET, factory=lambda: Huge(k))


def test_a_truncated_message_is_an_error_and_a_short_element_ends_the_walk() -> None:
    k = FakeNfTables({})
    whole = elements_message(element(1) * 2)
    with pytest.raises(sc.SetCountError, match="malformed netlink message"):
        sc.count_elements("inet", TABLE, SET, factory=lambda: Prepared(k, [whole[:-8]]))
    # An element header claiming less than itself: the elements before it count.
    bad = element(1) * 2 + struct.pack("=HH", 2, sc.NFTA_LIST_ELEM) + element(1)
    assert sc.count_elements("inet", TABLE, SET,
                             factory=lambda: Prepared(k, [elements_message(bad), done()])) == 2


def test_a_description_without_a_handle_or_of_another_kind_is_an_error() -> None:
    k = FakeNfTables({})
    bare = msg(sc.NEWSET, struct.pack("=BBH", 1, 0, 0) + nla(sc.NFTA_SET_NAME, b"x\0"), flags=0)
    for answer, match in ((bare, "carries no handle"), (done(), "unexpected answer"),
                          (error(errno.EPERM), "needs CAP_NET_ADMIN")):
        sock = Prepared(k, [], answer)
        with pytest.raises(sc.SetCountError, match=match):
            sc.count_elements("inet", TABLE, SET, factory=functools.partial(_same, sock))


def test_count_list_counts_list_entries_only() -> None:
    data = bytearray(element(1) * 3 + nla(2, b"\0" * 4) + element(2))
    words = memoryview(data).cast("H")
    assert sc.count_list(words, 0, len(data)) == 4
    assert sc.count_list(words, 0, 48) == 1  # the range ends the walk
    assert sc.count_list(words, 0, 40) == 0  # an element past the end is not counted


class _Stream:
    """A socket over prepared datagrams, as lean as a real one for the timing."""

    def __init__(self, grams: Iterator[bytes]) -> None:
        self._grams = grams
        self._describe = False

    def send(self, data: bytes, /) -> int:
        self._describe = is_describe(data)
        return len(data)

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0, /) -> int:
        data = set_message(1) if self._describe else next(self._grams)
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def test_a_million_elements_in_about_a_second_of_cpu() -> None:
    """1M gate-shaped elements (48 bytes each) in 800 messages of 1250 (a
    nest's length is 16 bits: 60 KB, twice the kernel's datagram). Prints the
    CPU time; fails only if the count is wrong."""
    per, messages = 1250, 800
    gram = elements_message(element(7) * per)
    grams = iter([*([gram] * messages), done()])
    t0 = time.process_time()
    n = sc.count_elements("inet", TABLE, SET, factory=lambda: _Stream(grams))
    cpu = time.process_time() - t0
    assert n == per * messages == 1_000_000
    print(f"\nsetcount: {n} elements in {messages} messages counted in {cpu:.3f} s CPU "
          f"({cpu / n * 1e9:.0f} ns per element)")
