"""A flow record's numbers, from its table row, in one numba pass over the slots exported.

``export_numbers`` fills ``ints`` (int64[len(INT_COLUMNS), n]) and ``floats``
(float64[len(FLOAT_COLUMNS), n]), one record column a row of each, in the order the names below
give; ``features.gather`` hands the rows out as the frame's columns (contiguous views). It used
to be a hundred numpy expressions over a copy of the rows, each a pass over memory of its own.
Statistics follow nfstream: sample standard deviation with n-1 for sizes and n-2 for gaps.
"""

from __future__ import annotations

import numpy as np

from flowsense.flows.table_kernels import KEY0_MASK
from flowsense.jit import inline_kernel, kernel, prefetch2
from flowsense.schema import (
    D_BYTES,
    D_CWR_ECE,
    D_FIRST,
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
)

AHEAD = 4  # export_numbers asks for the rows of the flow this many ahead

_PREFIXES = ("bidirectional", "src2dst", "dst2src")
_FLAGS = ("syn", "cwr", "ece", "urg", "ack", "psh", "rst", "fin")
_INT_STATS = (
    "first_seen_ms", "last_seen_ms", "duration_ms", "packets", "bytes", "payload_bytes",
    "min_ps", "max_ps", *(f"{f}_packets" for f in _FLAGS),
)
_FLOAT_STATS = (
    "mean_ps", "stddev_ps", "min_piat_ms", "mean_piat_ms", "stddev_piat_ms", "max_piat_ms",
)
_N_KEYED = 5  # src_port ... vlan_id, before the blocks
N_ISTAT = len(_INT_STATS)
N_FSTAT = len(_FLOAT_STATS)
INT_COLUMNS = (
    "src_port", "dst_port", "protocol", "ip_version", "vlan_id",
    *(f"{p}_{s}" for p in _PREFIXES for s in _INT_STATS),
    "src2dst_retransmissions", "dst2src_retransmissions", "fragments",
)
FLOAT_COLUMNS = tuple(f"{p}_{s}" for p in _PREFIXES for s in _FLOAT_STATS)
# rows after the record columns: kernel-made values the frame keeps in other forms
I_TUNNEL = len(INT_COLUMNS)
I_ORIENT = I_TUNNEL + 1
N_INT_ROWS = I_ORIENT + 1
_RETRANS = _N_KEYED + 3 * N_ISTAT
_NS_PER_MS = 1_000_000
_LOW = 0xFFFFFFFF


@inline_kernel
def _stddev(m2, k, ddof):
    d = k - ddof
    if d <= 0:
        return 0.0
    return np.sqrt(max(m2, 0.0) / d)


@inline_kernel
def _flags(ints, base, r, syn_ack, cwr_ece, urg_psh, rst_fin):
    ints[base + 8, r] = syn_ack & _LOW
    ints[base + 9, r] = cwr_ece & _LOW
    ints[base + 10, r] = cwr_ece >> 32
    ints[base + 11, r] = urg_psh & _LOW
    ints[base + 12, r] = syn_ack >> 32
    ints[base + 13, r] = urg_psh >> 32
    ints[base + 14, r] = rst_fin & _LOW
    ints[base + 15, r] = rst_fin >> 32


@inline_kernel
def _fmix(x):
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


@inline_kernel
def flow_id_of(k0, a_hi, a_lo, b_hi, b_lo, first_ts):
    """``flow_id``: a 63-bit hash of the canonical key (``k0``: family, protocol and the ports
    a and b packed as the table packs them, without the client bit) and the first packet's
    time: the same in every run, chunk and worker (unkeyed, unlike the table's hash), positive
    so JSON readers agree."""
    gold = np.uint64(0x9E3779B97F4A7C15)
    h = _fmix(np.uint64(k0))
    h = _fmix(h ^ np.uint64(a_hi) ^ gold)
    h = _fmix(h ^ np.uint64(a_lo) ^ gold)
    h = _fmix(h ^ np.uint64(b_hi) ^ gold)
    h = _fmix(h ^ np.uint64(b_lo) ^ gold)
    h = _fmix(h ^ np.uint64(first_ts) ^ gold)
    return np.int64(h & np.uint64(0x7FFFFFFFFFFFFFFF))


