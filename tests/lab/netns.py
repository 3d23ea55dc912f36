"""A network namespace handle that runs real commands inside it.

Thin on purpose: the tests drive the real ``ip``, ``nft``, ``conntrack`` and
``iperf3`` binaries, so what they check is what an operator would see.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# Commands that need nothing of ``ip netns exec`` but the network namespace
# (no /sys of the namespace, no /etc/netns files): the calling thread enters
# the namespace itself (setns is per thread) and starts them directly. Under
# the lab's TCG an `ip netns exec` costs 0.1-0.15 s per command on top (one
# more exec, a mount namespace, a sysfs mount), and a test runs hundreds.
DIRECT = frozenset({"nft", "conntrack", "ip", "sysctl"})
_CLONE_NEWNET = 0x40000000


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, _CLONE_NEWNET)
        return
    if _libc().setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """The calling thread in network namespace ``name`` (other threads stay
    where they are); back in its own on exit, whatever happened."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


class CommandError(RuntimeError):
    """A lab command failed; the message carries its stderr."""


@dataclass(frozen=True)
class Netns:
    name: str

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, check: bool = True, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        if cmd and cmd[0] in DIRECT:
            with entered(self.name):
                proc = subprocess.run(list(cmd), capture_output=True, text=True,
                                      timeout=timeout, input=input, check=False)
        else:
            proc = subprocess.run(self.argv(cmd), capture_output=True, text=True,
                                  timeout=timeout, input=input, check=False)
        if check and proc.returncode != 0:
            raise CommandError(f"[{self.name}] {' '.join(cmd)} -> exit {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def out(self, *cmd: str, timeout: float = 300) -> str:
        return self.run(*cmd, timeout=timeout).stdout

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(cmd), text=True, **kw)  # type: ignore[call-overload, no-any-return]

    def sh(self, script: str, timeout: float = 300) -> str:
        """Runs a shell script (``set -e``) inside the namespace: one process start."""
        return self.run("sh", "-ec", script, timeout=timeout).stdout

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def nft(self, script: str) -> str:
        return self.run("nft", "-f", "-", input=script).stdout


def create_netns(name: str) -> Netns:
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                   capture_output=True)
    return Netns(name)


def delete_netns(ns: Netns) -> None:
    # Killing what still runs inside lets the namespace (and its veths) go.
    pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True,
                          text=True, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True, check=False)


def host_run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(cmd)} -> exit {proc.returncode}: {proc.stderr.strip()}")
    return proc
