"""``analyze --report FILE``: one self-contained HTML page a responder opens first.

The page fetches nothing and runs nothing: CSS inline, plots as inline SVG (``report.plots``),
no scripts, and a Content-Security-Policy meta that forbids every source except the one
stylesheet, pinned by its SHA-256 (an injected ``<style>`` or ``<script>`` would be refused even
if escaping failed). Every value that may hold wire text goes through ``encoding.shown`` and then
``html.escape`` (``plots.esc``), text and attributes alike.

``ReportBuilder`` watches the run: every ended flow adds to a duration/bytes histogram (fixed
log bins, so memory does not grow with the capture), alerted flows keep their final size, and
reverse-SSH alerts keep the latest packet trace of their flow (from the frames the pipeline hands
out, ended and snapshot alike; at most ``MAX_TRACES``).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import numpy as np

from flowsense import __version__
from flowsense.detect.base import Alert
from flowsense.errors import CaptureError
from flowsense.flows.features import FeatureFrame, Trace
from flowsense.report import plots, triage
from flowsense.report.alerts import direction, iso_ts
from flowsense.report.plots import esc

MAX_TRACES = 50
MAX_LISTED = 2000
MAX_HIGHLIGHTS = 2000
MAX_MARKS = 5000  # timeline marks: the strongest alerts
MAX_ROWS = 500  # rows of the by-host and by-pool tables
MAX_DEPTH = 6
X_EDGES = np.arange(-0.5, 10.01, 0.25)  # log10 ms: flows under 1 ms in the first bin
Y_EDGES = np.arange(1.0, 14.01, 0.25)  # log10 bytes

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:64em;padding:1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse}td,th{padding:.15em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}.num{text-align:right}
.alert{border-left:5px solid #2e86c1;margin:1em 0;padding:.3em .8em;background:#fafafa}
.sev1{border-color:#c0392b}.sev2{border-color:#e67e22}
.alert h4{margin:.2em 0}.flow{color:#444;margin:.2em 0}
dl{display:grid;grid-template-columns:fit-content(12em) 1fr;gap:0 .8em;margin:.2em 0 .2em 1em}
dt{font-weight:600;overflow-wrap:anywhere}dd{margin:0;overflow-wrap:anywhere;min-width:0}
code{font:12px ui-monospace,monospace;overflow-wrap:anywhere}
svg{width:100%;height:auto;font-family:system-ui,sans-serif}
figure{margin:.5em 0}figcaption{color:#555;font-size:.9em}
.legend span{margin-right:1em}.up{color:#1f6fb2}.down{color:#c0392b}
""".strip()
CSP = ("default-src 'none'; style-src 'sha256-{h}'; img-src 'none'; script-src 'none'; "
       "base-uri 'none'; form-action 'none'")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower())