@kernel
def flow_id_rows(k0, a_hi, a_lo, b_hi, b_lo, first_ts, out):
    """``flow_id_of`` of every row (uint64 arrays, ``first_ts`` int64; ``out`` int64)."""
    for i in range(k0.shape[0]):
        out[i] = flow_id_of(k0[i], a_hi[i], a_lo[i], b_hi[i], b_lo[i], first_ts[i])


@kernel
def slot_flow_ids(key, fi, slots, out):
    """``flow_id_of`` of the flows in ``slots`` (int64[n]), from their table rows."""
    for r in range(slots.shape[0]):
        s = slots[r]
        out[r] = flow_id_of(key[s, 0] & KEY0_MASK, key[s, 1], key[s, 2], key[s, 3], key[s, 4],
                            fi[s, FI_FIRST_TS])


@kernel
def export_numbers(fi, ff, key, t_ps, t_t, slots, ints, floats, splt_ps, splt_t, addr, ids):
    """The numeric columns of the flows in ``slots`` (see the module docstring), their first
    packets (rows of the table's ``t_ps``, ``t_t`` into ``splt_ps``, ``splt_t``), their
    addresses oriented to the client (``addr`` uint64[n, 4]: client hi, lo, server hi, lo)
    and their ``flow_id`` (``ids``)."""
    m = slots.shape[0]
    for r in range(m):
        if r + AHEAD < m:  # the rows are scattered over the table: ask for a later one's lines
            t = slots[r + AHEAD]
            prefetch2(key, t, 0)
            for line in range(0, fi.shape[1], 8):
                prefetch2(fi, t, line)
            prefetch2(t_ps, t, 0)
            prefetch2(t_t, t, 0)
        s = slots[r]
        for j in range(t_ps.shape[1]):
            splt_ps[r, j] = t_ps[s, j]
            splt_t[r, j] = t_t[s, j]
        k0 = key[s, 0]
        pa = np.int64((k0 >> np.uint64(16)) & np.uint64(0xFFFF))
        pb = np.int64((k0 >> np.uint64(32)) & np.uint64(0xFFFF))
        cli_a = ((k0 >> np.uint64(48)) & np.uint64(1)) == 1
        c = 1 if cli_a else 3
        addr[r, 0] = key[s, c]
        addr[r, 1] = key[s, c + 1]
        addr[r, 2] = key[s, 4 - c]
        addr[r, 3] = key[s, 5 - c]
        ids[r] = flow_id_of(k0 & KEY0_MASK, key[s, 1], key[s, 2], key[s, 3], key[s, 4],
                            fi[s, FI_FIRST_TS])
        ints[0, r] = pa if cli_a else pb
        ints[1, r] = pb if cli_a else pa
        ints[2, r] = np.int64((k0 >> np.uint64(8)) & np.uint64(0xFF))
        ints[3, r] = np.int64(k0 & np.uint64(0xFF))
        meta = fi[s, FI_META]
        ints[4, r] = meta & 0xFFFF
        ints[I_TUNNEL, r] = (meta >> 16) & 0xFF
        ints[I_ORIENT, r] = (meta >> 24) & 0xFF
        first = fi[s, FI_FIRST_TS]
        last = fi[s, FI_LAST_TS]
        bi_k = fi[s, FI_DIR0 + D_PKTS] + fi[s, FI_DIR0 + FI_DSTRIDE + D_PKTS]
        # the two directions, then their sums into the bidirectional block
        for d in range(2):
            b = FI_DIR0 + d * FI_DSTRIDE
            fb = FF_DIR0 + d * FF_DSTRIDE
            base = _N_KEYED + (d + 1) * N_ISTAT
            fbase = (d + 1) * N_FSTAT
            k = fi[s, b + D_PKTS]
            dfirst = fi[s, b + D_FIRST] if k > 0 else 0
            dlast = fi[s, b + D_LAST] if k > 0 else 0
            ints[base, r] = dfirst // _NS_PER_MS
            ints[base + 1, r] = dlast // _NS_PER_MS
            ints[base + 2, r] = (dlast - dfirst) // _NS_PER_MS
            ints[base + 3, r] = k
            ints[base + 4, r] = fi[s, b + D_BYTES]
            ints[base + 5, r] = fi[s, b + D_PAYLOAD]
            ints[base + 6, r] = fi[s, b + D_MIN_PS]
            ints[base + 7, r] = fi[s, b + D_MAX_PS]
            _flags(ints, base, r, fi[s, b + D_SYN_ACK], fi[s, b + D_CWR_ECE],
                   fi[s, b + D_URG_PSH], fi[s, b + D_RST_FIN])
            floats[fbase, r] = ff[s, fb + DF_MEAN_PS]
            floats[fbase + 1, r] = _stddev(ff[s, fb + DF_M2_PS], k, 1)
            floats[fbase + 2, r] = fi[s, b + D_MIN_PIAT] / _NS_PER_MS
            floats[fbase + 3, r] = ff[s, fb + DF_MEAN_PIAT]
            floats[fbase + 4, r] = _stddev(ff[s, fb + DF_M2_PIAT], k, 2)
            floats[fbase + 5, r] = fi[s, b + D_MAX_PIAT] / _NS_PER_MS
            ints[_RETRANS + d, r] = fi[s, b + D_RETRANS]
        base = _N_KEYED
        ints[base, r] = first // _NS_PER_MS
        ints[base + 1, r] = last // _NS_PER_MS
        ints[base + 2, r] = (last - first) // _NS_PER_MS
        ints[base + 3, r] = bi_k
        for q in (4, 5):
            ints[base + q, r] = ints[base + N_ISTAT + q, r] + ints[base + 2 * N_ISTAT + q, r]
        ints[base + 6, r] = fi[s, FI_BI_MIN_PS]
        ints[base + 7, r] = fi[s, FI_BI_MAX_PS]
        for q in range(8, N_ISTAT):
            ints[base + q, r] = ints[base + N_ISTAT + q, r] + ints[base + 2 * N_ISTAT + q, r]
        floats[0, r] = ff[s, FF_BI_MEAN_PS]
        floats[1, r] = _stddev(ff[s, FF_BI_M2_PS], bi_k, 1)
        floats[2, r] = fi[s, FI_BI_MIN_PIAT] / _NS_PER_MS
        floats[3, r] = ff[s, FF_BI_MEAN_PIAT]
        floats[4, r] = _stddev(ff[s, FF_BI_M2_PIAT], bi_k, 2)
        floats[5, r] = fi[s, FI_BI_MAX_PIAT] / _NS_PER_MS
        ints[_RETRANS + 2, r] = fi[s, FI_COUNTS] >> 32


START_BYTES = 8  # payload bytes a direction in a frame's ``start`` (features.FeatureFrame)


@kernel
def gather_heads(head, slots, out, start):
    """out[j] = head[slots[j]] (uint8[n, 2, W] payload heads) and start[j] = the first
    ``start.shape[2]`` bytes of each of them (zero past W), written while each row is at hand:
    the detectors' vectorised picks read every row's first bytes, and from the heads that was
    a cache line a row and direction, a few thousand a frame, for each detector."""
    w = head.shape[2]
    k = min(start.shape[2], w)
    for j in range(slots.shape[0]):
        s = slots[j]
        for d in range(2):
            for b in range(w):  # element loops: slice assignment here copied 3x slower
                out[j, d, b] = head[s, d, b]
            for b in range(k):
                start[j, d, b] = out[j, d, b]
            for b in range(k, start.shape[2]):
                start[j, d, b] = 0
