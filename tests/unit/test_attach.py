"""Kernel-native attach: which names are declared ahead of their device, the
probe that allows it, and how status and --check show it."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from offloadd.cli.format import format_status
from offloadd.core.attach import AttachMode, attach_plan, is_glob
from offloadd.core.config import Config, FlowtableConfig, Hardware
from offloadd.core.errors import NftError
from offloadd.core.model import DesiredResult, Link, desired_state
from offloadd.kernel.capability import probe_name_hooks, probe_wildcard_hooks
from offloadd.service.report import status_report
from offloadd.service.status import Status


def _cfg(*fts: FlowtableConfig) -> Config:
    return Config(flowtables=fts)


def _desired(config: Config, links: tuple[Link, ...], hooks: bool = True,
             refused: dict[str, str] | None = None) -> DesiredResult:
    return desired_state(config, links, lambda _d: False, 0, refused=refused,
                         attach=attach_plan(config, hooks))


def test_without_name_hooks_every_flowtable_is_attached_by_the_daemon() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0", "wan*")))
    (a,) = attach_plan(cfg, name_hooks=False, no_hooks_reason="no name hooks (probe)")
    assert (a.mode, a.declared, a.reason) == (AttachMode.DAEMON, (), "no name hooks (probe)")
    d = _desired(cfg, (), hooks=False)
    assert d.table.flowtables[0].devices == frozenset()


def test_exact_names_are_declared_and_patterns_left_to_the_daemon() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0", "wg0", "wan*")))
    (a,) = attach_plan(cfg, name_hooks=True)
    assert a.mode is AttachMode.MIXED
    assert a.declared == ("ppp0", "wg0")
    assert "wan*" in a.reason and "ppp0, wg0 declared" in a.reason
    (only,) = attach_plan(_cfg(FlowtableConfig("wan", devices=("ppp0",))), name_hooks=True)
    assert only.mode is AttachMode.KERNEL


def test_hardware_and_kinds_fall_back_with_the_reason() -> None:
    cfg = _cfg(FlowtableConfig("a", devices=("eth0",), hardware=Hardware.AUTO),
               FlowtableConfig("b", devices=("vlan10",), kinds=frozenset({"vlan"})),
               FlowtableConfig("c", devices=("wan*",)))
    a, b, c = attach_plan(cfg, name_hooks=True)
    assert (a.mode, a.declared) == (AttachMode.DAEMON, ())
    assert 'hardware = "auto"' in a.reason
    assert (b.mode, b.declared) == (AttachMode.DAEMON, ())
    assert "kinds" in b.reason
    assert (c.mode, c.declared) == (AttachMode.DAEMON, ())
    assert "wildcards are not used" in c.reason


def test_excluded_names_and_names_an_earlier_flowtable_may_take_are_not_declared() -> None:
    cfg = _cfg(FlowtableConfig("lan", devices=("br*",), kinds=frozenset({"bridge"})),
               FlowtableConfig("wan", devices=("br9", "ppp0", "ppp1"), exclude=("ppp1",)))
    _lan, wan = attach_plan(cfg, name_hooks=True)
    assert wan.declared == ("ppp0",)
    assert wan.mode is AttachMode.MIXED
    assert "br9 (flowtable 'lan' may take it)" in wan.reason
    assert "ppp1 (excluded)" in wan.reason


def test_declared_names_stay_in_the_flowtable_and_its_set_without_a_device() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0", "eth*")))
    d = _desired(cfg, (Link(1, "eth0", None),))
    ft = d.table.flowtable("wan")
    assert ft is not None and ft.devices == {"eth0", "ppp0"}
    ifs = d.table.set("wan_ifs")
    assert ifs is not None and ifs.elements == {"eth0", "ppp0"}
    by_dev = {x.device: x for x in d.decisions}
    assert not by_dev["ppp0"].present and "declared" in by_dev["ppp0"].reason
    assert by_dev["eth0"].present
    assert d.declared_only() == {"ppp0"}


def test_a_present_device_with_a_declared_name_is_placed_once() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0",)))
    d = _desired(cfg, (Link(1, "ppp0", "ppp"),))
    assert [x.device for x in d.decisions] == ["ppp0"]
    assert d.decisions[0].present
    assert d.declared_only() == frozenset()


def test_a_refused_name_is_not_declared() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0",)))
    d = _desired(cfg, (), refused={"ppp0": "Operation not supported"})
    assert d.table.flowtables[0].devices == frozenset()


@given(st.lists(st.text(alphabet="abw0*?[]-", min_size=1, max_size=6), min_size=1,
                max_size=5))
def test_no_pattern_is_ever_declared(devices: list[str]) -> None:
    """Old libnftables sends "wan*" as a literal name: offloadd never declares one."""
    cfg = _cfg(FlowtableConfig("wan", devices=tuple(devices)))
    for a in attach_plan(cfg, name_hooks=True):
        assert not any(is_glob(n) for n in a.declared)
        assert set(a.declared) <= {n for n in devices if not is_glob(n)}


class _Runner:
    def __init__(self, fail: int | None) -> None:
        self.fail = fail
        self.scripts: list[tuple[str, bool]] = []

    def run(self, script: str, *, dry_run: bool = False) -> None:
        self.scripts.append((script, dry_run))
        if self.fail is not None:
            e = NftError("Error: Could not process rule: No such file or directory")
            e.errno = self.fail
            raise e

    def list_json(self, what: str) -> list[dict[str, Any]]:
        return []


def test_the_probe_dry_runs_a_flowtable_naming_a_device_that_does_not_exist() -> None:
    ok = _Runner(None)
    res = probe_name_hooks(ok, exists=lambda n: n == "oflprobe0")
    assert res.name_hooks and "name hooks" in res.reason
    ((script, dry),) = ok.scripts
    assert dry and '"oflprobe1"' in script and "flowtable" in script
    old = probe_name_hooks(_Runner(errno.ENOENT), exists=lambda _n: False)
    assert not old.name_hooks and "Linux < 6.16" in old.reason
    other = probe_name_hooks(_Runner(errno.EPERM), exists=lambda _n: False)
    assert not other.name_hooks and "refused" in other.reason


class _ScriptedRunner:
    """Answers each dry run by what it holds: "lo*" -> ``wild``, lo alone -> ``control``
    (an errno, or None for accepted)."""

    def __init__(self, wild: int | None, control: int | None = None,
                 tables: tuple[str, ...] = ()) -> None:
        self.wild, self.control, self.tables = wild, control, tables
        self.scripts: list[tuple[str, bool]] = []

    def run(self, script: str, *, dry_run: bool = False) -> None:
        self.scripts.append((script, dry_run))
        code = self.wild if '"lo*"' in script else self.control
        if code is not None:
            e = NftError(f"nft refused the transaction: Could not process rule: "
                         f"{errno.errorcode[code]}")
            e.errno = code
            raise e

    def list_json(self, what: str) -> list[dict[str, Any]]:
        assert what == "tables"
        return [{"table": {"family": "inet", "name": n}} for n in self.tables]


def test_the_wildcard_probe_takes_eexist_as_the_kernel_matching_lo_by_prefix() -> None:
    runner = _ScriptedRunner(errno.EEXIST, tables=("oflprobe0", "filter"))
    res = probe_wildcard_hooks(runner, name_hooks=True)
    assert res.wildcards and '"lo*" took lo' in res.reason
    (control, c_dry), (wild, w_dry) = runner.scripts
    assert c_dry and w_dry
    # A scratch table nobody has; the control names lo alone.
    assert control.startswith("add table inet oflprobe1\n") and '"lo*"' not in control
    assert 'flowtable inet oflprobe1 b { hook ingress priority 0; devices = { "lo" }; }' in control
    assert ('flowtable inet oflprobe1 a { hook ingress priority 0; devices = { "lo*" }; }'
            in wild) and control.splitlines()[1] in wild.splitlines()


def test_the_wildcard_probe_tells_old_userspace_and_old_kernels_apart() -> None:
    literal = probe_wildcard_hooks(_ScriptedRunner(None), name_hooks=True)
    assert not literal.wildcards and "literal name (nftables < 1.1.6)" in literal.reason
    enoent = probe_wildcard_hooks(_ScriptedRunner(errno.ENOENT), name_hooks=True)
    assert not enoent.wildcards and "does not exist" in enoent.reason
    other = probe_wildcard_hooks(_ScriptedRunner(errno.EINVAL), name_hooks=True)
    assert not other.wildcards and "refused a wildcard" in other.reason
    assert "EINVAL" in other.reason
    control = probe_wildcard_hooks(_ScriptedRunner(errno.EEXIST, control=errno.EPERM),
                                   name_hooks=True)
    assert not control.wildcards and "flowtable on lo was refused" in control.reason


def test_without_name_hooks_wildcards_are_not_probed() -> None:
    runner = _ScriptedRunner(errno.EEXIST)
    res = probe_wildcard_hooks(runner, name_hooks=False)
    assert not res.wildcards and "need name hooks" in res.reason
    assert runner.scripts == []


def test_status_shows_the_mode_and_counts_a_declared_name_as_not_attached() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0", "eth*")))
    links = (Link(1, "eth0", None),)
    status = Status(config_path=Path("/etc/offloadd/offloadd.toml"), links=links,
                    name_hooks=True, name_hooks_reason="name hooks: yes")
    status.desired = _desired(cfg, links)
    rep = status_report(status, "offloadd", "inet", status.desired.table, now=0.0)
    (ft,) = rep["flowtables"]
    assert rep["kernel"] == {"name_hooks": True, "reason": "name hooks: yes",
                             "wildcards": False, "wildcards_reason": "not probed"}
    assert ft["attached"] == ["eth0"] and ft["declared"] == ["ppp0"]
    assert ft["attach"] == "mixed" and ft["in_sync"]
    rep["daemon"]["running"] = True
    text = format_status(rep)
    assert "kernel: name hooks: yes; not probed" in text
    assert "1/1 devices attached, in sync, 1 name(s) declared ahead of their device" in text
    assert "attach: mixed (ppp0 declared" in text
    assert "ppp0" in text and "[DECLARED, no device yet]" in text
