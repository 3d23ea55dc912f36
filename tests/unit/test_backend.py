"""NftBackend.read against a fake libnftables binding: which listings it asks
for (never one that fetches the gate's elements) and what it makes of them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from offloadd.core.errors import NftOutputError, OffloaddError
from offloadd.kernel.backend import NftBackend
from offloadd.kernel.nft import Nft, parse_json_listing

DATA = Path(__file__).with_name("data")


class FakeCtx:
    """Answers like libnftables 1.0.6 from captured listings; records each
    command with its output mode."""

    def __init__(self, outputs: dict[tuple[str, bool], str]) -> None:
        self.outputs = outputs
        self.json = False
        self.terse = False
        self.calls: list[tuple[str, bool, bool]] = []

    def set_json_output(self, on: bool) -> None:
        self.json = on

    def set_terse_output(self, on: bool) -> None:
        self.terse = on

    def set_dry_run(self, on: bool) -> None:
        pass

    def cmd(self, text: str) -> tuple[int, str, str]:
        self.calls.append((text, self.json, self.terse))
        out = self.outputs.get((text, self.json))
        if out is None:
            return 1, "", "Error: No such file or directory"
        return 0, out, ""


def _backend(outputs: dict[tuple[str, bool], str]) -> tuple[NftBackend, FakeCtx]:
    ctx = FakeCtx(outputs)
    nft = Nft(SimpleNamespace(Nftables=lambda: ctx))  # type: ignore[arg-type]
    return NftBackend("inet", "offloadd", nft), ctx


def _captured() -> dict[tuple[str, bool], str]:
    return {("list ruleset inet", True): (DATA / "ruleset_terse.json").read_text(),
            ("list ruleset inet", False): (DATA / "ruleset_terse.nft").read_text(),
            ("list set inet offloadd lan_ifs", True): (DATA / "set_lan_ifs.json").read_text()}


def test_read_lists_the_ruleset_tersely_and_the_ifname_sets_alone() -> None:
    backend, ctx = _backend(_captured())
    state = backend.read()
    assert state is not None and state.set("lan_ifs") is not None
    assert state.set("lan_ifs").elements == {"lo", "wan0"}  # type: ignore[union-attr]
    # "list table"/"list chain" fetch every set's elements (nft 1.0.6, even
    # terse); a terse "list ruleset" and "list set" of an ifname set do not.
    assert ctx.calls == [("list ruleset inet", True, True), ("list ruleset inet", False, True),
                         ("list set inet offloadd lan_ifs", True, False)]
    assert not any(c[0].startswith(("list table", "list chain")) for c in ctx.calls)


def test_read_of_an_absent_table_is_none_after_one_listing() -> None:
    outputs = _captured()
    items = [i for i in json.loads(outputs[("list ruleset inet", True)])["nftables"]
             if i.get("table", {}).get("name") != "offloadd"]
    outputs[("list ruleset inet", True)] = json.dumps({"nftables": items})
    backend, ctx = _backend(outputs)
    assert backend.read() is None and len(ctx.calls) == 1


@pytest.mark.parametrize("out", [
    '{"nftables": []}\n{"nftables": []}\n',  # two documents (two commands)
    "Warning: something\n",
    '{"nftables": 3}',
    '["not", "an", "object"]',
])
def test_output_that_is_not_a_json_listing_is_an_offloadd_error(out: str) -> None:
    backend, _ = _backend({("list ruleset inet", True): out})
    with pytest.raises(NftOutputError) as e:
        backend.read()
    assert isinstance(e.value, OffloaddError) and isinstance(e.value, ValueError)
    assert "list ruleset inet" in str(e.value)


def test_empty_output_is_an_empty_listing() -> None:
    assert parse_json_listing("ruleset", "  \n") == []
    assert parse_json_listing("ruleset", '{"nftables": [{"table": {}}]}') == [{"table": {}}]


def test_json_errors_leave_terse_off() -> None:
    backend, ctx = _backend({("list ruleset inet", True): "{"})
    with pytest.raises(NftOutputError):
        backend.read()
    assert ctx.terse is False


@pytest.mark.parametrize("items", [
    [{"table": {"family": "inet", "name": "offloadd"}},
     {"flowtable": {"family": "inet", "table": "offloadd"}}],  # no name
    [{"table": {"family": "inet", "name": "offloadd"}},
     {"chain": ["not", "an", "object"]}],
    [{"table": "offloadd"}],
    [{"table": {"family": "inet", "name": "offloadd"}},
     {"set": {"family": "inet", "table": "offloadd", "type": "ifname"}}],  # no name
])
def test_json_of_an_unexpected_shape_is_an_offloadd_error(items: list[object]) -> None:
    """Valid JSON that is not what a listing looks like (another nftables'
    JSON schema, say) fails the read like garbage does: an NftOutputError
    naming the listing, never a KeyError that would end the daemon."""
    outputs = _captured()
    outputs[("list ruleset inet", True)] = json.dumps({"nftables": items})
    backend, _ = _backend(outputs)
    with pytest.raises(NftOutputError, match="list ruleset inet: JSON of an unexpected shape"):
        backend.read()


def test_chain_listings_of_an_unexpected_shape_are_offloadd_errors() -> None:
    backend, _ = _backend({("list chains", True): json.dumps({"nftables": [
        {"chain": {"family": "inet", "table": "admin", "hook": "forward", "prio": "x"}}]})})
    with pytest.raises(NftOutputError, match="list chains"):
        backend.other_forward_priorities()
    backend, _ = _backend({("list chains", True): json.dumps({"nftables": [{"chain": 3}]})})
    with pytest.raises(NftOutputError, match="list chains"):
        backend.base_chain_hooks()


def test_each_read_is_told_to_on_read_and_a_failed_one_is_not() -> None:
    told: list[object] = []
    ctx = FakeCtx(_captured())
    nft = Nft(SimpleNamespace(Nftables=lambda: ctx))  # type: ignore[arg-type]
    backend = NftBackend("inet", "offloadd", nft, on_read=told.append)
    state = backend.read()
    assert state is not None and told == [state]
    ctx.outputs = {}  # the kernel refuses the listing: raised, nothing told
    with pytest.raises(OffloaddError):
        backend.read()
    assert told == [state]
