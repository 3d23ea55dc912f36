"""Config parsing: the shipped example parses, and every class of mistake is
one ConfigError line that names the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from offloadd.core.config import (
    Config,
    FlowtableConfig,
    Hardware,
    OnExit,
    PriorityMode,
)
from offloadd.core.configparse import load_config, parse_config
from offloadd.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "offloadd" / "offloadd.toml"

MINIMAL = '[[flowtable]]\nname = "lan"\ndevices = ["eth0"]\n'


def _ft(body: str) -> str:
    return f'[[flowtable]]\nname = "lan"\n{body}\n'


def test_example_config_parses() -> None:
    config = load_config(EXAMPLE)
    assert config.daemon.table == "offloadd"
    assert config.daemon.priority is PriorityMode.AUTO
    ft = config.flowtables[0]
    assert ft.name == "lan"
    assert ft.devices == ("eth0", "wan*", "lan[0-9]")
    assert ft.exclude == ("wan9",)
    assert "ether" in ft.kinds
    assert config.metrics.port == 9468


def test_example_config_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    for key in (
        "table", "family", "priority", "on_exit", "repair", "listen", "socket", "group", "name",
        "devices", "exclude", "kinds", "protocols", "counter", "hardware",
        "elephant_packets",
    ):  # fmt: skip
        assert f"\n{key} = " in text, key


def test_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config == Config(flowtables=(FlowtableConfig(name="lan", devices=("eth0",)),))
    ft = config.flowtables[0]
    assert ft.protocols == ("tcp", "udp")
    assert ft.counter is True
    assert ft.hardware is Hardware.OFF
    assert ft.elephant_packets == 0
    assert config.daemon.on_exit is OnExit.REMOVE
    assert config.metrics.listen == "127.0.0.1:9468"


def test_full_values() -> None:
    text = (
        '[daemon]\ntable = "gw"\npriority = -5\non_exit = "keep"\n'
        '[metrics]\nlisten = "[::1]:9100"\n'
        '[control]\nsocket = "/run/x.sock"\ngroup = "wheel"\n'
        + _ft(
            'kinds = ["vlan"]\nprotocols = ["udp", "tcp"]\nhardware = "auto"\n'
            "elephant_packets = 20\npriority = -10\ncounter = false"
        )
    )
    config = parse_config(text)
    assert config.daemon.table == "gw"
    assert config.daemon.priority == -5
    assert config.daemon.on_exit is OnExit.KEEP
    assert (config.metrics.host, config.metrics.port) == ("::1", 9100)
    assert config.metrics.listen == "[::1]:9100"
    assert str(config.control.socket) == "/run/x.sock"
    ft = config.flowtables[0]
    assert ft.kinds == frozenset({"vlan"})
    assert ft.protocols == ("tcp", "udp")  # canonical order
    assert ft.hardware is Hardware.AUTO
    assert ft.kernel_names() == ("lan_hw", "lan")
    assert (ft.elephant_packets, ft.priority, ft.counter) == (20, -10, False)


BAD = [
    # (toml, substring that must appear in the message)
    ("[daemon]\ntable = 5\n" + MINIMAL, "daemon.table: 5 is an integer; it must be a string"),
    ('[daemon]\ntable = "1abc"\n' + MINIMAL, 'daemon.table: "1abc" is not a valid name'),
    ('[daemon]\ntable = "a-b"\n' + MINIMAL, 'daemon.table: "a-b" is not a valid name'),
    ('[daemon]\ntable = "' + "a" * 33 + '"\n' + MINIMAL, "daemon.table:"),
    ('[daemon]\ntable = "flowtable"\n' + MINIMAL, '"flowtable" is an nft keyword'),
    ('[daemon]\ntable = "fwd"\n' + MINIMAL, 'daemon.table: "fwd" is an nft keyword'),
    ('[daemon]\nfamily = "ip"\n' + MINIMAL, 'daemon.family: "ip" is not valid; use one of "inet"'),
    ('[daemon]\npriority = "late"\n' + MINIMAL, 'daemon.priority: "late" is not valid; use "auto"'),
    ("[daemon]\npriority = 2147483648\n" + MINIMAL, "daemon.priority: 2147483648 is out of range"),
    ("[daemon]\npriority = true\n" + MINIMAL, "daemon.priority: true is not valid"),
    ("[daemon]\ncheck_interval = -1\n" + MINIMAL,
     "daemon.check_interval: -1 is out of range; use 0..86400"),
    ('[daemon]\ncheck_interval = "1m"\n' + MINIMAL, "daemon.check_interval"),
    (
        '[daemon]\non_exit = "stay"\n' + MINIMAL,
        'daemon.on_exit: "stay" is not valid; use one of "remove", "keep"',
    ),
    ('[daemon]\ntabel = "x"\n' + MINIMAL, "unknown key daemon.tabel; did you mean 'table'?"),
    ("[deamon]\n" + MINIMAL, "unknown key deamon; did you mean 'daemon'?"),
    ("daemon = 3\n" + MINIMAL, "daemon: 3 is an integer; it must be a table"),
    ("", "flowtable: no flowtable configured"),
    ("flowtable = []\n", "flowtable: no flowtable configured"),
    ("flowtable = [1]\n", "flowtable[0]: must be a table"),
    ('[[flowtable]]\ndevices = ["eth0"]\n', "flowtable[0].name: missing"),
    (
        _ft('devices = ["eth0"]\ndevcies = ["x"]'),
        "unknown key flowtable[0].devcies; did you mean 'devices'?",
    ),
    (_ft('devices = "eth0"'), 'flowtable[0].devices: "eth0" is a string; it must be an array'),
    (_ft("devices = [1]"), "flowtable[0].devices[0]: 1 is an integer; it must be a string"),
    (_ft('devices = ["lan[0-9"]'), "flowtable[0].devices[0]: \"lan[0-9\" has an unclosed '['"),
    (_ft('devices = ["lan[]"]'), "flowtable[0].devices[0]: \"lan[]\" has an unclosed '['"),
    (_ft('devices = ["lan*0-9]"]'), "flowtable[0].devices[0]: \"lan*0-9]\" has a ']' without"),
    (_ft('devices = [""]'), 'flowtable[0].devices[0]: "" is empty'),
    (_ft('devices = ["eth 0"]'), 'flowtable[0].devices[0]: "eth 0" contains whitespace'),
    (_ft('devices = ["a/b"]'), "flowtable[0].devices[0]: \"a/b\" contains whitespace, '/'"),
    (_ft('devices = ["a\\"b"]'), "flowtable[0].devices[0]:"),
    (
        _ft('devices = ["abcdefghijklmnop"]'),
        'flowtable[0].devices[0]: "abcdefghijklmnop" is longer than 15',
    ),
    (_ft('devices = ["eth0", "eth0"]'), 'flowtable[0].devices[1]: "eth0" is listed twice'),
    (_ft('devices = ["eth0"]\nexclude = ["wan[x"]'), "flowtable[0].exclude[0]:"),
    (_ft(""), "flowtable[0]: empty device set; give devices = [...] or kinds = [...]"),
    (_ft("devices = []\nkinds = []"), "flowtable[0]: empty device set"),
    (
        _ft('devices = ["eth0", "eth1"]\nexclude = ["eth*"]'),
        "flowtable[0].exclude: excludes every device",
    ),
    (
        _ft('kinds = ["vlna"]'),
        'flowtable[0].kinds[0]: "vlna" is not a known link kind; did you mean "vlan"?',
    ),
    (_ft('kinds = ["vlan", "vlan"]'), 'flowtable[0].kinds: ["vlan", "vlan"] has duplicates'),
    (_ft('devices = ["eth0"]\nprotocols = []'), "flowtable[0].protocols: is empty"),
    (
        _ft('devices = ["eth0"]\nprotocols = ["sctp"]'),
        'flowtable[0].protocols[0]: "sctp" is not valid',
    ),
    (_ft('devices = ["eth0"]\nprotocols = ["tcp", "tcp"]'), "flowtable[0].protocols:"),
    (
        _ft('devices = ["eth0"]\ncounter = "yes"'),
        'flowtable[0].counter: "yes" is a string; it must be a boolean',
    ),
    (
        _ft('devices = ["eth0"]\ncounter = 1'),
        "flowtable[0].counter: 1 is an integer; it must be a boolean",
    ),
    (
        _ft('devices = ["eth0"]\nhardware = "maybe"'),
        'flowtable[0].hardware: "maybe" is not valid; use one of "off", "auto", "required"',
    ),
    (
        _ft('devices = ["eth0"]\nhardware = true'),
        "flowtable[0].hardware: true is a boolean; it must be a string",
    ),
    (
        _ft('devices = ["eth0"]\nelephant_packets = -1'),
        "flowtable[0].elephant_packets: -1 is out of range",
    ),
    (
        _ft('devices = ["eth0"]\nelephant_packets = 1.5'),
        "flowtable[0].elephant_packets: 1.5 is a float",
    ),
    (_ft('devices = ["eth0"]\npriority = "filter"'), "flowtable[0].priority:"),
    (
        '[[flowtable]]\nname = "table"\ndevices = ["eth0"]\n',
        'flowtable[0].name: "table" is an nft keyword',
    ),
    (
        '[[flowtable]]\nname = "lan-1"\ndevices = ["eth0"]\n',
        'flowtable[0].name: "lan-1" is not a valid name',
    ),
    (
        MINIMAL + '[[flowtable]]\nname = "lan"\ndevices = ["eth1"]\n',
        'flowtable[1].name: "lan" is already used by flowtable[0]',
    ),
    (
        _ft('devices = ["eth0"]\nhardware = "auto"')
        + '[[flowtable]]\nname = "lan_hw"\ndevices = ["eth1"]\n',
        'flowtable[1].name: kernel flowtable "lan_hw"',
    ),
    (
        '[metrics]\nlisten = "localhost"\n' + MINIMAL,
        'metrics.listen: "localhost" is not valid; use "host:port"',
    ),
    ('[metrics]\nlisten = "127.0.0.1:0"\n' + MINIMAL, 'metrics.listen: "127.0.0.1:0" is not valid'),
    ('[metrics]\nlisten = "127.0.0.1:65536"\n' + MINIMAL, "metrics.listen:"),
    ('[metrics]\nlisten = "::1:9100"\n' + MINIMAL, "metrics.listen:"),
    ("[metrics]\nport = 70000\n" + MINIMAL, "metrics.port: 70000 is out of range; use 1..65535"),
    ('[metrics]\nlisten = "127.0.0.1:1"\nport = 2\n' + MINIMAL, "metrics.port: 2 contradicts"),
    (
        '[control]\nsocket = "relative.sock"\n' + MINIMAL,
        'control.socket: "relative.sock" is not valid',
    ),
    (
        '[control]\ngroup = "bad group"\n' + MINIMAL,
        'control.group: "bad group" is not a valid group',
    ),
    ('[control]\nsocet = "/x"\n' + MINIMAL, "unknown key control.socet; did you mean 'socket'?"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[b[1][:60] for b in BAD])
def test_bad_config_is_one_clear_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="test.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("test.toml: ")
    assert expected in message


def test_unknown_key_lists_known_keys() -> None:
    with pytest.raises(ConfigError, match=r"known keys: name, devices, exclude, kinds"):
        parse_config(_ft('devices = ["eth0"]\nzzz = 1'))


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="flowtable"):
        parse_config("")


def test_toml_syntax_error_has_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[daemon]\ntable = "x"\n[[flowtable]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "line 3" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found$"):
        load_config(path)


def test_unreadable_file(tmp_path: Path) -> None:
    # A directory stands in for an unreadable file (works as root too).
    with pytest.raises(ConfigError, match=r"cannot read config"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8"):
        load_config(path)


def test_globs_and_exclusions_that_can_match_are_accepted() -> None:
    # A glob in devices may still match something the exclusion does not.
    parse_config(_ft('devices = ["eth*"]\nexclude = ["eth0"]'))
    # Kinds alone can still match.
    parse_config(_ft('devices = ["eth0"]\nexclude = ["eth0"]\nkinds = ["vlan"]'))
    parse_config(_ft('devices = ["lan[!0]", "x?"]'))


def test_nft_keywords_rejected_as_flowtable_names() -> None:
    for word in ("offload", "flow", "counter", "devices", "hook", "priority", "add", "delete"):
        with pytest.raises(ConfigError, match=f'"{word}" is an nft keyword'):
            parse_config(f'[[flowtable]]\nname = "{word}"\ndevices = ["eth0"]\n')


def test_metrics_tls_keys() -> None:
    base = '[[flowtable]]\nname = "a"\ndevices = ["x"]\n[metrics]\n'
    cfg = parse_config(base + 'tls_cert_file = "/c.pem"\ntls_key_file = "/k.pem"\n'
                       'tls_client_ca_file = "/ca.pem"\ntls_client_auth_required = true\n')
    assert cfg.metrics.tls_cert_file == Path("/c.pem")
    assert cfg.metrics.tls_client_auth_required
    for bad, words in [('tls_cert_file = "/c.pem"\n', "go together"),
                       ('tls_cert_file = "c.pem"\ntls_key_file = "/k"\n', "absolute path"),
                       ('tls_client_auth_required = true\n', "needs tls_client_ca_file"),
                       ('enabled = "yes"\n', "metrics.enabled")]:
        with pytest.raises(ConfigError, match=words):
            parse_config(base + bad)
