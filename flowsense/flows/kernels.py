"""The flow table in numba: keyed open addressing, a hot block per flow, cold arrays apart.

Layout (all arrays preallocated by ``flows/table.py``; F flow slots, IC = 2F index cells):

* index: ``ix`` int64[IC], one word a cell: the hash's high 32 bits, then slot + 1 (0: empty);
  linear probing from the hash's low bits, deletion by backward shift (no tombstones; a cell's
  home is recomputed from its flow's FI_HASH). Flow data never moves: the index points at slots.
* keys: ``key`` uint64[F, 5], one cache line a flow: [0] packs family | protocol << 8 |
  port a << 16 | port b << 32 | (a is the client) << 48, then address a (hi, lo) and b (hi, lo);
  endpoints in canonical order (a <= b by address, then port).
* hot: ``fi`` int64[F, FI_NFIELDS], and ``ff``, a float64 view of the same rows
  (``schema.FI_*/FF_*/D_*/DF_*`` share one numbering).
* cold: ``splt_ps`` int32[F, N] signed sizes (+ client to server), ``splt_t`` float32[F, N] ms
  from the flow's first packet; ``head`` uint8[F, 2, H] first payload bytes by direction, placed
  by TCP sequence offset.
* lists: three idle lists (short, established TCP, closing) in ``lprev/lnext``, ordered by the
  time a flow was queued (FI_ENQ_TS); one active-timeout list in ``aprev/anext``; heads and
  tails in ``lhead/ltail`` [4]. The idle lists are lazy: a packet does not move its flow; expiry
  looks at a head queued a timeout ago and either ends it (idle indeed) or queues it again at
  the tail. A packet that arrives for a flow already past its timeout ends it first, so records
  are exact; only the moment a silent flow is exported may be up to one timeout late. Expiry
  costs the number of flows examined, never the capacity, and runs only when the earliest
  deadline (``st[S_DEADLINE]``) has passed.
* ``free`` int32[F] slot stack; ``dirty_list``: flows touched since the last snapshot
  (FS_DIRTY marks them);
  ``ev_slot``/``ev_kind``: ended flows (and interim records) for Python to export.
* watches (leased to flows that match a watch rule or that Python marks): ``w_slot`` int32[W],
  ``wfree`` int32[W], ``w_fill`` int64[W, 2] bytes filled, ``slab`` uint8[W, 2, S] payload by
  sequence offset, and a trace ring
  ``tr_len`` int32[W, T], ``tr_flags`` uint8[W, T], ``tr_ts`` int64[W, T], ``tr_n`` int64[W].
  Rules: ``wr_prefix`` uint8[R, 8], ``wr_len`` uint8[R], ``wr_port`` uint16[R]: lease when a
  direction's first payload starts with the prefix and (port 0 or) either port matches.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from flowsense.jit import inline_kernel, kernel
from flowsense.schema import (
    D_BYTES,
    D_CWR_ECE,
    D_FIRST,
    D_HEAD_LEN,
    D_ISN,
    D_LAST,
    D_MAX_PIAT,
    D_MAX_PS,
    D_MIN_PIAT,
    D_MIN_PS,
    D_NEXT,
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
    END_ACTIVE,
    END_EOF,
    END_FIN,
    END_IDLE,
    END_REUSE,
    END_RST,
    FF_BI_M2_PIAT,
    FF_BI_M2_PS,
    FF_BI_MEAN_PIAT,
    FF_BI_MEAN_PS,
    FF_DIR0,
    FF_DSTRIDE,
    FI_ACTIVE_MARK,
    FI_BI_MAX_PIAT,
    FI_BI_MAX_PS,
    FI_BI_MIN_PIAT,
    FI_BI_MIN_PS,
    FI_COUNTS,
    FI_DIR0,
    FI_DSTRIDE,
    FI_ENQ_TS,
    FI_FIRST_TS,
    FI_HASH,
    FI_LAST_TS,
    FI_LIST,
    FI_META,
    FI_PREV_TS,
    FI_SEQ,
    FI_SPLT_N,
    FI_STATE,
    FI_WATCH,
    FS_CLOSING,
    FS_DIRTY,
    FS_ENDED,
    FS_ESTABLISHED,
    FS_FIN0,
    FS_FIN1,
    FS_LIVE,
    FS_RST,
    FS_SYN,
    FS_SYNACK,
    HIGH,
    K_DONE,
    K_EVENTS,
    K_GROW,
    K_TIMEJUMP,
    L_CLOSING,
    L_EST,
    L_SHORT,
    OR_GUESSED,
    OR_SYN,
    OR_SYNACK,
    P_ACTIVE_NS,
    P_CLOSE_NS,
    P_EST_IDLE_NS,
    P_IDLE_NS,
    P_MAX_FLOWS,
    PF_FRAGMENT,
    S_CLOCK,
    S_DEADLINE,
    S_NDIRTY,
    S_NEV,
    S_NFREE,
    S_NLIVE,
    S_NWATCH,
    S_RETRANS,
    S_REUSED,
    S_SEQ,
    S_WATCH_FULL,
    ST_OK,
    TH_ACK,
    TH_CWR,
    TH_ECE,
    TH_FIN,
    TH_PSH,
    TH_RST,
    TH_SYN,
    TH_URG,
)

A_LIST = 3  # index of the active-timeout list in lhead/ltail
KEY0_MASK = np.uint64((1 << 48) - 1)  # key[:, 0] without the client bit

# trace flag bits
TR_DIR = 1  # server to client
TR_RETRANS = 2  # payload wholly below the highest sequence already seen
TR_SYN = 4
TR_FIN = 8
TR_RST = 16
TR_ACK_ONLY = 32  # TCP, no payload, no SYN/FIN/RST


class TableArrays(NamedTuple):
    key: np.ndarray
    fi: np.ndarray
    ff: np.ndarray
    splt_ps: np.ndarray
    splt_t: np.ndarray
    head: np.ndarray
    ix: np.ndarray
    lprev: np.ndarray
    lnext: np.ndarray
    aprev: np.ndarray
    anext: np.ndarray
    lhead: np.ndarray
    ltail: np.ndarray
    free: np.ndarray
    dirty_list: np.ndarray
    ev_slot: np.ndarray
    ev_kind: np.ndarray
    w_slot: np.ndarray
    wfree: np.ndarray
    w_fill: np.ndarray
    slab: np.ndarray
    tr_len: np.ndarray
    tr_flags: np.ndarray
    tr_ts: np.ndarray
    tr_n: np.ndarray
    wr_prefix: np.ndarray
    wr_len: np.ndarray
    wr_port: np.ndarray
    st: np.ndarray
    prm: np.ndarray
    hkey: np.ndarray


@inline_kernel
def _mix(h, k):
    h ^= k
    h *= np.uint64(0x9E3779B97F4A7C15)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return h


@inline_kernel
def _pack(fam, proto, pa, pb):
    return (np.uint64(fam) | (np.uint64(proto) << np.uint64(8))
            | (np.uint64(pa) << np.uint64(16)) | (np.uint64(pb) << np.uint64(32)))


@inline_kernel
def flow_hash(hkey, fam, proto, a_hi, a_lo, b_hi, b_lo, pa, pb):
    """Keyed hash of a canonical key (the key is drawn per run: flow floods cannot aim)."""
    h = hkey[0]
    h = _mix(h, _pack(fam, proto, pa, pb))
    h = _mix(h, a_hi ^ hkey[1])
    h = _mix(h, a_lo)
    h = _mix(h, b_hi)
    h = _mix(h, b_lo ^ hkey[1])
    return h


@inline_kernel
def _list_unlink(prev, nxt, lhead, ltail, li, s):
    p = prev[s]
    q = nxt[s]
    if p >= 0:
        nxt[p] = q
    else:
        lhead[li] = q
    if q >= 0:
        prev[q] = p
    else:
        ltail[li] = p
    prev[s] = -1
    nxt[s] = -1


@inline_kernel
def _list_append(prev, nxt, lhead, ltail, li, s):
    t = ltail[li]
    prev[s] = t
    nxt[s] = -1
    if t >= 0:
        nxt[t] = s
    else:
        lhead[li] = s
    ltail[li] = s


@inline_kernel
def _cell(h, slot):
    return np.int64(((h >> np.uint64(32)) << np.uint64(32)) | np.uint64(slot + 1))


@kernel
def _index_find(T, h, slot):
    """Index cell holding ``slot`` (whose hash is ``h``), or -1."""
    mask = T.ix.shape[0] - 1
    pos = np.int64(h & np.uint64(mask))
    while T.ix[pos] != 0:
        if (T.ix[pos] & 0xFFFFFFFF) == slot + 1:
            return pos
        pos = (pos + 1) & mask
    return -1


@kernel
def _index_delete(T, pos):
    """Backward-shift deletion at cell ``pos``."""
    mask = T.ix.shape[0] - 1
    i = pos
    j = pos
    while True:
        j = (j + 1) & mask
        e = T.ix[j]
        if e == 0:
            break
        k = np.int64(np.uint64(T.fi[(e & 0xFFFFFFFF) - 1, FI_HASH]) & np.uint64(mask))
        if i <= j:
            stays = i < k <= j
        else:
            stays = k > i or k <= j
        if stays:
            continue
        T.ix[i] = e
        i = j
    T.ix[i] = 0


@kernel
def _index_insert(T, h, slot):
    mask = T.ix.shape[0] - 1
    pos = np.int64(h & np.uint64(mask))
    while T.ix[pos] != 0:
        pos = (pos + 1) & mask
    T.ix[pos] = _cell(h, slot)


@kernel
def end_flow(T, s, reason):
    """Take a live flow out of the index and lists and queue it for export."""
    fi = T.fi
    pos = _index_find(T, np.uint64(fi[s, FI_HASH]), s)
    if pos >= 0:
        _index_delete(T, pos)
    _list_unlink(T.lprev, T.lnext, T.lhead, T.ltail, fi[s, FI_LIST], s)
    _list_unlink(T.aprev, T.anext, T.lhead, T.ltail, A_LIST, s)
    fi[s, FI_STATE] = (fi[s, FI_STATE] & ~FS_LIVE) | FS_ENDED
    T.st[S_NLIVE] -= 1
    e = T.st[S_NEV]
    T.ev_slot[e] = s
    T.ev_kind[e] = reason
    T.st[S_NEV] = e + 1


@inline_kernel
def _timeout(prm, li):
    if li == L_SHORT:
        return prm[P_IDLE_NS]
    if li == L_EST:
        return prm[P_EST_IDLE_NS]
    return prm[P_CLOSE_NS]


@inline_kernel
def _end_reason(fi, s, li):
    if li == L_CLOSING:
        return END_RST if fi[s, FI_STATE] & FS_RST else END_FIN
    return END_IDLE


@kernel
def _expire(T, now):
    """End flows idle past their list's timeout; queue an interim record when one is due.

    Returns K_EVENTS when Python must drain events first (the list is full, or an interim
    record must be taken at exactly this moment), else K_DONE. Sets st[S_DEADLINE].
    """
    st = T.st
    prm = T.prm
    fi = T.fi
    cap = T.ev_slot.shape[0]
    deadline = np.int64(0x7FFFFFFFFFFFFFFF)
    for li in range(3):
        tmo = _timeout(prm, li)
        while T.lhead[li] >= 0:
            s = T.lhead[li]
            if now - fi[s, FI_ENQ_TS] < tmo:
                if fi[s, FI_ENQ_TS] + tmo < deadline:
                    deadline = fi[s, FI_ENQ_TS] + tmo
                break
            if now - fi[s, FI_LAST_TS] >= tmo:
                if st[S_NEV] >= cap:
                    return K_EVENTS
                end_flow(T, s, _end_reason(fi, s, li))
            else:  # seen since it was queued: queue it again from its last packet
                _list_unlink(T.lprev, T.lnext, T.lhead, T.ltail, li, s)
                _list_append(T.lprev, T.lnext, T.lhead, T.ltail, li, s)
                fi[s, FI_ENQ_TS] = fi[s, FI_LAST_TS]
    s = T.lhead[A_LIST]
    while s >= 0 and now - fi[s, FI_ACTIVE_MARK] >= prm[P_ACTIVE_NS]:
        if st[S_NEV] >= cap:
            return K_EVENTS
        li = fi[s, FI_LIST]
        if now - fi[s, FI_LAST_TS] >= _timeout(prm, li):
            # idle past its timeout but not yet reached on its lazy list: it ended already
            end_flow(T, s, _end_reason(fi, s, li))
            s = T.lhead[A_LIST]
            continue
        break
    if s >= 0:
        if now - fi[s, FI_ACTIVE_MARK] >= prm[P_ACTIVE_NS]:
            fi[s, FI_ACTIVE_MARK] = now
            fi[s, FI_COUNTS] += 1
            _list_unlink(T.aprev, T.anext, T.lhead, T.ltail, A_LIST, s)
            _list_append(T.aprev, T.anext, T.lhead, T.ltail, A_LIST, s)
            e = st[S_NEV]
            T.ev_slot[e] = s
            T.ev_kind[e] = END_ACTIVE
            st[S_NEV] = e + 1
            st[S_DEADLINE] = now  # look again before the next packet
            return K_EVENTS
        if fi[s, FI_ACTIVE_MARK] + prm[P_ACTIVE_NS] < deadline:
            deadline = fi[s, FI_ACTIVE_MARK] + prm[P_ACTIVE_NS]
    st[S_DEADLINE] = deadline
    return K_DONE


@kernel
def end_live(T):
    """End live flows (end of input) until the event list is full; returns how many remain.

    A flow already closed by FIN or RST ends for that reason, the rest with END_EOF.
    """
    fi = T.fi
    cap = T.ev_slot.shape[0]
    for s in range(fi.shape[0]):
        if T.st[S_NLIVE] == 0:
            break
        if not (fi[s, FI_STATE] & FS_LIVE):
            continue
        if T.st[S_NEV] >= cap:
            break
        li = fi[s, FI_LIST]
        reason = END_EOF
        if T.st[S_CLOCK] - fi[s, FI_LAST_TS] >= _timeout(T.prm, li):
            reason = _end_reason(fi, s, li)  # past its timeout, not yet expired (lazy lists)
        elif fi[s, FI_STATE] & FS_CLOSING:
            reason = END_RST if fi[s, FI_STATE] & FS_RST else END_FIN
        end_flow(T, s, reason)
    return T.st[S_NLIVE]


@kernel
def expire_until(T, now):
    """Advance the table's clock to ``now`` (live capture on a quiet link) and expire."""
    if now > T.st[S_CLOCK]:
        T.st[S_CLOCK] = now
    return _expire(T, T.st[S_CLOCK])


