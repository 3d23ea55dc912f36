"""Background worker threads run at a low CPU priority (nice 10).

Why: a conntrack walk of a million entries, a left-behind scan or a count of
the gate's elements takes seconds of CPU (more under emulation), and at the
daemon's own priority it delays the event loop and the scrape that shares the
CPU with it: at 1M offloaded flows on a 1-vCPU lab VM, scrapes took 0.3-3.2 s
while walks ran, against 0.1 s without. Linux schedules each thread as a task
of its own, so one thread's nice value can be raised without touching the
others, and lowering a priority needs no capability. A kernel that refuses it
costs nothing but the old behaviour. Not 19: at that weight (15 against
1024) a walk beside one busy process at nice 0 (`conntrack -L` in the lab)
barely ran, and the scraped count grew minutes old; at 10 (110) it keeps
about a tenth of a contended CPU.
"""

from __future__ import annotations

import contextlib
import os
import threading

BACKGROUND_NICE = 10


def lower_thread_priority() -> None:
    """Lowers the calling thread's CPU priority (an executor's initializer)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
