"""Record walking for pcap and pcapng, in numba.

Each walker fills the record columns (``schema.RECORD_COLUMNS``) for up to ``max_n`` records
of ``buf[pos:end]`` and returns ``(n, pos, status)``. It never raises: a length that does not fit
stops the walk with a status and the offset of the offending record, so Python can tell whether
that is the end of a stream chunk (read more) or damage (report it). Every length read from the
buffer is checked against ``end`` before it is used: numba does not check bounds.
"""

from __future__ import annotations

import numpy as np

from flowsense.jit import inline_kernel, kernel, prefetch

# walker status
W_FULL = 0  # max_n records written; call again
W_END = 1  # pos reached end exactly
W_SHORT = 2  # fewer bytes left than the next header or record needs (truncation, or read more)
W_BAD_LEN = 3  # a length field is impossible (beyond the hard cap, not a multiple of 4, ...)
W_BLOCK = 4  # pcapng: a block Python must parse (SHB, IDB, ISB) starts at pos
W_BAD_IFACE = 5  # pcapng: a packet names an interface that was not described
W_STOP = 6  # pcap: the record at pos starts at or past ``stop`` (the end of a span)
NO_STOP = 1 << 62  # ``stop`` for a walk to the end

# Records are a chain: each header's position comes from the one before, so a walk that waits
# for every header to arrive from memory runs at memory latency (about 70 ns a record here).
# The bytes are contiguous, though: the walkers ask for the lines PREFETCH_BYTES ahead as they
# go, and the walk runs at memory bandwidth instead (measured 2x faster on the benchmark capture).
PREFETCH_BYTES = 1024
LINE = 64

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 1
PCAPNG_PB = 2
PCAPNG_SPB = 3
PCAPNG_ISB = 5
PCAPNG_EPB = 6


@inline_kernel
def prefetch_ahead(buf, pf, pos, end):
    """Prefetch the lines from ``pf`` up to ``pos + PREFETCH_BYTES``; returns the new ``pf``."""
    lim = pos + PREFETCH_BYTES
    if lim > end:
        lim = end
    while pf < lim:
        prefetch(buf, pf)
        pf += LINE
    return pf


@kernel
def rd16(buf, p, swapped):
    """Little-endian u16 at ``p`` (big-endian when ``swapped``)."""
    if swapped:
        return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])
    return np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8)


@kernel
def rd32(buf, p, swapped):
    """Little-endian u32 at ``p`` (big-endian when ``swapped``), as int64."""
    if swapped:
        return (
            (np.int64(buf[p]) << 24)
            | (np.int64(buf[p + 1]) << 16)
            | (np.int64(buf[p + 2]) << 8)
            | np.int64(buf[p + 3])
        )
    return (
        np.int64(buf[p])
        | (np.int64(buf[p + 1]) << 8)
        | (np.int64(buf[p + 2]) << 16)
        | (np.int64(buf[p + 3]) << 24)
    )


@kernel
def walk_pcap(
    buf, pos, end, stop, swapped, frac_ns, max_caplen, linktype,
    data_off, caplen, wirelen, ts_ns, lt, rec_off, max_n,
):
    """Walk classic pcap records.

    buf: uint8[:] (a memory map or a read buffer); pos, end: int64 byte offsets.
    stop: the walk ends (W_STOP) at a record starting at or past it (``NO_STOP``: none does).
    frac_ns: ns per unit of the fractional timestamp field (1000 for µs magic, 1 for ns).
    max_caplen: records capturing more are damage (W_BAD_LEN).
    Outputs: record columns, length >= max_n. Returns (n, pos, status).
    """
    n = 0
    pf = pos
    while n < max_n:
        pf = prefetch_ahead(buf, pf, pos, end)
        if pos >= stop:
            return n, pos, W_STOP
        if pos == end:
            return n, pos, W_END
        if end - pos < 16:
            return n, pos, W_SHORT
        sec = rd32(buf, pos, swapped)
        frac = rd32(buf, pos + 4, swapped)
        cl = rd32(buf, pos + 8, swapped)
        wl = rd32(buf, pos + 12, swapped)
        if cl > max_caplen:
            return n, pos, W_BAD_LEN
        if end - pos - 16 < cl:
            return n, pos, W_SHORT
        data_off[n] = pos + 16
        caplen[n] = cl
        wirelen[n] = wl if wl >= cl else cl
        ts_ns[n] = sec * 1000000000 + frac * frac_ns
        lt[n] = linktype
        rec_off[n] = pos
        pos += 16 + cl
        n += 1
    return n, pos, W_FULL


