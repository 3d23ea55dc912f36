"""What can this kernel do with flowtables? Asked before anything else is done.

A kernel without CONFIG_NF_FLOW_TABLE answers ENOENT even to a dry run, so the
probe is a dry-run transaction that creates a flowtable: nothing is changed,
but the kernel checks every object in it. The needed modules are loaded first
when they are not already present (a hardened service relies on
modules-load.d instead and has no CAP_SYS_MODULE).

Name hooks are probed the same way, never guessed from the version: since
6.16 the kernel keeps a flowtable hook by name, takes a name that matches no
device and hooks the device when it registers; older kernels answer ENOENT.
"""

from __future__ import annotations

import errno
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from offloadd.core.errors import MissingDependencyError, NftError
from offloadd.kernel.nft import Nft, NftRunner

MODULES = ("nf_flow_table", "nf_flow_table_inet", "nft_flow_offload")
PROBE_TABLE = "offloadd_probe"


@dataclass(frozen=True)
class Capability:
    can_flowtable: bool
    reason: str
    kernel: str
    modules_loaded: tuple[str, ...] = ()


@dataclass(frozen=True)
class HookSupport:
    """Whether the kernel hooks a flowtable device by name, ahead of the device."""

    name_hooks: bool
    reason: str


def module_present(name: str, sys_module: Path = Path("/sys/module")) -> bool:
    return (sys_module / name).exists()


def modprobe(name: str) -> str | None:
    """Loads ``name``; returns None on success, else modprobe's complaint."""
    try:
        proc = subprocess.run(["modprobe", "-q", name], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if proc.returncode == 0:
        return None
    return proc.stderr.strip() or f"modprobe {name} exited {proc.returncode}"


def probe(nft: NftRunner,
          modules: Sequence[str] = MODULES,
          present: Callable[[str], bool] = module_present,
          load: Callable[[str], str | None] = modprobe) -> Capability:
    kernel = platform.release()
    loaded: list[str] = []
    load_errors: list[str] = []
    for m in modules:
        if present(m):
            continue
        err = load(m)
        if err is None:
            loaded.append(m)
        else:
            load_errors.append(f"modprobe {m} failed" if err.startswith("modprobe")
                               else f"modprobe {m}: {err}")
    script = (f"add table inet {PROBE_TABLE}\n"
              f"add flowtable inet {PROBE_TABLE} ft {{ hook ingress priority 0; }}\n")
    try:
        nft.run(script, dry_run=True)
    except NftError as e:
        code = getattr(e, "errno", None)
        if code == errno.ENOENT:
            why = "no flowtable support (needs CONFIG_NF_FLOW_TABLE_INET"
            why += f"; {load_errors[0]})" if load_errors else ")"
        elif code == errno.EPERM:
            why = "not permitted: offloadd needs CAP_NET_ADMIN (run as root or give the capability)"
        else:
            why = f"a test flowtable was refused: {e}"
        return Capability(False, f"kernel {kernel} cannot create flowtables: {why}",
                          kernel, tuple(loaded))
    return Capability(True, f"kernel {kernel} can create flowtables", kernel, tuple(loaded))


def probe_name_hooks(nft: NftRunner,
                     exists: Callable[[str], bool] | None = None) -> HookSupport:
    """Dry-runs a scratch flowtable that names a device which does not exist."""
    there = exists or (lambda n: Path("/sys/class/net", n).exists())
    ghost = next(n for n in (f"oflprobe{i}" for i in range(1000)) if not there(n))
    script = (f"add table inet {PROBE_TABLE}\n"
              f"add flowtable inet {PROBE_TABLE} ft {{ hook ingress priority 0; "
              f'devices = {{ "{ghost}" }}; }}\n')
    try:
        nft.run(script, dry_run=True)
    except NftError as e:
        if getattr(e, "errno", None) == errno.ENOENT:
            return HookSupport(False, "no name hooks: the kernel refuses a device that does "
                                      "not exist yet (Linux < 6.16); offloadd attaches each "
                                      "device when it appears")
        return HookSupport(False, f"no name hooks: the probe was refused ({e}); offloadd "
                                  "attaches each device when it appears")
    return HookSupport(True, "name hooks: the kernel takes a device name ahead of the device "
                             "and hooks the device when it appears (Linux 6.16+)")


def running_as_root() -> bool:
    return os.geteuid() == 0


def main() -> int:
    """``python -m offloadd.kernel.capability``: print the verdict; exit 0 if flowtables work."""
    try:
        cap = probe(Nft())
    except MissingDependencyError as e:
        print(f"offloadd: {e}")
        return 2
    print(("yes: " if cap.can_flowtable else "no: ") + cap.reason)
    return 0 if cap.can_flowtable else 1


if __name__ == "__main__":
    raise SystemExit(main())
