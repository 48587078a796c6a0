"""The human summary of an ``analyze`` run (terminal text; wire strings escaped)."""

from __future__ import annotations

from collections import Counter
from typing import TextIO

from flowsense.detect.base import Alert
from flowsense.errors import CaptureError

MAX_LISTED = 20


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
    w("strongest first:\n")
    ranked = sorted(alerts, key=lambda a: (a.severity, -a.confidence, a.timestamp_ns))
    for a in ranked[:MAX_LISTED]:
        f = a.flow
        shown = {k: v for k, v in a.evidence.items()
                 if k in ("agent", "worker", "algo", "jobs", "shares", "pool", "matched",
                          "port", "inner_banner")}
        rhythm = a.evidence.get("cadence", {})
        if rhythm:
            shown["cadence"] = (f"{rhythm['duration_s']}s, {rhythm['pushes']} pushes and "
                                f"{rhythm['submits']} submits, median gaps "
                                f"{rhythm['median_gap_s']['pushes']}s/"
                                f"{rhythm['median_gap_s']['submits']}s")
        ssh = a.evidence.get("ssh", {})
        for side in ("client", "server"):
            if ssh.get(side, {}).get("software_version"):
                shown[side] = ssh[side]["software_version"]
        detail = ", ".join(f"{k}={_terminal(v)}" for k, v in shown.items())
        w(f"  [{a.severity}] {a.category}/{a.variant} {f['src_ip']}:{f['src_port']} -> "
          f"{f['dst_ip']}:{f['dst_port']} conf {a.confidence:.2f} {detail}\n")
    if len(alerts) > MAX_LISTED:
        w(f"  ... and {len(alerts) - MAX_LISTED} more (--format eve lists them all)\n")


def _terminal(v: object) -> str:
    """Evidence for a terminal: already wire-escaped text, with escapes and controls visible."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(v))
