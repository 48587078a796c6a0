"""Hand-written SVG plots for the HTML report: no plotting library, no scripts, no style
attributes (the page's Content-Security-Policy allows one hashed stylesheet and nothing else;
SVG presentation attributes such as ``fill`` are not styles). Every text that reaches a plot
goes through ``esc`` (``encoding.shown`` then ``html.escape``).

Three plots: the alert timeline (one lane a category, a mark an alert), the signed packet-size
trace of a watched flow (payload bytes up for client to server, down for server to client,
against time; the view JA4SSH and packetStrider take of SSH sessions), and flow duration against
bytes on log-log axes (every flow as a cell of a 2-D histogram, alerted flows as marks on top).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from flowsense.encoding import shown
from flowsense.flows.features import Trace
from flowsense.flows.table_kernels import TR_DIR, TR_RETRANS

W, PAD_L, PAD_R, PAD_T, PAD_B = 760, 150, 40, 12, 40
Label = Callable[[float], str]  # a tick's text
SEVERITY_FILL = {1: "#c0392b", 2: "#e67e22", 3: "#2e86c1"}


def esc(value: object) -> str:
    return html.escape(shown(value), quote=True)


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


@dataclass
class Axis:
    """Data range to pixels, linear or log10 (the range is then in decades)."""

    lo: float
    hi: float
    p0: float
    p1: float
    log: bool = False

    def __post_init__(self) -> None:
        if self.hi <= self.lo:
            self.hi = self.lo + 1.0

    def px(self, v: float | np.ndarray) -> float | np.ndarray:
        return self.p0 + (v - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        if self.log:
            return [float(k) for k in range(math.ceil(self.lo), math.floor(self.hi) + 1)]
        raw = (self.hi - self.lo) / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
        first = math.ceil(self.lo / step) * step
        return [first + k * step for k in range(int((self.hi - first) / step) + 1)]


def _svg(height: int, label: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" '
            f'role="img" aria-label="{esc(label)}">' + "".join(body) + "</svg>")


def _frame(x: Axis, y: Axis, xfmt: Label, yfmt: Label | None, xlabel: str,
           ylabel: str) -> list[str]:
    """Plot area, grid, tick labels and axis titles."""
    top, bottom = min(y.p0, y.p1), max(y.p0, y.p1)
    out = [f'<rect x="{x.p0}" y="{top}" width="{x.p1 - x.p0}" height="{bottom - top}" '
           f'fill="#fbfbfb" stroke="#999"/>']
    for t in x.ticks():
        px = _num(x.px(t))
        out.append(f'<line x1="{px}" y1="{top}" x2="{px}" y2="{bottom}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{px}" y="{bottom + 14}" font-size="10" text-anchor="middle">'
                   f"{esc(xfmt(t))}</text>")
    for t in y.ticks() if yfmt is not None else []:
        py = _num(y.px(t))
        out.append(f'<line x1="{x.p0}" y1="{py}" x2="{x.p1}" y2="{py}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{x.p0 - 4}" y="{py}" font-size="10" text-anchor="end" '
                   f'dominant-baseline="middle">{esc(yfmt(t))}</text>')
    out.append(f'<text x="{(x.p0 + x.p1) / 2}" y="{bottom + 32}" font-size="11" '
               f'text-anchor="middle">{esc(xlabel)}</text>')
    if ylabel:
        cy = (top + bottom) / 2
        out.append(f'<text x="12" y="{cy}" font-size="11" text-anchor="middle" '
                   f'transform="rotate(-90 12 {cy})">{esc(ylabel)}</text>')
    return out


@dataclass
class Mark:
    """One alert on the timeline: capture time, lane, severity and its tooltip text."""

    ts_ns: int
    lane: str
    severity: int
    tip: str


def _clock(t0_ns: int, span_s: float) -> Label:
    fmt = "%m-%d %H:%M" if span_s > 86400 else "%H:%M:%S"

    def label(s: float) -> str:
        t = dt.datetime.fromtimestamp(t0_ns / 1e9 + s, tz=dt.UTC)
        return t.strftime(fmt)
    return label


def timeline(marks: Sequence[Mark], lanes: Sequence[str]) -> str:
    """Alerts against capture time, one lane a category (``lanes`` top to bottom)."""
    lane_h = 26
    height = PAD_T + lane_h * max(len(lanes), 1) + PAD_B
    t0 = min(m.ts_ns for m in marks) if marks else 0
    t1 = max(m.ts_ns for m in marks) if marks else 1
    span = max((t1 - t0) / 1e9, 1.0)
    x = Axis(-0.02 * span, span * 1.02, PAD_L, W - PAD_R)
    y = Axis(0, max(len(lanes), 1), PAD_T, height - PAD_B)
    start = dt.datetime.fromtimestamp(t0 / 1e9, tz=dt.UTC)
    body = _frame(x, y, _clock(t0, span), None,
                  f"capture time (UTC), from {start:%Y-%m-%d %H:%M:%S}", "")
    row = {name: k for k, name in enumerate(lanes)}
    for k, name in enumerate(lanes):
        cy = _num(y.px(k + 0.5))
        body.append(f'<text x="{PAD_L - 6}" y="{cy}" font-size="11" text-anchor="end" '
                    f'dominant-baseline="middle">{esc(name)}</text>')
    for m in sorted(marks, key=lambda m: -m.severity):  # the strongest drawn last, on top
        cx = _num(x.px((m.ts_ns - t0) / 1e9))
        cy = _num(y.px(row.get(m.lane, 0) + 0.5))
        r = {1: 6, 2: 4.5}.get(m.severity, 3.5)
        body.append(f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="{SEVERITY_FILL.get(m.severity)}" '
                    f'fill-opacity="0.8" stroke="#333" stroke-width="0.5">'
                    f"<title>{esc(m.tip)}</title></circle>")
    return _svg(height, "alert timeline", body)


def trace_plot(trace: Trace, label: str) -> str:
    """Payload bytes of each packet of a watched flow, up for client to server and down for
    server to client, against seconds since the trace began; retransmissions in grey."""
    height = 240
    n = len(trace.length)
    ts = trace.ts_ns.astype(np.int64)
    t0 = int(ts[0]) if n else 0
    secs = (ts - t0) / 1e9
    span = max(float(secs[-1]) if n else 1.0, 1e-3)
    size = trace.length.astype(np.float64)
    s2c = (trace.flags & TR_DIR) != 0
    signed = np.where(s2c, -size, size)
    top = max(float(np.abs(signed).max()) if n else 1.0, 1.0) * 1.05
    x = Axis(-0.01 * span, span * 1.01, PAD_L, W - PAD_R)
    y = Axis(-top, top, height - PAD_B, PAD_T)
    body = _frame(x, y, lambda v: f"{v:g}", lambda v: f"{v:g}", "seconds since the trace began",
                  "payload bytes (up: to server)")
    zero = _num(y.px(0.0))
    body.append(f'<line x1="{PAD_L}" y1="{zero}" x2="{W - PAD_R}" y2="{zero}" stroke="#555"/>')
    retrans = (trace.flags & TR_RETRANS) != 0
    for sel, colour in ((~retrans & ~s2c, "#1f6fb2"), (~retrans & s2c, "#c0392b"),
                        (retrans, "#aaaaaa")):
        keep = sel & (size > 0)
        if not keep.any():
            continue
        px = x.px(secs[keep])
        py = y.px(signed[keep])
        d = "".join(f"M{a:.1f} {zero}V{b:.1f}" for a, b in zip(px.tolist(), py.tolist()))
        body.append(f'<path d="{d}" stroke="{colour}" stroke-width="1.2" fill="none"/>')
    return _svg(height, f"packet-size trace of {label}", body)


@dataclass
class Highlight:
    """An alerted flow on the duration/bytes plot."""

    duration_ms: float
    bytes: int
    severity: int
    tip: str


def scatter(hist: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray,
            highlights: Sequence[Highlight]) -> str:
    """Flow duration (ms) against bytes, log-log: ``hist[i, j]`` flows in duration bin ``i``
    and byte bin ``j`` (edges in decades), shaded by log count; alerted flows marked on top."""
    height = 380
    used_x = np.flatnonzero(hist.sum(axis=1))
    used_y = np.flatnonzero(hist.sum(axis=0))
    xs = [x_edges[used_x[0]], x_edges[used_x[-1] + 1]] if len(used_x) else [0.0, 1.0]
    ys = [y_edges[used_y[0]], y_edges[used_y[-1] + 1]] if len(used_y) else [1.0, 2.0]
    for h in highlights:
        xs.append(_log_ms(h.duration_ms, x_edges))
        ys.append(math.log10(max(h.bytes, 1)))
    x = Axis(math.floor(min(xs)), math.ceil(max(xs) + 1e-9), PAD_L, W - PAD_R, log=True)
    y = Axis(math.floor(min(ys)), math.ceil(max(ys) + 1e-9), height - PAD_B, PAD_T, log=True)
    body = _frame(x, y, _decade_ms, lambda v: _decade(v, "B"),
                  f"flow duration (log; shortest bin holds flows under "
                  f"{_decade_ms(x_edges[1])})", "bytes, both directions (log)")
    peak = math.log1p(float(hist.max())) if hist.size and hist.max() else 1.0
    for i, j in zip(*np.nonzero(hist)):
        x0, x1 = x.px(x_edges[i]), x.px(x_edges[i + 1])
        y0, y1 = y.px(y_edges[j + 1]), y.px(y_edges[j])
        shade = 0.15 + 0.85 * math.log1p(float(hist[i, j])) / peak
        body.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
                    f'height="{y1 - y0:.1f}" fill="#1f6fb2" fill-opacity="{shade:.2f}">'
                    f"<title>{int(hist[i, j])} flow(s)</title></rect>")
    for h in highlights:
        cx = x.px(_log_ms(h.duration_ms, x_edges))
        cy = y.px(math.log10(max(h.bytes, 1)))
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="none" '
                    f'stroke="{SEVERITY_FILL.get(h.severity, "#c0392b")}" stroke-width="2">'
                    f"<title>{esc(h.tip)}</title></circle>")
    return _svg(height, "flow duration against bytes", body)


def _log_ms(duration_ms: float, x_edges: np.ndarray) -> float:
    """log10 of a duration, zero-length flows put in the shortest bin."""
    floor = (x_edges[0] + x_edges[1]) / 2
    return max(math.log10(duration_ms), floor) if duration_ms > 0 else floor


def _decade(v: float, unit: str) -> str:
    k = int(round(v))
    prefix = {0: "", 3: "k", 6: "M", 9: "G", 12: "T"}
    for p in (12, 9, 6, 3, 0):
        if k >= p:
            return f"{10 ** (k - p)}{prefix[p]}{unit}"
    return f"1e{k}{unit}"


def _decade_ms(v: float) -> str:
    """A decade of milliseconds in the unit a reader thinks in."""
    k = int(round(v))
    if k < 0:
        return f"{10 ** (k + 3)}µs" if k >= -3 else f"1e{k}ms"
    if k < 3:
        return f"{10 ** k}ms"
    s = 10.0 ** (k - 3)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size * 1.5:
            return f"{s / size:.3g}{unit}"
    return f"{s:g}s"
