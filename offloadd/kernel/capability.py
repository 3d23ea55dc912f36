"""What can this kernel do with flowtables? Asked before anything else is done.

A kernel without CONFIG_NF_FLOW_TABLE answers ENOENT even to a dry run, so the
probe is a dry-run transaction that creates a flowtable: nothing is changed,
but the kernel checks every object in it. The needed modules are loaded first
when they are not already present (a hardened service relies on
modules-load.d instead and has no CAP_SYS_MODULE).

Name hooks are probed the same way, never guessed from the version: since
6.16 the kernel keeps a flowtable hook by name, takes a name that matches no
device and hooks the device when it registers; older kernels answer ENOENT.

Kernel wildcards ("wan*" hooks every device whose name starts with "wan",
Linux 6.17+ and 6.16.6+) need both the kernel and libnftables >= 1.1.6: an
older libnftables sends "wan*" as a plain name, which a kernel with name hooks
takes without a word and never matches. So the probe asks the combination: a
wildcard in one scratch flowtable and a device it covers (lo) in another is
refused (EEXIST) only where the wildcard reached the kernel as one.
"""

from __future__ import annotations

import errno
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from offloadd.core.attach import KernelHooks
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


@dataclass(frozen=True)
class WildcardSupport:
    """Whether this kernel and libnftables hook flowtable devices by prefix ("wan*")."""

    wildcards: bool
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


def _scratch_table(nft: NftRunner) -> str:
    """A table name nobody uses, so the dry runs meet nothing of anyone's."""
    try:
        # Not "list tables": nft 1.0.6 fetches every set's elements for it
        # (seconds with a full gate); a terse "list ruleset" fetches none.
        taken = {i["table"].get("name") for i in nft.list_json("ruleset", terse=True)
                 if "table" in i}
    except NftError:
        taken = set()  # the dry run then says what is wrong
    return next(n for n in (f"oflprobe{i}" for i in range(1000)) if n not in taken)


def probe_wildcard_hooks(nft: NftRunner, name_hooks: bool) -> WildcardSupport:
    """Dry-runs "lo*" in one scratch flowtable and lo in another of the same table.

    lo exists in every network namespace. A kernel that hooks by prefix finds
    lo in both and refuses the batch (EEXIST); where libnftables sent "lo*" as
    a literal name the batch is accepted; a kernel without name hooks refuses
    the literal name of a device that does not exist (ENOENT). A control run
    with lo alone first makes sure a refusal is the wildcard's.
    """
    if not name_hooks:
        return WildcardSupport(False, "no kernel wildcards: they need name hooks "
                                      "(Linux 6.16.6+ or 6.17+)")
    table = _scratch_table(nft)
    head = f"add table inet {table}\n"
    lo = f'add flowtable inet {table} b {{ hook ingress priority 0; devices = {{ "lo" }}; }}\n'
    wild = f'add flowtable inet {table} a {{ hook ingress priority 0; devices = {{ "lo*" }}; }}\n'
    try:
        nft.run(head + lo, dry_run=True)
    except NftError as e:
        return WildcardSupport(False, "no kernel wildcards: the probe's flowtable on lo was "
                                      f"refused ({e})")
    try:
        nft.run(head + wild + lo, dry_run=True)
    except NftError as e:
        code = getattr(e, "errno", None)
        if code == errno.EEXIST:
            return WildcardSupport(True, 'kernel wildcards: the kernel hooks devices by '
                                         'prefix ("lo*" took lo); prefix patterns ("wan*") '
                                         "can be handed to the kernel")
        if code == errno.ENOENT:
            return WildcardSupport(False, 'no kernel wildcards: the kernel took "lo*" for the '
                                          "name of a device that does not exist")
        return WildcardSupport(False, f"no kernel wildcards: the kernel refused a wildcard ({e})")
    return WildcardSupport(False, 'no kernel wildcards: this nftables sends "lo*" as a literal '
                                  "name (nftables < 1.1.6)")


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


def probe_hooks(nft: NftRunner) -> KernelHooks:
    """Both probes, as the daemon and the check preview use them."""
    hooks = probe_name_hooks(nft)
    wild = probe_wildcard_hooks(nft, hooks.name_hooks)
    return KernelHooks(hooks.name_hooks, hooks.reason, wild.wildcards, wild.reason)