class ReportBuilder:
    """Collects what the page plots while the pipeline runs; ``render`` writes the page."""

    def __init__(self) -> None:
        self.hist = np.zeros((len(X_EDGES) - 1, len(Y_EDGES) - 1), dtype=np.int64)
        self.alerted: set[int] = set()
        self._traced: set[int] = set()  # flow ids of reverse-SSH alerts whose trace is kept
        self.traces: dict[int, Trace] = {}
        self.sizes: dict[int, tuple[float, int]] = {}  # alerted flow: (duration ms, bytes)

    def note(self, alert: Alert) -> None:
        """An alert was emitted: keep its flow's size, and its trace if reverse SSH."""
        fid = int(alert.flow["flow_id"])
        self.alerted.add(fid)
        if alert.category == "reverse-ssh" and len(self._traced) < MAX_TRACES:
            self._traced.add(fid)

    def observe(self, frame: FeatureFrame, ended: bool) -> None:
        """A frame the detectors have seen: ended flows (``ended``) or a snapshot of live ones."""
        if frame.n == 0:
            return
        c = frame.cols
        dur = c["bidirectional_duration_ms"].astype(np.float64)
        size = c["bidirectional_bytes"].astype(np.float64)
        if ended:  # interim records are cumulative: count a flow once, at its end
            final = ~c["interim"].astype(bool)
            lx = np.log10(np.maximum(dur[final], 1e-9))
            ly = np.log10(np.maximum(size[final], 1.0))
            lx = np.clip(lx, X_EDGES[0], X_EDGES[-1] - 1e-9)
            ly = np.clip(ly, Y_EDGES[0], Y_EDGES[-1] - 1e-9)
            h, _, _ = np.histogram2d(lx, ly, bins=(X_EDGES, Y_EDGES))
            self.hist += h.astype(np.int64)
        if not self.alerted:
            return
        ids = c["flow_id"]
        wanted = np.fromiter(self.alerted, dtype=np.int64, count=len(self.alerted))
        for i in np.flatnonzero(np.isin(ids.astype(np.int64), wanted)).tolist():
            fid = int(ids[i])
            self.sizes[fid] = (float(dur[i]), int(size[i]))
            if fid in self._traced and i in frame.traces:
                self.traces[fid] = frame.traces[i]

    def render(self, paths: list[str], counters: dict[str, int], n_flows: int,
               alerts: list[Alert], errors: list[CaptureError],
               home_net: tuple[str, ...]) -> str:
        css_hash = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
        out = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
               f'<meta http-equiv="Content-Security-Policy" content="{CSP.format(h=css_hash)}">',
               '<meta name="referrer" content="no-referrer">',
               f"<title>flowsense report: {len(alerts)} alert(s)</title>",
               f"<style>{CSS}</style></head><body>",
               f"<h1>flowsense report</h1><p>flowsense {esc(__version__)}, "
               f"{len(paths)} input(s), {len(alerts)} alert(s).</p>"]
        out += _overview(paths, counters, n_flows, errors)
        ranked = triage.ranked(alerts)
        cats = triage.by_category(alerts, home_net)
        out.append('<h2 id="timeline">Alert timeline</h2>')
        if alerts:
            marks = [plots.Mark(a.timestamp_ns, a.category, a.severity, _tip(a))
                     for a in ranked[:MAX_MARKS]]
            more = f" The {MAX_MARKS:,} strongest alerts shown." if len(ranked) > MAX_MARKS else ""
            out.append(f"<figure>{plots.timeline(marks, [g.key for g in cats])}<figcaption>"
                       "One lane a category; red severity 1, orange 2, blue 3 (hover a mark for "
                       f"its flow).{more}</figcaption></figure>")
        else:
            out.append("<p>No alerts.</p>")
        out += self._alerts(cats, home_net)
        out += _tables(alerts, home_net)
        out += self._flows_plot(alerts, n_flows)
        out.append("</body></html>\n")
        return "\n".join(out)

    def _alerts(self, cats: list[triage.Group], home_net: tuple[str, ...]) -> list[str]:
        out = ['<h2 id="alerts">Alerts by category, strongest evidence first</h2>']
        if cats:
            links = ", ".join(f'<a href="#cat-{_slug(g.key)}">{esc(g.key)}</a> '
                              f"({len(g.alerts)})" for g in cats)
            out.append(f"<p>{links}</p>")
        listed = 0
        for g in cats:
            out.append(f'<section id="cat-{_slug(g.key)}"><h3>{esc(g.key)}: '
                       f"{len(g.alerts)} alert(s), {g.flows} flow(s), "
                       f"{len(g.hosts)} host(s)</h3>")
            for a in g.alerts:
                if listed >= MAX_LISTED:
                    break
                listed += 1
                out.append(self._alert(a, home_net))
            out.append("</section>")
        total = sum(len(g.alerts) for g in cats)
        if total > listed:
            out.append(f"<p>{total - listed} more alert(s) not listed (--format eve lists "
                       "them all).</p>")
        return out

    def _alert(self, a: Alert, home_net: tuple[str, ...]) -> str:
        f = a.flow
        ef = f.get("eve_flow", {})
        proto = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "IPv6-ICMP"}.get(f["protocol"],
                                                                     str(f["protocol"]))
        upd = " (update)" if a.update else ""
        parts = [
            f'<article class="alert sev{int(a.severity)}" data-flow-id="{int(f["flow_id"])}" '
            f'data-sid="{int(a.signature_id)}">',
            f"<h4>[{int(a.severity)}] {esc(a.category)}/{esc(a.variant)}: {esc(a.signature)}"
            f"{upd}</h4>",
            f'<p class="flow">{esc(iso_ts(a.timestamp_ns))}: {esc(f["src_ip"])}:'
            f'{int(f["src_port"])} &rarr; {esc(f["dst_ip"])}:{int(f["dst_port"])} {proto} '
            f"{direction(f['src_ip'], f['dst_ip'], home_net)}, confidence "
            f"{a.confidence:.2f}, sid {int(a.signature_id)} rev {int(a.rev)}; flow "
            f"{int(f['flow_id'])} ({esc(f['community_id'])}), {esc(ef.get('state', ''))}, "
            f"orientation {esc(ef.get('orientation', ''))}, "
            f"{ef.get('pkts_toserver', 0)}/{ef.get('pkts_toclient', 0)} packets and "
            f"{ef.get('bytes_toserver', 0)}/{ef.get('bytes_toclient', 0)} bytes to server/"
            f"client; seen in {esc(f.get('source', {}).get('pcap', ''))}</p>",
            _value(a.evidence, 0),
        ]
        trace = self.traces.get(int(f["flow_id"]))
        if a.category == "reverse-ssh" and trace is not None and len(trace.length):
            label = f"{f['src_ip']}:{f['src_port']} to {f['dst_ip']}:{f['dst_port']}"
            dropped = f" ({trace.dropped} earlier packets dropped)" if trace.dropped else ""
            parts.append(
                f'<figure class="trace">{plots.trace_plot(trace, label)}<figcaption '
                f'class="legend"><span class="up">&#9650; client to server</span>'
                f'<span class="down">&#9660; server to client</span> payload bytes of '
                f"the {len(trace.length)} packets kept since the flow was watched, the first "
                f"at {esc(iso_ts(int(trace.ts_ns[0])))}{dropped}; grey: retransmissions."
                "</figcaption></figure>")
        parts.append("</article>")
        return "\n".join(parts)

    def _flows_plot(self, alerts: list[Alert], n_flows: int) -> list[str]:
        out = ['<h2 id="flows">Flow duration against bytes</h2>']
        if not self.hist.any():
            return out + ["<p>No flows.</p>"]
        best: dict[int, Alert] = {}
        for a in triage.ranked(alerts):
            best.setdefault(int(a.flow["flow_id"]), a)
        marks = []
        for fid, a in list(best.items())[:MAX_HIGHLIGHTS]:
            if fid in self.sizes:
                dur, size = self.sizes[fid]
            else:
                ef = a.flow.get("eve_flow", {})
                end = ef.get("end_ms") or ef.get("start_ms", 0)
                dur = float(end - ef.get("start_ms", 0))
                size = int(ef.get("bytes_toserver", 0) + ef.get("bytes_toclient", 0))
            marks.append(plots.Highlight(dur, size, a.severity, _tip(a)))
        svg = plots.scatter(self.hist, X_EDGES, Y_EDGES, marks)
        out.append(f"<figure>{svg}<figcaption>All {n_flows:,} flows as a 2-D histogram "
                   "(darker: more flows); alerted flows circled by severity of their strongest "
                   "alert.</figcaption></figure>")
        return out


