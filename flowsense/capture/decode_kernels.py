"""Header decoding in numba: link layer, encapsulations, IPv4/IPv6, TCP/UDP/ICMP.

``decode_batch`` turns record columns into packet columns (``schema.PACKET_COLUMNS``).
Tunnels (VXLAN, GENEVE, GRE incl. ERSPAN and transparent Ethernet bridging, IP-in-IP,
IPv6-in-IPv4) are removed and the innermost IP packet is the one the flow table sees.
A bounded, direct-mapped fragment table gives non-first IPv4/IPv6 fragments the ports of their
first fragment. Every read is preceded by a check against the frame's captured end.
"""

from __future__ import annotations

import numpy as np

from flowsense.capture.kernels import W_FULL, walk_pcap
from flowsense.jit import kernel
from flowsense.schema import (
    PF_FIRST_FRAGMENT,
    PF_FRAG_ORPHAN,
    PF_FRAGMENT,
    PF_TRUNC_L4,
    ST_BAD_IP,
    ST_BAD_LINK,
    ST_NOT_IP,
    ST_OK,
    ST_TOO_DEEP,
    ST_TRUNCATED,
    TUN_ERSPAN,
    TUN_GENEVE,
    TUN_GRE,
    TUN_IPIP,
    TUN_NONE,
    TUN_VXLAN,
)

# what the next header at ``off`` is
_K_ETH = 0  # an Ethernet header
_K_ETYPE = 1  # the payload of a known ethertype (in ``etype``)
_K_DONE = 2

VXLAN_PORT = 4789
GENEVE_PORT = 6081


@kernel
def be16(buf, p):
    return (np.int64(buf[p]) << 8) | np.int64(buf[p + 1])


@kernel
def be32(buf, p):
    return (
        (np.int64(buf[p]) << 24)
        | (np.int64(buf[p + 1]) << 16)
        | (np.int64(buf[p + 2]) << 8)
        | np.int64(buf[p + 3])
    )


@kernel
def be64(buf, p):
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[p + k])
    return v


@kernel
def icmp_counterpart(fam, t):
    """Community ID's ICMP pairing: the type answering ``t``, or -1 for one-way types."""
    if fam == 4:
        if t == 8:
            return 0
        if t == 0:
            return 8
        if t == 13:
            return 14
        if t == 14:
            return 13
        if t == 15:
            return 16
        if t == 16:
            return 15
        if t == 10:
            return 9
        if t == 9:
            return 10
        if t == 17:
            return 18
        if t == 18:
            return 17
        return -1
    if t == 128:
        return 129
    if t == 129:
        return 128
    if t == 133:
        return 134
    if t == 134:
        return 133
    if t == 135:
        return 136
    if t == 136:
        return 135
    if t == 130:
        return 131
    if t == 131:
        return 130
    if t == 139:
        return 140
    if t == 140:
        return 139
    if t == 144:
        return 145
    if t == 145:
        return 144
    return -1


@kernel
def _frag_slot(src_hi, src_lo, dst_hi, dst_lo, ipid, proto, mask):
    h = src_lo * np.uint64(0x9E3779B97F4A7C15)
    h ^= dst_lo + np.uint64(0x632BE59BD9B4E019) + (h << np.uint64(6)) + (h >> np.uint64(2))
    h ^= src_hi * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= dst_hi * np.uint64(0x165667B19E3779F9)
    h ^= np.uint64(ipid) * np.uint64(0xFF51AFD7ED558CCD) + np.uint64(proto)
    h ^= h >> np.uint64(33)
    return np.int64(h & np.uint64(mask))


