"""Every tunable, with its default and a one-line doc; units in the names.

Config files (YAML, ``--config``) map onto these dataclasses, plus a ``commands`` section holding
defaults for the command-line flags (``check_commands``); unknown keys and wrong types are errors
naming file:line and the dotted key.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowsense.errors import ConfigError

DEFAULT_HOME_NET = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")


@dataclass(frozen=True)
class CaptureConfig:
    batch_packets: int = 65536
    """Packets handed to the flow table per batch."""
    walk_packets: int = 1024
    """Records walked and then decoded at a time, so decoding finds the frames still in cache
    (the walk prefetches every line of them: a step must fit the core's L2; on the benchmark
    capture 1,024 took 0.82 s where 4,096 took 0.90 s and 256 0.88 s)."""
    read_chunk_bytes: int = 8 << 20
    """Read size for streams (stdin, .gz) that cannot be memory-mapped."""
    max_record_bytes: int = 262144 * 4
    """Hard cap on one record's captured length; longer is container damage."""
    max_interfaces: int = 4096
    """pcapng interfaces per section beyond which the file is rejected."""
    max_gzip_ratio: int = 1000
    """Decompressed/compressed ratio past which a .gz is treated as a bomb..."""
    gzip_ratio_floor_bytes: int = 256 << 20
    """...once at least this much has been decompressed."""
    frag_table_size: int = 4096
    """Slots of the IPv4/IPv6 fragment table (ports of first fragments, by IP id)."""
    frag_timeout_s: float = 30.0
    """A non-first fragment later than this after its first is an orphan."""
    max_encap_depth: int = 4
    """Encapsulation layers (VLAN, MPLS, VXLAN, GRE, IP-in-IP) followed before giving up."""
    chunk_bytes: int = 32 << 20
    """Parallel runs: bytes of a classic pcap file a worker walks and decodes at a time (each
    round costs its waits and Python: on the 2M capture 32 MiB ranges ran 2-5% faster than
    16 MiB)."""


@dataclass(frozen=True)
class FlowConfig:
    idle_timeout_s: float = 120.0
    """Idle timeout for UDP, ICMP, other protocols and TCP not yet established."""
    established_idle_timeout_s: float = 3600.0
    """Idle timeout for established TCP: reverse tunnels idle for long."""
    active_timeout_s: float = 1800.0
    """Interim record after this long; the flow keeps its identity and state."""
    close_delay_s: float = 5.0
    """How long a flow lingers after FIN both ways or RST, for the trailing ACKs."""
    initial_flows: int = 65536
    """Initial table capacity (grows by doubling; untouched slots cost no resident memory)."""
    max_flows: int = 0
    """Bound on live flows; 0 grows without bound. Past it the least recently seen are evicted."""
    splt_packets: int = 32
    """First packets of each flow kept as (signed size, time offset)."""
    head_bytes: int = 512
    """First payload bytes kept per direction for every flow."""
    watch_quota: int = 1024
    """Flows that may hold a watch lease (slab and trace) at once."""
    slab_bytes: int = 4096
    """Payload bytes kept per direction, in sequence order, for watched flows."""
    trace_packets: int = 4096
    """Ring of (size, direction, time) kept for watched flows."""
    hash_seed: int = 0
    """Key for the flow hash; 0 draws a random one per run (flow floods)."""
    snapshot_interval_s: float = 30.0
    """Live watched flows touched since the last look are shown to detectors this often (capture
    time): a tunnel or a miner is judged while it is still up, not only when it ends."""


@dataclass(frozen=True)
class SshConfig:
    idle_tunnel_s: float = 600.0
    """An SSH session carrying nothing but keepalives this long is an ``idle-tunnel``."""
    reverse_bursts: int = 4
    """Keystroke bursts opened by the responder and echoed at once by the initiator before a
    ``reverse-interactive`` alert (and at least twice the bursts seen the other way)."""
    burst_gap_ms: float = 50.0
    """Quiet time (both directions) that opens a new keystroke burst: longer than OpenSSH 9.5's
    20 ms chaff period, shorter than human typing (80 ms and up)."""
    exfil_bytes: int = 1 << 20
    """Initiator-to-responder bytes after a reverse session began that make ``reverse-exfil``."""
    max_sessions: int = 4096
    """SSH flows whose timing state is kept at once (least recently seen dropped past it)."""

    def __post_init__(self) -> None:
        if self.reverse_bursts < 1 or self.max_sessions < 1:
            raise ConfigError("ssh.reverse_bursts and ssh.max_sessions must be at least 1")
        if self.idle_tunnel_s <= 0 or self.burst_gap_ms <= 0:
            raise ConfigError("ssh.idle_tunnel_s and ssh.burst_gap_ms must be positive")


