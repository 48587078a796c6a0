"""Alerts out as EVE JSON lines (ALERTS.md)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json

from flowsense import __version__
from flowsense.config import Config
from flowsense.detect.base import Alert


def iso_ts(ns: int) -> str:
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.UTC)
    return t.replace(microsecond=(ns // 1000) % 1_000_000).isoformat()


def direction(src: str, dst: str, home_net: tuple[str, ...]) -> str:
    nets = [ipaddress.ip_network(n, strict=False) for n in home_net]

    def inside(a: str) -> bool:
        ip = ipaddress.ip_address(a)
        return any(ip.version == n.version and ip in n for n in nets)

    s, d = inside(src), inside(dst)
    if s and d:
        return "internal"
    if s:
        return "outbound"
    if d:
        return "inbound"
    return "external"


def _eve_flow(ef: dict) -> dict:
    if not ef:
        return {}
    out = {"start": iso_ts(ef["start_ms"] * 1_000_000),
           "end": iso_ts(ef["end_ms"] * 1_000_000) if ef.get("end_ms") is not None else None}
    out.update({k: v for k, v in ef.items() if k not in ("start_ms", "end_ms")})
    return out


def eve_record(alert: Alert, cfg: Config, signatures: str = "") -> str:
    """One EVE line; ``signatures`` names the indicator set's version(s) (ALERTS.md)."""
    f = alert.flow
    rec = {
        "timestamp": iso_ts(alert.timestamp_ns),
        "event_type": "alert",
        "flow_id": f["flow_id"],
        "community_id": f["community_id"],
        "src_ip": f["src_ip"], "src_port": f["src_port"],
        "dest_ip": f["dst_ip"], "dest_port": f["dst_port"],
        "proto": {6: "TCP", 17: "UDP", 1: "ICMP", 58: "IPv6-ICMP"}.get(f["protocol"],
                                                                     str(f["protocol"])),
        "app_proto": alert.app_proto,
        "direction": direction(f["src_ip"], f["dst_ip"], cfg.home_net),
        "alert": {
            "signature_id": alert.signature_id, "rev": alert.rev, "signature": alert.signature,
            "category": alert.category, "variant": alert.variant, "severity": alert.severity,
            "confidence": round(alert.confidence, 3),
        },
        "evidence": alert.evidence,
        "flow": _eve_flow(f.get("eve_flow", {})),
        "source": f.get("source", {}),
        "flowsense": {"version": __version__, "signatures": signatures},
    }
    if alert.update:
        rec["update"] = True
    return json.dumps(rec, ensure_ascii=False)


class AlertGate:
    """One alert a flow and signature (ALERTS.md): a later finding on the same pair passes only
    if it is stronger and a minute has gone by, marked ``update``."""

    UPDATE_AFTER_NS = 60 * 1_000_000_000

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], tuple[float, int]] = {}

    def admit(self, alert: Alert) -> bool:
        key = (int(alert.flow["flow_id"]), alert.signature_id)
        prior = self._seen.get(key)
        if prior is not None:
            conf, ts = prior
            if alert.confidence <= conf or alert.timestamp_ns - ts < self.UPDATE_AFTER_NS:
                return False
            alert.update = True
        self._seen[key] = (alert.confidence, alert.timestamp_ns)
        return True
