"""The per-packet aggregation kernel: lookup, creation and the update of one flow's row.

The table's layout and bookkeeping (index, lists, expiry, watches) are in ``table_kernels.py``;
``flows/table.py`` owns the arrays.
"""


from __future__ import annotations

import numpy as np

from flowsense.flows.table_kernels import (
    A_LIST,
    KEY0_MASK,
    TR_ACK_ONLY,
    TR_DIR,
    TR_FIN,
    TR_RETRANS,
    TR_RST,
    TR_SYN,
    end_flow,
    end_reason,
    expire,
    index_insert,
    lease_watch,
    list_append,
    list_unlink,
    timeout_ns,
    timeouts,
)
from flowsense.jit import (
    copy_bytes3,
    counted_free_kernel,
    inline_kernel,
    kernel,
    prefetch,
    prefetch2,
    zero_row,
)
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
    END_REUSE,
    EV_PROMPT,
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
    FS_ESTABLISHED,
    FS_FIN0,
    FS_FIN1,
    FS_LIVE,
    FS_PROMPT,
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
    P_IDLE_NS,
    P_MAX_FLOWS,
    PF_FRAGMENT,
    S_CLOCK,
    S_DEADLINE,
    S_NDIRTY,
    S_NEV,
    S_NFREE,
    S_NLIVE,
    S_RETRANS,
    S_REUSED,
    S_SEQ,
    ST_OK,
    ST_TICK,
    TH_ACK,
    TH_CWR,
    TH_ECE,
    TH_FIN,
    TH_PSH,
    TH_RST,
    TH_SYN,
    TH_URG,
)


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
def flow_hash(k0, k1, fam, proto, a_hi, a_lo, b_hi, b_lo, pa, pb):
    """Keyed hash of a canonical key; (k0, k1) is the table's key ``hkey``, drawn per run so
    flow floods cannot aim."""
    h = k0
    h = _mix(h, _pack(fam, proto, pa, pb))
    h = _mix(h, a_hi ^ k1)
    h = _mix(h, a_lo)
    h = _mix(h, b_hi)
    h = _mix(h, b_lo ^ k1)
    return h


AHEAD_CELL = 16
AHEAD_ROW = 8
AHEAD_RING = 32  # a power of two above AHEAD_CELL


@inline_kernel
def _canon(sh, sl, dh, dl, sp, dp):
    """A packet's key with the lower endpoint first: (from_a, a_hi, a_lo, b_hi, b_lo, pa, pb).
    Without branches: which end is lower is a coin toss a packet (its direction), and as a
    branch the predictor lost it half the time (``partition_ids`` took twice as long)."""
    fwd = (sh < dh) | ((sh == dh) & ((sl < dl) | ((sl == dl) & (sp <= dp))))
    return (fwd, sh if fwd else dh, sl if fwd else dl, dh if fwd else sh, dl if fwd else sl,
            sp if fwd else dp, dp if fwd else sp)


@inline_kernel
def packet_hash(k0, k1, fam, proto, sh, sl, dh, dl, sp, dp):
    """flow_hash of a packet's canonical key."""
    _, a_hi, a_lo, b_hi, b_lo, pa, pb = _canon(sh, sl, dh, dl, sp, dp)
    return flow_hash(k0, k1, fam, proto, a_hi, a_lo, b_hi, b_lo, pa, pb)


@inline_kernel
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
    zero_row(fi, s)  # floats too: they share the row, and 0 bits are 0.0
    zero_row(T.head, s)  # gaps in a head read as zero bytes, never as an old flow's
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
    index_insert(T, h, s)
    list_append(T.lprev, T.lnext, T.lhead, T.ltail, L_SHORT, s)
    list_append(T.aprev, T.anext, T.lhead, T.ltail, A_LIST, s)
    dl = ts + T.prm[P_IDLE_NS]
    if ts + T.prm[P_ACTIVE_NS] < dl:
        dl = ts + T.prm[P_ACTIVE_NS]
    if dl < st[S_DEADLINE]:
        st[S_DEADLINE] = dl
    return s


@inline_kernel
def _welford(mean, m2, x, k):
    """Mean and M2 updated with the k-th value x (scalars in and out: see jit.inline_kernel)."""
    delta = x - mean
    mean += delta / k
    return mean, m2 + delta * (x - mean)


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
    copy_bytes3(dst, s, d, rel, buf, po, k)  # a memcpy (slice assignment: a byte at a time)
    return rel + k


