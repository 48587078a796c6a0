"""Every tunable, with its default and a one-line doc; units in the names.

Config files (YAML, ``--config``) map onto these dataclasses; unknown keys are errors.
"""

from __future__ import annotations

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
    walk_packets: int = 4096
    """Records walked and then decoded at a time, so decoding finds the frames still in cache."""
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
    chunk_bytes: int = 16 << 20
    """Parallel runs: bytes of a classic pcap file a worker walks and decodes at a time."""


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
class Config:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    flows: FlowConfig = field(default_factory=FlowConfig)
    home_net: tuple[str, ...] = DEFAULT_HOME_NET
    """CIDRs inside the perimeter; sets an alert's direction only."""

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


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        elif isinstance(default, tuple):
            if not isinstance(value, list):
                raise ConfigError(f"{where}.{key}: expected a list")
            kwargs[key] = tuple(str(v) for v in value)
        elif isinstance(default, bool) or not isinstance(value, (int, float)):
            if type(value) is not type(default):
                raise ConfigError(f"{where}.{key}: expected {type(default).__name__}")
            kwargs[key] = value
        else:
            if isinstance(value, bool) or (isinstance(default, int) and not isinstance(value, int)):
                raise ConfigError(f"{where}.{key}: expected {type(default).__name__}")
            if value < 0:
                raise ConfigError(f"{where}.{key}: must not be negative")
            kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | None) -> Config:
    """Read a YAML config (``yaml.safe_load``) into a validated Config."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(f"{path}:{line}: invalid YAML") from None
    return _build(Config, data, str(path))


# numba flags for every kernel: cached, GIL released, no fastmath (statistics must be exact),
# bounds checks left to NUMBA_BOUNDSCHECK (the fuzz tests turn them on).
NUMBA_FLAGS: dict[str, Any] = {"cache": True, "nogil": True, "fastmath": False}
