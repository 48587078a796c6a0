"""The cadence of mining, for flows whose content cannot be read (TLS to an unlisted pool).

A miner holds one long-lived, low-volume connection to its pool. Two rhythms run on it: the
pool *pushes* a new job whenever the chain or its own template moves (server to client,
unprompted, at irregular gaps of seconds to a minute: block arrivals are a Poisson process), and
the miner *submits* a share whenever it finds one (client to server, again irregular: found at
random), which the pool answers at once (XMRig's ``submit`` -> ``status: OK``, Stratum v1's
``mining.submit`` -> ``true``). Both kinds of message are small JSON lines (a job ~150-700
bytes, a share ~100-300, plus a TLS record's overhead), so the sizes are symmetric-ish.

Read from the flow's packet trace (watched flows: TLS, JSON, SSH, the Stratum V2 ports), after
the first ``SETUP_S`` seconds (handshake and login), with packets of one direction less than
``BURST_S`` apart merged into one message. A flow matches when all of these hold:

- it has lasted ``MIN_DURATION_S`` and carries at most ``MAX_RATE_BPS`` of payload;
- at least ``MIN_SUBMITS`` client messages, most of them (``MIN_ANSWERED``) answered by the
  server within the answer window (a few round trips, from the handshake);
- at least ``MIN_PUSHES`` server messages that answer nothing (pushes), few of them
  (``MAX_PUSH_ANSWERED``) answered by the client in turn;
- the gaps between pushes and between submits are irregular (coefficient of variation at least
  ``MIN_CV``) with medians of ``GAP_S`` seconds;
- the median submit and push each carry at least ``MIN_MESSAGE_BYTES``.

What stays silent, and why: keepalives (MQTT PINGREQ/PINGRESP, WebSocket ping/pong, TLS
heartbeats) are strictly periodic and tiny both ways; a WebSocket or SSE ticker pushes on a
timer (regular gaps) and its client sends only pongs; a subscriber's QoS 1 acknowledgements
answer the pushes (the client answers, not the server); IMAP IDLE carries a handful of messages
an hour; request/response polling has no pushes. What it would confuse: any encrypted session
in which a client sends irregular, mid-sized requests that are answered at once while the
server also pushes irregular, mid-sized notifications for minutes on end: a chat or trading
client with a human at the keys, an interactive JSON-RPC console, some game or IoT control
channels. Hence the lower confidence, and the figures as evidence for a person to weigh.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flowsense.detect.stratum import json_opens
from flowsense.flows.features import FeatureFrame, Trace

MIN_DURATION_S = 120.0
MAX_RATE_BPS = 2000.0  # payload bytes a second, both ways together
SETUP_S = 5.0
BURST_S = 0.02
MIN_SUBMITS = 8
MIN_PUSHES = 5
MIN_ANSWERED = 0.6
MAX_PUSH_ANSWERED = 0.34
MIN_CV = 0.45
GAP_S = (1.0, 120.0)
MIN_MESSAGE_BYTES = 60


def candidates(frame: FeatureFrame) -> np.ndarray:
    """Rows worth a look (vectorised over the traced rows alone): long-lived, low-volume TCP
    with a trace, carrying payload both ways, and not JSON or SSH in the clear (the protocol
    detectors judge those)."""
    c = frame.cols
    ok = np.zeros(frame.n, dtype=bool)
    if not frame.traces:
        return ok
    rows = np.sort(np.fromiter(frame.traces, dtype=np.int64, count=len(frame.traces)))
    dur_s = c["bidirectional_duration_ms"][rows] / 1000.0
    payload = c["bidirectional_payload_bytes"][rows]
    keep = (c["protocol"][rows] == 6) & (dur_s >= MIN_DURATION_S)
    keep &= payload <= MAX_RATE_BPS * np.maximum(dur_s, 1.0)
    keep &= (c["src2dst_payload_bytes"][rows] > 0) & (c["dst2src_payload_bytes"][rows] > 0)
    rows = rows[keep]
    if frame.start is not None and len(rows):
        head = frame.start[rows, :, :4]
        json = json_opens(head).any(axis=1)
        ssh = (head == np.frombuffer(b"SSH-", np.uint8)).all(axis=2).any(axis=1)
        rows = rows[~(json | ssh)]
    ok[rows] = True
    return ok


def _messages(trace: Trace, burst_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(direction, time ns, bytes) of the trace's messages: payload packets that are not
    retransmissions, one direction's packets less than ``burst_ns`` apart merged."""
    keep = (trace.length > 0) & ((trace.flags & 2) == 0)
    d = (trace.flags[keep] & 1).astype(np.int64)
    t = trace.ts_ns[keep]
    size = trace.length[keep].astype(np.int64)
    if len(t) == 0:
        return d, t, size
    new = np.ones(len(t), dtype=bool)
    new[1:] = (d[1:] != d[:-1]) | (np.diff(t) > burst_ns)
    group = np.cumsum(new) - 1
    return d[new], t[new], np.bincount(group, weights=size).astype(np.int64)


