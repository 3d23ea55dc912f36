"""offloadd's configuration as frozen, typed values.

Why: model, plan, render, the daemon and the metrics exporter work from these
values and need none of the TOML reading; they can trust them because
offloadd.core.configparse is the one place that builds them, checking
everything once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

# Where offloadd and offloadctl look when no --config is given.
DEFAULT_CONFIG_PATH = Path("/etc/offloadd/offloadd.toml")

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# IFNAMSIZ is 16 including the terminating NUL.
IFNAME_MAX = 15


def is_safe_ifname(name: str) -> bool:
    """True if `name` can be written as "name" in an nft script.

    The kernel accepts quotes and other oddities in interface names, but nft's
    quoted strings have no escapes, so such names cannot be expressed at all.
    A name the kernel gave as bytes that are not UTF-8 reaches offloadd with
    those bytes as \\xNN (offloadd.kernel.linkmsg.decode_name): the
    backslash makes it unsafe, so it is never sent.
    """
    return (
        0 < len(name.encode()) <= IFNAME_MAX
        and name.isprintable()
        and not any(c.isspace() or c in '"\\/' for c in name)
    )


def device_name_problem(name: str) -> str | None:
    """Why a device called `name` cannot be put in an nft script as that
    device (and only that one); None if it can.

    Beyond is_safe_ifname: nft reads a name ending in "*" as a wildcard (a
    device literally named "lan*" would hook, or match, every device whose
    name starts with "lan"), and a wildcard is offloadd's to write only where
    the config asks for one (offloadd.core.attach). A "*" anywhere else is
    refused too, so that no nft version's reading of it matters. "?" and "["
    mean nothing to nft and are written as they are.
    """
    if "\\" in name:
        return ("has a backslash, which an nft string cannot hold (a name that is not "
                "UTF-8 is shown with its bytes as \\xNN)")
    if "*" in name:
        return ('has a "*", which nft reads as a wildcard matching other devices too; '
                "offloadd writes one only where the config asks for a kernel wildcard")
    if not is_safe_ifname(name):
        return (f"is empty, longer than {IFNAME_MAX} bytes, or has a quote, slash, space or "
                "control character, which an nft string cannot hold")
    return None


# Words the nft parser treats as keywords where offloadd writes names; a table,
# flowtable or set called like this would make the rendered script unparsable.
NFT_KEYWORDS: frozenset[str] = frozenset(
    {
        "accept", "add", "arp", "bridge", "chain", "counter", "create", "ct",
        "delete", "destroy", "devices", "drop", "element", "ether", "filter",
        "flags", "flow", "flowtable", "flush", "fwd", "get", "hook", "inet",
        "insert", "ip", "ip6", "list", "map", "meta", "nat", "netdev", "offload",
        "policy", "priority", "rename", "replace", "reset", "route", "rule", "set",
        "table", "tcp", "type", "udp", "vlan",
    }
)  # fmt: skip

# IFLA_INFO_KIND values worth offloading; "ether" stands for a plain device
# (physical NIC) that reports no kind at all.
LINK_KINDS: frozenset[str] = frozenset(
    {
        "bond", "bridge", "dummy", "ether", "geneve", "gre", "gretap", "ip6gre",
        "ip6tnl", "ipip", "ipvlan", "macvlan", "macvtap", "ppp", "pppoe", "sit",
        "team", "tun", "veth", "vlan", "vrf", "vxlan", "wireguard",
    }
)  # fmt: skip

PROTOCOLS: tuple[str, ...] = ("tcp", "udp")


class Family(enum.Enum):
    INET = "inet"


class PriorityMode(enum.Enum):
    """Only AUTO has a meaning beyond the number; see DaemonConfig.priority."""

    AUTO = "auto"


class OnExit(enum.Enum):
    REMOVE = "remove"
    KEEP = "keep"


class Repair(enum.Enum):
    """Replace a flowtable whose flows the kernel left behind (see offloadd.core.repair)."""

    AUTO = "auto"
    OFF = "off"


class Revalidate(enum.Enum):
    """Tear offloaded flows down when others change the ruleset (offloadd.core.revalidate)."""

    ON_CHANGE = "on-change"
    OFF = "off"


class Hardware(enum.Enum):
    OFF = "off"
    AUTO = "auto"
    REQUIRED = "required"


class Stack(enum.Enum):
    """Which devices of a selected device's stack go into the flowtable
    (offloadd.core.stack): the kernel's fast path skips the bridge, VLAN and
    PPPoE layers only where the device beneath them is in the flowtable."""

    AS_LISTED = "as-listed"
    LOWER = "lower"
    BOTH = "both"


@dataclass(frozen=True)
class DaemonConfig:
    table: str = "offloadd"
    family: Family = Family.INET
    # AUTO: computed at apply time so offloadd's rule runs after every other
    # forward base chain (their verdicts, e.g. drop, must win).
    priority: PriorityMode | int = PriorityMode.AUTO
    on_exit: OnExit = OnExit.REMOVE
    repair: Repair = Repair.AUTO
    revalidate: Revalidate = Revalidate.ON_CHANGE
    # Seconds between full read-and-compare passes (0: none): a backstop for
    # the change that no event told offloadd of.
    check_interval: int = 60
    # The stack guard (offloadd.core.guard): seconds between its looks at
    # offloaded flows through stacked devices, and what counts against a
    # device: flows with this many packets one way and none back, this many
    # such flows in a look, this many looks in a row.
    stack_guard_interval: int = 5
    stack_guard_packets: int = 10
    stack_guard_flows: int = 2
    stack_guard_looks: int = 2


@dataclass(frozen=True)
class FlowtableConfig:
    name: str
    devices: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset()
    protocols: tuple[str, ...] = PROTOCOLS
    counter: bool = True
    hardware: Hardware = Hardware.OFF
    elephant_packets: int = 0
    priority: int = 0
    # LOWER: measured (README, Real gateways) to offload and forward every
    # path on 6.1, 6.12 and 7.x, where the L3 list offloads nothing on 7.x.
    stack: Stack = Stack.LOWER

    @property
    def hw_name(self) -> str:
        """Kernel name of the hardware flowtable (hardware = auto/required)."""
        return f"{self.name}_hw"

    def kernel_names(self) -> tuple[str, ...]:
        """Names of the kernel flowtables this configured flowtable becomes."""
        if self.hardware is Hardware.OFF:
            return (self.name,)
        if self.hardware is Hardware.REQUIRED:
            return (self.hw_name,)
        return (self.hw_name, self.name)


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9468
    enabled: bool = True
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    tls_client_auth_required: bool = False
    # Seconds between two walks of the conntrack table for the offloaded-flow
    # count; scrapes are answered from the last walk.
    flow_count_interval: int = 15

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = Path("/run/offloadd/control.sock")
    group: str = ""


@dataclass(frozen=True)
class Config:
    flowtables: tuple[FlowtableConfig, ...]
    daemon: DaemonConfig = DaemonConfig()
    metrics: MetricsConfig = MetricsConfig()
    control: ControlConfig = ControlConfig()
