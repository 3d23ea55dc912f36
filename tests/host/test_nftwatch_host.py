"""NftEvents against this machine's nf_tables: it says when it watches, and another
table's change wakes offloadd."""

from __future__ import annotations

import subprocess
import sys
import uuid

_DRIVER = """
import asyncio, subprocess
from offloadd.kernel.nftwatch import NftEvents

async def main():
    it = NftEvents().changes()
    subscribed = await asyncio.wait_for(it.__anext__(), 5)
    assert subscribed.transactions == () and not subscribed.overrun, subscribed
    first = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0.3)
    assert not first.done(), "woke up with no change"
    subprocess.run(["nft", "add table inet admin_t; add chain inet admin_t c "
                    "{ type filter hook forward priority 0; }"], check=True)
    got = await asyncio.wait_for(first, 5)
    assert any(c.table == "admin_t" for tx in got.transactions for c in tx.changes), got
    print("woke")

asyncio.run(main())
"""


def test_a_change_in_another_table_wakes_the_watcher() -> None:
    ns = f"olw{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _DRIVER],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "woke"
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
