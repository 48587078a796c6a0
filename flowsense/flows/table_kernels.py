"""The flow table's layout and bookkeeping in numba: the index, the lists, expiry, watches.

Keyed open addressing, a hot row per flow, cold arrays apart.

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
  Rules: ``wr_prefix`` uint8[R, 8], ``wr_len`` uint8[R] (``wr_first`` bool[256]: the first
  bytes of the prefixes, so most payloads skip the prefixed rules), ``wr_port`` uint16[R]:
  lease when a direction's first payload starts with the prefix and (port 0 or) either port
  matches;
  ``wr_prompt`` uint8[R] 1: instead of a lease, mark the flow (FS_PROMPT) when the client's
  first payload matches, and queue an EV_PROMPT event when the server's first payload comes;
  ``wr_names`` uint8[R] 1: the payload must also be a DNS message whose first question ends
  in a listed name (``pn_len`` int64[k], ``pn_hash`` uint64[m], ``pn_weights`` uint64[256],
  ``pn_bits`` uint64[1024]: ``kernels.dns_name_listed``; the table's one ``NameSuffixes``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from flowsense.jit import copy_bytes3, counted_free_kernel, inline_kernel, zero_row
from flowsense.schema import (
    D_HEAD_LEN,
    END_ACTIVE,
    END_EOF,
    END_EVICTED,
    END_FIN,
    END_IDLE,
    END_RST,
    FI_ACTIVE_MARK,
    FI_COUNTS,
    FI_DIR0,
    FI_DSTRIDE,
    FI_ENQ_TS,
    FI_HASH,
    FI_LAST_TS,
    FI_LIST,
    FI_STATE,
    FI_WATCH,
    FS_CLOSING,
    FS_DIRTY,
    FS_ENDED,
    FS_LIVE,
    FS_RST,
    K_DONE,
    K_EVENTS,
    L_CLOSING,
    L_EST,
    L_SHORT,
    P_ACTIVE_NS,
    P_CLOSE_NS,
    P_EST_IDLE_NS,
    P_IDLE_NS,
    S_CLOCK,
    S_DEADLINE,
    S_EVICTED,
    S_NDIRTY,
    S_NEV,
    S_NFREE,
    S_NLIVE,
    S_NWATCH,
    S_WATCH_FULL,
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
    wr_first: np.ndarray
    wr_port: np.ndarray
    wr_prompt: np.ndarray
    wr_names: np.ndarray
    pn_len: np.ndarray
    pn_hash: np.ndarray
    pn_weights: np.ndarray
    pn_bits: np.ndarray
    st: np.ndarray
    prm: np.ndarray
    hkey: np.ndarray
    ahead: np.ndarray  # uint64[AHEAD_RING]: the flow kernel's look-ahead hashes (no allocation)


@inline_kernel
def list_unlink(prev, nxt, lhead, ltail, li, s):
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
def list_append(prev, nxt, lhead, ltail, li, s):
    t = ltail[li]
    prev[s] = t
    nxt[s] = -1
    if t >= 0:
        nxt[t] = s
    else:
        lhead[li] = s
    ltail[li] = s


@inline_kernel
def index_cell(h, slot):
    return np.int64(((h >> np.uint64(32)) << np.uint64(32)) | np.uint64(slot + 1))


@inline_kernel
def index_find(T, h, slot):
    """Index cell holding ``slot`` (whose hash is ``h``), or -1."""
    mask = T.ix.shape[0] - 1
    pos = np.int64(h & np.uint64(mask))
    while T.ix[pos] != 0:
        if (T.ix[pos] & 0xFFFFFFFF) == slot + 1:
            return pos
        pos = (pos + 1) & mask
    return -1


@inline_kernel
def index_delete(T, pos):
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


@inline_kernel
def index_insert(T, h, slot):
    mask = T.ix.shape[0] - 1
    pos = np.int64(h & np.uint64(mask))
    while T.ix[pos] != 0:
        pos = (pos + 1) & mask
    T.ix[pos] = index_cell(h, slot)


@inline_kernel
def end_flow(T, s, reason):
    """Take a live flow out of the index and lists and queue it for export."""
    fi = T.fi
    pos = index_find(T, np.uint64(fi[s, FI_HASH]), s)
    if pos >= 0:
        index_delete(T, pos)
    list_unlink(T.lprev, T.lnext, T.lhead, T.ltail, fi[s, FI_LIST], s)
    list_unlink(T.aprev, T.anext, T.lhead, T.ltail, A_LIST, s)
    fi[s, FI_STATE] = (fi[s, FI_STATE] & ~FS_LIVE) | FS_ENDED
    T.st[S_NLIVE] -= 1
    e = T.st[S_NEV]
    T.ev_slot[e] = s
    T.ev_kind[e] = reason
    T.st[S_NEV] = e + 1


@counted_free_kernel
def evict(T, want):
    """End up to ``want`` live flows to make room (bounded mode), least recently queued first:
    short-lived flows, then closing, then established TCP; watched flows only when nothing else
    is left. Stops early when the event list is full (Python drains it and calls again).
    Returns the number ended."""
    done = 0
    cap = T.ev_slot.shape[0]
    for spare_watched in (True, False):
        for li in (L_SHORT, L_CLOSING, L_EST):
            s = T.lhead[li]
            while s >= 0 and done < want:
                if T.st[S_NEV] >= cap:
                    return done
                nxt = T.lnext[s]
                if not (spare_watched and T.fi[s, FI_WATCH] >= 0):
                    end_flow(T, s, END_EVICTED)
                    T.st[S_EVICTED] += 1
                    done += 1
                s = nxt
        if done >= want:
            break
    return done


@inline_kernel
def timeouts(prm):
    """The idle timeouts of the three lists, as scalars for ``timeout_ns``."""
    return prm[P_IDLE_NS], prm[P_EST_IDLE_NS], prm[P_CLOSE_NS]


@inline_kernel
def timeout_ns(tmo, li):
    """The idle timeout of list ``li``; ``tmo`` from ``timeouts`` (a tuple of scalars, not the
    array: see ``jit.inline_kernel``)."""
    if li == L_SHORT:
        return tmo[0]
    if li == L_EST:
        return tmo[1]
    return tmo[2]


@inline_kernel
def end_reason(fi, s, li):
    if li == L_CLOSING:
        return END_RST if fi[s, FI_STATE] & FS_RST else END_FIN
    return END_IDLE


@counted_free_kernel
def expire(T, now):
    """End flows idle past their list's timeout; queue an interim record when one is due.

    Returns K_EVENTS when Python must drain events first (the list is full, or an interim
    record must be taken at exactly this moment), else K_DONE. Sets st[S_DEADLINE].
    """
    st = T.st
    prm = T.prm
    fi = T.fi
    cap = T.ev_slot.shape[0]
    deadline = np.int64(0x7FFFFFFFFFFFFFFF)
    tmos = timeouts(prm)
    for li in range(3):
        tmo = timeout_ns(tmos, li)
        while T.lhead[li] >= 0:
            s = T.lhead[li]
            if now - fi[s, FI_ENQ_TS] < tmo:
                if fi[s, FI_ENQ_TS] + tmo < deadline:
                    deadline = fi[s, FI_ENQ_TS] + tmo
                break
            if now - fi[s, FI_LAST_TS] >= tmo:
                if st[S_NEV] >= cap:
                    return K_EVENTS
                end_flow(T, s, end_reason(fi, s, li))
            else:  # seen since it was queued: queue it again from its last packet
                list_unlink(T.lprev, T.lnext, T.lhead, T.ltail, li, s)
                list_append(T.lprev, T.lnext, T.lhead, T.ltail, li, s)
                fi[s, FI_ENQ_TS] = fi[s, FI_LAST_TS]
    s = T.lhead[A_LIST]
    while s >= 0 and now - fi[s, FI_ACTIVE_MARK] >= prm[P_ACTIVE_NS]:
        if st[S_NEV] >= cap:
            return K_EVENTS
        li = fi[s, FI_LIST]
        if now - fi[s, FI_LAST_TS] >= timeout_ns(tmos, li):
            # idle past its timeout but not yet reached on its lazy list: it ended already
            end_flow(T, s, end_reason(fi, s, li))
            s = T.lhead[A_LIST]
            continue
        break
    if s >= 0:
        if now - fi[s, FI_ACTIVE_MARK] >= prm[P_ACTIVE_NS]:
            fi[s, FI_ACTIVE_MARK] = now
            fi[s, FI_COUNTS] += 1
            list_unlink(T.aprev, T.anext, T.lhead, T.ltail, A_LIST, s)
            list_append(T.aprev, T.anext, T.lhead, T.ltail, A_LIST, s)
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


@counted_free_kernel
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
        if T.st[S_CLOCK] - fi[s, FI_LAST_TS] >= timeout_ns(timeouts(T.prm), li):
            reason = end_reason(fi, s, li)  # past its timeout, not yet expired (lazy lists)
        elif fi[s, FI_STATE] & FS_CLOSING:
            reason = END_RST if fi[s, FI_STATE] & FS_RST else END_FIN
        end_flow(T, s, reason)
    return T.st[S_NLIVE]


@counted_free_kernel
def expire_until(T, now):
    """Advance the table's clock to ``now`` (live capture on a quiet link) and expire."""
    if now > T.st[S_CLOCK]:
        T.st[S_CLOCK] = now
    return expire(T, T.st[S_CLOCK])


@inline_kernel
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
    zero_row(T.slab, w)
    hl = T.head.shape[2]
    for d in range(2):
        T.w_fill[w, d] = fi[s, FI_DIR0 + d * FI_DSTRIDE + D_HEAD_LEN]
        copy_bytes3(T.slab, w, d, 0, T.head[s, d], 0, hl)
    return w


@counted_free_kernel
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


@counted_free_kernel
def reindex(T):
    """Rebuild the index from the live slots (after growth)."""
    T.ix[:] = 0
    fi = T.fi
    for s in range(fi.shape[0]):
        if fi[s, FI_STATE] & FS_LIVE:
            index_insert(T, np.uint64(fi[s, FI_HASH]), s)


@counted_free_kernel
def take_dirty(T, out):
    """Copy the slots touched since the last call into ``out``; returns their count."""
    n = T.st[S_NDIRTY]
    for k in range(n):
        s = T.dirty_list[k]
        out[k] = s
        T.fi[s, FI_STATE] &= ~FS_DIRTY
    T.st[S_NDIRTY] = 0
    return n


