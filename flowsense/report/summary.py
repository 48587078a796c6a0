"""The human summary of an ``analyze`` run (terminal text; wire strings escaped)."""

from __future__ import annotations

from collections import Counter
from typing import TextIO

from flowsense.detect.base import Alert
from flowsense.errors import CaptureError


def write_summary(
    out: TextIO, paths: list[str], counters: dict[str, int], n_flows: int,
    alerts: list[Alert], errors: list[CaptureError],
) -> None:
    w = out.write
    w(f"flowsense analyze: {len(paths)} input(s)\n")
    w(f"  packets        {counters['packets']:>12,}\n")
    w(f"  flows          {n_flows:>12,}\n")
    w(f"  not IP         {counters['packets_not_ip']:>12,}\n")
    w(f"  undecodable    {counters['decode_errors']:>12,}\n")
    if counters.get("interface_drops"):
        w(f"  capture drops  {counters['interface_drops']:>12,}\n")
    w(f"  damaged files  {len(errors):>12,}\n")
    if not alerts:
        w("alerts: none\n")
        return
    by_cat = Counter(a.category for a in alerts)
    w(f"alerts: {len(alerts)}\n")
    for cat, k in by_cat.most_common():
        w(f"  {cat:<16} {k:>6}\n")
