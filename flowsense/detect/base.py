"""What a detector is: it reads FeatureFrames (and snapshots of live flows) and returns Alerts.

Detectors steer the flow table only through data: the watch rules they declare. They never
walk raw packets or the hash table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flowsense.config import Config
from flowsense.flows.features import FeatureFrame
from flowsense.flows.table import WatchRule
from flowsense.signatures import PoolSet


@dataclass
class Alert:
    """One EVE-style alert (ALERTS.md); ``row`` indexes the frame it came from."""

    signature_id: int
    signature: str
    category: str
    variant: str
    severity: int
    confidence: float
    timestamp_ns: int
    flow: dict[str, Any]
    evidence: dict[str, Any] = field(default_factory=dict)
    rev: int = 1
    app_proto: str = ""
    update: bool = False


@dataclass
class Resources:
    """What detectors share: the loaded indicators and the configuration."""

    pools: PoolSet = field(default_factory=PoolSet)
    config: Config = field(default_factory=Config)


class Detector:
    """Base class: override ``on_frame`` (ended flows) and ``on_snapshot`` (live flows)."""

    name = "detector"

    def __init__(self, resources: Resources | None = None) -> None:
        self.resources = resources or Resources()

    def watch_rules(self) -> Sequence[WatchRule]:
        return ()

    def on_frame(self, frame: FeatureFrame) -> list[Alert]:
        return []

    def on_snapshot(self, frame: FeatureFrame) -> list[Alert]:
        """Live flows (``flow.state`` open). By default judged as ended ones are: the caller
        keeps one alert a flow and signature."""
        return self.on_frame(frame)


def flow_fields(frame: FeatureFrame, i: int) -> dict[str, Any]:
    """The flow part of an alert (ALERTS.md) for row ``i``."""
    c = frame.cols
    last_ms = int(c["bidirectional_last_seen_ms"][i])
    ended = not bool(c["interim"][i]) and c["expiration"][i] != ""
    return {
        "flow_id": int(c["flow_id"][i]),
        "community_id": frame.text("community_id", i),
        "src_ip": frame.text("src_ip", i), "src_port": int(c["src_port"][i]),
        "dst_ip": frame.text("dst_ip", i), "dst_port": int(c["dst_port"][i]),
        "protocol": int(c["protocol"][i]),
        "eve_flow": {
            "start_ms": int(c["bidirectional_first_seen_ms"][i]),
            "end_ms": last_ms if ended else None,
            "state": "closed" if ended else "open",
            "orientation": str(c["orientation"][i]),
            "pkts_toserver": int(c["src2dst_packets"][i]),
            "pkts_toclient": int(c["dst2src_packets"][i]),
            "bytes_toserver": int(c["src2dst_bytes"][i]),
            "bytes_toclient": int(c["dst2src_bytes"][i]),
            "payload_bytes_toserver": int(c["src2dst_payload_bytes"][i]),
            "payload_bytes_toclient": int(c["dst2src_payload_bytes"][i]),
            # SYN from the client (the flow's first packet), SYN from the server (its SYN-ACK),
            # then an ACK from the client: a peer that answered, not a spoofed one-way stream
            "tcp_handshake": bool(
                c["protocol"][i] == 6 and c["orientation"][i] == "syn"
                and c["dst2src_syn_packets"][i] > 0 and c["dst2src_ack_packets"][i] > 0
                and c["src2dst_ack_packets"][i] > 0),
        },
    }


def time_at_offset(frame: FeatureFrame, i: int, d: int, offset: int,
                   fallback_ns: int | None = None) -> int:
    """Capture time (ns) of the packet that carried byte ``offset`` of direction ``d``'s
    payload, from the flow's trace when it is watched; else ``fallback_ns`` (by default the
    flow's last packet: never earlier than the evidence)."""
    trace = frame.traces.get(i)
    fallback = (int(frame.cols["bidirectional_last_seen_ms"][i]) * 1_000_000
                if fallback_ns is None else fallback_ns)
    if trace is None or trace.dropped:
        return fallback
    seen = 0
    for length, flags, ts in zip(trace.length.tolist(), trace.flags.tolist(),
                                 trace.ts_ns.tolist()):
        if (flags & 1) != d or flags & 2 or length == 0:  # other side, retransmission, bare ACK
            continue
        seen += length
        if seen >= offset:
            return int(ts)
    return fallback
