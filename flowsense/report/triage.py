"""How a responder reads a run's alerts: strongest evidence first, grouped by category, by the
host inside the perimeter, and by mining pool. The terminal summary and the HTML report both
read these groups, so they always agree."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from flowsense.detect.base import Alert
from flowsense.report.alerts import direction


def strength(alert: Alert) -> tuple[int, float, int]:
    """Sort key, strongest first: severity (1 high), then confidence, then the earliest."""
    return (alert.severity, -alert.confidence, alert.timestamp_ns)


def ranked(alerts: Iterable[Alert]) -> list[Alert]:
    return sorted(alerts, key=strength)


def host_of(alert: Alert, home_net: tuple[str, ...]) -> str:
    """The host a responder would go and look at: the side inside ``home_net`` (the client
    when both or neither are)."""
    return _host(str(alert.flow["src_ip"]), str(alert.flow["dst_ip"]), home_net)


@functools.lru_cache(maxsize=1 << 16)
def _host(src: str, dst: str, home_net: tuple[str, ...]) -> str:
    return dst if direction(src, dst, home_net) == "inbound" else src


def pool_of(alert: Alert) -> str | None:
    """The pool a mining alert points at: the indicator for ``mining-pool``; for Stratum, the
    server (``pool_for`` below names it when a pool alert shares the flow)."""
    if alert.category == "mining-pool" and alert.evidence.get("pool"):
        return str(alert.evidence["pool"])
    if alert.category in ("stratum-mining", "mining-pool"):  # no pool named (e.g. cadence)
        return f"{alert.flow['dst_ip']}:{alert.flow['dst_port']} (not listed)"
    return None


@dataclass
class Group:
    """Alerts sharing a key, strongest first, with the hosts and variants among them."""

    key: str
    alerts: list[Alert] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)
    variants: set[str] = field(default_factory=set)

    @property
    def top(self) -> Alert:
        return self.alerts[0]

    @property
    def flows(self) -> int:
        return len({a.flow["flow_id"] for a in self.alerts})


def _groups(pairs: Iterable[tuple[str, Alert]], home_net: tuple[str, ...]) -> list[Group]:
    out: dict[str, Group] = {}
    for key, a in pairs:
        g = out.setdefault(key, Group(key))
        g.alerts.append(a)
        g.hosts.add(host_of(a, home_net))
        g.variants.add(f"{a.category}/{a.variant}")
    for g in out.values():
        g.alerts.sort(key=strength)
    return sorted(out.values(), key=lambda g: (strength(g.top), g.key))


def by_category(alerts: list[Alert], home_net: tuple[str, ...]) -> list[Group]:
    return _groups(((a.category, a) for a in alerts), home_net)


def by_host(alerts: list[Alert], home_net: tuple[str, ...]) -> list[Group]:
    return _groups(((host_of(a, home_net), a) for a in alerts), home_net)


def by_pool(alerts: list[Alert], home_net: tuple[str, ...]) -> list[Group]:
    """Mining alerts by pool; a Stratum flow that a pool alert also names goes under that pool."""
    named = {a.flow["flow_id"]: pool_of(a) for a in alerts if a.category == "mining-pool"}
    pairs = []
    for a in alerts:
        key = named.get(a.flow["flow_id"]) or pool_of(a)
        if key is not None and a.category in ("mining-pool", "stratum-mining"):
            pairs.append((key, a))
    return _groups(pairs, home_net)
