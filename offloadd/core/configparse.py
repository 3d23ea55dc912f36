"""Parse and validate offloadd's TOML configuration into frozen values.

Why: every later layer (model, plan, render) trusts these values, so all
checking happens here, once, and each failure is a single ConfigError line
that names the key path, the bad value and what would be valid.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from offloadd.core.config import (
    IFNAME_MAX,
    INT32_MAX,
    INT32_MIN,
    LINK_KINDS,
    NFT_KEYWORDS,
    PROTOCOLS,
    Config,
    ControlConfig,
    DaemonConfig,
    Family,
    FlowtableConfig,
    Hardware,
    MetricsConfig,
    OnExit,
    PriorityMode,
    Repair,
    Revalidate,
    Stack,
)
from offloadd.core.configschema import TABLES, names
from offloadd.core.errors import ConfigError
from offloadd.core.tomlsection import Section, choices, enum_value, int_in, q

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts "(at line N, column M)" in its message already.
        raise ConfigError(f"{source}: TOML syntax error: {exc}") from None
    try:
        return _parse_doc(doc)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# --- internals -------------------------------------------------------------


def _parse_doc(doc: Mapping[str, Any]) -> Config:
    top = Section(doc, "", tuple(t.name for t in TABLES))
    daemon = _parse_daemon(_subtable(top, "daemon"))
    metrics = _parse_metrics(_subtable(top, "metrics"))
    control = _parse_control(_subtable(top, "control"))

    raw_fts = top.get("flowtable", list, [])
    if not raw_fts:
        raise ConfigError(
            "flowtable: no flowtable configured; add at least one [[flowtable]] with a name"
        )
    flowtables: list[FlowtableConfig] = []
    for i, raw in enumerate(raw_fts):
        if type(raw) is not dict:
            raise ConfigError(f"flowtable[{i}]: must be a table ([[flowtable]]), not {q(raw)}")
        flowtables.append(_parse_flowtable(raw, f"flowtable[{i}]"))
    _check_unique_names(flowtables)
    return Config(flowtables=tuple(flowtables), daemon=daemon, metrics=metrics, control=control)


def _subtable(top: Section, key: str) -> Mapping[str, Any]:
    value: Mapping[str, Any] = top.get(key, dict, {})
    return value


def _check_identifier(path: str, value: str) -> str:
    if not _IDENT_RE.match(value):
        raise ConfigError(
            f"{path}: {q(value)} is not a valid name; use 1-32 letters, digits or '_', "
            "not starting with a digit"
        )
    if value in NFT_KEYWORDS:
        raise ConfigError(
            f"{path}: {q(value)} is an nft keyword; choose another name (e.g. {value}_ft)"
        )
    return value



def _parse_daemon(data: Mapping[str, Any]) -> DaemonConfig:
    s = Section(data, "daemon", names("daemon"))
    table = _check_identifier(s.key("table"), s.get("table", str, DaemonConfig.table))
    family = enum_value(s, "family", Family, DaemonConfig.family)
    priority: PriorityMode | int = DaemonConfig.priority
    if s.has("priority"):
        raw = data["priority"]
        if type(raw) is int:
            priority = int_in(s, "priority", 0, INT32_MIN, INT32_MAX)
        elif raw != "auto":
            raise ConfigError(
                f'daemon.priority: {q(raw)} is not valid; use "auto" or an integer '
                f"in {INT32_MIN}..{INT32_MAX}"
            )
    on_exit = enum_value(s, "on_exit", OnExit, DaemonConfig.on_exit)
    repair = enum_value(s, "repair", Repair, DaemonConfig.repair)
    revalidate = enum_value(s, "revalidate", Revalidate, DaemonConfig.revalidate)
    check_interval = int_in(s, "check_interval", DaemonConfig.check_interval, 0, 86400)
    dc = DaemonConfig
    return DaemonConfig(
        table=table, family=family, priority=priority, on_exit=on_exit,
        repair=repair, revalidate=revalidate, check_interval=check_interval,
        stack_guard_interval=int_in(s, "stack_guard_interval", dc.stack_guard_interval, 1, 3600),
        stack_guard_packets=int_in(s, "stack_guard_packets", dc.stack_guard_packets, 1, 10**9),
        stack_guard_flows=int_in(s, "stack_guard_flows", dc.stack_guard_flows, 1, 10**6),
        stack_guard_looks=int_in(s, "stack_guard_looks", dc.stack_guard_looks, 1, 1000))


def _parse_flowtable(data: Mapping[str, Any], path: str) -> FlowtableConfig:
    s = Section(data, path, names("flowtable"))
    if not s.has("name"):
        raise ConfigError(f"{path}.name: missing; every flowtable needs a name")
    name = _check_identifier(s.key("name"), s.get("name", str, ""))
    devices = _patterns(s, "devices")
    exclude = _patterns(s, "exclude")
    kinds = _kinds(s)
    if not devices and not kinds:
        raise ConfigError(f"{path}: empty device set; give devices = [...] or kinds = [...]")
    exact = [d for d in devices if not _is_glob(d)]
    all_exact = bool(exact) and len(exact) == len(devices) and not kinds
    if all_exact and all(any(fnmatch.fnmatchcase(d, x) for x in exclude) for d in exact):
        raise ConfigError(
            f"{path}.exclude: excludes every device in {path}.devices, so the "
            "flowtable can never match; drop the exclusion or add devices"
        )
    protocols = _protocols(s)
    hardware = enum_value(s, "hardware", Hardware, FlowtableConfig.hardware)
    stack = enum_value(s, "stack", Stack, FlowtableConfig.stack)
    return FlowtableConfig(
        name=name,
        devices=devices,
        exclude=exclude,
        kinds=kinds,
        protocols=protocols,
        counter=s.get("counter", bool, FlowtableConfig.counter),
        hardware=hardware,
        elephant_packets=int_in(s, "elephant_packets", FlowtableConfig.elephant_packets,
                                0, 2**63 - 1),
        priority=int_in(s, "priority", FlowtableConfig.priority, INT32_MIN, INT32_MAX),
        stack=stack,
    )


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _patterns(s: Section, key: str) -> tuple[str, ...]:
    patterns = s.str_list(key)
    seen: set[str] = set()
    for i, pattern in enumerate(patterns):
        where = f"{s.key(key)}[{i}]"
        problem = _pattern_problem(pattern)
        if problem:
            raise ConfigError(f"{where}: {q(pattern)} {problem}")
        if pattern in seen:
            raise ConfigError(f"{where}: {q(pattern)} is listed twice; remove the duplicate")
        seen.add(pattern)
    return patterns


def _pattern_problem(pattern: str) -> str | None:
    if not pattern:
        return 'is empty; use an interface name or a glob like "eth*"'
    if any(c.isspace() for c in pattern) or "/" in pattern or ":" in pattern:
        return "contains whitespace, '/' or ':', which no interface name can"
    if not pattern.isprintable() or '"' in pattern or "\\" in pattern:
        return "contains a quote, backslash or control character; use a plain name or glob"
    if not _is_glob(pattern):
        if len(pattern.encode()) > IFNAME_MAX:
            return f"is longer than {IFNAME_MAX} bytes, the kernel's limit for interface names"
        return None
    # fnmatch silently treats an unclosed '[' as a literal; here that is a typo.
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                return "has an unclosed '['; close the bracket, e.g. \"lan[0-9]\""
            if close == i + 1 or (close == i + 2 and pattern[i + 1] == "!"):
                return 'has an empty bracket expression; put characters in it, e.g. "[0-9]"'
            i = close + 1
        elif pattern[i] == "]":
            return "has a ']' without a matching '['"
        else:
            i += 1
    return None


def _kinds(s: Section) -> frozenset[str]:
    kinds = s.str_list("kinds")
    for i, kind in enumerate(kinds):
        if kind not in LINK_KINDS:
            close = difflib.get_close_matches(kind, LINK_KINDS, n=1)
            hint = f"did you mean {q(close[0])}? " if close else ""
            raise ConfigError(
                f"{s.key('kinds')}[{i}]: {q(kind)} is not a known link kind; {hint}"
                f"use one of {choices(LINK_KINDS)}"
            )
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"{s.key('kinds')}: {q(list(kinds))} has duplicates; list each once")
    return frozenset(kinds)


def _protocols(s: Section) -> tuple[str, ...]:
    if not s.has("protocols"):
        return FlowtableConfig.protocols
    protos = s.str_list("protocols")
    if not protos:
        raise ConfigError(f'{s.key("protocols")}: is empty; use ["tcp"], ["udp"] or both')
    for i, proto in enumerate(protos):
        if proto not in PROTOCOLS:
            raise ConfigError(
                f'{s.key("protocols")}[{i}]: {q(proto)} is not valid; use "tcp" or "udp"'
            )
    if len(set(protos)) != len(protos):
        raise ConfigError(f"{s.key('protocols')}: {q(list(protos))} has duplicates")
    # Canonical order keeps the rendered rule (and so the plan) stable.
    return tuple(p for p in PROTOCOLS if p in protos)


def _check_unique_names(flowtables: list[FlowtableConfig]) -> None:
    owner: dict[str, int] = {}
    for i, ft in enumerate(flowtables):
        if ft.name in owner:
            raise ConfigError(
                f"flowtable[{i}].name: {q(ft.name)} is already used by "
                f"flowtable[{owner[ft.name]}]; names must be unique"
            )
        owner[ft.name] = i
    # A hardware flowtable is named "<name>_hw", which may clash with a
    # configured name; the kernel has one namespace for both.
    kernel_owner: dict[str, int] = {}
    for i, ft in enumerate(flowtables):
        for kname in ft.kernel_names():
            if kname in kernel_owner and kernel_owner[kname] != i:
                j = kernel_owner[kname]
                first, second = sorted((i, j))
                raise ConfigError(
                    f"flowtable[{second}].name: kernel flowtable {q(kname)} would be made "
                    f"by both flowtable[{first}] and flowtable[{second}] "
                    "(hardware flowtables are named <name>_hw); rename one"
                )
            kernel_owner[kname] = i


def _parse_metrics(data: Mapping[str, Any]) -> MetricsConfig:
    s = Section(data, "metrics", names("metrics"))
    listen = s.get("listen", str, None)
    host, port = MetricsConfig.host, MetricsConfig.port
    if listen is not None:
        host, port = _parse_listen(listen)
    if s.has("port"):
        given = int_in(s, "port", port, 1, 65535)
        if listen is not None and given != port:
            raise ConfigError(
                f"metrics.port: {given} contradicts metrics.listen {q(listen)}; "
                "give the port in one of them only"
            )
        port = given
    enabled = s.get("enabled", bool, MetricsConfig.enabled)
    files: dict[str, Path | None] = {}
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        value = s.get(key, str, None)
        if value is not None and not value.startswith("/"):
            raise ConfigError(f"metrics.{key}: {q(value)} is not valid; use an absolute path")
        files[key] = Path(value) if value is not None else None
    if (files["tls_cert_file"] is None) != (files["tls_key_file"] is None):
        raise ConfigError("metrics: tls_cert_file and tls_key_file go together; "
                          "give both for HTTPS or neither for plain HTTP")
    client_auth = s.get("tls_client_auth_required", bool,
                        MetricsConfig.tls_client_auth_required)
    if files["tls_client_ca_file"] is not None and files["tls_cert_file"] is None:
        raise ConfigError("metrics.tls_client_ca_file: needs tls_cert_file and tls_key_file "
                          "(client certificates are checked only over HTTPS)")
    if client_auth and files["tls_client_ca_file"] is None:
        raise ConfigError("metrics.tls_client_auth_required: true needs tls_client_ca_file "
                          "to check client certificates against")
    interval = int_in(s, "flow_count_interval", MetricsConfig.flow_count_interval, 1, 3600)
    return MetricsConfig(host=host, port=port, enabled=enabled,
                         tls_cert_file=files["tls_cert_file"],
                         tls_key_file=files["tls_key_file"],
                         tls_client_ca_file=files["tls_client_ca_file"],
                         tls_client_auth_required=client_auth,
                         flow_count_interval=interval)


def _parse_listen(listen: str) -> tuple[str, int]:
    bad = f'metrics.listen: {q(listen)} is not valid; use "host:port" (e.g. "127.0.0.1:9468", "[::1]:9468") with port 1..65535'  # noqa: E501
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.\-]*):(\d{1,5})", listen)
    if not m:
        raise ConfigError(bad)
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) if m.group(2) is not None else m.group(4))
    if not 1 <= port <= 65535:
        raise ConfigError(bad)
    return host, port


def _parse_control(data: Mapping[str, Any]) -> ControlConfig:
    s = Section(data, "control", names("control"))
    socket = s.get("socket", str, str(ControlConfig.socket))
    if not socket.startswith("/") or "\x00" in socket:
        raise ConfigError(
            f"control.socket: {q(socket)} is not valid; use an absolute path "
            '(e.g. "/run/offloadd/control.sock")'
        )
    group = s.get("group", str, ControlConfig.group)
    if group and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,31}\$?", group):
        raise ConfigError(
            f'control.group: {q(group)} is not a valid group name; use e.g. "offloadd" '
            'or "" for root only'
        )
    return ControlConfig(socket=Path(socket), group=group)
