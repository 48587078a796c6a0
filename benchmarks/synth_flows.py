"""Vectorised packet schedules for the bulk of the capture: TCP connections, UDP exchanges, pings.

Each function takes per-flow parameter arrays and returns the packets of all those flows at once,
flow-major and time-ordered within each flow; nothing here loops over packets in Python.
"""

from __future__ import annotations

import numpy as np

from benchmarks import payloads
from benchmarks.synth_packets import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Packets,
    empty_packets,
    group_index,
    strictly_increasing,
)

# How TCP connections end.
CLOSE_FIN, CLOSE_RST, CLOSE_OPEN = 0, 1, 2
_CLOSE_PACKETS = np.array([3, 1, 0], np.int64)  # FIN/FIN/ACK, a lone RST, still open at the end

# TCP traffic profiles: (share of mid-flow packets sent by the client,
#   client: P(bare ACK), P(full segment), max size otherwise,
#   server: P(bare ACK), P(full segment), max size otherwise). Indexed by profile id.
DOWNLOAD, INTERACTIVE, UPLOAD = 0, 1, 2
_PROFILES = np.array(
    [
        [0.40, 0.85, 0.00, 700, 0.02, 0.80, 1460],
        [0.50, 0.30, 0.00, 300, 0.30, 0.00, 400],
        [0.62, 0.05, 0.85, 1460, 0.85, 0.00, 300],
    ]
)


def _sizes(
    rng: np.random.Generator,
    p_ack: np.ndarray,
    p_big: np.ndarray,
    small_max: np.ndarray,
    mss: np.ndarray,
) -> np.ndarray:
    """Payload sizes: a bare ACK, a full segment, or something in between."""
    r = rng.random(len(p_ack))
    small = 1 + (rng.random(len(p_ack)) * np.minimum(small_max, mss)).astype(np.int64)
    return np.where(r < p_ack, 0, np.where(r < p_ack + p_big, mss, small))


def tcp_connections(
    rng: np.random.Generator,
    flow_ids: np.ndarray,
    n_mid: np.ndarray,
    close: np.ndarray,
    start_us: np.ndarray,
    dur_us: np.ndarray,
    rtt_us: np.ndarray,
    profile: np.ndarray,
    mss: np.ndarray,
    http: np.ndarray,
    book: payloads.TemplateBook,
) -> Packets:
    """Handshake, ``n_mid`` (>= 2) data and ACK packets spread over the duration, then the close.

    The first mid-flow packet is the client's request and the second the server's first answer;
    HTTP flows (``http`` true) carry real request and response headers there.
    """
    n_close = _CLOSE_PACKETS[close]
    f, i = group_index(3 + n_mid + n_close)
    pk = empty_packets(len(f))
    pk.flow = flow_ids[f]
    nm, cl, rtt, m = n_mid[f], close[f], rtt_us[f], mss[f]
    start, end = start_us[f], start_us[f] + dur_us[f]
    j = i - 3  # index among mid-flow packets
    c = j - nm  # index among closing packets
    hs, mid = i < 3, (j >= 0) & (j < nm)
    prof = _PROFILES[profile[f]]

    from_client = rng.random(len(f)) < prof[:, 0]
    from_client = np.where(
        hs,
        i != 1,
        np.where(
            mid, np.where(j < 2, j == 0, from_client), ((c != 1) & (cl != CLOSE_RST)) | (c == 0)
        ),
    )
    pk.from_client = from_client

    cli_size = _sizes(rng, prof[:, 1], prof[:, 2], prof[:, 3], m)
    srv_size = _sizes(rng, prof[:, 4], prof[:, 5], prof[:, 6], m)
    plen = np.where(from_client, cli_size, srv_size)
    request = 100 + (rng.random(len(f)) * 700).astype(np.int64)
    answer = np.where(profile[f] == INTERACTIVE, np.maximum(srv_size, 1), m)
    is_http = http[f]
    req_t, resp_t = book.add(payloads.HTTP_REQUEST), book.add(payloads.HTTP_RESPONSE)
    request = np.where(is_http, len(payloads.HTTP_REQUEST), request)
    answer = np.where(is_http, np.maximum(answer, len(payloads.HTTP_RESPONSE)), answer)
    plen = np.where(j == 0, request, np.where(j == 1, answer, plen))
    pk.plen = np.where(mid, plen, 0)
    pk.tmpl[mid & is_http & (j == 0)] = req_t
    pk.tmpl[mid & is_http & (j == 1)] = resp_t

    data_flags = np.where((pk.plen > 0) & (pk.plen < m), PSH | ACK, ACK)
    close_flags = np.where(cl == CLOSE_RST, RST | ACK, np.where(c < 2, FIN | ACK, ACK))
    hs_flags = np.array([SYN, SYN | ACK, ACK], np.int64)[np.minimum(i, 2)]
    pk.flags = np.where(hs, hs_flags, np.where(mid, data_flags, close_flags)).astype(np.uint8)

    # Mid-flow times: sorted uniform draws between the handshake and the close. Sorting the draws
    # of the whole flow (lexsort keeps flow-major order) and taking them by position keeps them
    # increasing along the mid-flow packets.
    u = rng.random(len(f))
    u = u[np.lexsort((u, f))]
    mid_lo = start + rtt + 60
    mid_hi = np.where(cl == CLOSE_FIN, end - rtt - 200, end - 100)
    t_mid = mid_lo + (u * (mid_hi - mid_lo)).astype(np.int64)
    t_hs = start + np.where(i == 0, 0, rtt + np.where(i == 2, 40, 0))
    t_close = np.where(
        cl == CLOSE_RST, end, end - np.where(c == 0, rtt + 50, np.where(c == 1, 50, 0))
    )
    ts = np.where(hs, t_hs, np.where(mid, t_mid, t_close))
    pk.ts_us = strictly_increasing(ts, f, i)
    return pk