@kernel
def decode_batch(
    buf, n, data_off, caplen, wirelen, ts_in, lt, rec_in,
    ts_ns, status, pflags, fam, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport,
    tcp_flags, ip_len, payload_len, pay_off, pay_cap, seq, vlan, tunnel, rec_off, wlen,
    fr_src_hi, fr_src_lo, fr_dst_hi, fr_dst_lo, fr_id, fr_proto, fr_sport, fr_dport, fr_ts,
    frag_timeout_ns, max_depth, counters, at,
):
    """Decode ``n`` frames.

    Inputs: record columns (length >= n) over ``buf`` (uint8).
    Outputs: packet columns, written from index ``at`` on (length >= at + n): the slices are
    taken here, where they cost nothing (in Python, 25 views a call of a thousand records).
    Fragment table: arrays of one power-of-two length; ``fr_ts`` < 0 marks a free slot.
    counters: int64[8]: [0] fragment-table overwrites, [1] orphan fragments.
    """
    ts_ns, status, pflags, fam, proto = ts_ns[at:], status[at:], pflags[at:], fam[at:], proto[at:]
    src_hi, src_lo, dst_hi, dst_lo = src_hi[at:], src_lo[at:], dst_hi[at:], dst_lo[at:]
    sport, dport, tcp_flags, ip_len = sport[at:], dport[at:], tcp_flags[at:], ip_len[at:]
    payload_len, pay_off, pay_cap, seq = payload_len[at:], pay_off[at:], pay_cap[at:], seq[at:]
    vlan, tunnel, rec_off, wlen = vlan[at:], tunnel[at:], rec_off[at:], wlen[at:]
    fmask = fr_ts.shape[0] - 1
    for i in range(n):
        off = data_off[i]
        end = off + np.int64(caplen[i])
        wire_end = off + np.int64(wirelen[i])
        ts = ts_in[i]
        ts_ns[i] = ts
        rec_off[i] = rec_in[i]
        wlen[i] = wirelen[i]
        status[i] = ST_OK
        pflags[i] = 0
        fam[i] = 0
        proto[i] = 0
        src_hi[i] = 0
        src_lo[i] = 0
        dst_hi[i] = 0
        dst_lo[i] = 0
        sport[i] = 0
        dport[i] = 0
        tcp_flags[i] = 0
        ip_len[i] = 0
        payload_len[i] = 0
        pay_off[i] = end
        pay_cap[i] = 0
        seq[i] = 0
        vlan[i] = 0
        tunnel[i] = TUN_NONE

        link = lt[i]
        kind = _K_ETYPE
        etype = np.int64(-1)
        if link == 1:
            kind = _K_ETH
        elif link == 113:  # Linux cooked v1
            if end - off < 16:
                status[i] = ST_TRUNCATED
                continue
            etype = be16(buf, off + 14)
            off += 16
        elif link == 276:  # Linux cooked v2
            if end - off < 20:
                status[i] = ST_TRUNCATED
                continue
            etype = be16(buf, off)
            off += 20
        elif link == 12 or link == 14 or link == 101:  # raw IP
            if end - off < 1:
                status[i] = ST_TRUNCATED
                continue
            v = buf[off] >> 4
            etype = 0x0800 if v == 4 else (0x86DD if v == 6 else -1)
        elif link == 228:
            etype = 0x0800
        elif link == 229:
            etype = 0x86DD
        elif link == 0 or link == 108:  # BSD loopback: family in host (0) or network (108) order
            if end - off < 4:
                status[i] = ST_TRUNCATED
                continue
            if link == 108:
                af = be32(buf, off)
            else:
                af = (
                    np.int64(buf[off])
                    | (np.int64(buf[off + 1]) << 8)
                    | (np.int64(buf[off + 2]) << 16)
                    | (np.int64(buf[off + 3]) << 24)
                )
                if af > 0xFFFF:  # written on a big-endian host
                    af = be32(buf, off)
            off += 4
            if af == 2:
                etype = 0x0800
            elif af == 24 or af == 28 or af == 30:
                etype = 0x86DD
            else:
                etype = -1
        else:
            status[i] = ST_BAD_LINK
            continue

        depth = 0
        st = ST_OK
        while True:
            if depth > max_depth:
                st = ST_TOO_DEEP
                break
            if kind == _K_ETH:
                if end - off < 14:
                    st = ST_TRUNCATED
                    break
                etype = be16(buf, off + 12)
                off += 14
                kind = _K_ETYPE
                continue
            # _K_ETYPE: strip VLAN tags, MPLS labels and PPPoE; stop at IP
            if etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
                if end - off < 4:
                    st = ST_TRUNCATED
                    break
                if vlan[i] == 0:
                    vlan[i] = be16(buf, off) & 0x0FFF
                etype = be16(buf, off + 2)
                off += 4
                depth += 1
                continue
            if etype == 0x8847 or etype == 0x8848:
                bottom = False
                labels = 0
                while not bottom:
                    if end - off < 4 or labels > 8:
                        break
                    bottom = (buf[off + 2] & 1) == 1
                    off += 4
                    labels += 1
                if not bottom:
                    st = ST_TRUNCATED if end - off < 4 else ST_TOO_DEEP
                    break
                if end - off < 1:
                    st = ST_TRUNCATED
                    break
                v = buf[off] >> 4
                if v == 4:
                    etype = 0x0800
                elif v == 6:
                    etype = 0x86DD
                else:
                    st = ST_NOT_IP
                    break
                depth += 1
                continue
            if etype == 0x8864:  # PPPoE session
                if end - off < 8:
                    st = ST_TRUNCATED
                    break
                ppp = be16(buf, off + 6)
                off += 8
                if ppp == 0x0021:
                    etype = 0x0800
                elif ppp == 0x0057:
                    etype = 0x86DD
                else:
                    st = ST_NOT_IP
                    break
                depth += 1
                continue
            if etype != 0x0800 and etype != 0x86DD:
                st = ST_NOT_IP
                break

            # --- an IP header at off (the innermost so far: forget outer L4 fields) ---
            sport[i] = 0
            dport[i] = 0
            seq[i] = 0
            tcp_flags[i] = 0
            pflags[i] = 0
            is_frag = False
            first_frag = False
            ipid = np.int64(0)
            if etype == 0x0800:
                if end - off < 20:
                    st = ST_TRUNCATED
                    break
                if buf[off] >> 4 != 4:
                    st = ST_BAD_IP
                    break
                ihl = np.int64(buf[off] & 15) * 4
                tot = be16(buf, off + 2)
                if tot == 0:  # segmentation offload: the length was never filled in
                    tot = wire_end - off
                # a total length beyond the frame is a short capture, not a bad packet: the
                # size counts from the IP header (as Wireshark and nDPI read it)
                if ihl < 20 or tot < ihl:
                    st = ST_BAD_IP
                    break
                if end - off < ihl:
                    st = ST_TRUNCATED
                    break
                frag = be16(buf, off + 6)
                foff = frag & 0x1FFF
                is_frag = (frag & 0x2000) != 0 or foff != 0
                first_frag = is_frag and foff == 0
                ipid = be16(buf, off + 4)
                p = np.int64(buf[off + 9])
                fam[i] = 4
                src_hi[i] = 0
                dst_hi[i] = 0
                src_lo[i] = np.uint64(be32(buf, off + 12))
                dst_lo[i] = np.uint64(be32(buf, off + 16))
                l4 = off + ihl
                l4len = tot - ihl
                ipl = tot
                nonfirst = is_frag and foff != 0
            else:
                if end - off < 40:
                    st = ST_TRUNCATED
                    break
                if buf[off] >> 4 != 6:
                    st = ST_BAD_IP
                    break
                plen = be16(buf, off + 4)
                if plen == 0:  # jumbogram or offload
                    plen = wire_end - off - 40
                if plen < 0:
                    st = ST_BAD_IP
                    break
                fam[i] = 6
                src_hi[i] = be64(buf, off + 8)
                src_lo[i] = be64(buf, off + 16)
                dst_hi[i] = be64(buf, off + 24)
                dst_lo[i] = be64(buf, off + 32)
                ipl = 40 + plen
                nh = np.int64(buf[off + 6])
                q = off + 40
                pend = off + 40 + plen
                nonfirst = False
                bad = False
                n_ext = 0
                while True:
                    if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140:
                        if end - q < 8 or pend - q < 8:
                            bad = True
                            break
                        nh2 = np.int64(buf[q])
                        q += (np.int64(buf[q + 1]) + 1) * 8
                        nh = nh2
                    elif nh == 51:  # AH
                        if end - q < 8 or pend - q < 8:
                            bad = True
                            break
                        nh2 = np.int64(buf[q])
                        q += (np.int64(buf[q + 1]) + 2) * 4
                        nh = nh2
                    elif nh == 44:  # fragment
                        if end - q < 8 or pend - q < 8:
                            bad = True
                            break
                        nh2 = np.int64(buf[q])
                        fo = be16(buf, q + 2)
                        is_frag = True
                        first_frag = (fo >> 3) == 0
                        nonfirst = not first_frag
                        ipid = be32(buf, q + 4)
                        q += 8
                        nh = nh2
                    else:
                        break
                    n_ext += 1
                    if n_ext > 8:
                        bad = True
                        break
                if bad:
                    st = ST_TRUNCATED if end - q < 8 else ST_BAD_IP
                    if n_ext > 8:
                        st = ST_TOO_DEEP
                    break
                if q > pend:
                    st = ST_BAD_IP
                    break
                p = nh
                l4 = q
                l4len = pend - q
            proto[i] = p
            ip_len[i] = ipl

            if nonfirst:
                # ports from the first fragment, if we saw it in time
                pflags[i] |= PF_FRAGMENT
                s = _frag_slot(src_hi[i], src_lo[i], dst_hi[i], dst_lo[i], ipid, p, fmask)
                if (
                    fr_ts[s] >= 0
                    and fr_id[s] == ipid
                    and fr_proto[s] == p
                    and fr_src_lo[s] == src_lo[i]
                    and fr_dst_lo[s] == dst_lo[i]
                    and fr_src_hi[s] == src_hi[i]
                    and fr_dst_hi[s] == dst_hi[i]
                    and ts - fr_ts[s] <= frag_timeout_ns
                ):
                    sport[i] = fr_sport[s]
                    dport[i] = fr_dport[s]
                else:
                    pflags[i] |= PF_FRAG_ORPHAN
                    counters[1] += 1
                payload_len[i] = l4len
                pay_off[i] = end
                pay_cap[i] = 0
                break

            # --- L4 at l4 ---
            hdr = np.int64(0)
            if p == 6:
                if end - l4 < 20 or l4len < 20:
                    pflags[i] |= PF_TRUNC_L4
                    if l4len < 20 and end - l4 >= 20:
                        st = ST_BAD_IP
                    break
                doff = np.int64(buf[l4 + 12] >> 4) * 4
                if doff < 20 or doff > l4len:
                    st = ST_BAD_IP
                    break
                sport[i] = be16(buf, l4)
                dport[i] = be16(buf, l4 + 2)
                seq[i] = np.uint32(be32(buf, l4 + 4))
                tcp_flags[i] = buf[l4 + 13]
                hdr = doff
            elif p == 17 or p == 136:  # UDP, UDP-Lite
                if end - l4 < 8 or l4len < 8:
                    pflags[i] |= PF_TRUNC_L4
                    if l4len < 8 and end - l4 >= 8:
                        st = ST_BAD_IP
                    break
                sport[i] = be16(buf, l4)
                dport[i] = be16(buf, l4 + 2)
                hdr = 8
            elif (p == 1 and fam[i] == 4) or (p == 58 and fam[i] == 6):
                if end - l4 < 2 or l4len < 4:
                    pflags[i] |= PF_TRUNC_L4
                    break
                t = np.int64(buf[l4])
                cp = icmp_counterpart(fam[i], t)
                sport[i] = t
                dport[i] = cp if cp >= 0 else buf[l4 + 1]
                hdr = 8 if l4len >= 8 else l4len
            payload_len[i] = l4len - hdr
            pay_off[i] = l4 + hdr
            cap = end - (l4 + hdr)
            if cap < 0:
                cap = 0
            if cap > l4len - hdr:
                cap = l4len - hdr
            pay_cap[i] = cap

            if first_frag:
                pflags[i] |= PF_FIRST_FRAGMENT
                s = _frag_slot(src_hi[i], src_lo[i], dst_hi[i], dst_lo[i], ipid, p, fmask)
                if fr_ts[s] >= 0 and ts - fr_ts[s] <= frag_timeout_ns:
                    counters[0] += 1
                fr_src_hi[s] = src_hi[i]
                fr_src_lo[s] = src_lo[i]
                fr_dst_hi[s] = dst_hi[i]
                fr_dst_lo[s] = dst_lo[i]
                fr_id[s] = ipid
                fr_proto[s] = p
                fr_sport[s] = sport[i]
                fr_dport[s] = dport[i]
                fr_ts[s] = ts
                break
            if is_frag:
                break

            # --- tunnels: decapsulate and go round again ---
            cap_pl = pay_cap[i]
            po = pay_off[i]
            if p == 17 and (dport[i] == VXLAN_PORT) and cap_pl >= 8 + 14 and (buf[po] & 0x08):
                tunnel[i] = TUN_VXLAN if tunnel[i] == TUN_NONE else tunnel[i]
                off = po + 8
                end = po + cap_pl
                wire_end = po + np.int64(payload_len[i])
                kind = _K_ETH
                depth += 1
                continue
            if p == 17 and dport[i] == GENEVE_PORT and cap_pl >= 8:
                optlen = np.int64(buf[po] & 0x3F) * 4
                gproto = be16(buf, po + 2)
                known = gproto == 0x6558 or gproto == 0x0800 or gproto == 0x86DD
                if cap_pl >= 8 + optlen and known:
                    tunnel[i] = TUN_GENEVE if tunnel[i] == TUN_NONE else tunnel[i]
                    off = po + 8 + optlen
                    end = po + cap_pl
                    wire_end = po + np.int64(payload_len[i])
                    if gproto == 0x6558:
                        kind = _K_ETH
                    else:
                        kind = _K_ETYPE
                        etype = gproto
                    depth += 1
                    continue
            if p == 4 or p == 41:
                tunnel[i] = TUN_IPIP if tunnel[i] == TUN_NONE else tunnel[i]
                off = l4
                end = l4 + (end - l4 if end - l4 < l4len else l4len)
                wire_end = l4 + l4len
                kind = _K_ETYPE
                etype = 0x0800 if p == 4 else 0x86DD
                depth += 1
                continue
            if p == 47:
                gend = l4 + (end - l4 if end - l4 < l4len else l4len)
                if gend - l4 < 4:
                    break
                gflags = be16(buf, l4)
                gproto = be16(buf, l4 + 2)
                if gflags & 7 != 0:  # version 1 (PPTP) and others: leave as a GRE flow
                    break
                g = l4 + 4
                if gflags & 0x8000:
                    g += 4
                if gflags & 0x2000:
                    g += 4
                if gflags & 0x1000:
                    g += 4
                tk = TUN_GRE
                if gproto == 0x88BE:  # ERSPAN type II: 8-byte header, then Ethernet
                    g += 8
                    tk = TUN_ERSPAN
                    gproto = 0x6558
                elif gproto == 0x22EB:  # ERSPAN type III: 12 bytes (+8 with the O flag)
                    if gend - g < 12:
                        break
                    o_flag = buf[g + 11] & 1
                    g += 12 + (8 if o_flag else 0)
                    tk = TUN_ERSPAN
                    gproto = 0x6558
                if gproto != 0x6558 and gproto != 0x0800 and gproto != 0x86DD:
                    break
                if g > gend:
                    break
                tunnel[i] = tk if tunnel[i] == TUN_NONE else tunnel[i]
                off = g
                end = gend
                wire_end = l4 + l4len
                if gproto == 0x6558:
                    kind = _K_ETH
                else:
                    kind = _K_ETYPE
                    etype = gproto
                depth += 1
                continue
            break
        if st != ST_OK:
            status[i] = st
            if st == ST_NOT_IP or depth == 0:
                fam[i] = 0
            if tunnel[i] != TUN_NONE and st != ST_TOO_DEEP:
                # an encapsulation we could not open: a packet of the outer flow is lost,
                # so report it as undecodable rather than half-decoded
                fam[i] = 0


