"""Walking a TPACKET_V3 receive ring in numba, into the record columns the decoder reads.

The ring is ``n_blocks`` blocks of ``block_size`` bytes (one memory map shared with the kernel).
A block belongs to user space while its ``block_status`` has TP_STATUS_USER; it holds
``num_pkts`` frames chained by ``tp_next_offset``. Layouts (linux/if_packet.h, host byte order):

* ``tpacket_block_desc``: version u32 @0, offset_to_priv u32 @4, then ``tpacket_hdr_v1``:
  block_status u32 @8, num_pkts u32 @12, offset_to_first_pkt u32 @16, blk_len u32 @20, ...
* ``tpacket3_hdr`` (48 bytes): tp_next_offset u32 @0, tp_sec @4, tp_nsec @8, tp_snaplen @12,
  tp_len @16, tp_status @20, tp_mac u16 @24, tp_net u16 @26, tp_rxhash @28, tp_vlan_tci u32 @32,
  tp_vlan_tpid u16 @36; then ``sockaddr_ll`` at 48 (sll_hatype u16 @56).

The kernel strips the outermost 802.1Q tag into ``tp_vlan_tci`` (TP_STATUS_VLAN_VALID): the
walker hands it on so the decoded packet gets its VLAN id back (``restore_vlan``).
"""

from __future__ import annotations

import numpy as np

from flowsense.capture.kernels import rd16, rd32
from flowsense.jit import kernel

TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TPACKET3_HDRLEN = 48
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101


@kernel
def _u32(buf, p):
    return rd32(buf, p, False)


@kernel
def _u16(buf, p):
    return rd16(buf, p, False)


@kernel
def walk_ring(
    ring, block_size, n_blocks, first_block, max_n,
    data_off, caplen, wirelen, ts_ns, lt, rec_off, vlan_tci,
):
    """Walk the user-owned blocks from ``first_block`` on (cyclically), whole blocks only.

    ring: uint8[n_blocks * block_size], the mapped ring. A block is taken only if all its frames
    fit in the ``max_n - n`` record slots left (the caller sizes ``max_n`` for a full block).
    Outputs: record columns (``schema.RECORD_COLUMNS``; ``data_off``/``rec_off`` index ``ring``)
    and ``vlan_tci`` uint16 (the stripped tag's id + 0x8000 when one was stripped, else 0).
    Frames whose header or data would leave their block are skipped (never read).
    Returns (n records, blocks walked, frames skipped).
    """
    n = 0
    walked = 0
    bad = 0
    while walked < n_blocks:
        b = (first_block + walked) % n_blocks
        base = np.int64(b) * block_size
        limit = base + block_size
        if (_u32(ring, base + 8) & TP_STATUS_USER) == 0:
            break
        npk = _u32(ring, base + 12)
        if n + npk > max_n:
            break
        p = base + _u32(ring, base + 16)
        for _ in range(npk):
            if p < base or p + TPACKET3_HDRLEN + 20 > limit:
                bad += 1
                break
            nxt = _u32(ring, p)
            snap = _u32(ring, p + 12)
            mac = _u16(ring, p + 24)
            if p + mac + snap > limit or mac < TPACKET3_HDRLEN:
                bad += 1
            else:
                status = _u32(ring, p + 20)
                hatype = _u16(ring, p + 56)
                wl = _u32(ring, p + 16)
                tag = np.int64(0)
                if status & TP_STATUS_VLAN_VALID:
                    tag = 0x8000 | (_u32(ring, p + 32) & 0x0FFF)
                    wl += 4
                data_off[n] = p + mac
                caplen[n] = snap
                wirelen[n] = wl if wl >= snap else snap
                ts_ns[n] = _u32(ring, p + 4) * 1000000000 + _u32(ring, p + 8)
                if hatype == ARPHRD_ETHER or hatype == ARPHRD_LOOPBACK:
                    lt[n] = LINKTYPE_ETHERNET
                else:  # tun, PPP, raw IP devices hand up the IP packet itself
                    lt[n] = LINKTYPE_RAW
                rec_off[n] = p
                vlan_tci[n] = tag
                n += 1
            if nxt == 0:
                break
            p += nxt
        walked += 1
    return n, walked, bad


@kernel
def release_blocks(ring, block_size, n_blocks, first_block, count):
    """Hand ``count`` blocks from ``first_block`` on back to the kernel (TP_STATUS_KERNEL)."""
    for k in range(count):
        base = np.int64((first_block + k) % n_blocks) * block_size
        for j in range(4):
            ring[base + 8 + j] = 0


@kernel
def restore_vlan(vlan, vlan_tci, n):
    """The tag the kernel stripped was the outermost: its id replaces what decoding found."""
    for i in range(n):
        if vlan_tci[i] & 0x8000:
            vlan[i] = vlan_tci[i] & 0x0FFF