def udp_exchanges(
    rng: np.random.Generator,
    flow_ids: np.ndarray,
    n_pkts: np.ndarray,
    size_class: np.ndarray,
    start_us: np.ndarray,
    dur_us: np.ndarray,
    rtt_us: np.ndarray,
    query_tmpl: np.ndarray,
    answer_tmpl: np.ndarray,
    tmpl_len: np.ndarray,
) -> Packets:
    """Request, answer, then (for longer flows) packets both ways spread over the duration.

    ``size_class``: 0 DNS and 1 NTP (the payloads are the per-flow query and answer templates),
    2 QUIC-like (1200-byte initial datagrams, then a mix of full and small datagrams).
    """
    f, i = group_index(n_pkts)
    pk = empty_packets(len(f))
    pk.flow = flow_ids[f]
    sc, start, end, rtt = size_class[f], start_us[f], start_us[f] + dur_us[f], rtt_us[f]
    pk.from_client = np.where(i < 2, i == 0, rng.random(len(f)) < 0.35)
    qt, at = query_tmpl[f], answer_tmpl[f]
    templated = sc <= 1
    tmpl = np.where(i == 0, qt, at)
    pk.tmpl = np.where(templated, tmpl, -1).astype(np.int32)
    r = rng.random(len(f))
    small = 30 + (rng.random(len(f)) * 120).astype(np.int64)
    quic = np.where(
        i < 2,
        1200,
        np.where(pk.from_client, np.where(r < 0.7, small, 1252), np.where(r < 0.7, 1252, small)),
    )
    pk.plen = np.where(templated, tmpl_len[np.maximum(tmpl, 0)], quic)
    u = rng.random(len(f))
    u = u[np.lexsort((u, f))]
    lo = start + rtt + 100
    t_late = lo + (u * np.maximum(end - lo, 1)).astype(np.int64)
    ts = np.where(i == 0, start, np.where(i == 1, start + rtt, t_late))
    pk.ts_us = strictly_increasing(ts, f, i)
    return pk


def icmp_echoes(
    flow_ids: np.ndarray,
    n_pings: np.ndarray,
    start_us: np.ndarray,
    rtt_us: np.ndarray,
    v6: np.ndarray,
) -> Packets:
    """``n_pings`` echo requests one second apart, each answered after ``rtt_us``."""
    f, i = group_index(2 * n_pings)
    pk = empty_packets(len(f))
    pk.flow = flow_ids[f]
    reply = (i % 2) == 1
    pk.from_client = ~reply
    request_type = np.where(v6[f], 128, 8)  # ICMPv6 echo request 128 / reply 129, ICMP 8 / 0
    pk.flags = np.where(reply, np.where(v6[f], 129, 0), request_type).astype(np.uint8)
    pk.plen[:] = 56  # the default ping payload: a timestamp and a byte pattern
    pk.seq = i // 2 + 1
    pk.ts_us = start_us[f] + (i // 2) * 1_000_000 + np.where(reply, rtt_us[f], 0)
    return pk
