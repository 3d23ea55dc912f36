"""A real Prometheus server in a lab namespace, scraping offloadd.

Debian's ``prometheus`` package; started by hand on loopback with its own
config and data dir (its packaged service needs systemd as PID 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.lab.netns import Netns
from tests.lab.traffic import stop_process, wait_for

_GET = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""


def http_get(ns: Netns, url: str) -> str:
    return ns.out(sys.executable, "-c", _GET, url)


@contextmanager
def prometheus(ns: Netns, workdir: Path, target: str, port: int = 9090) -> Iterator[str]:
    """Yields the server's base URL once it answers; always stops it."""
    cfg = workdir / "prometheus.yml"
    cfg.write_text(f"""
global:
  scrape_interval: 2s
  scrape_timeout: 2s
scrape_configs:
  - job_name: offloadd
    static_configs:
      - targets: ["{target}"]
""")
    data = workdir / "prom-data"
    log = (workdir / "prometheus.log").open("w")
    proc = ns.popen("prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                    f"--web.listen-address=127.0.0.1:{port}", stdout=log,
                    stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _ready(ns, base), 120, interval=1,
                 what="prometheus to answer")
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(workdir / 'prometheus.log').read_text()}")
        yield base
    finally:
        stop_process(proc)
        log.close()


def _ready(ns: Netns, base: str) -> bool:
    return ns.run(sys.executable, "-c", _GET, f"{base}/-/ready", check=False).returncode == 0


def query(ns: Netns, base: str, promql: str) -> list[dict[str, Any]]:
    body = json.loads(http_get(ns, f"{base}/api/v1/query?query={quote(promql)}"))
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def label_values(ns: Netns, base: str, label: str, match: str = "") -> list[str]:
    """What Grafana's label_values(match, label) lists."""
    url = f"{base}/api/v1/label/{quote(label)}/values"
    if match:
        url += f"?match[]={quote(match)}"
    body = json.loads(http_get(ns, url))
    assert body["status"] == "success", body
    return list(body["data"])


_QUERY_MANY = """
import json, sys, urllib.parse, urllib.request
base, exprs = json.load(sys.stdin)
print(json.dumps([json.loads(urllib.request.urlopen(
    base + "/api/v1/query?query=" + urllib.parse.quote(e), timeout=10).read()) for e in exprs]))
"""


def query_many(ns: Netns, base: str, exprs: list[str]) -> list[list[dict[str, Any]]]:
    """Instant queries in one process (each process start costs a second under TCG)."""
    out = ns.run(sys.executable, "-c", _QUERY_MANY, input=json.dumps([base, exprs])).stdout
    bodies = json.loads(out)
    for body in bodies:
        assert body["status"] == "success", body
    return [list(b["data"]["result"]) for b in bodies]