@kernel
def _pcapng_ts(raw, if_mode, if_exp, if_off_ns, iface):
    """Convert an interface's raw timestamp units to ns since the epoch.

    if_mode 0: units of 10**-exp s; 1: units of 2**-exp s.
    """
    e = if_exp[iface]
    if if_mode[iface] == 0:
        if e <= 9:
            m = np.int64(1)
            for _ in range(9 - e):
                m *= 10
            return raw * m + if_off_ns[iface]
        d = np.int64(1)
        for _ in range(e - 9):
            d *= 10
        return raw // d + if_off_ns[iface]
    sec = raw >> e
    frac = raw & ((np.int64(1) << e) - 1)
    if e > 33:
        frac >>= e - 33
        e = 33
    return sec * 1000000000 + ((frac * 1000000000) >> e) + if_off_ns[iface]


@kernel
def walk_pcapng(
    buf, pos, end, swapped, max_block,
    if_lt, if_snap, if_mode, if_exp, if_off_ns, n_if,
    data_off, caplen, wirelen, ts_ns, lt, rec_off, max_n,
):
    """Walk pcapng packet blocks (EPB, SPB, legacy PB) of one section.

    Stops with W_BLOCK at a block Python parses (SHB, IDB, ISB); skips every other type.
    Interface tables (length n_if) describe the section's interfaces so far.
    Returns (n, pos, status); pos is the offending block on any error.
    """
    n = 0
    pf = pos
    while n < max_n:
        pf = prefetch_ahead(buf, pf, pos, end)
        if pos == end:
            return n, pos, W_END
        if end - pos < 12:
            return n, pos, W_SHORT
        btype = rd32(buf, pos, swapped)
        blen = rd32(buf, pos + 4, swapped)
        if btype == PCAPNG_SHB:
            return n, pos, W_BLOCK
        if blen < 12 or blen % 4 != 0 or blen > max_block:
            return n, pos, W_BAD_LEN
        if end - pos < blen:
            return n, pos, W_SHORT
        if rd32(buf, pos + blen - 4, swapped) != blen:
            return n, pos, W_BAD_LEN
        if btype == PCAPNG_IDB or btype == PCAPNG_ISB:
            return n, pos, W_BLOCK
        body = pos + 8
        body_len = blen - 12
        if btype == PCAPNG_EPB or btype == PCAPNG_PB:
            if body_len < 20:
                return n, pos, W_BAD_LEN
            if btype == PCAPNG_EPB:
                iface = rd32(buf, body, swapped)
            else:
                iface = rd16(buf, body, swapped)
            if iface >= n_if:
                return n, pos, W_BAD_IFACE
            raw = (rd32(buf, body + 4, swapped) << 32) | rd32(buf, body + 8, swapped)
            cl = rd32(buf, body + 12, swapped)
            wl = rd32(buf, body + 16, swapped)
            if cl > body_len - 20:
                return n, pos, W_BAD_LEN
            data_off[n] = body + 20
            caplen[n] = cl
            wirelen[n] = wl if wl >= cl else cl
            ts_ns[n] = _pcapng_ts(raw, if_mode, if_exp, if_off_ns, iface)
            lt[n] = if_lt[iface]
            rec_off[n] = pos
            n += 1
        elif btype == PCAPNG_SPB:
            if body_len < 4:
                return n, pos, W_BAD_LEN
            if n_if < 1:
                return n, pos, W_BAD_IFACE
            wl = rd32(buf, body, swapped)
            cl = wl
            if cl > body_len - 4:
                cl = body_len - 4
            snap = if_snap[0]
            if snap > 0 and cl > snap:
                cl = snap
            data_off[n] = body + 4
            caplen[n] = cl
            wirelen[n] = wl if wl >= cl else cl
            ts_ns[n] = -1  # SPB carries no timestamp: Python fills the previous packet's time
            lt[n] = if_lt[0]
            rec_off[n] = pos
            n += 1
        pos += blen
    return n, pos, W_FULL


@kernel
def fill_missing_ts(ts_ns, n, last_ts):
    """Give timestamp-less records (SPB: -1) the time of the packet before them."""
    for i in range(n):
        if ts_ns[i] < 0:
            ts_ns[i] = last_ts
        else:
            last_ts = ts_ns[i]
    return last_ts
