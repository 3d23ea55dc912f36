"""Every configuration key in one table: where it goes, its type, default,
allowed values and meaning.

Why: the parser (configparse.py), the offloadd.toml(5) man page and the tests
all need the list of keys, and kept once they cannot disagree. configparse
takes each table's known keys from here. Defaults are read from the frozen
values in config.py (what the parser returns for a missing key) and allowed
values from its enums and constants, so this table restates nothing the
parser decides; tests/unit/test_configschema.py checks both against the parser.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from offloadd.core.config import (
    IFNAME_MAX,
    INT32_MAX,
    INT32_MIN,
    LINK_KINDS,
    PROTOCOLS,
    ControlConfig,
    DaemonConfig,
    Family,
    FlowtableConfig,
    Hardware,
    MetricsConfig,
    OnExit,
    Repair,
    Revalidate,
    Stack,
)

# A default as TOML writes it; None: the key has no default (unset or required).
Value = str | int | bool | tuple[str, ...]

STRING, INTEGER, BOOLEAN, STRINGS = "string", "integer", "boolean", "array of strings"


@dataclass(frozen=True)
class Table:
    """A TOML table of the config: [daemon], or [[flowtable]] (array=True)."""

    name: str
    array: bool
    doc: str


@dataclass(frozen=True)
class Key:
    table: str
    name: str
    type: str  # STRING, INTEGER, BOOLEAN, STRINGS, or a phrase for mixed keys
    default: Value | None
    doc: str
    values: tuple[str, ...] = ()  # the only values allowed (for each element of an array)
    required: bool = False

    @property
    def path(self) -> str:
        return f"{self.table}.{self.name}"


def _toml(value: object) -> Value:
    """A default from config.py as TOML would write it."""
    if isinstance(value, enum.Enum):
        return _toml(value.value)
    if isinstance(value, frozenset):
        return tuple(sorted(value))
    if isinstance(value, Path):
        return str(value)
    assert isinstance(value, str | int | bool | tuple), value
    return value


def _values(e: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(str(m.value) for m in e)


TABLES = (
    Table("daemon", False, "How offloadd runs and the nftables table it owns."),
    Table("flowtable", True,
          "One flowtable each; at least one is required. A device matched by two "
          "flowtables stays in the first (the kernel refuses one device in two flowtables "
          "of a table)."),
    Table("metrics", False, "The Prometheus exporter."),
    Table("control", False, "The control socket offloadctl talks to."),
)

_D, _F, _M, _C = DaemonConfig, FlowtableConfig, MetricsConfig, ControlConfig

KEYS = (
    Key("daemon", "table", STRING, _toml(_D.table),
        "The nft table offloadd owns: letters, digits and '_', at most 32, not starting "
        "with a digit and not an nft keyword. Nothing else should write to it."),
    Key("daemon", "family", STRING, _toml(_D.family),
        "nft family of the table (IPv4 and IPv6).", _values(Family)),
    Key("daemon", "priority", 'string "auto" or integer', _toml(_D.priority),
        'Priority of the forward chain holding the offload rule. "auto" places it after '
        "every other forward base chain on the system (computed when applying), so their "
        "verdicts, a drop say, apply before a flow is offloaded. Or an integer in "
        f"{INT32_MIN}..{INT32_MAX}."),
    Key("daemon", "on_exit", STRING, _toml(_D.on_exit),
        'On SIGTERM: "remove" deletes the table (flows fall back to the normal '
        'forwarding path), "keep" leaves it in place.', _values(OnExit)),
    Key("daemon", "repair", STRING, _toml(_D.repair),
        '"auto": when conntrack shows flows the kernel left behind in a flowtable '
        "(forwarded by it but no longer marked offloaded, as Linux 7.3 does after a route "
        'cache flush), replace that flowtable in one transaction; "off": never.',
        _values(Repair)),
    Key("daemon", "revalidate", STRING, _toml(_D.revalidate),
        '"on-change": when anyone else changes the ruleset (rules, chains, sets, set '
        "elements, tables or named objects of other tables), replace offloadd's flowtables "
        "so that offloaded flows meet the current policy at their next packet (bursts are "
        'coalesced); "off": a new policy reaches offloaded flows only when they end.',
        _values(Revalidate)),
    Key("daemon", "check_interval", INTEGER, _toml(_D.check_interval),
        "Seconds between two full checks of offloadd's table against its desired state "
        "(0: none, 1..86400). Changes are followed as their events arrive; this check also "
        "repairs what no event announced (an overrun, a watcher that stopped, someone "
        "else's edit of offloadd's table), and offloadctl status counts what it found."),
    Key("daemon", "stack_guard_interval", INTEGER, _toml(_D.stack_guard_interval),
        "Seconds between the stack guard's looks at offloaded flows through devices attached "
        "through the devices beneath them (stack = lower/both), 1..3600."),
    Key("daemon", "stack_guard_packets", INTEGER, _toml(_D.stack_guard_packets),
        "Packets a flow must carry one way in a look, with none back, to count as one-way "
        "(1..1000000000)."),
    Key("daemon", "stack_guard_flows", INTEGER, _toml(_D.stack_guard_flows),
        "One-way flows through a device in a look (and none that gets both ways) for the "
        "look to count against it (1..1000000)."),
    Key("daemon", "stack_guard_looks", INTEGER, _toml(_D.stack_guard_looks),
        "Looks in a row against a device before the fast path beneath it is refused and the "
        "device itself attached (1..1000)."),
    Key("flowtable", "name", STRING, None,
        "Unique; same rules as daemon.table. With hardware offload the hardware "
        "flowtable is <name>_hw.", required=True),
    Key("flowtable", "devices", STRINGS, _toml(_F.devices),
        f"Interfaces to put in the flowtable: exact names (at most {IFNAME_MAX} bytes) or "
        'shell-style globs ("wan*", "lan[0-9]"). Empty: any name, and then kinds must be '
        "given. On a kernel with name hooks (Linux 6.16+, probed at start) the exact names "
        'of a flowtable with hardware = "off" and no kinds are declared to the kernel ahead '
        "of their device, which the kernel then hooks by itself when it appears. Where the "
        "kernel and nftables also hook by prefix (Linux 6.17+, nftables 1.1.6+, probed too), "
        'a prefix pattern such as "wan*" is handed to the kernel as a wildcard on the same '
        "conditions, unless an exclude of the flowtable or another flowtable may match a name "
        "with that prefix; every other pattern is matched by offloadd."),
    Key("flowtable", "exclude", STRINGS, _toml(_F.exclude),
        "Names or globs never to put in this flowtable, even if they match devices."),
    Key("flowtable", "kinds", STRINGS, _toml(_F.kinds),
        "Link kinds to select, as ip -d link shows them; \"ether\" stands for plain "
        "physical devices. A device must match devices (if given) and kinds (if given).",
        tuple(sorted(LINK_KINDS))),
    Key("flowtable", "protocols", STRINGS, _toml(_F.protocols),
        "Transport protocols to offload.", PROTOCOLS),
    Key("flowtable", "counter", BOOLEAN, _toml(_F.counter),
        "Count packets and bytes of offloaded flows (seen in conntrack)."),
    Key("flowtable", "hardware", STRING, _toml(_F.hardware),
        '"off": software offload only; "auto": devices whose driver can offload go into '
        '<name>_hw, the rest stay in software; "required": only devices that can offload '
        "in hardware are used, the others are left out and reported.", _values(Hardware)),
    Key("flowtable", "elephant_packets", INTEGER, _toml(_F.elephant_packets),
        "Offload a connection only after this many packets (0: at once), so short-lived "
        "connections stay on the normal path; needs net.netfilter.nf_conntrack_acct = 1."),
    Key("flowtable", "priority", INTEGER, _toml(_F.priority),
        f"Priority of the flowtable's ingress hook (0 = filter), {INT32_MIN}..{INT32_MAX}."),
    Key("flowtable", "stack", STRING, _toml(_F.stack),
        '"as-listed": the selected devices themselves; "lower": instead of a bridge, VLAN '
        "or PPPoE device, the devices beneath it (a bridge's ports, the device under a VLAN, "
        "the Ethernet device of the PPPoE session; followed down to the last), so the "
        "kernel's fast path skips those layers; \"both\": the selected devices and those "
        "beneath them. Other kinds (WireGuard, bonds, tunnels) are used as they are. Which "
        "list offloads and forwards depends on the kernel: see README, Real gateways; "
        "\"lower\" (the default) offloads and forwards every path measured there on 6.1, "
        "6.12 and 7.x, the stack guard behind it. Names are declared to the kernel ahead "
        "of their device with every setting.",
        _values(Stack)),
    Key("metrics", "enabled", BOOLEAN, _toml(_M.enabled), "Serve metrics at all."),
    Key("metrics", "listen", STRING, MetricsConfig().listen,
        'Where the exporter listens, "host:port" ("[::1]:9468" for IPv6).'),
    Key("metrics", "port", INTEGER, _toml(_M.port),
        "The port alone (1..65535), for the default host; must agree with listen if both "
        "are given."),
    Key("metrics", "tls_cert_file", STRING, None,
        "HTTPS: the certificate (PEM), an absolute path; give tls_key_file with it. "
        "Without both, plain HTTP."),
    Key("metrics", "tls_key_file", STRING, None,
        "HTTPS: the certificate's private key (PEM), an absolute path."),
    Key("metrics", "tls_client_ca_file", STRING, None,
        "Mutual TLS: check client certificates against this CA (PEM), an absolute path; "
        "needs tls_cert_file and tls_key_file."),
    Key("metrics", "tls_client_auth_required", BOOLEAN, _toml(_M.tls_client_auth_required),
        "Refuse scrapers without a client certificate; needs tls_client_ca_file."),
    Key("metrics", "flow_count_interval", INTEGER, _toml(_M.flow_count_interval),
        "Seconds (1..3600) between two walks of the conntrack table for the offloaded-flow "
        "count. A scrape is answered from the last walk, never waits for one, and "
        "offloadd_offloaded_flows_age_seconds says how old it is; concurrent scrapers share "
        "one walk."),
    Key("control", "socket", STRING, _toml(_C.socket),
        "The Unix socket offloadctl talks to (an absolute path; mode 0600, or 0660 with "
        "group)."),
    Key("control", "group", STRING, _toml(_C.group),
        'The group allowed to use the control socket; "" = root only.'),
)


def names(table: str) -> tuple[str, ...]:
    """The keys of one table, in the order the parser lists them in errors."""
    return tuple(k.name for k in KEYS if k.table == table)
