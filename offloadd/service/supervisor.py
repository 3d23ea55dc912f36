"""Keeps the daemon's background tasks running: restart with backoff, visible state.

Why: a task that ends on an unexpected error (the nf_tables change watcher,
the re-validator, the repairer, the legacy-table poll, the periodic check)
must not stop its work for good while the daemon looks healthy. Each task
runs under a supervisor that restarts it after a doubling delay, reset once
it has run for a while, and keeps per task whether it is up, how often it
was restarted and why; status, metrics and the alert rules read that.

A task can also hang without ending: a kernel dump that never returns keeps
its worker thread, and the task waits on it forever while it looks up. The
tasks mark such steps (``Steps.running``); one that has run longer than
Timing.task_stall_s shows the task as stalled (status, metric, alert).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

from offloadd.core.errors import OffloaddError
from offloadd.service.timing import Timing

log = logging.getLogger("offloadd")

@dataclass(frozen=True)
class Backoff:
    """The delay before the next restart, as a value (pure, unit-tested).

    The first restart comes after first_s, each next one after twice the
    last, at most max_s; a task that ran healthy_s without failing starts
    again at first_s.
    """

    first_s: float
    max_s: float
    healthy_s: float
    current_s: float = 0.0  # 0: no failure yet

    @classmethod
    def of(cls, timing: Timing) -> Backoff:
        return cls(timing.restart_first_s, timing.restart_max_s, timing.restart_healthy_s)

    def after_failure(self, ran_s: float) -> Backoff:
        """The backoff after a task failed having run ``ran_s`` seconds."""
        if self.current_s == 0.0 or ran_s >= self.healthy_s:
            return replace(self, current_s=self.first_s)
        return replace(self, current_s=min(self.current_s * 2, self.max_s))


@dataclass(frozen=True)
class TaskState:
    """One supervised task as status and metrics show it."""

    name: str
    up: bool = False
    restarts_total: int = 0
    last_error: str = ""
    last_error_time: float = 0.0  # Unix time; 0 = never failed
    restart_in_s: float = 0.0  # while down: the delay before it runs again
    step_s: float = 0.0  # how long its current marked step has run (0: none)
    stalled: bool = False  # that step has run longer than Timing.task_stall_s

    def as_dict(self) -> dict[str, object]:
        return {"up": self.up, "restarts_total": self.restarts_total,
                "last_error": self.last_error, "last_error_time": self.last_error_time,
                "restart_in_seconds": self.restart_in_s,
                "step_seconds": round(self.step_s, 3), "stalled": self.stalled}


class Steps:
    """When each task's current blocking step began (a kernel dump on a worker
    thread), or last made progress. Entered on the event loop, read from the
    scrape thread; progress comes from the worker (hence the lock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def running(self, task: str) -> Iterator[None]:
        with self._lock:
            self._since[task] = self._clock()
        try:
            yield
        finally:
            with self._lock:
                self._since.pop(task, None)

    def progressed(self, task: str) -> None:
        """The task's step is still at work (a paced gate count between two
        datagrams: minutes on a full gate): its age starts again. Nothing
        if the step has ended. Any thread."""
        with self._lock:
            if task in self._since:
                self._since[task] = self._clock()

    def ages(self) -> dict[str, float]:
        now = self._clock()
        with self._lock:
            since = dict(self._since)
        return {task: now - t for task, t in since.items()}


TaskFactory = Callable[[bool], Awaitable[None]]


class Supervisor:
    """Runs named tasks for the daemon's lifetime and restarts those that end.

    A factory gets ``restarted`` (False the first time): a watcher that was down
    may have missed what it watches and says so to its consumers.
    """

    def __init__(self, *, timing: Timing = Timing(),
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_failure: Callable[[str, str], None] = lambda _name, _why: None) -> None:
        self._on_failure = on_failure
        self._backoff = Backoff.of(timing)
        self._stall_s = timing.task_stall_s
        self._clock = clock
        # Handed to the tasks that block on worker threads.
        self.steps = Steps(clock)
        self._sleep = sleep
        self._states: dict[str, TaskState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def states(self) -> Mapping[str, TaskState]:
        """A copy, with each task's current step: read from the scrape thread too."""
        ages = self.steps.ages()
        return {name: replace(st, step_s=ages.get(name, 0.0),
                              stalled=ages.get(name, 0.0) > self._stall_s)
                for name, st in dict(self._states).items()}

    def start(self, name: str, factory: TaskFactory) -> None:
        self._states[name] = TaskState(name)
        self._tasks[name] = asyncio.create_task(self._keep(name, factory), name=name)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    async def _keep(self, name: str, factory: TaskFactory) -> None:
        backoff = self._backoff
        restarted = False
        while True:
            self._states[name] = replace(self._states[name], up=True, restart_in_s=0.0)
            began = self._clock()
            try:
                await factory(restarted)
                why, trace = "ended", None
            except asyncio.CancelledError:
                self._states[name] = replace(self._states[name], up=False)
                raise
            except Exception as e:
                # The top of a supervised task: whatever ended it, it restarts.
                # A traceback for what is no OffloaddError (a bug).
                why = str(e) if isinstance(e, OffloaddError) else f"{type(e).__name__}: {e}"
                trace = None if isinstance(e, OffloaddError) else e
            backoff = backoff.after_failure(self._clock() - began)
            state = self._states[name]
            self._states[name] = replace(state, up=False, last_error=why,
                                         last_error_time=time.time(),
                                         restart_in_s=backoff.current_s)
            log.error("task %s stopped (%s); restarting it in %.3g s", name, why,
                      backoff.current_s, exc_info=trace,
                      extra={"OPERATION": "task-restart", "TASK": name})
            self._on_failure(name, why)
            await self._sleep(backoff.current_s)
            self._states[name] = replace(self._states[name],
                                         restarts_total=state.restarts_total + 1)
            restarted = True