@kernel
def _new_flow(T, h, fam, proto, a_hi, a_lo, b_hi, b_lo, pa, pb, from_a, flags, icmp_reply,
              ts, vlan, tun):
    st = T.st
    nf = st[S_NFREE] - 1
    s = T.free[nf]
    st[S_NFREE] = nf
    st[S_NLIVE] += 1
    T.key[s, 1] = a_hi
    T.key[s, 2] = a_lo
    T.key[s, 3] = b_hi
    T.key[s, 4] = b_lo
    # who is the client: a SYN's sender, a SYN-ACK's receiver, else the first sender
    orient = OR_GUESSED
    client_is_sender = True
    if proto == 6 and (flags & TH_SYN):
        if flags & TH_ACK:
            orient = OR_SYNACK
            client_is_sender = False
        else:
            orient = OR_SYN
    elif icmp_reply:
        client_is_sender = False
    cli_a = np.uint64(1) if client_is_sender == from_a else np.uint64(0)
    T.key[s, 0] = _pack(fam, proto, pa, pb) | (cli_a << np.uint64(48))
    fi = T.fi
    dirty = fi[s, FI_STATE] & FS_DIRTY  # a reused slot may still be on the dirty list
    fi[s, :] = 0  # floats too: they share the row, and 0 bits are 0.0
    T.head[s, :, :] = 0  # gaps in a head read as zero bytes, never as an old flow's
    fi[s, FI_FIRST_TS] = ts
    fi[s, FI_LAST_TS] = ts
    fi[s, FI_PREV_TS] = ts
    fi[s, FI_STATE] = FS_LIVE | dirty
    fi[s, FI_META] = np.int64(vlan) | (np.int64(tun) << 16) | (np.int64(orient) << 24)
    fi[s, FI_WATCH] = -1
    fi[s, FI_LIST] = L_SHORT
    fi[s, FI_ENQ_TS] = ts
    fi[s, FI_ACTIVE_MARK] = ts
    fi[s, FI_HASH] = np.int64(h)
    fi[s, FI_SEQ] = st[S_SEQ]
    st[S_SEQ] += 1
    for d in range(2):
        b = FI_DIR0 + d * FI_DSTRIDE
        fi[s, b + D_ISN] = -1
    _index_insert(T, h, s)
    _list_append(T.lprev, T.lnext, T.lhead, T.ltail, L_SHORT, s)
    _list_append(T.aprev, T.anext, T.lhead, T.ltail, A_LIST, s)
    dl = ts + T.prm[P_IDLE_NS]
    if ts + T.prm[P_ACTIVE_NS] < dl:
        dl = ts + T.prm[P_ACTIVE_NS]
    if dl < st[S_DEADLINE]:
        st[S_DEADLINE] = dl
    return s


