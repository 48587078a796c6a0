"""The human summary of an ``analyze`` run: counters, then the alerts by category, by host and by
pool, then each alert strongest first. Plain text (also fine in a file or a pager); every value
that may hold wire text goes through ``encoding.shown`` (controls and bidi overrides escaped)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from flowsense.config import DEFAULT_HOME_NET
from flowsense.detect.base import Alert
from flowsense.encoding import shown
from flowsense.errors import CaptureError
from flowsense.report import triage

MAX_LISTED = 20
MAX_GROUPS = 20
SHOWN_EVIDENCE = ("agent", "worker", "algo", "jobs", "shares", "pool", "matched", "port",
                  "inner_banner")


def evidence_brief(a: Alert) -> dict[str, object]:
    """The few evidence values worth a line: miner and pool names, SSH versions."""
    brief = {k: v for k, v in a.evidence.items() if k in SHOWN_EVIDENCE}
    rhythm = a.evidence.get("cadence", {})
    if rhythm:
        brief["cadence"] = (f"{rhythm['duration_s']}s, {rhythm['pushes']} pushes and "
                            f"{rhythm['submits']} submits, median gaps "
                            f"{rhythm['median_gap_s']['pushes']}s/"
                            f"{rhythm['median_gap_s']['submits']}s")
    ssh = a.evidence.get("ssh", {})
    for side in ("client", "server"):
        if ssh.get(side, {}).get("software_version"):
            brief[side] = ssh[side]["software_version"]
    return brief


def alert_line(a: Alert) -> str:
    f = a.flow
    detail = ", ".join(f"{k}={shown(v)}" for k, v in evidence_brief(a).items())
    return (f"[{a.severity}] {a.category}/{a.variant} {f['src_ip']}:{f['src_port']} -> "
            f"{f['dst_ip']}:{f['dst_port']} conf {a.confidence:.2f} {detail}").rstrip()


def _groups(w: Callable[[str], object], title: str, groups: list[triage.Group]) -> None:
    if not groups:
        return
    w(f"by {title}:\n")
    for g in groups[:MAX_GROUPS]:
        top = g.top
        variants = ", ".join(sorted(g.variants))
        hosts = f" hosts {len(g.hosts)}" if title != "host" else ""
        w(f"  {shown(g.key):<24} {len(g.alerts):>5} alert(s) {g.flows:>5} flow(s){hosts}  "
          f"strongest [{top.severity}] {top.confidence:.2f}  {shown(variants)}\n")
    if len(groups) > MAX_GROUPS:
        w(f"  ... and {len(groups) - MAX_GROUPS} more\n")


def write_summary(
    out: TextIO, paths: list[str], counters: dict[str, int], n_flows: int,
    alerts: list[Alert], errors: list[CaptureError],
    home_net: tuple[str, ...] = DEFAULT_HOME_NET,
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
    w(f"alerts: {len(alerts)}\n")
    _groups(w, "category", triage.by_category(alerts, home_net))
    _groups(w, "host", triage.by_host(alerts, home_net))
    _groups(w, "pool", triage.by_pool(alerts, home_net))
    w("strongest first:\n")
    ranked = triage.ranked(alerts)
    for a in ranked[:MAX_LISTED]:
        w(f"  {alert_line(a)}\n")
    if len(alerts) > MAX_LISTED:
        w(f"  ... and {len(alerts) - MAX_LISTED} more (--format eve lists them all)\n")