@dataclass(frozen=True)
class AllowEntry:
    """One sanctioned endpoint: an address range, optionally one port, optionally only some
    alert categories (empty: all)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None
    categories: tuple[str, ...] = ()
    note: str = ""

    def matches(self, ip: str, port: int, category: str = "") -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.categories and category not in self.categories:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return addr.version == self.network.version and addr in self.network


@dataclass(frozen=True)
class Config:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flows: FlowConfig = field(default_factory=FlowConfig)
    ssh: SshConfig = field(default_factory=SshConfig)
    home_net: tuple[str, ...] = DEFAULT_HOME_NET
    """CIDRs inside the perimeter; sets an alert's direction only."""
    allowlist: tuple[AllowEntry, ...] = ()
    """Sanctioned endpoints (jump hosts, approved tunnels): alerts on a flow with either end in
    an entry are suppressed. YAML: a list of ``{cidr, port, categories, note}`` mappings."""

    def allowed(self, ip: str, port: int, category: str = "") -> bool:
        """Whether endpoint ``ip``:``port`` is allowlisted (for ``category``, when given)."""
        return any(e.matches(ip, port, category) for e in self.allowlist)

    def allows_flow(self, src_ip: str, src_port: int, dst_ip: str, dst_port: int,
                    category: str = "") -> bool:
        """Whether either end of a flow is allowlisted for ``category``."""
        return (self.allowed(dst_ip, dst_port, category)
                or self.allowed(src_ip, src_port, category))
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Defaults for each command's flags, ``commands: {analyze: {format: eve, report: r.html}}``:
    every long flag of ``analyze`` and ``flows`` (``--jobs``, ``--engine`` and the rest of the
    parallel options included, as they are added to the parser) by its name with ``_`` for
    ``-``; a flag on the command line wins. ``home_net`` and the timeouts have their own keys."""

    def with_timeouts(
        self, idle_s: float | None = None, active_s: float | None = None
    ) -> Config:
        """``--idle-timeout`` sets both idle timeouts; ``--active-timeout`` the active one."""
        flows = self.flows
        if idle_s is not None:
            if idle_s <= 0:
                raise ConfigError(f"--idle-timeout must be positive, got {idle_s}")
            flows = dataclasses.replace(
                flows, idle_timeout_s=idle_s, established_idle_timeout_s=idle_s
            )
        if active_s is not None:
            if active_s <= 0:
                raise ConfigError(f"--active-timeout must be positive, got {active_s}")
            flows = dataclasses.replace(flows, active_timeout_s=active_s)
        return dataclasses.replace(self, flows=flows)


def parse_home_net(text: str) -> tuple[str, ...]:
    nets = tuple(part.strip() for part in text.split(",") if part.strip())
    for net in nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"--home-net: {exc}") from None
    return nets


ALLOW_KEYS = ("cidr", "port", "categories", "note")
CATEGORIES = ("reverse-ssh", "ssh-tunnel", "stratum-mining", "mining-pool", "dns-tunnel",
              "icmp-tunnel", "beacon")


def _allowlist(value: Any, where: str) -> tuple[AllowEntry, ...]:
    """``allowlist:`` entries, each checked: a CIDR, an optional port in 1..65535, optional
    categories from ALERTS.md, an optional note; unknown keys are errors."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list")
    out: list[AllowEntry] = []
    for k, item in enumerate(value):
        at = f"{where}[{k}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{at}: expected a mapping with cidr")
        for key in item:
            if key not in ALLOW_KEYS:
                raise ConfigError(f"{at}: unknown key {key!r}")
        try:
            net = ipaddress.ip_network(str(item.get("cidr", "")), strict=False)
        except ValueError as exc:
            raise ConfigError(f"{at}.cidr: {exc}") from None
        port = item.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                                 or not 0 < port < 65536):
            raise ConfigError(f"{at}.port: expected a port number 1-65535")
        cats = item.get("categories", [])
        if not isinstance(cats, list) or any(c not in CATEGORIES for c in cats):
            raise ConfigError(f"{at}.categories: expected a list of {', '.join(CATEGORIES)}")
        note = item.get("note", "")
        if not isinstance(note, str):
            raise ConfigError(f"{at}.note: expected text")
        out.append(AllowEntry(net, port, tuple(cats), note))
    return tuple(out)