@inline_kernel
def _welford(ff, s, im, i2, x, k):
    """Update mean (ff[s, im]) and M2 (ff[s, i2]) with the k-th value x."""
    mean = ff[s, im]
    delta = x - mean
    mean += delta / k
    ff[s, im] = mean
    ff[s, i2] += delta * (x - mean)


@inline_kernel
def _place(dst, s, d, limit, rel, buf, po, cap):
    """Copy payload bytes at sequence offset ``rel`` into dst[s, d, :limit].

    Returns the offset just past the last byte written, or -1 when nothing was written (the
    offset is past the limit, or no payload byte was captured).
    """
    if rel >= limit or cap <= 0:
        return -1
    k = cap
    if rel + k > limit:
        k = limit - rel
    dst[s, d, rel:rel + k] = buf[po:po + k]
    return rel + k


@kernel
def _try_watch(T, s, buf, po, cap, sport, dport):
    """Lease a watch to flow ``s`` if its first payload matches a rule and the quota allows."""
    nr = T.wr_len.shape[0]
    for r in range(nr):
        port = T.wr_port[r]
        if port != 0 and port != sport and port != dport:
            continue
        ln = T.wr_len[r]
        if ln > cap:
            continue
        ok = True
        for j in range(ln):
            if buf[po + j] != T.wr_prefix[r, j]:
                ok = False
                break
        if ok:
            return lease_watch(T, s)
    return -1


