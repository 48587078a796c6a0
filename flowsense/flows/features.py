"""From table slots to a FeatureFrame: named 1-D columns (nfstream names) plus cold arrays.

Everything here is vectorised over the slots being exported; Python touches each flow only to
format its addresses and Community ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flowsense.flows.ids import addr_rows, community_id_rows, flow_ids, rows_text
from flowsense.flows.table_kernels import TableArrays
from flowsense.schema import (
    D_BYTES,
    D_CWR_ECE,
    D_FIRST,
    D_HEAD_LEN,
    D_LAST,
    D_MAX_PIAT,
    D_MAX_PS,
    D_MIN_PIAT,
    D_MIN_PS,
    D_PAYLOAD,
    D_PKTS,
    D_RETRANS,
    D_RST_FIN,
    D_SYN_ACK,
    D_URG_PSH,
    DF_M2_PIAT,
    DF_M2_PS,
    DF_MEAN_PIAT,
    DF_MEAN_PS,
    END_NAMES,
    FF_BI_M2_PIAT,
    FF_BI_M2_PS,
    FF_BI_MEAN_PIAT,
    FF_BI_MEAN_PS,
    FF_DIR0,
    FF_DSTRIDE,
    FI_BI_MAX_PIAT,
    FI_BI_MAX_PS,
    FI_BI_MIN_PIAT,
    FI_BI_MIN_PS,
    FI_COUNTS,
    FI_DIR0,
    FI_DSTRIDE,
    FI_FIRST_TS,
    FI_LAST_TS,
    FI_META,
    FI_SEQ,
    FI_SPLT_N,
    FI_WATCH,
    ORIENT_NAMES,
    TUNNEL_NAMES,
)

_NS_PER_MS = 1_000_000
_LOW = 0xFFFFFFFF
_TUNNEL = np.array(TUNNEL_NAMES, dtype=object)
_ORIENT = np.array(ORIENT_NAMES, dtype=object)
_END = np.array(END_NAMES, dtype=object)


@dataclass
class FeatureFrame:
    """Flow records as columns. ``cols`` hold the FLOW_COLUMNS; the rest is for detectors."""

    cols: dict[str, np.ndarray] = field(default_factory=dict)  # text columns: object arrays
    n: int = 0
    # cold data, row-aligned with cols
    head: np.ndarray | None = None  # uint8[n, 2, H] payload heads (0: src2dst, 1: dst2src)
    head_len: np.ndarray | None = None  # int64[n, 2]
    splt_ps: np.ndarray | None = None  # int32[n, N] signed sizes, 0 padded
    splt_t_ms: np.ndarray | None = None  # float32[n, N] offsets from the first packet
    splt_n: np.ndarray | None = None  # int64[n]
    seq: np.ndarray | None = None  # creation order, for stable output
    watch: np.ndarray | None = None  # watch id or -1
    addr: np.ndarray | None = None  # uint64[n, 4]: client hi, lo, server hi, lo (IPv4 in lo)
    # watched flows only, by row: their payload slabs (client, server) and packet traces
    slabs: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    traces: dict[int, Trace] = field(default_factory=dict)
    # the text columns the table formats (addresses, Community ID) as the ASCII rows they were
    # made from (uint8[n, W], NUL padded, JSON-safe): writers take them as they are
    text_rows: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.n

    def payload(self, i: int, d: int) -> bytes:
        """The payload bytes kept for row ``i``, direction ``d`` (0: from the client): the slab
        of a watched flow, else the head. TCP bytes sit at their sequence offsets."""
        if i in self.slabs:
            return self.slabs[i][d]
        assert self.head is not None and self.head_len is not None
        return bytes(self.head[i, d, : self.head_len[i, d]])


@dataclass(frozen=True)
class Trace:
    """A watched flow's packets since its lease (oldest dropped past the ring's size): payload
    length, flags (``table_kernels.TR_*``: bit 0 set for server to client) and time in ns."""

    length: np.ndarray
    flags: np.ndarray
    ts_ns: np.ndarray
    dropped: int


def _stats(mean: np.ndarray, m2: np.ndarray, k: np.ndarray, ddof: int) -> np.ndarray:
    """Sample standard deviation from Welford's M2 (nfstream: n-1 for sizes, n-2 for gaps)."""
    denom = k - ddof
    out = np.zeros(len(mean), dtype=np.float64)
    ok = denom > 0
    out[ok] = np.sqrt(np.maximum(m2[ok], 0.0) / denom[ok])
    return out


