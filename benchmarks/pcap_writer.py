"""Vectorised encoding of a packet table into a classic pcap file.

Each chunk of packets becomes one numpy byte buffer: record offsets come from a cumulative sum of
record lengths, and every header field is written for all packets at once with fancy indexing, a
byte at a time. Payload bytes start random (encrypted traffic) and templates overwrite the few
that carry protocol text. Lengths are exact (IPv4 total length and IPv6 payload length, UDP
length, TCP data offset); the IPv4 header checksum is valid, TCP/UDP/ICMP checksums are left zero.
"""

from __future__ import annotations

import struct

import numpy as np

from benchmarks.payloads import TemplateBook
from benchmarks.synth_packets import K_DNS, SYN, Flows, Packets

PCAP_EPOCH_S = 1_764_115_200  # 2025-11-26T00:00:00Z, the capture's first second
GATEWAY_MAC = 0x001B213A4F01  # every client talks to the world through one router
MIN_FRAME = 60  # Ethernet pads shorter frames (FCS not captured)
CHUNK = 262_144
TTL_CLIENT, TTL_SERVER = 64, 52  # the server's replies have crossed a dozen hops


def _put(
    buf: np.ndarray, pos: np.ndarray, value: np.ndarray | int, nbytes: int, little: bool = False
) -> None:
    """Write ``value`` as an unsigned ``nbytes`` integer at each byte offset ``pos``."""
    v = np.asarray(value).astype(np.uint64)
    for k in range(nbytes):
        shift = np.uint64(8 * k if little else 8 * (nbytes - 1 - k))
        buf[pos + k] = ((v >> shift) & np.uint64(0xFF)).astype(np.uint8)


def _ipv4_checksum(words: list[np.ndarray]) -> np.ndarray:
    """RFC 1071 checksum of a header given as its 16-bit words (checksum field excluded)."""
    s = np.sum(words, axis=0, dtype=np.int64)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def write_pcap(
    path: str,
    fl: Flows,
    pk: Packets,
    order: np.ndarray,
    book: TemplateBook,
    rng: np.random.Generator,
) -> int:
    """Write ``pk[order]`` to ``path`` (little-endian, microseconds, Ethernet); return its size."""
    with open(path, "wb") as fh:
        header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65_535, 1)
        fh.write(header)
        written = len(header)
        for a in range(0, len(order), CHUNK):
            buf = _encode(fl, pk, order[a : a + CHUNK], book, rng)
            buf.tofile(fh)
            written += len(buf)
    return written


def frame_lengths(fl: Flows, pk: Packets) -> tuple[np.ndarray, np.ndarray]:
    """(IP total length, captured frame length after padding) of every packet."""
    f = pk.flow
    tcp, v6 = fl.proto[f] == 6, fl.v6[f]
    syn = tcp & ((pk.flags & SYN) != 0)
    ip_len = np.where(v6, 40, 20) + np.where(tcp, 20 + 4 * syn, 8) + pk.plen
    frame = 14 + 4 * (fl.vlan[f] > 0) + ip_len
    return ip_len, np.maximum(frame, MIN_FRAME)


