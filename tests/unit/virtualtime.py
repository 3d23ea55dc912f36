"""An event loop with virtual time, for the tests of timeouts, retries and polls.

Why: a loop whose clock jumps straight to the next timer makes every timing
assertion exact and the tests deterministic and instant, whatever the
machine's load; a test that sleeps for real is slow, and flaky on a slow one.

Code under test must keep its deadlines on the loop's clock, not on
``time.monotonic`` (hand it ``asyncio.get_running_loop().time`` where it takes
a clock; offloadd's Daemon does), or virtual time races past them.

Readiness stays real: what the loop watches (a socket, a pipe) is polled on
every turn. Work in a worker thread takes no virtual time: while some is in
flight (``run_in_executor``, ``asyncio.to_thread``), the loop waits for it
for real before it moves its clock.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# How long the loop waits for real for a thread or a watched file when no
# timer is due: a test stuck that long is stuck for good.
REAL_WAIT_S = 10.0


class _InstantSelector(selectors.BaseSelector):
    """Real readiness, but a wait for a timer advances the loop's clock instead."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.advance: Callable[[float], None] = lambda _: None
        self.threads_busy: Callable[[], bool] = lambda: False

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or self.threads_busy():
            # Only something outside the loop can wake it (a thread's result
            # comes through the loop's self-pipe): time stands still meanwhile.
            ready = self._real.select(REAL_WAIT_S)
            if not ready:
                raise RuntimeError("virtual-time loop would block forever: nothing scheduled "
                                   f"and nothing ready for {REAL_WAIT_S:.0f} s")
            return ready
        self.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector loop whose ``time()`` starts at 0 and moves only when it
    would otherwise wait for a timer."""

    def __init__(self) -> None:
        self._now = 0.0
        self._in_threads = 0
        selector = _InstantSelector()
        super().__init__(selector)
        selector.advance = self._advance
        selector.threads_busy = lambda: self._in_threads > 0

    def _advance(self, dt: float) -> None:
        self._now += dt

    def time(self) -> float:
        return self._now

    def run_in_executor(self, executor: Executor | None, func: Callable[[*Ts], T],
                        *args: *Ts) -> asyncio.Future[T]:
        fut = super().run_in_executor(executor, func, *args)
        self._in_threads += 1

        def done(_f: asyncio.Future[T]) -> None:
            self._in_threads -= 1

        fut.add_done_callback(done)
        return fut


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Runs ``main()`` on a fresh VirtualTimeLoop and returns its result."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())