def _answered(asks: np.ndarray, answers: np.ndarray, window_ns: int) -> np.ndarray:
    """For each time in ``asks``: is there a time in ``answers`` in (ask, ask + window]?"""
    if len(answers) == 0:
        return np.zeros(len(asks), dtype=bool)
    k = np.searchsorted(answers, asks, side="right")
    nxt = answers[np.minimum(k, len(answers) - 1)]
    return (k < len(answers)) & (nxt - asks <= window_ns)


def _gaps(t: np.ndarray) -> tuple[float, float]:
    """Median gap (s) and coefficient of variation of the gaps between times ``t`` (ns)."""
    g = np.diff(t) / 1e9
    if len(g) < 2:
        return 0.0, 0.0
    return float(np.median(g)), float(np.std(g) / max(np.mean(g), 1e-9))


def _window_ns(frame: FeatureFrame, i: int) -> int:
    """The answer window: three handshake round trips and 50 ms, within 0.1-1 s."""
    rtt_s = 0.1
    if str(frame.cols["orientation"][i]) == "syn" and frame.splt_t_ms is not None \
            and frame.splt_n is not None and frame.splt_n[i] >= 2:
        rtt_s = float(frame.splt_t_ms[i, 1]) / 1000.0
    return int(1e9 * min(1.0, max(0.1, 3 * rtt_s + 0.05)))


def figures(frame: FeatureFrame, i: int) -> dict[str, Any] | None:
    """The cadence figures of row ``i`` (None without a trace or with too few messages);
    ``matches`` tells whether they look like mining."""
    trace = frame.traces.get(i)
    if trace is None:
        return None
    d, t, size = _messages(trace, int(BURST_S * 1e9))
    if len(t) == 0:
        return None
    late = t >= t[0] + int(SETUP_S * 1e9)
    d, t, size = d[late], t[late], size[late]
    window = _window_ns(frame, i)
    ct, cs = t[d == 0], size[d == 0]
    st, ss = t[d == 1], size[d == 1]
    if len(ct) < 3 or len(st) < 3:
        return None
    answered = _answered(ct, st, window)
    # a server message within the window after a client message is its answer; the rest push
    k = np.searchsorted(ct, st, side="left")
    prev = ct[np.maximum(k - 1, 0)]
    push = ~((k > 0) & (st - prev <= window))
    pt, ps = st[push], ss[push]
    if len(pt) < 3:
        return None
    push_answered = _answered(pt, ct, window)
    c_med, c_cv = _gaps(ct)
    p_med, p_cv = _gaps(pt)
    c = frame.cols
    dur_s = float(c["bidirectional_duration_ms"][i]) / 1000.0
    figs: dict[str, Any] = {
        "duration_s": round(dur_s, 1),
        "packets": {"toserver": int(c["src2dst_packets"][i]),
                    "toclient": int(c["dst2src_packets"][i])},
        "bytes": {"toserver": int(c["src2dst_bytes"][i]), "toclient": int(c["dst2src_bytes"][i])},
        "submits": len(ct), "pushes": len(pt), "replies": int((~push).sum()),
        "submits_answered": round(float(answered.mean()), 2),
        "pushes_answered": round(float(push_answered.mean()), 2),
        "median_gap_s": {"submits": round(c_med, 2), "pushes": round(p_med, 2)},
        "gap_cv": {"submits": round(c_cv, 2), "pushes": round(p_cv, 2)},
        "message_bytes": {
            "submits": {"median": int(np.median(cs)), "mean": round(float(cs.mean()), 1),
                        "max": int(cs.max())},
            "pushes": {"median": int(np.median(ps)), "mean": round(float(ps.mean()), 1),
                       "max": int(ps.max())},
        },
        "answer_window_ms": window // 1_000_000,
        "last_ns": int(t[-1]),
    }
    return figs


def matches(figs: dict[str, Any]) -> bool:
    """Whether cadence figures look like mining (the rules in the module's docstring)."""
    gap, cv, size = figs["median_gap_s"], figs["gap_cv"], figs["message_bytes"]
    return bool(
        figs["duration_s"] >= MIN_DURATION_S
        and figs["submits"] >= MIN_SUBMITS and figs["pushes"] >= MIN_PUSHES
        and figs["submits_answered"] >= MIN_ANSWERED
        and figs["pushes_answered"] <= MAX_PUSH_ANSWERED
        and cv["submits"] >= MIN_CV and cv["pushes"] >= MIN_CV
        and all(GAP_S[0] <= gap[k] <= GAP_S[1] for k in ("submits", "pushes"))
        and all(size[k]["median"] >= MIN_MESSAGE_BYTES for k in ("submits", "pushes")))