@kernel
def tally_batch(n, wirelen, status, pflags, orphan_flag, out):
    """A batch's counters in one pass: out[0] += wire bytes, out[1] += fragments with no first
    fragment (``orphan_flag`` in pflags), out[2 + s] += packets of status s (out has room for
    every status a decoder sets; others, as a parallel run's ST_TICK, are not counted there)."""
    top = out.shape[0] - 2
    for i in range(n):
        out[0] += wirelen[i]
        if pflags[i] & orphan_flag:
            out[1] += 1
        s = np.int64(status[i])
        if s < top:
            out[2 + s] += 1


@kernel
def walk_decode_pcap(
    buf, pos, end, stop, swapped, frac_ns, max_caplen, linktype,
    data_off, caplen, wirelen, ts_in, lt, rec_in, step,
    ts_ns, status, pflags, fam, proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport,
    tcp_flags, ip_len, payload_len, pay_off, pay_cap, seq, vlan, tunnel, rec_off, wlen,
    fr_src_hi, fr_src_lo, fr_dst_hi, fr_dst_lo, fr_id, fr_proto, fr_sport, fr_dport, fr_ts,
    frag_timeout_ns, max_depth, counters, room,
):
    """``walk_pcap`` and ``decode_batch`` in turn, ``step`` records at a time (decoding finds
    the frames the walk brought into cache), until ``room`` packets are decoded into the packet
    columns (from index 0) or the walk stops. One call where Python called each kernel every
    ``step`` records: each call took the GIL back, and in a parallel run the worker threads
    waited on each other for it. Returns ``walk_pcap``'s ``(n, pos, status)``, ``n`` the
    packets decoded (W_FULL: ``room`` is full)."""
    total = 0
    st = W_FULL
    while total < room:
        k = min(step, room - total)
        n, pos, st = walk_pcap(buf, pos, end, stop, swapped, frac_ns, max_caplen, linktype,
                               data_off, caplen, wirelen, ts_in, lt, rec_in, k)
        if n:
            decode_batch(
                buf, n, data_off, caplen, wirelen, ts_in, lt, rec_in,
                ts_ns, status, pflags, fam, proto, src_hi, src_lo, dst_hi, dst_lo, sport,
                dport, tcp_flags, ip_len, payload_len, pay_off, pay_cap, seq, vlan, tunnel,
                rec_off, wlen, fr_src_hi, fr_src_lo, fr_dst_hi, fr_dst_lo, fr_id, fr_proto,
                fr_sport, fr_dport, fr_ts, frag_timeout_ns, max_depth, counters, total,
            )
            total += n
        if st != W_FULL:
            break
    return total, pos, st
