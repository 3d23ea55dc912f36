"""Kernel-native attach: which names are declared ahead of their device, the
probe that allows it, and how status and --check show it."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from offloadd.cli.format import format_status
from offloadd.core.attach import (
    AttachMode,
    FlowtableAttach,
    KernelHooks,
    attach_plan,
    is_glob,
    wildcard_covering,
    wildcard_prefix,
)
from offloadd.core.config import Config, FlowtableConfig, Hardware
from offloadd.core.errors import NftError
from offloadd.core.model import DesiredResult, Link, NoteKind, SetKind, desired_state
from offloadd.core.plan import compute_plan
from offloadd.core.simulate import apply_plan
from offloadd.kernel.capability import probe_name_hooks, probe_wildcard_hooks
from offloadd.service.report import status_report
from offloadd.service.status import Status
from tests.lab.nftns import wildcard_hooks_by_version


def _cfg(*fts: FlowtableConfig) -> Config:
    return Config(flowtables=fts)


def _desired(config: Config, links: tuple[Link, ...], hooks: bool = True,
             refused: dict[str, str] | None = None, wild: bool = False) -> DesiredResult:
    return desired_state(config, links, lambda _d: False, 0, refused=refused,
                         attach=attach_plan(config, hooks, wildcards=wild))


def _links(*names: str) -> tuple[Link, ...]:
    return tuple(Link(i, n, "veth") for i, n in enumerate(names, 1))


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


# --- kernel wildcards -----------------------------------------------------------

def test_a_prefix_glob_is_the_only_pattern_the_kernel_can_take() -> None:
    assert wildcard_prefix("wan*") == "wan"
    for not_prefix in ("*", "wan", "w*n*", "wan?", "wan[0-9]*", "*wan", "wa*n", 'w"*'):
        assert wildcard_prefix(not_prefix) is None, not_prefix
    assert wildcard_prefix("abcdefghijklmn*") == "abcdefghijklmn"  # 14 + "*" = 15 bytes
    assert wildcard_prefix("abcdefghijklmno*") is None
    assert wildcard_covering(("lan0", "wan*"), "wan7") == "wan*"
    assert wildcard_covering(("lan0", "wan*"), "lan0") is None  # a name covers nothing


def test_with_wildcards_prefix_patterns_are_declared_as_they_are() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0", "wan*", "wg*")))
    (a,) = attach_plan(cfg, name_hooks=True, wildcards=True)
    assert (a.mode, a.declared, a.wildcards) == (AttachMode.KERNEL, ("ppp0",), ("wan*", "wg*"))
    assert "wildcards wan*, wg* declared to the kernel" in a.reason
    assert "ppp0 declared" in a.reason


def test_other_patterns_stay_with_offloadd_and_say_why() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0", "eth?", "lan[0-9]", "w*n*", "wan*")))
    (a,) = attach_plan(cfg, name_hooks=True, wildcards=True)
    assert (a.mode, a.declared, a.wildcards) == (AttachMode.MIXED, ("ppp0",), ("wan*",))
    assert ('"eth?" attached by offloadd: only prefix patterns ("name*") can be kernel '
            "wildcards") in a.reason
    assert '"lan[0-9]" attached by offloadd' in a.reason and '"w*n*" attached' in a.reason
    (only,) = attach_plan(_cfg(FlowtableConfig("x", devices=("eth?",))), True, wildcards=True)
    assert (only.mode, only.wildcards) == (AttachMode.DAEMON, ())
    (long,) = attach_plan(_cfg(FlowtableConfig("x", devices=("abcdefghijklmno*",))), True,
                          wildcards=True)
    assert long.wildcards == () and "too long" in long.reason


def test_a_wildcard_another_flowtable_may_meet_stays_with_offloadd_before_or_after() -> None:
    cfg = _cfg(FlowtableConfig("lan", devices=("lan*", "br0")),
               FlowtableConfig("wan", devices=("wan*", "lanx*", "ppp*")),
               FlowtableConfig("guest", devices=("wan9", "gst*")))
    lan, wan, guest = attach_plan(cfg, name_hooks=True, wildcards=True)
    # lan* and lanx* may meet (either order); wan* and the later exact wan9 too.
    assert (lan.mode, lan.declared, lan.wildcards) == (AttachMode.MIXED, ("br0",), ())
    assert '"lan*" attached by offloadd: flowtable \'wan\' may take devices starting with "lan"' \
        in lan.reason
    assert (wan.mode, wan.wildcards) == (AttachMode.MIXED, ("ppp*",))
    assert '"wan*" attached by offloadd: flowtable \'guest\' may take devices starting with ' \
        '"wan"' in wan.reason
    assert '"lanx*" attached by offloadd: flowtable \'lan\'' in wan.reason
    # wan9 itself: flowtable wan (first) takes it by its pattern.
    assert (guest.mode, guest.declared, guest.wildcards) == (AttachMode.MIXED, (), ("gst*",))
    assert "wan9 (flowtable 'wan' may take it)" in guest.reason


def test_a_flowtable_by_kinds_alone_may_take_any_name() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("wan*",)),
               FlowtableConfig("vlans", kinds=frozenset({"vlan"})))
    wan, vlans = attach_plan(cfg, name_hooks=True, wildcards=True)
    assert (wan.mode, wan.wildcards) == (AttachMode.DAEMON, ())
    assert "flowtable 'vlans' may take devices" in wan.reason
    assert vlans.mode is AttachMode.DAEMON and "kinds" in vlans.reason


def test_an_exclude_that_may_match_the_prefix_keeps_the_pattern_with_offloadd() -> None:
    def one(exclude: tuple[str, ...]) -> FlowtableAttach:
        (a,) = attach_plan(_cfg(FlowtableConfig("wan", devices=("wan*",), exclude=exclude)),
                           name_hooks=True, wildcards=True)
        return a
    for overlapping in (("wan9",), ("wan1*",), ("w*",), ("*9",), ("?an0",)):
        a = one(overlapping)
        assert a.wildcards == () and a.mode is AttachMode.DAEMON, overlapping
        assert f'exclude "{overlapping[0]}" may match devices starting with "wan"' in a.reason
    for apart in (("eth*",), ("lan0",), ("wa",)):
        assert one(apart).wildcards == ("wan*",), apart


def test_hardware_and_kinds_keep_wildcards_off_too() -> None:
    cfg = _cfg(FlowtableConfig("a", devices=("wan*",), hardware=Hardware.AUTO),
               FlowtableConfig("b", devices=("vl*",), kinds=frozenset({"vlan"})))
    a, b = attach_plan(cfg, name_hooks=True, wildcards=True)
    assert (a.mode, a.wildcards) == (AttachMode.DAEMON, ()) and "hardware" in a.reason
    assert (b.mode, b.wildcards) == (AttachMode.DAEMON, ()) and "kinds" in b.reason


def test_without_wildcards_patterns_carry_the_probes_reason() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("ppp0", "wan*")))
    (a,) = attach_plan(cfg, True, wildcards=False,
                       no_wildcards_reason="no kernel wildcards: old nftables")
    assert (a.mode, a.wildcards) == (AttachMode.MIXED, ())
    assert "patterns wan* attached by offloadd (no kernel wildcards: old nftables)" in a.reason
    (none,) = attach_plan(cfg, False, "no name hooks", wildcards=True)
    assert (none.mode, none.declared, none.wildcards) == (AttachMode.DAEMON, (), ())


def test_names_and_wildcards_a_shorter_wildcard_covers_are_not_declared_again() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("wan*", "wa*", "wan0", "ppp0")))
    (a,) = attach_plan(cfg, name_hooks=True, wildcards=True)
    assert (a.mode, a.declared, a.wildcards) == (AttachMode.KERNEL, ("ppp0",), ("wa*",))
    assert "covered by a wildcard: wan* (wa*), wan0 (wa*)" in a.reason


def test_devices_a_wildcard_covers_are_decided_but_not_listed() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("lan0", "ppp0", "wan*")))
    d = _desired(cfg, _links("lan0", "wan0", "wan1", "eth0"), wild=True)
    ft, ifs = d.table.flowtable("wan"), d.table.set("wan_ifs")
    assert ft is not None and ft.devices == {"lan0", "ppp0", "wan*"}
    assert ifs is not None and ifs.kind is SetKind.IFNAMES_WILD
    assert ifs.elements == {"lan0", "ppp0", "wan*"}
    by_dev = {x.device: x for x in d.decisions}
    assert set(by_dev) == {"lan0", "ppp0", "wan0", "wan1"}
    for dev in ("wan0", "wan1"):
        assert (by_dev[dev].flowtable, by_dev[dev].present) == ("wan", True)
        assert by_dev[dev].reason == "name matches 'wan*'; hooked by the kernel's wildcard wan*"
    assert not by_dev["ppp0"].present
    assert d.wildcards() == {"wan*"} and d.declared_only() == {"ppp0"}
    assert d.flowtable_of() == dict.fromkeys(("lan0", "ppp0", "wan0", "wan1"), "wan")
    # The kernel takes the batch, a wildcard and all.
    assert apply_plan(None, compute_plan(d.table, None), wildcards=True) == d.table
    # A device that comes under the wildcard changes nothing in the table.
    more = _desired(cfg, _links("lan0", "wan0", "wan1", "eth0", "wan7"), wild=True)
    assert compute_plan(more.table, d.table).is_empty


def test_a_set_without_wildcards_stays_a_plain_ifname_set() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("lan0", "wan*")),
               FlowtableConfig("x", devices=("eth?",)))
    d = _desired(cfg, _links("lan0", "wan0", "eth0"), wild=True)
    assert d.table.set("wan_ifs").kind is SetKind.IFNAMES_WILD  # type: ignore[union-attr]
    assert d.table.set("x_ifs").kind is SetKind.IFNAMES  # type: ignore[union-attr]
    off = _desired(cfg, _links("lan0", "wan0", "eth0"), wild=False)
    assert all(s.kind is not SetKind.IFNAMES_WILD for s in off.table.sets)
    assert off.table.flowtable("wan").devices == {"lan0", "wan0"}  # type: ignore[union-attr]
    assert off.wildcards() == frozenset()


def test_a_device_a_wildcard_covers_is_owned_by_its_flowtable() -> None:
    # attach_plan never declares a wildcard another flowtable may meet; the
    # model keeps its first-flowtable rule all the same.
    cfg = _cfg(FlowtableConfig("wan", devices=("wan*",)),
               FlowtableConfig("rest", kinds=frozenset({"veth"})))
    attach = (FlowtableAttach("wan", AttachMode.KERNEL, "", (), ("wan*",)),
              FlowtableAttach("rest", AttachMode.DAEMON, ""))
    d = desired_state(cfg, _links("wan0", "veth9"), lambda _d: False, 0, attach=attach)
    assert d.table.flowtable("rest").devices == {"veth9"}  # type: ignore[union-attr]
    assert [n.kind for n in d.notes if n.device == "wan0"] == [NoteKind.ALSO_MATCHES]


def test_a_wildcard_the_kernel_refused_leaves_its_devices_to_offloadd() -> None:
    cfg = _cfg(FlowtableConfig("wan", devices=("wan*",)))
    d = _desired(cfg, _links("wan0"), wild=True, refused={"wan*": "File exists"})
    assert d.table.flowtable("wan").devices == {"wan0"}  # type: ignore[union-attr]
    assert d.table.set("wan_ifs").kind is SetKind.IFNAMES  # type: ignore[union-attr]
    (note,) = d.problems
    assert note.kind is NoteKind.KERNEL_REFUSED and "wildcard wan*: File exists" in note.message


# Prefix globs drawn on purpose: arbitrary text seldom makes one.
_PATTERN = st.one_of(st.text(alphabet="abw0", min_size=1, max_size=3).map(lambda p: p + "*"),
                     st.text(alphabet="abw0*?[]", min_size=1, max_size=5))


@settings(max_examples=300, deadline=None)
@given(first=st.lists(_PATTERN, min_size=1, max_size=4, unique=True),
       exclude=st.lists(_PATTERN, max_size=2, unique=True),
       second=st.lists(_PATTERN, max_size=3, unique=True),
       links=st.sets(st.text(alphabet="abw0", min_size=1, max_size=4), max_size=6),
       wild=st.booleans())
def test_only_prefix_globs_ever_reach_the_kernel_and_it_takes_them(
        first: list[str], exclude: list[str], second: list[str], links: set[str],
        wild: bool) -> None:
    """Without wildcards no glob character is ever in a flowtable's list (old
    libnftables would send it as a literal name); with them only prefix globs,
    and the kernel (the simulator, comparing hooks as the kernel does) takes
    the batch: no wildcard meets a name another flowtable lists."""
    fts = [FlowtableConfig("one", devices=tuple(first), exclude=tuple(exclude))]
    if second:
        fts.append(FlowtableConfig("two", devices=tuple(second)))
    cfg = _cfg(*fts)
    d = desired_state(cfg, _links(*sorted(links)), lambda _d: False, 0,
                      attach=attach_plan(cfg, True, wildcards=wild))
    for ft in d.table.flowtables:
        for name in ft.devices:
            if wild and "*" in name:
                assert wildcard_prefix(name) is not None, name
            else:
                assert not is_glob(name), name
    assert apply_plan(None, compute_plan(d.table, None), wildcards=wild) == d.table


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

    def list_json(self, what: str, *, terse: bool = False) -> list[dict[str, Any]]:
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

    def list_json(self, what: str, *, terse: bool = False) -> list[dict[str, Any]]:
        assert what == "ruleset" and terse
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
                    hooks=KernelHooks(True, "name hooks: yes"))
    status.reconcile.desired = _desired(cfg, links)
    rep = status_report(status, "offloadd", "inet", status.reconcile.desired.table, now=0.0)
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


def test_status_counts_what_a_kernel_wildcard_hooks_as_attached() -> None:
    cfg = _cfg(FlowtableConfig("edge", devices=("lan0", "ppp0", "wan*")))
    links = _links("lan0", "wan0", "wan1")
    status = Status(config_path=Path("/etc/offloadd/offloadd.toml"), links=links,
                    hooks=KernelHooks(True, "name hooks: yes", True, "kernel wildcards: yes"))
    status.reconcile.desired = _desired(cfg, links, wild=True)
    rep = status_report(status, "offloadd", "inet", status.reconcile.desired.table, now=0.0)
    (ft,) = rep["flowtables"]
    assert rep["kernel"]["wildcards"] is True
    assert rep["kernel"]["wildcards_reason"] == "kernel wildcards: yes"
    assert ft["desired"] == ["lan0", "ppp0", "wan*"] and ft["wildcards"] == ["wan*"]
    assert ft["attached"] == ["lan0", "wan0", "wan1"] and ft["declared"] == ["ppp0"]
    assert ft["attach"] == "kernel" and ft["in_sync"]
    rep["daemon"]["running"] = True
    text = format_status(rep)
    assert "kernel: name hooks: yes; kernel wildcards: yes" in text
    assert ("3/3 devices attached, in sync, 1 name(s) declared ahead of their device, "
            "1 kernel wildcard(s)") in text
    assert "  wan*            [KERNEL WILDCARD: wan0, wan1]" in text
    assert "hooked by the kernel's wildcard wan*" in text and "NOT ATTACHED" not in text
    # Nothing under it yet.
    status.links = _links("lan0")
    status.reconcile.desired = _desired(cfg, status.links, wild=True)
    rep = status_report(status, "offloadd", "inet", status.reconcile.desired.table, now=0.0)
    rep["daemon"]["running"] = True
    assert "  wan*            [KERNEL WILDCARD, no device yet]" in format_status(rep)


def test_status_with_offloadd_down_shows_what_the_kernel_lists_and_hooks() -> None:
    """offloadctl status without a daemon: a listed name without a device and a
    wildcard's devices are told apart (offloadd.cli.ctl.kernel_only_status)."""
    ft = {"name": "ft", "hardware": False, "counter": False, "desired": None,
          "in_sync": None, "devices": [], "attached": ["lan0", "wan0", "wan1"],
          "listed": ["lan0", "ppp0", "wan*"], "wildcards": ["wan*"]}
    rep = {"daemon": {"running": False, "reason": "offloadd is not running"},
           "table": {"family": "inet", "name": "offloadd", "exists": True,
                     "forward_priority": 0},
           "flowtables": [ft], "left_out": [], "problems": []}
    text = format_status(rep)
    assert "flowtable ft (software): 3 attached" in text
    assert "  lan0\n" in text and "  ppp0  [listed, no device]" in text
    assert "  wan*            [KERNEL WILDCARD: wan0, wan1]" in text


def test_the_labs_version_oracle_for_kernel_wildcards() -> None:
    """tests.lab.nftns.wildcard_hooks_by_version decides which lab runs carry
    the integration tests marked wildcards."""
    v117, v106 = "nftables v1.1.7 (Commodore Bullmoose #8)\n", "nftables v1.0.6 (Lester Gooch #5)"
    assert wildcard_hooks_by_version("7.3.4+deb13-amd64", v117)[0]
    assert wildcard_hooks_by_version("6.16.6", v117)[0]
    ok, why = wildcard_hooks_by_version("7.3.4+deb13-amd64", v106)
    assert not ok and "v1.0.6" in why and "literal name" in why
    for old in ("6.1.0-56-amd64", "6.12.117+deb12-amd64", "6.16.5"):
        ok, why = wildcard_hooks_by_version(old, v117)
        assert not ok and "no wildcard hooks" in why, old