@kernel
def lease_watch(T, s):
    """Give flow ``s`` a slab and a trace (its head copied in); -1 when the quota is spent."""
    fi = T.fi
    if fi[s, FI_WATCH] >= 0:
        return fi[s, FI_WATCH]
    nw = T.st[S_NWATCH]
    if nw >= T.wfree.shape[0]:
        T.st[S_WATCH_FULL] += 1
        return -1
    w = T.wfree[nw]
    T.st[S_NWATCH] = nw + 1
    T.w_slot[w] = s
    fi[s, FI_WATCH] = w
    T.tr_n[w] = 0
    T.slab[w, :, :] = 0
    hl = T.head.shape[2]
    for d in range(2):
        T.w_fill[w, d] = fi[s, FI_DIR0 + d * FI_DSTRIDE + D_HEAD_LEN]
        for j in range(hl):
            T.slab[w, d, j] = T.head[s, d, j]
    return w


@kernel
def release_slots(T, slots, n):
    """Return ended flows' slots (and their watches) to the free lists."""
    fi = T.fi
    st = T.st
    for k in range(n):
        s = slots[k]
        if not (fi[s, FI_STATE] & FS_ENDED):
            continue
        fi[s, FI_STATE] &= FS_DIRTY  # it may still be on the dirty list
        w = fi[s, FI_WATCH]
        if w >= 0:
            T.w_slot[w] = -1
            nw = st[S_NWATCH] - 1
            T.wfree[nw] = w
            st[S_NWATCH] = nw
            fi[s, FI_WATCH] = -1
        T.free[st[S_NFREE]] = s
        st[S_NFREE] += 1


