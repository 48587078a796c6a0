"""What a detector is: it reads FeatureFrames (and snapshots of live flows) and returns Alerts.

Detectors steer the flow table only through data: the watch rules they declare. They never
walk raw packets or the hash table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flowsense.flows.features import FeatureFrame
from flowsense.flows.table import WatchRule


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


class Detector:
    """Base class: override ``on_frame`` (ended flows) and ``on_snapshot`` (live flows)."""

    name = "detector"

    def watch_rules(self) -> Sequence[WatchRule]:
        return ()

    def on_frame(self, frame: FeatureFrame) -> list[Alert]:
        return []

    def on_snapshot(self, frame: FeatureFrame) -> list[Alert]:
        return []