def _tip(a: Alert) -> str:
    f = a.flow
    return (f"{iso_ts(a.timestamp_ns)} [{a.severity}] {a.category}/{a.variant} "
            f"{f['src_ip']}:{f['src_port']} -> {f['dst_ip']}:{f['dst_port']} "
            f"conf {a.confidence:.2f}")


def _value(v: Any, depth: int) -> str:
    """Evidence as nested definition lists; every leaf escaped."""
    if depth > MAX_DEPTH:
        return "<code>&hellip;</code>"
    if isinstance(v, dict):
        if not v:
            return "<code>{}</code>"
        items = "".join(f"<dt>{esc(k)}</dt><dd>{_value(x, depth + 1)}</dd>" for k, x in v.items())
        return f"<dl>{items}</dl>"
    if isinstance(v, (list, tuple)):
        if all(not isinstance(x, (dict, list, tuple)) for x in v):
            return f"<code>{esc(', '.join(str(x) for x in v))}</code>"
        return "<ol>" + "".join(f"<li>{_value(x, depth + 1)}</li>" for x in v) + "</ol>"
    return f"<code>{esc(v)}</code>"


def _overview(paths: list[str], counters: dict[str, int], n_flows: int,
              errors: list[CaptureError]) -> list[str]:
    rows = [("packets", counters.get("packets", 0)), ("flows", n_flows),
            ("not IP", counters.get("packets_not_ip", 0)),
            ("undecodable", counters.get("decode_errors", 0)),
            ("capture drops", counters.get("interface_drops", 0)),
            ("damaged files", len(errors))]
    out = ['<h2 id="overview">Overview</h2><table>']
    out += [f'<tr><th>{esc(k)}</th><td class="num">{int(v):,}</td></tr>' for k, v in rows]
    out.append("</table>")
    out.append("<details><summary>inputs</summary><ol>"
               + "".join(f"<li><code>{esc(p)}</code></li>" for p in paths) + "</ol></details>")
    if errors:
        out.append("<p>Damaged inputs (what was readable is analysed):</p><ul>"
                   + "".join(f"<li><code>{esc(e)}</code></li>" for e in errors) + "</ul>")
    return out


def _tables(alerts: list[Alert], home_net: tuple[str, ...]) -> list[str]:
    out = []
    for title, groups in (("host", triage.by_host(alerts, home_net)),
                          ("pool", triage.by_pool(alerts, home_net))):
        out.append(f'<h2 id="by-{title}">By {title}</h2>')
        if not groups:
            out.append("<p>None.</p>")
            continue
        out.append(f"<table><tr><th>{title}</th><th>alerts</th><th>flows</th><th>hosts</th>"
                   "<th>strongest</th><th>what</th></tr>")
        for g in groups[:MAX_ROWS]:
            out.append(
                f"<tr><td><code>{esc(g.key)}</code></td><td class=\"num\">{len(g.alerts)}</td>"
                f'<td class="num">{g.flows}</td><td class="num">{len(g.hosts)}</td>'
                f"<td>[{int(g.top.severity)}] {g.top.confidence:.2f}</td>"
                f"<td>{esc(', '.join(sorted(g.variants)))}</td></tr>")
        out.append("</table>")
        if len(groups) > MAX_ROWS:
            out.append(f"<p>{len(groups) - MAX_ROWS:,} more {title}s, weaker, not listed.</p>")
    return out