DNS_NAME_START = 12  # the first question's name follows the 12-byte DNS header
DNS_NAME_WINDOW = 256  # bytes after the header searched for the name's terminating zero


NAME_FILTER_WORDS = 1024  # a 65,536-bit filter over the listed name hashes


def name_filter(hashes: np.ndarray) -> np.ndarray:
    """uint64[NAME_FILTER_WORDS]: bit (h >> 48) set for each listed hash h, which
    ``listed_hash`` reads first (the top bits of the weighted sums are the well-mixed ones)."""
    bits = np.zeros(NAME_FILTER_WORDS, dtype=np.uint64)
    top = np.asarray(hashes, dtype=np.uint64) >> np.uint64(48)
    np.bitwise_or.at(bits, (top >> np.uint64(6)).astype(np.int64),
                     np.left_shift(np.uint64(1), top & np.uint64(63)))
    return bits


@inline_kernel
def sorted_has(table, lo, hi, v):
    """Whether ``v`` is in the sorted ``table[lo:hi]`` (a binary search)."""
    stop = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if table[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo < stop and table[lo] == v


@inline_kernel
def listed_hash(h, listed, bits):
    """Whether ``h`` is in ``listed`` (uint64[m], sorted): the filter ``bits`` first (one load
    turns most names away: a binary search for each suffix length of every DNS query was the
    pool rule's whole cost), then ``sorted_has``."""
    top = h >> np.uint64(48)
    if (bits[top >> np.uint64(6)] >> (top & np.uint64(63))) & np.uint64(1) == 0:
        return False
    return sorted_has(listed, 0, listed.shape[0], h)


@inline_kernel
def dns_name_listed(buf, start, avail, lengths, listed, weights, bits):
    """Whether the first question's name of the DNS message at ``buf[start:start + avail]``,
    in wire form up to and with its terminating zero, ends in a suffix of one of ``lengths``
    (int64[k], ascending) bytes whose hash is in ``listed`` (uint64[m], sorted; ``bits`` its
    ``name_filter``). The hash of the last L bytes, read last byte first, is sum(fold(byte t
    from the end) * weights[t], t < L) in uint64 with wrap-around, ASCII letters folded to
    lower case (``signatures.suffix_hashes``). A superset test: a hit is then checked
    exactly."""
    if listed.shape[0] == 0:
        return False
    stop = start + min(avail, DNS_NAME_START + DNS_NAME_WINDOW)
    end = -1
    for p in range(start + DNS_NAME_START, stop):
        if buf[p] == 0:
            end = p
            break
    if end < 0:
        return False
    return suffix_listed(buf, end, start + DNS_NAME_START, lengths, listed, weights, bits)


@inline_kernel
def suffix_listed(buf, end, floor, lengths, listed, weights, bits):
    """Whether the bytes ``buf[floor:end + 1]`` (a name in wire form, ``end`` its terminating
    zero) end in a suffix of one of ``lengths`` bytes whose hash is listed (``dns_name_listed``
    for the hash; the pool detector's Host test builds the wire form to call it)."""
    h = np.uint64(0)
    t = 0
    for k in range(lengths.shape[0]):
        size = lengths[k]
        if end - size + 1 < floor:
            return False
        while t < size:
            b = buf[end - t]
            if 65 <= b <= 90:
                b |= 32
            h += np.uint64(b) * weights[t]
            t += 1
        if listed_hash(h, listed, bits):
            return True
    return False


@inline_kernel
def _rule_matches(wr_prefix, wr_len, wr_first, wr_port, wr_prompt, wr_names, pn_len, pn_hash,
                  pn_weights, pn_bits, buf, po, cap, sport, dport, client):
    """Which watch rules a direction's first payload matches (prefix, and port unless 0; for
    a rule with ``wr_names``, a DNS question naming one of the table's listed suffixes):
    bit 1 a lease rule, bit 2 a prompt rule (which only the ``client``'s payload can match)."""
    found = 0
    prefixed = cap > 0 and wr_first[buf[po]]  # some rule's prefix starts with this byte
    for r in range(wr_len.shape[0]):
        if wr_len[r] > 0 and not prefixed:
            continue
        if wr_prompt[r] and not client:
            continue
        port = wr_port[r]
        if port != 0 and port != sport and port != dport:
            continue
        ln = min(wr_len[r], cap)  # a shorter first payload: its bytes decide (no split evades)
        ok = True
        for j in range(ln):
            if buf[po + j] != wr_prefix[r, j]:
                ok = False
                break
        if ok and wr_names[r] and not dns_name_listed(buf, po, cap, pn_len, pn_hash,
                                                      pn_weights, pn_bits):
            ok = False
        if ok:
            found |= 2 if wr_prompt[r] else 1
    return found


GAP_EMPTY_HI = np.int64(-0x7FFFFFFFFFFFFFFF - 1)
GAP_EMPTY_LO = np.int64(0x7FFFFFFFFFFFFFFF)


@kernel
def own_packets(status, ts_ns, n, own, gap_hi, gap_lo):
    """Where a batch's packets are for this table: ``own[:m]`` the indexes of its ST_OK
    packets (m returned), ``gap_hi[k]``/``gap_lo[k]`` the latest and earliest timestamps of the
    ST_TICK packets (other partitions') between own packet k-1 and own packet k, ``gap_*[m]``
    those after the last (``GAP_EMPTY_*`` where there are none). ``process`` walks the own
    packets and steps over a gap at once when nothing can happen in it; tested one by one, a
    parallel run's mine-or-another's was a coin toss the branch predictor lost three times a
    packet (a third of a partition's table time). Written without branches on the status."""
    m = 0
    hi = GAP_EMPTY_HI
    lo = GAP_EMPTY_LO
    for i in range(n):
        s = status[i]
        own[m] = i
        gap_hi[m] = hi
        gap_lo[m] = lo
        t = ts_ns[i]
        # masks (all ones or none) in place of conditional expressions, which numba left as
        # branches: 3.9 -> 1.6 ms over a million packets, half of them another partition's
        tick = -np.int64(s == ST_TICK)
        hi = max(hi, (t & tick) | (GAP_EMPTY_HI & ~tick))
        lo = min(lo, (t & tick) | (GAP_EMPTY_LO & ~tick))
        mine = np.int64(s == ST_OK)
        hi = (GAP_EMPTY_HI & -mine) | (hi & ~-mine)
        lo = (GAP_EMPTY_LO & -mine) | (lo & ~-mine)
        m += mine
    gap_hi[m] = hi
    gap_lo[m] = lo
    return m


# after an expiry, drain (export the ended flows and free their slots) before going on once
# this many events wait: a flow that ended keeps its slot until it is drained, and the slots
# new flows take meanwhile are more of the table's memory (``_advance``)
DRAIN_ENDED = 4096


@inline_kernel
def _advance(T, ts, idle_ns):
    """A packet's time reaches the table (its own packet or another partition's): K_TIMEJUMP
    when it is earlier than the clock by more than the idle timeout (a capture spliced from
    another time: it cannot continue these flows), else the clock moves on and expiry runs
    if a deadline passed (K_EVENTS when Python must drain first: the event list is full, or
    the expiry left DRAIN_ENDED events or more), else K_DONE. Without the drain, a quiet
    spell's end (every flow of a burst idle at once: a ring buffer's next file, a capture
    resumed) left tens of thousands of ended flows holding their slots while the next
    packets' flows took fresh ones: a ten-times-repeated capture's tables touched 36,000 slots
    for 28,000 live flows at most, 13 MB more than the original's."""
    st = T.st
    if ts < st[S_CLOCK] - idle_ns:
        return K_TIMEJUMP
    if ts > st[S_CLOCK]:
        st[S_CLOCK] = ts
    if st[S_CLOCK] >= st[S_DEADLINE]:
        if expire(T, st[S_CLOCK]) != K_DONE or st[S_NEV] >= DRAIN_ENDED:
            return K_EVENTS
    return K_DONE


@counted_free_kernel
def _step_over(T, nxt, i, o, gap_hi, gap_lo, status, ts_ns):
    """``process`` over packets ``nxt..i-1``, none of them this table's: the clock and expiry
    move as those packets' timestamps say. In one step when the gap before own packet ``o``
    holds no time jump and no deadline (``own_packets``' bounds say so; a call resumed within
    the gap has the clock past what it stepped over, and a lower bound only makes the test
    stricter); else packet by packet. Returns (K_DONE, i), or (status, the packet to resume
    at). Apart from ``process``'s loop: there, it slowed every packet (the registers it took)."""
    st = T.st
    idle_ns = T.prm[P_IDLE_NS]
    top = max(st[S_CLOCK], gap_hi[o])
    if gap_lo[o] >= top - idle_ns and top < st[S_DEADLINE]:
        st[S_CLOCK] = top
        return K_DONE, i
    for t in range(nxt, i):
        if status[t] != ST_TICK:
            continue
        code = _advance(T, ts_ns[t], idle_ns)
        if code != K_DONE:
            return code, t
    return K_DONE, i


@inline_kernel
def _hash_of(q, hashes, hk0, hk1, fam, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport):
    """Packet ``q``'s flow hash: given (``hashes`` not empty: made as the batch was
    partitioned, under this table's key), else computed."""
    if hashes.shape[0] > 0:
        return hashes[q]
    return packet_hash(hk0, hk1, fam[q], proto[q], src_hi[q], src_lo[q], dst_hi[q], dst_lo[q],
                       sport[q], dport[q])


@counted_free_kernel
def process(
    T, start, n, own, n_own, gap_hi, gap_lo, hashes, ts_ns, status, pflags, fam, proto, src_hi,
    src_lo, dst_hi, dst_lo, sport, dport, tcp_flags, ip_len, payload_len, pay_off, pay_cap, seq,
    vlan, tunnel, buf,
):
    """Feed packets ``start..n-1`` of a batch into the table: the ST_OK ones, ``own[:n_own]``
    (``own_packets``); ST_TICK packets, the packets of other partitions in a parallel run,
    only advance the clock and expiry, exactly as they would in one table. ``hashes``, when not
    empty: each packet's flow hash under this table's key (made as the batch was partitioned),
    not computed again.

    Returns (status, i): K_DONE with i == n, or K_GROW / K_EVENTS with i the packet to resume at
    once Python has made room (grown or evicted) or drained the events.
    """
    st = T.st
    fi = T.fi
    ff = T.ff
    max_flows = T.prm[P_MAX_FLOWS]
    idle_ns = T.prm[P_IDLE_NS]
    nsplt = T.splt_ps.shape[1]
    hlen = T.head.shape[2]
    slen = T.slab.shape[2]
    tcap = T.tr_len.shape[1]
    mask = T.ix.shape[0] - 1
    hk0 = T.hkey[0]
    hk1 = T.hkey[1]
    tmos = timeouts(T.prm)
    # the first own packet at or after ``start`` (a resumed call starts anywhere)
    o_lo = 0
    o_hi = n_own
    while o_lo < o_hi:
        o_mid = (o_lo + o_hi) >> 1
        if own[o_mid] < start:
            o_lo = o_mid + 1
        else:
            o_hi = o_mid
    # look-ahead (software pipelining of the lookups, which miss the cache on large tables):
    # the hash of own packet o+AHEAD_CELL is computed and its index cell prefetched; by own
    # packet o+AHEAD_ROW that cell is in cache and the key and flow row it points at are
    # prefetched
    hr = T.ahead
    for oj in range(o_lo, min(o_lo + AHEAD_CELL, n_own)):
        hr[oj & (AHEAD_RING - 1)] = _hash_of(own[oj], hashes, hk0, hk1, fam, proto, src_hi,
                                             src_lo, dst_hi, dst_lo, sport, dport)
    nxt = start  # the first packet not yet handled
    for o in range(o_lo, n_own + 1):
        i = own[o] if o < n_own else n
        if nxt < i:  # other partitions' packets (and packets that are not IP) before this one
            code, t = _step_over(T, nxt, i, o, gap_hi, gap_lo, status, ts_ns)
            if code != K_DONE:
                return code, t
        if o == n_own:
            break
        nxt = i + 1
        oj = o + AHEAD_CELL
        if oj < n_own:
            hj = _hash_of(own[oj], hashes, hk0, hk1, fam, proto, src_hi, src_lo, dst_hi,
                          dst_lo, sport, dport)
            hr[oj & (AHEAD_RING - 1)] = hj
            prefetch(T.ix, np.int64(hj & np.uint64(mask)))
        oj = o + AHEAD_ROW
        if oj < n_own:
            e = T.ix[np.int64(hr[oj & (AHEAD_RING - 1)] & np.uint64(mask))]
            if e != 0:
                c = (e & 0xFFFFFFFF) - 1
                prefetch2(T.key, c, 0)
                # the flow's two lines and each direction's first two (a packet reads both
                # directions' counts, and its own direction's means and sequence state: 2-3%
                # faster than the first line of each alone; all eight lines measured 3% slower
                # than four: the fill buffers run out)
                prefetch2(fi, c, 0)
                prefetch2(fi, c, 8)
                prefetch2(fi, c, FI_DIR0)
                prefetch2(fi, c, FI_DIR0 + 8)
                prefetch2(fi, c, FI_DIR0 + FI_DSTRIDE)
                prefetch2(fi, c, FI_DIR0 + FI_DSTRIDE + 8)
                prefetch2(T.splt_ps, c, 0)
                prefetch2(T.splt_t, c, 0)
        ts = ts_ns[i]
        code = _advance(T, ts, idle_ns)
        if code != K_DONE:
            return code, i
        if st[S_NEV] + 2 > T.ev_slot.shape[0]:  # room for this packet's end and prompt events
            return K_EVENTS, i
        f = fam[i]
        p = proto[i]
        sp = sport[i]
        dp = dport[i]
        from_a, a_hi, a_lo, b_hi, b_lo, pa, pb = _canon(src_hi[i], src_lo[i], dst_hi[i],
                                                        dst_lo[i], sp, dp)
        h = hr[o & (AHEAD_RING - 1)]
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
            idle = st[S_CLOCK] - fi[s, FI_LAST_TS] >= timeout_ns(tmos, li)
            if idle or ((fi[s, FI_STATE] & FS_CLOSING) and new_syn):
                if st[S_NEV] >= T.ev_slot.shape[0]:
                    return K_EVENTS, i
                if idle:
                    end_flow(T, s, end_reason(fi, s, li))
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
            ff[s, FF_BI_MEAN_PIAT], ff[s, FF_BI_M2_PIAT] = _welford(
                ff[s, FF_BI_MEAN_PIAT], ff[s, FF_BI_M2_PIAT], piat / 1e6, bk - 1)
        ff[s, FF_BI_MEAN_PS], ff[s, FF_BI_M2_PS] = _welford(
            ff[s, FF_BI_MEAN_PS], ff[s, FF_BI_M2_PS], xs, bk)
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
            ff[s, fb + DF_MEAN_PIAT], ff[s, fb + DF_M2_PIAT] = _welford(
                ff[s, fb + DF_MEAN_PIAT], ff[s, fb + DF_M2_PIAT], piat / 1e6, k - 1)
        ff[s, fb + DF_MEAN_PS], ff[s, fb + DF_M2_PS] = _welford(
            ff[s, fb + DF_MEAN_PS], ff[s, fb + DF_M2_PS], xs, k)
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
                m = _rule_matches(T.wr_prefix, T.wr_len, T.wr_first, T.wr_port, T.wr_prompt,
                                  T.wr_names, T.pn_len, T.pn_hash, T.pn_weights, T.pn_bits,
                                  buf, po, cap, sp, dp, d == 0)
                if m & 1:
                    w = lease_watch(T, s)  # a call, but only for the flows that match
                if m & 2:
                    state |= FS_PROMPT
            if first_payload and d == 1 and (state & FS_PROMPT):
                state &= ~FS_PROMPT  # the reply: show the flow now (room was made above)
                T.ev_slot[st[S_NEV]] = s
                T.ev_kind[st[S_NEV]] = EV_PROMPT
                st[S_NEV] += 1
            rel = np.int64(-1)
            if p == 6:
                sq = np.int64(seq[i])
                if flags & TH_SYN:  # TCP Fast Open: the data follows the SYN's sequence number
                    sq = (sq + 1) & 0xFFFFFFFF
                if fi[s, b + D_ISN] < 0:
                    fi[s, b + D_ISN] = sq
                rel = (sq - fi[s, b + D_ISN]) & 0xFFFFFFFF
                if rel >= 0x80000000:
                    # it starts before the direction's first byte: counted by the same rule as
                    # any segment, but never placed in the head
                    e = rel - 0x100000000 + pl
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
                if rel < hlen:  # the call passes arrays: only when there is a byte to place
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
            list_unlink(T.lprev, T.lnext, T.lhead, T.ltail, cur, s)
            list_append(T.lprev, T.lnext, T.lhead, T.ltail, target, s)
            fi[s, FI_LIST] = target
            fi[s, FI_ENQ_TS] = ts
            dl = ts + timeout_ns(tmos, target)
            if dl < st[S_DEADLINE]:
                st[S_DEADLINE] = dl
        if not (state & FS_DIRTY):
            fi[s, FI_STATE] = state | FS_DIRTY
            T.dirty_list[st[S_NDIRTY]] = s
            st[S_NDIRTY] += 1
    return K_DONE, n