@kernel
def reindex(T):
    """Rebuild the index from the live slots (after growth)."""
    T.ix[:] = 0
    fi = T.fi
    for s in range(fi.shape[0]):
        if fi[s, FI_STATE] & FS_LIVE:
            _index_insert(T, np.uint64(fi[s, FI_HASH]), s)


@kernel
def take_dirty(T, out):
    """Copy the slots touched since the last call into ``out``; returns their count."""
    n = T.st[S_NDIRTY]
    for k in range(n):
        s = T.dirty_list[k]
        out[k] = s
        T.fi[s, FI_STATE] &= ~FS_DIRTY
    T.st[S_NDIRTY] = 0
    return n


@kernel
def process(
    T, start, n, ts_ns, status, pflags, fam, proto, src_hi, src_lo, dst_hi, dst_lo,
    sport, dport, tcp_flags, ip_len, payload_len, pay_off, pay_cap, seq, vlan, tunnel, buf,
):
    """Feed packets ``start..n-1`` of a batch into the table.

    Returns (status, i): K_DONE with i == n, or K_GROW / K_EVENTS with i the packet to resume at
    once Python has made room (grown or evicted) or drained the events.
    """
    st = T.st
    fi = T.fi
    ff = T.ff
    max_flows = T.prm[P_MAX_FLOWS]
    nsplt = T.splt_ps.shape[1]
    hlen = T.head.shape[2]
    slen = T.slab.shape[2]
    tcap = T.tr_len.shape[1]
    mask = T.ix.shape[0] - 1
    for i in range(start, n):
        if status[i] != ST_OK:
            continue
        ts = ts_ns[i]
        if ts < st[S_CLOCK] - T.prm[P_IDLE_NS]:
            # a capture spliced from another time: it cannot continue these flows
            return K_TIMEJUMP, i
        if ts > st[S_CLOCK]:
            st[S_CLOCK] = ts
        if st[S_CLOCK] >= st[S_DEADLINE]:
            if _expire(T, st[S_CLOCK]) != K_DONE:
                return K_EVENTS, i
        f = fam[i]
        p = proto[i]
        sh = src_hi[i]
        sl = src_lo[i]
        dh = dst_hi[i]
        dl = dst_lo[i]
        sp = sport[i]
        dp = dport[i]
        if sh < dh or (sh == dh and (sl < dl or (sl == dl and sp <= dp))):
            from_a = True
            a_hi, a_lo, b_hi, b_lo, pa, pb = sh, sl, dh, dl, sp, dp
        else:
            from_a = False
            a_hi, a_lo, b_hi, b_lo, pa, pb = dh, dl, sh, sl, dp, sp
        h = flow_hash(T.hkey, f, p, a_hi, a_lo, b_hi, b_lo, pa, pb)
        pos = np.int64(h & np.uint64(mask))
        s = -1
        k0 = _pack(f, p, pa, pb)
        tag = np.int64((h >> np.uint64(32)) << np.uint64(32))
        while T.ix[pos] != 0:
            e = T.ix[pos]
            c = (e & 0xFFFFFFFF) - 1
            if (
                (e & ~0xFFFFFFFF) == tag
                and (T.key[c, 0] & KEY0_MASK) == k0
                and T.key[c, 2] == a_lo
                and T.key[c, 4] == b_lo
                and T.key[c, 1] == a_hi
                and T.key[c, 3] == b_hi
            ):
                s = c
                break
            pos = (pos + 1) & mask
        flags = tcp_flags[i]
        if s >= 0:
            # a flow past its timeout ends before this packet (the idle lists are lazy)
            li = fi[s, FI_LIST]
            new_syn = p == 6 and (flags & (TH_SYN | TH_ACK)) == TH_SYN
            idle = st[S_CLOCK] - fi[s, FI_LAST_TS] >= _timeout(T.prm, li)
            if idle or ((fi[s, FI_STATE] & FS_CLOSING) and new_syn):
                if st[S_NEV] >= T.ev_slot.shape[0]:
                    return K_EVENTS, i
                if idle:
                    end_flow(T, s, _end_reason(fi, s, li))
                else:
                    end_flow(T, s, END_REUSE)
                    st[S_REUSED] += 1
                s = -1
        if s < 0:
            if st[S_NFREE] == 0 or (max_flows > 0 and st[S_NLIVE] >= max_flows):
                return K_GROW, i
            icmp_reply = False
            if (p == 1 or p == 58) and pflags[i] & PF_FRAGMENT == 0:
                # a reply's type has its request as counterpart in dport: the requester is
                # the client (Community ID's pairing, schema: sport=type, dport=counterpart)
                icmp_reply = (
                    (p == 1 and (sp == 0 or sp == 14 or sp == 16 or sp == 18 or sp == 9))
                    or (p == 58 and (sp == 129 or sp == 134 or sp == 136 or sp == 131 or sp == 140
                                     or sp == 145))
                )
            s = _new_flow(T, h, f, p, a_hi, a_lo, b_hi, b_lo, pa, pb, from_a, flags,
                          icmp_reply, ts, vlan[i], tunnel[i])
        # direction: 0 client to server
        cli_a = (T.key[s, 0] >> np.uint64(48)) & np.uint64(1)
        d = 0 if (cli_a == 1) == from_a else 1
        b = FI_DIR0 + d * FI_DSTRIDE
        fb = FF_DIR0 + d * FF_DSTRIDE
        size = np.int64(ip_len[i])
        pl = np.int64(payload_len[i])
        xs = np.float64(size)

        # bidirectional
        bk = fi[s, FI_DIR0 + D_PKTS] + fi[s, FI_DIR0 + FI_DSTRIDE + D_PKTS] + 1
        if bk == 1:
            fi[s, FI_BI_MIN_PS] = size
            fi[s, FI_BI_MAX_PS] = size
        else:
            if size < fi[s, FI_BI_MIN_PS]:
                fi[s, FI_BI_MIN_PS] = size
            if size > fi[s, FI_BI_MAX_PS]:
                fi[s, FI_BI_MAX_PS] = size
            piat = ts - fi[s, FI_PREV_TS]
            if bk == 2 or piat < fi[s, FI_BI_MIN_PIAT]:
                fi[s, FI_BI_MIN_PIAT] = piat
            if bk == 2 or piat > fi[s, FI_BI_MAX_PIAT]:
                fi[s, FI_BI_MAX_PIAT] = piat
            _welford(ff, s, FF_BI_MEAN_PIAT, FF_BI_M2_PIAT, piat / 1e6, bk - 1)
        _welford(ff, s, FF_BI_MEAN_PS, FF_BI_M2_PS, xs, bk)
        fi[s, FI_PREV_TS] = ts
        if ts > fi[s, FI_LAST_TS]:
            fi[s, FI_LAST_TS] = ts

        # this direction
        k = fi[s, b + D_PKTS] + 1
        fi[s, b + D_PKTS] = k
        fi[s, b + D_BYTES] += size
        fi[s, b + D_PAYLOAD] += pl
        if k == 1:
            fi[s, b + D_FIRST] = ts
            fi[s, b + D_MIN_PS] = size
            fi[s, b + D_MAX_PS] = size
        else:
            if size < fi[s, b + D_MIN_PS]:
                fi[s, b + D_MIN_PS] = size
            if size > fi[s, b + D_MAX_PS]:
                fi[s, b + D_MAX_PS] = size
            piat = ts - fi[s, b + D_LAST]
            if k == 2 or piat < fi[s, b + D_MIN_PIAT]:
                fi[s, b + D_MIN_PIAT] = piat
            if k == 2 or piat > fi[s, b + D_MAX_PIAT]:
                fi[s, b + D_MAX_PIAT] = piat
            _welford(ff, s, fb + DF_MEAN_PIAT, fb + DF_M2_PIAT, piat / 1e6, k - 1)
        _welford(ff, s, fb + DF_MEAN_PS, fb + DF_M2_PS, xs, k)
        fi[s, b + D_LAST] = ts
        if pflags[i] & PF_FRAGMENT:
            fi[s, FI_COUNTS] += 1 << 32

        # first packets
        ns = fi[s, FI_SPLT_N]
        if ns < nsplt:
            T.splt_ps[s, ns] = size if d == 0 else -size
            T.splt_t[s, ns] = np.float32((ts - fi[s, FI_FIRST_TS]) / 1e6)
            fi[s, FI_SPLT_N] = ns + 1

        # TCP flags and state
        state = fi[s, FI_STATE]
        if p == 6:
            if flags & TH_SYN:
                fi[s, b + D_SYN_ACK] += 1
                if flags & TH_ACK:
                    if d == 1:
                        state |= FS_SYNACK
                elif d == 0:
                    state |= FS_SYN
            if flags & TH_CWR:
                fi[s, b + D_CWR_ECE] += 1
            if flags & TH_ECE:
                fi[s, b + D_CWR_ECE] += HIGH
            if flags & TH_URG:
                fi[s, b + D_URG_PSH] += 1
            if flags & TH_ACK:
                fi[s, b + D_SYN_ACK] += HIGH
            if flags & TH_PSH:
                fi[s, b + D_URG_PSH] += HIGH
            if flags & TH_RST:
                fi[s, b + D_RST_FIN] += 1
                state |= FS_RST
            if flags & TH_FIN:
                fi[s, b + D_RST_FIN] += HIGH
                state |= FS_FIN0 if d == 0 else FS_FIN1

        # payload: heads (all flows) and slabs (watched), by sequence offset for TCP
        if p == 6 and (flags & TH_SYN):
            fi[s, b + D_ISN] = (np.int64(seq[i]) + 1) & 0xFFFFFFFF
        retrans = False
        cap = np.int64(pay_cap[i])
        po = pay_off[i]
        w = fi[s, FI_WATCH]
        if pl > 0 and not (pflags[i] & PF_FRAGMENT):
            first_payload = fi[s, b + D_HEAD_LEN] == 0 and fi[s, b + D_NEXT] == 0
            if first_payload and w < 0 and T.wr_len.shape[0] > 0:
                w = _try_watch(T, s, buf, po, cap, sp, dp)
            rel = np.int64(-1)
            if p == 6:
                sq = np.int64(seq[i])
                if flags & TH_SYN:  # TCP Fast Open: the data follows the SYN's sequence number
                    sq = (sq + 1) & 0xFFFFFFFF
                if fi[s, b + D_ISN] < 0:
                    fi[s, b + D_ISN] = sq
                rel = (sq - fi[s, b + D_ISN]) & 0xFFFFFFFF
                if rel >= 0x80000000:
                    # it starts before the direction's first byte: counted like any segment
                    # that ends at or below what was seen, but never placed in the head
                    e = rel - 0x100000000 + pl
                    if e <= fi[s, b + D_NEXT]:
                        retrans = True
                        fi[s, b + D_RETRANS] += 1
                        st[S_RETRANS] += 1
                    else:
                        fi[s, b + D_NEXT] = e
                    rel = -1
                else:
                    e = rel + pl
                    if e <= fi[s, b + D_NEXT]:
                        retrans = True
                        fi[s, b + D_RETRANS] += 1
                        st[S_RETRANS] += 1
                    else:
                        fi[s, b + D_NEXT] = e
            else:
                rel = fi[s, b + D_HEAD_LEN]
            if rel >= 0:
                he = _place(T.head, s, d, hlen, rel, buf, po, cap)
                if he > fi[s, b + D_HEAD_LEN]:
                    fi[s, b + D_HEAD_LEN] = he
                if w >= 0:
                    if p != 6:
                        rel = T.w_fill[w, d]  # datagrams: appended in arrival order
                    we = _place(T.slab, w, d, slen, rel, buf, po, cap)
                    if we > T.w_fill[w, d]:
                        T.w_fill[w, d] = we

        if w >= 0:
            k = T.tr_n[w]
            j = k % tcap
            T.tr_len[w, j] = pl
            fl = TR_DIR if d == 1 else 0
            if retrans:
                fl |= TR_RETRANS
            if p == 6:
                if flags & TH_SYN:
                    fl |= TR_SYN
                if flags & TH_FIN:
                    fl |= TR_FIN
                if flags & TH_RST:
                    fl |= TR_RST
                if pl == 0 and (flags & (TH_SYN | TH_FIN | TH_RST)) == 0:
                    fl |= TR_ACK_ONLY
            T.tr_flags[w, j] = fl
            T.tr_ts[w, j] = ts
            T.tr_n[w] = k + 1

        # lists: established TCP idles long, closing flows linger briefly
        if p == 6:
            if (state & FS_RST) or ((state & FS_FIN0) and (state & FS_FIN1)):
                state = (state | FS_CLOSING) & ~FS_ESTABLISHED
            elif fi[s, FI_DIR0 + D_PKTS] > 0 and fi[s, FI_DIR0 + FI_DSTRIDE + D_PKTS] > 0:
                state |= FS_ESTABLISHED
        fi[s, FI_STATE] = state
        target = L_SHORT
        if state & FS_CLOSING:
            target = L_CLOSING
        elif state & FS_ESTABLISHED:
            target = L_EST
        cur = fi[s, FI_LIST]
        if target != cur:
            _list_unlink(T.lprev, T.lnext, T.lhead, T.ltail, cur, s)
            _list_append(T.lprev, T.lnext, T.lhead, T.ltail, target, s)
            fi[s, FI_LIST] = target
            fi[s, FI_ENQ_TS] = ts
            dl = ts + _timeout(T.prm, target)
            if dl < st[S_DEADLINE]:
                st[S_DEADLINE] = dl
        if not (state & FS_DIRTY):
            fi[s, FI_STATE] = state | FS_DIRTY
            T.dirty_list[st[S_NDIRTY]] = s
            st[S_NDIRTY] += 1
    return K_DONE, n