def _encode(
    fl: Flows, pk: Packets, idx: np.ndarray, book: TemplateBook, rng: np.random.Generator
) -> np.ndarray:
    """One chunk of records, as bytes."""
    f = pk.flow[idx]
    v6, vlan, proto = fl.v6[f], fl.vlan[f].astype(np.int64), fl.proto[f].astype(np.int64)
    tcp, udp = proto == 6, proto == 17
    icmp = ~(tcp | udp)
    fc = pk.from_client[idx]
    flags, plen = pk.flags[idx].astype(np.int64), pk.plen[idx]
    syn = tcp & ((flags & SYN) != 0)

    eth_len = 14 + 4 * (vlan > 0)
    l3_len = np.where(v6, 40, 20)
    l4_len = np.where(tcp, 20 + 4 * syn, 8)  # SYNs carry an MSS option
    ip_len = l3_len + l4_len + plen
    frame = eth_len + ip_len
    caplen = np.maximum(frame, MIN_FRAME)
    rec = 16 + caplen
    off = np.cumsum(rec) - rec
    buf = np.frombuffer(rng.bytes(int(rec.sum())), np.uint8).copy()

    # Record header; padding is zeros on the wire.
    ts = pk.ts_us[idx]
    _put(buf, off, PCAP_EPOCH_S + ts // 1_000_000, 4, little=True)
    _put(buf, off + 4, ts % 1_000_000, 4, little=True)
    _put(buf, off + 8, caplen, 4, little=True)
    _put(buf, off + 12, caplen, 4, little=True)
    pad = caplen - frame
    for k in range(int(pad.max(initial=0))):
        m = pad > k
        buf[off[m] + 16 + frame[m] + k] = 0

    # Ethernet, with an 802.1Q tag for hosts on a VLAN.
    e = off + 16
    mac = fl.cli_mac[f]
    _put(buf, e, np.where(fc, GATEWAY_MAC, mac), 6)
    _put(buf, e + 6, np.where(fc, mac, GATEWAY_MAC), 6)
    t = vlan > 0
    _put(buf, e[t] + 12, 0x8100, 2)
    _put(buf, e[t] + 14, vlan[t], 2)
    _put(buf, e + eth_len - 2, np.where(v6, 0x86DD, 0x0800), 2)

    # IP.
    l3 = e + eth_len
    ca, sa = fl.cli_addr[f], fl.srv_addr[f]
    src, dst = np.where(fc[:, None], ca, sa), np.where(fc[:, None], sa, ca)
    ttl = np.where(fc, TTL_CLIENT, TTL_SERVER)
    m4, m6 = ~v6, v6
    p4 = l3[m4]
    s4, d4 = src[m4, 1].astype(np.int64), dst[m4, 1].astype(np.int64)
    ip_id = rng.integers(0, 65_536, int(m4.sum()))
    ttl_proto = (ttl[m4] << 8) | proto[m4]
    words = [
        np.full(len(p4), 0x4500),
        ip_len[m4],
        ip_id,
        np.full(len(p4), 0x4000),
        ttl_proto,
        s4 >> 16,
        s4 & 0xFFFF,
        d4 >> 16,
        d4 & 0xFFFF,
    ]
    for k, w in enumerate(words[:5]):
        _put(buf, p4 + 2 * k, w, 2)
    _put(buf, p4 + 10, _ipv4_checksum(words), 2)
    _put(buf, p4 + 12, s4, 4)
    _put(buf, p4 + 16, d4, 4)
    p6 = l3[m6]
    _put(buf, p6, 0x60000000, 4)
    _put(buf, p6 + 4, ip_len[m6] - 40, 2)
    buf[p6 + 6] = proto[m6]
    buf[p6 + 7] = ttl[m6]
    for k, col in enumerate((src[m6, 0], src[m6, 1], dst[m6, 0], dst[m6, 1])):
        _put(buf, p6 + 8 + 8 * k, col, 8)

    # Transport.
    l4 = l3 + l3_len
    sport = np.where(fc, fl.cli_port[f], fl.srv_port[f])
    dport = np.where(fc, fl.srv_port[f], fl.cli_port[f])
    seq, ack = pk.seq[idx], pk.ack[idx]
    pt = l4[tcp]
    _put(buf, pt, sport[tcp], 2)
    _put(buf, pt + 2, dport[tcp], 2)
    _put(buf, pt + 4, seq[tcp], 4)
    _put(buf, pt + 8, ack[tcp], 4)
    _put(buf, pt + 12, ((l4_len[tcp] // 4) << 12) | flags[tcp], 2)
    _put(buf, pt + 14, np.where(fc[tcp], 64_240, 65_160), 2)
    _put(buf, pt + 16, 0, 4)  # checksum, urgent pointer
    ps = l4[syn]
    _put(buf, ps + 20, (0x0204 << 16) | np.where(v6[syn], 1440, 1460), 4)
    pu = l4[udp]
    _put(buf, pu, sport[udp], 2)
    _put(buf, pu + 2, dport[udp], 2)
    _put(buf, pu + 4, 8 + plen[udp], 2)
    _put(buf, pu + 6, 0, 2)
    pi = l4[icmp]
    buf[pi] = flags[icmp]  # the ICMP type
    _put(buf, pi + 1, 0, 3)  # code, checksum
    _put(buf, pi + 4, fl.cli_port[f][icmp], 2)  # echo identifier
    _put(buf, pi + 6, seq[icmp], 2)

    # Payload templates, then each DNS flow's transaction id over the template's zero.
    pay = l4 + l4_len
    tm = pk.tmpl[idx]
    for tid in np.unique(tm[tm >= 0]):
        sel = tm == tid
        data = np.frombuffer(book.templates[tid], np.uint8)
        if np.any(plen[sel] < len(data)):
            raise AssertionError(f"template {tid} longer than its packets' payload")
        buf[pay[sel][:, None] + np.arange(len(data))] = data
    dns = fl.kind[f] == K_DNS
    _put(buf, pay[dns], fl.isn_c[f][dns] & 0xFFFF, 2)
    return buf