def gather(T: TableArrays, slots: np.ndarray, reasons: np.ndarray, interim: bool) -> FeatureFrame:
    """Build the records of ``slots``; ``reasons`` are END_* codes (one per slot)."""
    slots = np.asarray(slots, dtype=np.int64)
    n = len(slots)
    fi = T.fi[slots]
    ff = fi.view(np.float64)
    key = T.key[slots]
    k0 = key[:, 0]
    fam = (k0 & np.uint64(0xFF)).astype(np.uint8)
    proto = ((k0 >> np.uint64(8)) & np.uint64(0xFF)).astype(np.uint8)
    pa = ((k0 >> np.uint64(16)) & np.uint64(0xFFFF)).astype(np.uint16)
    pb = ((k0 >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16)
    cli_a = ((k0 >> np.uint64(48)) & np.uint64(1)) == 1
    a_hi, a_lo, b_hi, b_lo = key[:, 1], key[:, 2], key[:, 3], key[:, 4]
    s_hi = np.where(cli_a, a_hi, b_hi)
    s_lo = np.where(cli_a, a_lo, b_lo)
    d_hi = np.where(cli_a, b_hi, a_hi)
    d_lo = np.where(cli_a, b_lo, a_lo)
    sp = np.where(cli_a, pa, pb)
    dp = np.where(cli_a, pb, pa)
    first = fi[:, FI_FIRST_TS]
    c: dict[str, np.ndarray] = {}
    c["flow_id"] = flow_ids(fam, proto, a_hi, a_lo, b_hi, b_lo, pa, pb, first)
    text_rows = {
        "community_id": community_id_rows(fam, proto, s_hi, s_lo, d_hi, d_lo, sp, dp),
        "src_ip": addr_rows(fam, s_hi, s_lo),
        "dst_ip": addr_rows(fam, d_hi, d_lo),
    }
    c["community_id"] = rows_text(text_rows["community_id"])
    c["src_ip"] = rows_text(text_rows["src_ip"])
    c["src_port"] = sp.astype(np.int64)
    c["dst_ip"] = rows_text(text_rows["dst_ip"])
    c["dst_port"] = dp.astype(np.int64)
    c["protocol"] = proto.astype(np.int64)
    c["ip_version"] = fam.astype(np.int64)
    meta = fi[:, FI_META]
    c["vlan_id"] = meta & 0xFFFF
    c["tunnel"] = _TUNNEL[(meta >> 16) & 0xFF]
    c["orientation"] = _ORIENT[(meta >> 24) & 0xFF]
    c["app_proto"] = np.full(n, "", dtype=object)
    c["expiration"] = _END[np.asarray(reasons, dtype=np.int64)]
    c["interim"] = np.full(n, interim)

    last = fi[:, FI_LAST_TS]
    pk = [fi[:, FI_DIR0 + d * FI_DSTRIDE + D_PKTS] for d in (0, 1)]
    bi_pk = pk[0] + pk[1]
    c["bidirectional_first_seen_ms"] = first // _NS_PER_MS
    c["bidirectional_last_seen_ms"] = last // _NS_PER_MS
    c["bidirectional_duration_ms"] = (last - first) // _NS_PER_MS
    c["bidirectional_packets"] = bi_pk
    dir_cols: list[dict[str, np.ndarray]] = []
    for d in (0, 1):
        b = FI_DIR0 + d * FI_DSTRIDE
        fb = FF_DIR0 + d * FF_DSTRIDE
        k = fi[:, b + D_PKTS]
        has = k > 0
        dfirst = np.where(has, fi[:, b + D_FIRST], 0)
        dlast = np.where(has, fi[:, b + D_LAST], 0)
        dc = {
            "first_seen_ms": dfirst // _NS_PER_MS,
            "last_seen_ms": dlast // _NS_PER_MS,
            "duration_ms": (dlast - dfirst) // _NS_PER_MS,
            "packets": k,
            "bytes": fi[:, b + D_BYTES],
            "payload_bytes": fi[:, b + D_PAYLOAD],
            "min_ps": fi[:, b + D_MIN_PS],
            "mean_ps": ff[:, fb + DF_MEAN_PS],
            "stddev_ps": _stats(ff[:, fb + DF_MEAN_PS], ff[:, fb + DF_M2_PS], k, 1),
            "max_ps": fi[:, b + D_MAX_PS],
            "min_piat_ms": fi[:, b + D_MIN_PIAT] / _NS_PER_MS,
            "mean_piat_ms": ff[:, fb + DF_MEAN_PIAT],
            "stddev_piat_ms": _stats(ff[:, fb + DF_MEAN_PIAT], ff[:, fb + DF_M2_PIAT], k, 2),
            "max_piat_ms": fi[:, b + D_MAX_PIAT] / _NS_PER_MS,
            "syn_packets": fi[:, b + D_SYN_ACK] & _LOW,
            "cwr_packets": fi[:, b + D_CWR_ECE] & _LOW,
            "ece_packets": fi[:, b + D_CWR_ECE] >> 32,
            "urg_packets": fi[:, b + D_URG_PSH] & _LOW,
            "ack_packets": fi[:, b + D_SYN_ACK] >> 32,
            "psh_packets": fi[:, b + D_URG_PSH] >> 32,
            "rst_packets": fi[:, b + D_RST_FIN] & _LOW,
            "fin_packets": fi[:, b + D_RST_FIN] >> 32,
        }
        dir_cols.append(dc)
    c["bidirectional_bytes"] = dir_cols[0]["bytes"] + dir_cols[1]["bytes"]
    c["bidirectional_payload_bytes"] = dir_cols[0]["payload_bytes"] + dir_cols[1]["payload_bytes"]
    c["bidirectional_min_ps"] = fi[:, FI_BI_MIN_PS]
    c["bidirectional_mean_ps"] = ff[:, FF_BI_MEAN_PS]
    c["bidirectional_stddev_ps"] = _stats(ff[:, FF_BI_MEAN_PS], ff[:, FF_BI_M2_PS], bi_pk, 1)
    c["bidirectional_max_ps"] = fi[:, FI_BI_MAX_PS]
    c["bidirectional_min_piat_ms"] = fi[:, FI_BI_MIN_PIAT] / _NS_PER_MS
    c["bidirectional_mean_piat_ms"] = ff[:, FF_BI_MEAN_PIAT]
    c["bidirectional_stddev_piat_ms"] = _stats(
        ff[:, FF_BI_MEAN_PIAT], ff[:, FF_BI_M2_PIAT], bi_pk, 2
    )
    c["bidirectional_max_piat_ms"] = fi[:, FI_BI_MAX_PIAT] / _NS_PER_MS
    for flag in ("syn", "cwr", "ece", "urg", "ack", "psh", "rst", "fin"):
        key = f"{flag}_packets"
        c[f"bidirectional_{key}"] = dir_cols[0][key] + dir_cols[1][key]
    for prefix, dc in (("src2dst", dir_cols[0]), ("dst2src", dir_cols[1])):
        for key, col in dc.items():
            c[f"{prefix}_{key}"] = col
    c["src2dst_retransmissions"] = fi[:, FI_DIR0 + D_RETRANS]
    c["dst2src_retransmissions"] = fi[:, FI_DIR0 + FI_DSTRIDE + D_RETRANS]
    c["fragments"] = fi[:, FI_COUNTS] >> 32

    # heads and first packets, oriented to the client
    # the table already keeps heads by client direction (0: from the client)
    head = T.head[slots]
    head_len = np.stack(
        [fi[:, FI_DIR0 + D_HEAD_LEN], fi[:, FI_DIR0 + FI_DSTRIDE + D_HEAD_LEN]], axis=1
    )
    watch = fi[:, FI_WATCH]
    slabs: dict[int, tuple[bytes, bytes]] = {}
    traces: dict[int, Trace] = {}
    for i in np.flatnonzero(watch >= 0).tolist():
        w = int(watch[i])
        slabs[i] = (bytes(T.slab[w, 0, : T.w_fill[w, 0]]), bytes(T.slab[w, 1, : T.w_fill[w, 1]]))
        traces[i] = _trace(T, w)
    return FeatureFrame(
        cols=c, n=n, head=head, head_len=head_len, splt_ps=T.splt_ps[slots],
        splt_t_ms=T.splt_t[slots], splt_n=fi[:, FI_SPLT_N], seq=fi[:, FI_SEQ],
        watch=watch, slabs=slabs, traces=traces,
        addr=np.stack([s_hi, s_lo, d_hi, d_lo], axis=1), text_rows=text_rows,
    )


def _trace(T: TableArrays, w: int) -> Trace:
    """The ring of watch ``w`` in packet order."""
    total = int(T.tr_n[w])
    cap = T.tr_len.shape[1]
    k = min(total, cap)
    order = (np.arange(total - k, total) % cap) if k else np.zeros(0, np.int64)
    return Trace(T.tr_len[w, order].copy(), T.tr_flags[w, order].copy(), T.tr_ts[w, order].copy(),
                 total - k)


def concat(frames: list[FeatureFrame]) -> FeatureFrame:
    """Join frames row-wise (keeps cold arrays)."""
    frames = [f for f in frames if f.n]
    if not frames:
        return FeatureFrame()
    if len(frames) == 1:
        return frames[0]
    cols = {key: np.concatenate([f.cols[key] for f in frames]) for key in frames[0].cols}

    slabs: dict[int, tuple[bytes, bytes]] = {}
    traces: dict[int, Trace] = {}
    base = 0
    for f in frames:
        slabs.update({base + i: v for i, v in f.slabs.items()})
        traces.update({base + i: v for i, v in f.traces.items()})
        base += f.n

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(f, name) for f in frames])

    shared = set.intersection(*(set(f.text_rows) for f in frames))
    text_rows = {k: np.concatenate([f.text_rows[k] for f in frames]) for k in shared}
    return FeatureFrame(
        cols=cols, n=sum(f.n for f in frames), head=cat("head"), head_len=cat("head_len"),
        splt_ps=cat("splt_ps"), splt_t_ms=cat("splt_t_ms"), splt_n=cat("splt_n"), seq=cat("seq"),
        watch=cat("watch"), slabs=slabs, traces=traces, addr=cat("addr"), text_rows=text_rows,
    )