def _lines(node: yaml.Node, path: tuple[str, ...] = (),
           out: dict[tuple[str, ...], int] | None = None) -> dict[tuple[str, ...], int]:
    """Line (1-based) of every mapping key in a composed YAML tree, by its key path."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = path + (str(k.value),)
            out[key] = k.start_mark.line + 1
            _lines(v, key, out)
    return out


class _Where:
    """Names a place in the config file as ``file:line: dotted.key``."""

    def __init__(self, path: str, lines: dict[tuple[str, ...], int]) -> None:
        self.path = path
        self.lines = lines

    def name(self, keys: tuple[str, ...]) -> str:
        """``file:line: dotted.key`` of ``keys`` (for checkers that add their own message)."""
        line = self.lines.get(keys, 1)
        return f"{self.path}:{line}: {'.'.join(keys)}"

    def error(self, keys: tuple[str, ...], message: str) -> ConfigError:
        line = self.lines.get(keys)
        while line is None and keys:  # the nearest enclosing key that has a line
            keys = keys[:-1]
            line = self.lines.get(keys, 1 if not keys else None)
        name = ".".join(keys)
        return ConfigError(f"{self.path}:{line or 1}: {name + ': ' if name else ''}{message}")


def _build(cls: type, data: Any, where: _Where, keys: tuple[str, ...] = ()) -> Any:
    if not isinstance(data, dict):
        raise where.error(keys, "expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        at = keys + (str(key),)
        if key not in fields:
            raise where.error(at, f"unknown key {key!r}")
        if cls is Config and key == "allowlist":
            kwargs[key] = _allowlist(value, where.name(at))
            continue
        default = getattr(cls(), key)
        if key == "commands" and cls is Config:
            kwargs[key] = value  # checked against the flags by check_commands
        elif dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, where, at)
        elif isinstance(default, tuple):
            if not isinstance(value, list):
                raise where.error(at, "expected a list")
            kwargs[key] = tuple(str(v) for v in value)
        elif isinstance(default, bool) or not isinstance(value, (int, float)):
            if type(value) is not type(default):
                raise where.error(at, f"expected {type(default).__name__}")
            kwargs[key] = value
        else:
            if isinstance(value, bool) or (isinstance(default, int) and not isinstance(value, int)):
                raise where.error(at, f"expected {type(default).__name__}")
            if value < 0:
                raise where.error(at, "must not be negative")
            kwargs[key] = value
    return cls(**kwargs)


# flags that have a home elsewhere in the file, or make no sense there
_NOT_IN_COMMANDS = {
    "help": "not a setting", "version": "not a setting", "paths": "inputs are given as arguments",
    "config": "a config file cannot name another",
    "home_net": "set home_net at the top level",
    "idle_timeout": "set flows.idle_timeout_s and flows.established_idle_timeout_s",
    "active_timeout": "set flows.active_timeout_s",
}


def _flag_value(action: argparse.Action, value: Any) -> tuple[str | None, Any]:
    """(why ``value`` cannot stand for ``action``'s flag or None, the value to use)."""
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        ok = all(isinstance(v, str) for v in items)
        return (None, items) if ok else ("expected a list of strings", None)
    if isinstance(action, argparse._CountAction) or action.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (None, value) if ok else ("expected int", None)
    if action.nargs == 0:  # store_true and the like
        return (None, value) if isinstance(value, bool) else ("expected true or false", None)
    if action.type is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (None, value) if ok else ("expected a number", None)
    if action.type not in (None, str):  # a flag's own converter: give it the text
        if isinstance(value, (dict, list)) or value is None:
            return "expected a single value", None
        try:
            value = action.type(str(value).lower() if isinstance(value, bool) else str(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            return f"invalid value: {exc}", None
    elif not isinstance(value, str):
        return "expected a string", None
    if action.choices is not None and value not in action.choices:
        return f"expected one of {', '.join(map(str, action.choices))}", None
    return None, value


def check_commands(cfg: Config, flags: dict[str, list[argparse.Action]],
                   where: _Where | None = None) -> dict[str, dict[str, Any]]:
    """The ``commands`` section as flag defaults for each command, every key checked against
    that command's flags (``flags``: command -> its argparse actions). Values of ``append``
    flags come back as lists."""
    where = where or _Where("<config>", {})
    section = cfg.commands
    if not isinstance(section, dict):
        raise where.error(("commands",), "expected a mapping")
    out: dict[str, dict[str, Any]] = {}
    for command, values in section.items():
        at = ("commands", str(command))
        if command not in flags:
            raise where.error(at, f"unknown command {command!r} (one of {', '.join(flags)})")
        if not isinstance(values, dict):
            raise where.error(at, "expected a mapping of flag names to values")
        actions = {a.dest: a for a in flags[command]}
        checked: dict[str, Any] = {}
        for key, value in values.items():
            key_at = at + (str(key),)
            if key in _NOT_IN_COMMANDS:
                raise where.error(key_at, _NOT_IN_COMMANDS[key])
            action = actions.get(key)
            if action is None or not action.option_strings:
                raise where.error(key_at, f"unknown key {key!r} (not a flag of {command})")
            problem, checked[key] = _flag_value(action, value)
            if problem is not None:
                raise where.error(key_at, problem)
        out[str(command)] = checked
    return out


def load_config(path: str | None,
                flags: dict[str, list[argparse.Action]] | None = None) -> Config:
    """Read a YAML config (composed with the safe loader, so every error names file:line) into
    a validated Config; with ``flags``, the ``commands`` section is checked against them."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(f"{path}:{line}: invalid YAML") from None
    where = _Where(str(path), _lines(node) if node is not None else {})
    cfg = _build(Config, data, where)
    if flags is not None:
        cfg = dataclasses.replace(cfg, commands=check_commands(cfg, flags, where))
    return cfg


# numba flags for every kernel: cached, GIL released, no fastmath (statistics must be exact),
# bounds checks left to NUMBA_BOUNDSCHECK (the fuzz tests turn them on).
NUMBA_FLAGS: dict[str, Any] = {"cache": True, "nogil": True, "fastmath": False}
