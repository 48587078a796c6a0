"""Regenerate the capture-format fixtures in tests/data/formats/ and their expected.json.

    python tests/make_format_captures.py [--corpus DIR] [--live]

Three kinds of fixture (README.md in the output folder says which file is which):

* tool-made: Debian's editcap, mergecap, tcpdump and gzip applied to corpus captures (the corpus is
  read only here, never by the tests);
* hand-made: what those tools cannot make (big-endian files, SLL2, QinQ, MPLS, tunnels, fragments,
  pcapng block and option variants), written byte by byte below with ``struct``;
* live (only with ``--live``, needs root): tcpdump on the loopback interface while this script talks
  to 127.0.0.1 / ::1. Those files are committed and, without ``--live``, reused as they are.

Everything but the live captures is deterministic: two runs give the same bytes.

Expected values are derived independently of flowsense: each fixture is dissected by tshark
(``-T fields``, no reassembly) and grouped into bidirectional flows by the small reference below;
for hand-made fixtures the result must also equal what the construction says it should be.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere: the repository's packages
from pcaps.gen.netlab import csum  # noqa: E402  (RFC 1071; one implementation for both builders)

OUT = HERE / "data" / "formats"
DEFAULT_CORPUS = HERE.parents[1] / "shared" / "corpus"

HASSH_SRC = "suricata-verify/ssh-hassh__input.pcap"
CURVE_SRC = "zeek/ssh_kex_curve25519.pcap"
VXLAN_SRC = "suricata-verify/vxlan-decoder-03__vxlan.pcap"
LICENCES = {
    "suricata-verify": "OISF/suricata-verify, MIT (LICENSE.txt), snapshot 10a45e4bad6d",
    "zeek": "zeek/zeek, BSD-3-Clause (COPYING), snapshot a13de64fbbdb",
    "ndpi": "ntop/nDPI, LGPL-3.0 (COPYING), snapshot 3b1286ab03b0",
}

# =============================================================================================
# Packet building (struct only: every byte is explicit)
# =============================================================================================


def ip4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def ip6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: str,
    payload: bytes = b"",
    options: bytes = b"",
) -> bytes:
    """A TCP segment (checksummed against src/dst); flags from 'FSRPAU'."""
    bits = sum(1 << "FSRPAU".index(c) for c in flags)
    options += b"\0" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, bits, 64240, 0, 0) + options
    seg = hdr + payload
    c = csum(_pseudo(src, dst, 6, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = csum(_pseudo(src, dst, 17, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def icmp4(typ: int, code: int, ident: int, seq: int, payload: bytes) -> bytes:
    msg = struct.pack("!BBHHH", typ, code, 0, ident, seq) + payload
    return msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]


def icmp6(
    src: bytes, dst: bytes, typ: int, code: int, ident: int, seq: int, payload: bytes
) -> bytes:
    msg = struct.pack("!BBHHH", typ, code, 0, ident, seq) + payload
    c = csum(_pseudo(src, dst, 58, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", c) + msg[4:]


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    ident: int = 1,
    mf: bool = False,
    frag_off: int = 0,
    options: bytes = b"",
    total_len: int | None = None,
) -> bytes:
    """An IPv4 header and payload; frag_off in bytes (multiple of 8)."""
    options += b"\0" * (-len(options) % 4)
    ihl = 5 + len(options) // 4
    length = total_len if total_len is not None else ihl * 4 + len(payload)
    ff = (0x2000 if mf else 0) | (frag_off // 8)
    if not mf and frag_off == 0 and proto in (6, 17):
        ff |= 0x4000  # DF, as real stacks send
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length, ident, ff, 64, proto, 0, src, dst)
    hdr += options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: bytes, dst: bytes, nxt: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nxt, 64, src, dst) + payload


def ext6(nxt: int, body: bytes = b"") -> bytes:
    """A hop-by-hop or destination options header padded with PadN to a multiple of 8."""
    raw = struct.pack("!BB", nxt, 0) + body
    pad = -len(raw) % 8
    if pad == 1:
        raw += b"\0"  # Pad1
    elif pad:
        raw += bytes([1, pad - 2]) + b"\0" * (pad - 2)
    return bytes([nxt, len(raw) // 8 - 1]) + raw[2:]


def frag6(nxt: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nxt, 0, (offset // 8) << 3 | int(more), ident)


MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def eth(
    payload: bytes,
    ethertype: int,
    src: bytes = MAC_A,
    dst: bytes = MAC_B,
    tags: Sequence[tuple[int, int]] = (),
) -> bytes:
    """Ethernet II; tags is a list of (TPID, VID) outermost first."""
    out = dst + src
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", ethertype) + payload


def ethertype_of(ip: bytes) -> int:
    return 0x0800 if ip[0] >> 4 == 4 else 0x86DD


ARP_REQUEST = (
    bytes.fromhex("0001080006040001") + MAC_A + ip4("10.0.0.1") + b"\0" * 6 + ip4("10.0.0.2")
)

# =============================================================================================
# The "mini" traffic: six flows, IPv4 and IPv6, TCP/UDP/ICMP, no FIN/RST (no close semantics)
# =============================================================================================

BASE_S = 1_700_000_000
STEP_NS = 15_625_000  # 15.625 ms: exact in us, ns, 2^-10 s and 2^-20 s units


@dataclass
class Pkt:
    ts_ns: int
    ip: bytes  # the (innermost) IP packet
    c2s: bool  # sent by the client
    flow: str  # flow name in the construction spec


@dataclass
class FlowSpec:
    src_ip: str
    src_port: int | None
    dst_ip: str
    dst_port: int | None
    protocol: int
    src2dst_packets: int | None = 0  # None: no direction (a host talking ICMP to itself)
    dst2src_packets: int | None = 0
    first_ns: int | None = None
    last_ns: int | None = None
    bidirectional_packets: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "src_ip": self.src_ip,
            "src_port": self.src_port,
            "dst_ip": self.dst_ip,
            "dst_port": self.dst_port,
            "protocol": self.protocol,
            "bidirectional_packets": self.bidirectional_packets,
            "src2dst_packets": self.src2dst_packets,
            "dst2src_packets": self.dst2src_packets,
            "first_seen_ns": self.first_ns,
            "last_seen_ns": self.last_ns,
        }


def mini(net: int, base_ns: int, v4: bool = True, v6: bool = True) -> list[Pkt]:
    """Six flows on 10.<net>.0.0/24 and 2001:db8:<net>::/64, one packet every STEP_NS."""
    a4, b4, d4 = ip4(f"10.{net}.0.1"), ip4(f"10.{net}.0.2"), ip4(f"10.{net}.0.53")
    a6, b6, d6 = ip6(f"2001:db8:{net}::1"), ip6(f"2001:db8:{net}::2"), ip6(f"2001:db8:{net}::53")
    seq: list[tuple[bytes, bool, str]] = []
    if v4:
        c, s = 1000, 5000
        seq += [
            (ipv4(a4, b4, 6, tcp(a4, b4, 40001, 22, c, 0, "S"), 101), True, "tcp4"),
            (ipv4(b4, a4, 6, tcp(b4, a4, 22, 40001, s, c + 1, "SA"), 201), False, "tcp4"),
            (ipv4(a4, b4, 6, tcp(a4, b4, 40001, 22, c + 1, s + 1, "A"), 102), True, "tcp4"),
            (
                ipv4(
                    a4, b4, 6, tcp(a4, b4, 40001, 22, c + 1, s + 1, "PA", b"SSH-2.0-mini\r\n"), 103
                ),
                True,
                "tcp4",
            ),
            (
                ipv4(
                    b4, a4, 6, tcp(b4, a4, 22, 40001, s + 1, c + 15, "PA", b"SSH-2.0-srv\r\n"), 202
                ),
                False,
                "tcp4",
            ),
            (ipv4(a4, b4, 6, tcp(a4, b4, 40001, 22, c + 15, s + 14, "A"), 104), True, "tcp4"),
            (
                ipv4(a4, d4, 17, udp(a4, d4, 53001, 53, b"\x12\x34\x01\x00" + b"\0" * 8), 105),
                True,
                "udp4",
            ),
            (
                ipv4(d4, a4, 17, udp(d4, a4, 53, 53001, b"\x12\x34\x81\x80" + b"\0" * 8), 301),
                False,
                "udp4",
            ),
            (ipv4(a4, b4, 1, icmp4(8, 0, 7, 1, b"ping" * 8), 106), True, "icmp4"),
            (ipv4(b4, a4, 1, icmp4(0, 0, 7, 1, b"ping" * 8), 203), False, "icmp4"),
        ]
    if v6:
        c, s = 7000, 9000
        seq += [
            (ipv6(a6, b6, 6, tcp(a6, b6, 40002, 443, c, 0, "S")), True, "tcp6"),
            (ipv6(b6, a6, 6, tcp(b6, a6, 443, 40002, s, c + 1, "SA")), False, "tcp6"),
            (ipv6(a6, b6, 6, tcp(a6, b6, 40002, 443, c + 1, s + 1, "A")), True, "tcp6"),
            (
                ipv6(a6, b6, 6, tcp(a6, b6, 40002, 443, c + 1, s + 1, "PA", b"\x16\x03\x01hello")),
                True,
                "tcp6",
            ),
            (
                ipv6(a6, d6, 17, udp(a6, d6, 53002, 53, b"\x56\x78\x01\x00" + b"\0" * 8)),
                True,
                "udp6",
            ),
            (
                ipv6(d6, a6, 17, udp(d6, a6, 53, 53002, b"\x56\x78\x81\x80" + b"\0" * 8)),
                False,
                "udp6",
            ),
            (ipv6(a6, b6, 58, icmp6(a6, b6, 128, 0, 9, 1, b"ping6" * 4)), True, "icmp6"),
            (ipv6(b6, a6, 58, icmp6(b6, a6, 129, 0, 9, 1, b"ping6" * 4)), False, "icmp6"),
        ]
    return [Pkt(base_ns + i * STEP_NS, ip, c2s, name) for i, (ip, c2s, name) in enumerate(seq)]


def mini_specs(net: int, pkts: Sequence[Pkt]) -> dict[str, FlowSpec]:
    """What the construction says the flows of mini() are."""
    all_specs = {
        "tcp4": FlowSpec(f"10.{net}.0.1", 40001, f"10.{net}.0.2", 22, 6),
        "udp4": FlowSpec(f"10.{net}.0.1", 53001, f"10.{net}.0.53", 53, 17),
        "icmp4": FlowSpec(f"10.{net}.0.1", None, f"10.{net}.0.2", None, 1),
        "tcp6": FlowSpec(f"2001:db8:{net}::1", 40002, f"2001:db8:{net}::2", 443, 6),
        "udp6": FlowSpec(f"2001:db8:{net}::1", 53002, f"2001:db8:{net}::53", 53, 17),
        "icmp6": FlowSpec(f"2001:db8:{net}::1", None, f"2001:db8:{net}::2", None, 58),
    }
    return count_specs(all_specs, pkts)


def count_specs(
    specs: dict[str, FlowSpec], pkts: Iterable[Pkt], ts_known: bool = True
) -> dict[str, FlowSpec]:
    used: dict[str, FlowSpec] = {}
    for p in pkts:
        spec = used.setdefault(p.flow, specs[p.flow])
        assert spec.src2dst_packets is not None and spec.dst2src_packets is not None
        if p.c2s:
            spec.src2dst_packets += 1
        else:
            spec.dst2src_packets += 1
        spec.bidirectional_packets += 1
        if ts_known:
            if spec.first_ns is None:
                spec.first_ns = p.ts_ns
            spec.last_ns = p.ts_ns
    return used


# =============================================================================================
# Container writers
# =============================================================================================

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D


@dataclass
class Rec:
    ts_ns: int
    data: bytes
    wirelen: int
    iface: int = 0


def pcap_bytes(
    recs: Iterable[Rec], linktype: int, endian: str = "<", nano: bool = False, snaplen: int = 262144
) -> bytes:
    """A classic pcap file; endian '<' or '>'."""
    magic = MAGIC_NS if nano else MAGIC_US
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for r in recs:
        sec, frac = divmod(r.ts_ns, 1_000_000_000)
        if not nano:
            assert frac % 1000 == 0, "microsecond pcap cannot hold this timestamp"
            frac //= 1000
        out.append(struct.pack(endian + "IIII", sec, frac, len(r.data), r.wirelen) + r.data)
    return b"".join(out)


def read_pcap(path: Path) -> tuple[list[Rec], int, int]:
    """Records, link type and snaplen of a classic pcap (either byte order, us or ns)."""
    raw = path.read_bytes()
    magic = struct.unpack("<I", raw[:4])[0]
    endian = "<" if magic in (MAGIC_US, MAGIC_NS) else ">"
    magic = struct.unpack(endian + "I", raw[:4])[0]
    nano = magic == MAGIC_NS
    _, _, _, _, _, snaplen, linktype = struct.unpack(endian + "IHHiIII", raw[:24])
    recs, off = [], 24
    while off + 16 <= len(raw):
        sec, frac, caplen, wirelen = struct.unpack(endian + "IIII", raw[off : off + 16])
        data = raw[off + 16 : off + 16 + caplen]
        assert len(data) == caplen, f"{path}: truncated record at {off}"
        recs.append(Rec(sec * 1_000_000_000 + (frac if nano else frac * 1000), data, wirelen))
        off += 16 + caplen
    assert off == len(raw), f"{path}: trailing bytes"
    return recs, linktype, snaplen


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


@dataclass
class Iface:
    linktype: int
    snaplen: int = 0
    tsresol: int | None = None  # the raw if_tsresol byte; None: default 10^-6
    tsoffset: int | None = None  # seconds
    name: str | None = None

    def units_per_s(self) -> int:
        r = 6 if self.tsresol is None else self.tsresol
        return 2 ** (r & 0x7F) if r & 0x80 else 10**r

    def ticks(self, ts_ns: int) -> int:
        rel = ts_ns - (self.tsoffset or 0) * 1_000_000_000
        t = Fraction(rel * self.units_per_s(), 1_000_000_000)
        assert t.denominator == 1, (
            f"timestamp {ts_ns} not exact in units of 1/{self.units_per_s()} s"
        )
        return int(t)


class NgWriter:
    """Blocks of one pcapng section in a chosen byte order."""

    def __init__(self, endian: str = "<") -> None:
        self.e = endian
        self.blocks: list[bytes] = []
        self.ifaces: list[Iface] = []

    def opt(self, code: int, value: bytes) -> bytes:
        return struct.pack(self.e + "HH", code, len(value)) + _pad4(value)

    def opts(self, items: Sequence[bytes]) -> bytes:
        return b"".join(items) + struct.pack(self.e + "HH", 0, 0) if items else b""

    def block(self, btype: int, body: bytes) -> NgWriter:
        body = _pad4(body)
        total = 12 + len(body)
        self.blocks.append(
            struct.pack(self.e + "II", btype, total) + body + struct.pack(self.e + "I", total)
        )
        return self

    def shb(self, options: Sequence[bytes] = ()) -> NgWriter:
        return self.block(
            0x0A0D0D0A, struct.pack(self.e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + self.opts(options)
        )

    def idb(self, iface: Iface, extra: Sequence[bytes] = ()) -> int:
        items = list(extra)
        if iface.name is not None:
            items.append(self.opt(2, iface.name.encode()))
        if iface.tsresol is not None:
            items.append(self.opt(9, bytes([iface.tsresol])))
        if iface.tsoffset is not None:
            items.append(self.opt(14, struct.pack(self.e + "q", iface.tsoffset)))
        self.block(
            1, struct.pack(self.e + "HHI", iface.linktype, 0, iface.snaplen) + self.opts(items)
        )
        self.ifaces.append(iface)
        return len(self.ifaces) - 1

    def epb(self, r: Rec, options: Sequence[bytes] = ()) -> NgWriter:
        t = self.ifaces[r.iface].ticks(r.ts_ns)
        body = struct.pack(
            self.e + "IIIII", r.iface, t >> 32, t & 0xFFFFFFFF, len(r.data), r.wirelen
        )
        return self.block(6, body + _pad4(r.data) + self.opts(options))

    def spb(self, r: Rec) -> NgWriter:
        assert r.iface == 0
        snap = self.ifaces[0].snaplen
        data = r.data[:snap] if snap else r.data
        return self.block(3, struct.pack(self.e + "I", r.wirelen) + data)

    def pb(self, r: Rec, drops: int = 0) -> NgWriter:
        t = self.ifaces[r.iface].ticks(r.ts_ns)
        body = struct.pack(
            self.e + "HHIIII", r.iface, drops, t >> 32, t & 0xFFFFFFFF, len(r.data), r.wirelen
        )
        return self.block(2, body + r.data)

    def bytes(self) -> bytes:
        return b"".join(self.blocks)


def pcapng_bytes(recs: Iterable[Rec], ifaces: Sequence[Iface], endian: str = "<") -> bytes:
    w = NgWriter(endian).shb()
    for i in ifaces:
        w.idb(i)
    for r in recs:
        w.epb(r)
    return w.bytes()


def read_pcapng_le(path: Path) -> tuple[list[Rec], list[Iface]]:
    """Records and interfaces of a little-endian, single-section pcapng made by editcap."""
    raw = path.read_bytes()
    off, recs, ifaces = 0, [], []
    while off < len(raw):
        btype, blen = struct.unpack("<II", raw[off : off + 8])
        body = raw[off + 8 : off + blen - 4]
        if btype == 0x0A0D0D0A:
            assert off == 0, "one section only"
        elif btype == 1:
            linktype, _, snaplen = struct.unpack("<HHI", body[:8])
            iface = Iface(linktype, snaplen)
            o = 8
            while o + 4 <= len(body):
                code, length = struct.unpack("<HH", body[o : o + 4])
                val = body[o + 4 : o + 4 + length]
                if code == 0:
                    break
                if code == 9:
                    iface.tsresol = val[0]
                elif code == 14:
                    iface.tsoffset = struct.unpack("<q", val)[0]
                o += 4 + length + (-length % 4)
            ifaces.append(iface)
        elif btype == 6:
            if_id, hi, lo, caplen, wirelen = struct.unpack("<IIIII", body[:20])
            iface = ifaces[if_id]
            ticks = (hi << 32) | lo
            ns = (
                Fraction(ticks * 1_000_000_000, iface.units_per_s()) + (iface.tsoffset or 0) * 10**9
            )
            assert ns.denominator == 1
            recs.append(Rec(int(ns), body[20 : 20 + caplen], wirelen, if_id))
        else:
            raise AssertionError(f"{path}: unexpected block type {btype:#x}")
        off += blen
    return recs, ifaces


# link-layer framings of an IP packet -----------------------------------------------------------


def frame_eth(p: Pkt) -> bytes:
    return eth(p.ip, ethertype_of(p.ip), *((MAC_A, MAC_B) if p.c2s else (MAC_B, MAC_A)))


def frame_sll(p: Pkt) -> bytes:
    """Linux cooked v1 (DLT 113): packet type, ARPHRD, address length, address (8), protocol."""
    pkttype = 4 if p.c2s else 0  # outgoing / to us
    mac = MAC_A if p.c2s else MAC_B
    return (
        struct.pack("!HHH", pkttype, 1, 6)
        + mac
        + b"\0\0"
        + struct.pack("!H", ethertype_of(p.ip))
        + p.ip
    )


def frame_sll2(p: Pkt) -> bytes:
    """Linux cooked v2 (DLT 276): protocol, reserved, ifindex, ARPHRD, pkttype, addr len, addr."""
    pkttype = 4 if p.c2s else 0
    mac = MAC_A if p.c2s else MAC_B
    return struct.pack("!HHIHBB", ethertype_of(p.ip), 0, 2, 1, pkttype, 6) + mac + b"\0\0" + p.ip


def frame_null(endian: str, v6_families: Sequence[int] = (24, 28, 30)) -> Callable[[Pkt], bytes]:
    """BSD loopback (DLT 0 in the file's byte order, DLT 108 in network order) family + IP."""
    counter = iter(range(1 << 30))

    def f(p: Pkt) -> bytes:
        fam = 2 if p.ip[0] >> 4 == 4 else v6_families[next(counter) % len(v6_families)]
        return struct.pack(endian + "I", fam) + p.ip

    return f


def recs_of(pkts: Iterable[Pkt], framer: Callable[[Pkt], bytes], iface: int = 0) -> list[Rec]:
    out = []
    for p in pkts:
        data = framer(p)
        out.append(Rec(p.ts_ns, data, len(data), iface))
    return out


# =============================================================================================
# The independent reference: tshark dissects, these few lines group into flows
# =============================================================================================

TSHARK_FIELDS = [
    "frame.time_epoch",
    "frame.protocols",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.id",
    "ip.flags.mf",
    "ip.frag_offset",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "ipv6.fraghdr.offset",
    "ipv6.fraghdr.more",
    "ipv6.fraghdr.ident",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags",
    "udp.srcport",
    "udp.dstport",
    "icmp.type",
    "icmpv6.type",
    "_ws.col.Protocol",
]
TSHARK_PREFS = [
    "-o",
    "ip.defragment:FALSE",
    "-o",
    "ipv6.defragment:FALSE",
    "-o",
    "tcp.analyze_sequence_numbers:FALSE",
    "-o",
    "tcp.desegment_tcp_streams:FALSE",
    "-o",
    "ip.check_checksum:FALSE",
]
IP_PROTO_NAME = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}


def tshark_rows(path: Path) -> list[dict[str, str]]:
    cmd = [
        "tshark",
        "-n",
        "-r",
        str(path),
        *TSHARK_PREFS,
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=|",
    ]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        vals = line.split("\t")
        vals += [""] * (len(TSHARK_FIELDS) - len(vals))
        row = dict(zip(TSHARK_FIELDS, vals))
        if row["_ws.col.Protocol"] == "PCAPNG":
            continue  # Wireshark 4 lists custom blocks as frames: not packets
        rows.append(row)
    return rows


def _nth(value: str, n: int) -> str:
    parts = value.split("|") if value else []
    return parts[n] if 0 <= n < len(parts) else ""


def _last(value: str) -> str:
    return value.split("|")[-1] if value else ""


@dataclass
class RefFlow:
    key: tuple[Any, ...]
    first_ts: int
    last_ts: int
    packets: list[tuple[str, int, str, int, int]] = field(
        default_factory=list
    )  # (src, sport, dst, dport, flags)
    client: tuple[str, int] | None = None
    syn_client: bool = False


def _ns(epoch: str) -> int:
    if not epoch:
        return 0  # a Simple Packet Block has no timestamp
    sec, _, frac = epoch.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def reference_flows(path: Path) -> tuple[int, list[FlowSpec], int]:
    """(packets, flows, packets attributed to flows) of a capture, from tshark's dissection."""
    rows = tshark_rows(path)
    flows: dict[tuple[Any, ...], RefFlow] = {}
    order: list[tuple[Any, ...]] = []
    frag_ports: dict[tuple[Any, ...], tuple[int, int]] = {}
    attributed = 0
    for row in rows:
        protos = row["frame.protocols"].split(":")
        ip_layers = [(i, t) for i, t in enumerate(protos) if t in ("ip", "ipv6")]
        if not ip_layers:
            continue
        pos, ver = ip_layers[-1]
        nth = sum(1 for _, t in ip_layers if t == ver) - 1
        after = [t for t in protos[pos + 1 :] if not t.startswith("ipv6.")]
        if ver == "ip":
            src, dst = _nth(row["ip.src"], nth), _nth(row["ip.dst"], nth)
            proto = int(_nth(row["ip.proto"], nth))
            frag_off = int(_nth(row["ip.frag_offset"], nth) or 0)
            more = _nth(row["ip.flags.mf"], nth) in ("1", "True")
            frag_id: tuple[Any, ...] = (src, dst, proto, _nth(row["ip.id"], nth))
        else:
            src, dst = _nth(row["ipv6.src"], nth), _nth(row["ipv6.dst"], nth)
            l4 = next((t for t in after if t in IP_PROTO_NAME), None)
            proto = IP_PROTO_NAME[l4] if l4 else int(_last(row["ipv6.nxt"]))
            frag_off = int(_last(row["ipv6.fraghdr.offset"]) or 0)
            more = _last(row["ipv6.fraghdr.more"]) in ("1", "True")
            frag_id = (src, dst, _last(row["ipv6.fraghdr.ident"]))
            if frag_off and not l4:
                proto = -1  # resolved from the first fragment
        sport = dport = 0
        flags = 0
        if frag_off:
            proto2, sport, dport = frag_ports[frag_id]  # KeyError: an orphan, not in our fixtures
            proto = proto2
        elif proto == 6:
            sport, dport = int(_last(row["tcp.srcport"])), int(_last(row["tcp.dstport"]))
            flags = int(_last(row["tcp.flags"]), 16)
        elif proto == 17:
            sport, dport = int(_last(row["udp.srcport"])), int(_last(row["udp.dstport"]))
        elif proto in (1, 58):
            typ = int(_last(row["icmp.type" if proto == 1 else "icmpv6.type"]))
            echo = {8: 0, 0: 0, 128: 0, 129: 0}
            sport = dport = -1 if typ in echo else typ  # echo request and reply pair up
        if more and not frag_off:
            frag_ports[frag_id] = (proto, sport, dport)
        ends = sorted([(src, sport), (dst, dport)])
        key = (ver, proto, *ends[0], *ends[1])
        ts = _ns(row["frame.time_epoch"])
        if key not in flows:
            flows[key] = RefFlow(key, ts, ts)
            order.append(key)
        fl = flows[key]
        fl.last_ts = ts
        fl.packets.append((src, sport, dst, dport, flags))
        if fl.client is None:
            fl.client = (src, sport)
        if proto == 6 and not fl.syn_client:
            if flags & 0x12 == 0x02:
                fl.client, fl.syn_client = (src, sport), True
            elif flags & 0x12 == 0x12:
                fl.client, fl.syn_client = (dst, dport), True
        attributed += 1
    specs = []
    for key in order:
        fl = flows[key]
        assert fl.client is not None
        (a, ap), (b, bp) = (key[2], key[3]), (key[4], key[5])
        cip, cport = fl.client
        sip, sport = (b, bp) if (a, ap) == fl.client else (a, ap)
        proto = key[1]
        ports = proto in (6, 17)
        spec = FlowSpec(cip, cport if ports else None, sip, sport if ports else None, proto)
        if proto not in (1, 58, 6, 17):
            spec.src_port = spec.dst_port = 0
        n_c2s = sum(1 for src, sp, _, _, _ in fl.packets if (src, sp) == fl.client)
        spec.bidirectional_packets = len(fl.packets)
        if (a, ap) == (b, bp):
            spec.src2dst_packets = spec.dst2src_packets = None  # no way to tell the sides apart
        else:
            spec.src2dst_packets, spec.dst2src_packets = n_c2s, len(fl.packets) - n_c2s
        spec.first_ns, spec.last_ns = fl.first_ts, fl.last_ts
        specs.append(spec)
    return len(rows), specs, attributed


def capinfos_count(path: Path) -> int:
    out = subprocess.run(
        ["capinfos", "-c", "-M", "-T", "-r", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return int(out.strip().split("\t")[-1])


# =============================================================================================
# Fixture registry
# =============================================================================================


@dataclass
class Fixture:
    name: str
    how: str  # the tool and command, or "hand-made (function)"
    derives_from: str | None = None  # corpus file, for the licence note
    group: str | None = None  # fixtures of one group must give identical flow records
    construction: dict[str, FlowSpec] | None = None  # hand-made: what the flows must be
    construction_packets: int | None = None
    ts_known: bool = True  # False: SPB-only, no timestamps
    notes: str = ""
    tags: list[str] = field(default_factory=list)


FIXTURES: list[Fixture] = []


def fixture(name: str, how: str, **kw: Any) -> Fixture:
    f = Fixture(name, how, **kw)
    FIXTURES.append(f)
    return f


def write(name: str, data: bytes) -> None:
    (OUT / name).write_bytes(data)


def run(cmd: Sequence[str]) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True)


def tool_string(cmd: Sequence[str]) -> str:
    return " ".join(cmd).replace(str(OUT) + "/", "").replace(str(CORPUS) + "/", "corpus/")


CORPUS = DEFAULT_CORPUS

# ---- tool-made from the corpus ---------------------------------------------------------------


def make_tool_fixtures() -> None:
    hassh = CORPUS / HASSH_SRC
    curve = CORPUS / CURVE_SRC
    vx = CORPUS / VXLAN_SRC
    steps: list[tuple[str, list[str], str, str]] = [
        (
            "hassh.pcap",
            ["editcap", "-F", "pcap", str(hassh), str(OUT / "hassh.pcap")],
            HASSH_SRC,
            "hassh",
        ),
        (
            "hassh.pcapng",
            ["editcap", "-F", "pcapng", str(hassh), str(OUT / "hassh.pcapng")],
            HASSH_SRC,
            "hassh",
        ),
        (
            "hassh.nsec.pcap",
            ["editcap", "-F", "nsecpcap", str(hassh), str(OUT / "hassh.nsec.pcap")],
            HASSH_SRC,
            "hassh",
        ),
        (
            "hassh.snap96.pcap",
            ["editcap", "-F", "pcap", "-s", "96", str(hassh), str(OUT / "hassh.snap96.pcap")],
            HASSH_SRC,
            "hassh-snap",
        ),
        (
            "curve25519.nano.pcap",
            [
                "tcpdump",
                "-r",
                str(curve),
                "--time-stamp-precision=nano",
                "-w",
                str(OUT / "curve25519.nano.pcap"),
            ],
            CURVE_SRC,
            "curve",
        ),
        (
            "curve25519.nano.pcapng",
            [
                "editcap",
                "-F",
                "pcapng",
                str(OUT / "curve25519.nano.pcap"),
                str(OUT / "curve25519.nano.pcapng"),
            ],
            CURVE_SRC,
            "curve",
        ),
        (
            "vxlan_mirror.pcap",
            ["editcap", "-F", "pcap", str(vx), str(OUT / "vxlan_mirror.pcap")],
            VXLAN_SRC,
            "",
        ),
    ]
    for name, cmd, src, group in steps:
        run(cmd)
        fixture(name, tool_string(cmd), derives_from=src, group=group or None)
    for name in ("hassh.pcap", "hassh.pcapng"):
        with open(OUT / (name + ".gz"), "wb") as fh:
            subprocess.run(["gzip", "-9", "-n", "-c", str(OUT / name)], check=True, stdout=fh)
        fixture(
            name + ".gz", f"gzip -9 -n -c {name} > {name}.gz", derives_from=HASSH_SRC, group="hassh"
        )
    # big-endian forms: no tool writes them, so the records are re-emitted byte-swapped by hand
    recs, linktype, snaplen = read_pcap(OUT / "hassh.pcap")
    write("hassh.be.pcap", pcap_bytes(recs, linktype, ">", snaplen=snaplen))
    fixture(
        "hassh.be.pcap",
        "hand-made: hassh.pcap re-emitted big-endian (pcap_bytes endian='>')",
        derives_from=HASSH_SRC,
        group="hassh",
    )
    write("hassh.be.nsec.pcap", pcap_bytes(recs, linktype, ">", nano=True, snaplen=snaplen))
    fixture(
        "hassh.be.nsec.pcap",
        "hand-made: hassh.pcap re-emitted big-endian, nanosecond magic",
        derives_from=HASSH_SRC,
        group="hassh",
    )
    ng_recs, ng_ifaces = read_pcapng_le(OUT / "hassh.pcapng")
    write("hassh.be.pcapng", pcapng_bytes(ng_recs, ng_ifaces, ">"))
    fixture(
        "hassh.be.pcapng",
        "hand-made: hassh.pcapng's IDB and EPBs re-emitted big-endian",
        derives_from=HASSH_SRC,
        group="hassh",
    )


# ---- hand-made link layers ---------------------------------------------------------------------


def make_link_fixtures() -> None:
    def simple(
        name: str,
        net: int,
        linktype: int,
        framer: Callable[[Pkt], bytes],
        how: str,
        endian: str = "<",
        v4: bool = True,
        v6: bool = True,
        group: str | None = None,
    ) -> None:
        pk = mini(net, (BASE_S + net * 100) * 10**9, v4, v6)
        write(name, pcap_bytes(recs_of(pk, framer), linktype, endian))
        fixture(
            name,
            "hand-made: " + how,
            construction=mini_specs(net, pk),
            construction_packets=len(pk),
            group=group,
        )

    # QinQ: client frames carry 802.1ad outer (vid 100) + 802.1Q inner (vid 200), server frames a
    # single 802.1Q tag (vid 300): the VLAN id is not part of the flow key. Plus one tagged ARP.
    net = 1
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    recs = []
    for p in pk:
        tags = [(0x88A8, 100), (0x8100, 200)] if p.c2s else [(0x8100, 300)]
        src, dst = (MAC_A, MAC_B) if p.c2s else (MAC_B, MAC_A)
        d = eth(p.ip, ethertype_of(p.ip), src, dst, tags)
        recs.append(Rec(p.ts_ns, d, len(d)))
    arp = eth(ARP_REQUEST, 0x0806, MAC_A, b"\xff" * 6, [(0x88A8, 100), (0x8100, 200)])
    recs.insert(1, Rec(recs[0].ts_ns + 1000, arp, len(arp)))
    write("eth_qinq.pcap", pcap_bytes(recs, 1))
    fixture(
        "eth_qinq.pcap",
        "hand-made: Ethernet, client frames 0x88a8 vid 100 + 0x8100 vid 200, "
        "server frames 0x8100 vid 300, one QinQ-tagged ARP",
        construction=mini_specs(net, pk),
        construction_packets=len(recs),
    )

    # MPLS: two labels (three for IPv6), bottom-of-stack set on the last; payload guessed by nibble
    net = 2
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    recs = []
    for p in pk:
        labels = [16, 17] if p.ip[0] >> 4 == 4 else [16, 17, 18]
        stack = b"".join(
            struct.pack("!I", lab << 12 | (i == len(labels) - 1) << 8 | 64)
            for i, lab in enumerate(labels)
        )
        src, dst = (MAC_A, MAC_B) if p.c2s else (MAC_B, MAC_A)
        d = eth(stack + p.ip, 0x8847, src, dst)
        recs.append(Rec(p.ts_ns, d, len(d)))
    write("eth_mpls.pcap", pcap_bytes(recs, 1))
    fixture(
        "eth_mpls.pcap",
        "hand-made: Ethernet 0x8847, MPLS stack of 2 labels (IPv4) or 3 (IPv6)",
        construction=mini_specs(net, pk),
        construction_packets=len(recs),
    )

    simple("sll.pcap", 3, 113, frame_sll, "Linux cooked v1 (DLT 113)")
    simple("sll2.pcap", 4, 276, frame_sll2, "Linux cooked v2 (DLT 276)")
    simple("raw101.pcap", 5, 101, lambda p: p.ip, "raw IP, LINKTYPE_RAW 101, IPv4 and IPv6")
    simple("raw12.pcap", 6, 12, lambda p: p.ip, "raw IP, DLT 12 (DLT_RAW on most BSDs)")
    simple("raw14.pcap", 7, 14, lambda p: p.ip, "raw IP, DLT 14 (DLT_RAW on OpenBSD)")
    simple("ipv4_228.pcap", 8, 228, lambda p: p.ip, "LINKTYPE_IPV4 228, IPv4 only", v6=False)
    simple("ipv6_229.pcap", 9, 229, lambda p: p.ip, "LINKTYPE_IPV6 229, IPv6 only", v4=False)
    simple(
        "null_le.pcap",
        10,
        0,
        frame_null("<"),
        "BSD loopback DLT 0, little-endian file, family in file order (2; IPv6 24/28/30 in turn)",
    )
    simple(
        "null_be.pcap",
        11,
        0,
        frame_null(">"),
        "BSD loopback DLT 0, big-endian file, family in file order (2; IPv6 24/28/30 in turn)",
        endian=">",
    )
    simple(
        "loop108.pcap",
        12,
        108,
        frame_null(">"),
        "OpenBSD loopback DLT 108, little-endian file, family in network order (2; 24/28/30)",
    )

    # FCS bits in the link-type field: Ethernet with a 4-byte FCS on every frame
    net = 13
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    recs = []
    for p in pk:
        d = frame_eth(p) + b"\xde\xad\xbe\xef"
        recs.append(Rec(p.ts_ns, d, len(d)))
    write("eth_fcs.pcap", pcap_bytes(recs, 0x10000000 | 2 << 29 | 1))
    fixture(
        "eth_fcs.pcap",
        "hand-made: link-type field 0x50000001 (Ethernet, FCS bits: 4-byte FCS present), "
        "frames carry 4 FCS bytes",
        construction=mini_specs(net, pk),
        construction_packets=len(recs),
    )

    # snaplen in the header smaller than records (real files have caplen > snaplen)
    net = 14
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    write("eth_snaplen_lie.pcap", pcap_bytes(recs_of(pk, frame_eth), 1, snaplen=64))
    fixture(
        "eth_snaplen_lie.pcap",
        "hand-made: header snaplen 64, records up to 94 bytes captured",
        construction=mini_specs(net, pk),
        construction_packets=len(pk),
    )


# ---- hand-made tunnels -------------------------------------------------------------------------

O4A, O4B = ip4("192.0.2.1"), ip4("192.0.2.2")
O6A, O6B = ip6("2001:db8:ffff::1"), ip6("2001:db8:ffff::2")


def make_tunnel_fixtures() -> None:
    # VXLAN: outer UDP source port varies by inner flow and direction (as real VTEPs hash)
    net = 20
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    recs = []
    for i, p in enumerate(pk):
        inner = frame_eth(p)
        vx = struct.pack("!BxxxI", 0x08, 4242 << 8) + inner
        oa, ob = (O4A, O4B) if p.c2s else (O4B, O4A)
        sport = 49152 + sum(p.flow.encode()) * 7 + (0 if p.c2s else 1)
        outer = ipv4(oa, ob, 17, udp(oa, ob, sport, 4789, vx), 5000 + i)
        d = eth(outer, 0x0800, MAC_A if p.c2s else MAC_B, MAC_B if p.c2s else MAC_A)
        recs.append(Rec(p.ts_ns, d, len(d)))
    write("vxlan.pcap", pcap_bytes(recs, 1))
    fixture(
        "vxlan.pcap",
        "hand-made: Ethernet/IPv4/UDP 4789/VXLAN (VNI 4242)/Ethernet/inner flows; "
        "outer source port differs per flow and direction",
        construction=mini_specs(net, pk),
        construction_packets=len(recs),
    )

    # GRE, one variant per inner flow
    net = 21
    pk = mini(net, (BASE_S + net * 100) * 10**9)

    def gre(proto: int, payload: bytes, c: bool = False, k: bool = False, s: bool = False) -> bytes:
        flags = (0x8000 if c else 0) | (0x2000 if k else 0) | (0x1000 if s else 0)
        hdr = struct.pack("!HH", flags, proto)
        opt = b""
        if c:
            opt += b"\0\0\0\0"
        if k:
            opt += struct.pack("!I", 0xC0FFEE)
        if s:
            opt += struct.pack("!I", 1)
        msg = hdr + opt + payload
        if c:
            cs = csum(msg)
            msg = msg[:4] + struct.pack("!H", cs) + msg[6:]
        return msg

    recs = []
    for i, p in enumerate(pk):
        oa4, ob4 = (O4A, O4B) if p.c2s else (O4B, O4A)
        oa6, ob6 = (O6A, O6B) if p.c2s else (O6B, O6A)
        if p.flow == "tcp4":
            outer = ipv4(oa4, ob4, 47, gre(0x0800, p.ip), 6000 + i)
        elif p.flow == "udp4":
            outer = ipv4(oa4, ob4, 47, gre(0x0800, p.ip, c=True, k=True, s=True), 6000 + i)
        elif p.flow == "icmp4":
            outer = ipv4(oa4, ob4, 47, gre(0x6558, frame_eth(p)), 6000 + i)
        elif p.flow == "tcp6":
            outer = ipv4(oa4, ob4, 47, gre(0x86DD, p.ip, k=True), 6000 + i)
        elif p.flow == "udp6":
            outer = ipv4(oa4, ob4, 47, gre(0x6558, frame_eth(p)), 6000 + i)
        else:
            outer = ipv6(oa6, ob6, 47, gre(0x86DD, p.ip))
        d = eth(outer, ethertype_of(outer), MAC_A if p.c2s else MAC_B, MAC_B if p.c2s else MAC_A)
        recs.append(Rec(p.ts_ns, d, len(d)))
    write("gre.pcap", pcap_bytes(recs, 1))
    fixture(
        "gre.pcap",
        "hand-made: GRE over IPv4 (tcp4: 0x0800; udp4: 0x0800 with checksum+key+sequence; "
        "icmp4 and udp6: 0x6558 transparent Ethernet bridging; tcp6: 0x86dd with key) and over "
        "IPv6 "
        "(icmp6: 0x86dd)",
        construction=mini_specs(net, pk),
        construction_packets=len(recs),
    )

    # IP-in-IP: 4in4 (proto 4), 6in4 (41), 4in6 (nh 4), 6in6 (nh 41)
    net = 22
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    recs = []
    for i, p in enumerate(pk):
        oa4, ob4 = (O4A, O4B) if p.c2s else (O4B, O4A)
        oa6, ob6 = (O6A, O6B) if p.c2s else (O6B, O6A)
        v4 = p.ip[0] >> 4 == 4
        if p.flow in ("tcp4", "udp4"):
            outer = ipv4(oa4, ob4, 4, p.ip, 7000 + i)
        elif p.flow == "icmp4":
            outer = ipv6(oa6, ob6, 4, p.ip)
        elif p.flow in ("tcp6", "icmp6"):
            outer = ipv4(oa4, ob4, 41, p.ip, 7000 + i)
        else:
            outer = ipv6(oa6, ob6, 41, p.ip)
        assert v4 or p.flow.endswith("6")
        d = eth(outer, ethertype_of(outer), MAC_A if p.c2s else MAC_B, MAC_B if p.c2s else MAC_A)
        recs.append(Rec(p.ts_ns, d, len(d)))
    write("ipip.pcap", pcap_bytes(recs, 1))
    fixture(
        "ipip.pcap",
        "hand-made: tcp4/udp4 IPv4-in-IPv4 (proto 4), icmp4 IPv4-in-IPv6 (nh 4), "
        "tcp6/icmp6 IPv6-in-IPv4 (proto 41), udp6 IPv6-in-IPv6 (nh 41)",
        construction=mini_specs(net, pk),
        construction_packets=len(recs),
    )


# ---- hand-made IP features ---------------------------------------------------------------------


def make_ip_fixtures() -> None:
    # IPv4 fragments (in order) and options
    c, s, w = ip4("10.30.0.1"), ip4("10.30.0.2"), ip4("10.30.0.4")
    t0 = (BASE_S + 3000) * 10**9
    pkts: list[Pkt] = []

    def add(ip: bytes, c2s: bool, flow: str) -> None:
        pkts.append(Pkt(t0 + len(pkts) * STEP_NS, ip, c2s, flow))

    def frags(src: bytes, dst: bytes, proto: int, l4: bytes, ident: int, size: int) -> list[bytes]:
        out = []
        for off in range(0, len(l4), size):
            chunk = l4[off : off + size]
            out.append(ipv4(src, dst, proto, chunk, ident, mf=off + size < len(l4), frag_off=off))
        return out

    big = udp(c, s, 5000, 6000, bytes(range(256)) * 12)  # 3080 bytes of UDP
    f1 = frags(c, s, 17, big, 0x1234, 1480)
    syn = ipv4(
        c, w, 6, tcp(c, w, 40100, 80, 1, 0, "S"), 0x2001, options=b"\x94\x04\x00\x00"
    )  # router alert
    add(f1[0], True, "udp")
    add(syn, True, "tcp")
    add(f1[1], True, "udp")
    add(f1[2], True, "udp")
    rr = b"\x07\x0b\x04" + b"\0" * 8 + b"\x00"  # record route, 2 slots, then EOL
    add(ipv4(w, c, 6, tcp(w, c, 80, 40100, 500, 2, "SA"), 0x3001, options=rr), False, "tcp")
    add(ipv4(s, c, 17, udp(s, c, 6000, 5000, b"ok"), 0x4001), False, "udp")
    back = udp(s, c, 6000, 5000, b"B" * 2000)
    for fr in frags(s, c, 17, back, 0x1234, 1480):  # same IP id, other direction
        add(fr, False, "udp")
    add(ipv4(c, w, 6, tcp(c, w, 40100, 80, 2, 501, "A"), 0x2002), True, "tcp")
    ping = icmp4(8, 0, 77, 1, b"x" * 1600)
    for fr in frags(c, ip4("10.30.0.3"), 1, ping, 0x2003, 1480):
        add(fr, True, "icmp")
    pong = icmp4(0, 0, 77, 1, b"x" * 1600)
    for fr in frags(ip4("10.30.0.3"), c, 1, pong, 0x5001, 1480):
        add(fr, False, "icmp")
    specs = {
        "udp": FlowSpec("10.30.0.1", 5000, "10.30.0.2", 6000, 17),
        "tcp": FlowSpec("10.30.0.1", 40100, "10.30.0.4", 80, 6),
        "icmp": FlowSpec("10.30.0.1", None, "10.30.0.3", None, 1),
    }
    write("ipv4_frag_opts.pcap", pcap_bytes(recs_of(pkts, frame_eth), 1))
    fixture(
        "ipv4_frag_opts.pcap",
        "hand-made: UDP datagrams in 3 and 2 in-order fragments (same IP id both "
        "ways), a fragmented ICMP echo pair, TCP with IPv4 options (router alert, record route)",
        construction=count_specs(specs, pkts),
        construction_packets=len(pkts),
    )

    # IPv6 extension headers
    c6, s6, d6 = ip6("2001:db8:31::1"), ip6("2001:db8:31::2"), ip6("2001:db8:31::3")
    t0 = (BASE_S + 3100) * 10**9
    pkts = []
    ra = b"\x05\x02\x00\x00"  # router alert option
    seg = tcp(c6, s6, 40200, 22, 1, 0, "S")
    add(ipv6(c6, s6, 0, ext6(60, ra) + ext6(6) + seg), True, "tcp")
    add(ipv6(s6, c6, 6, tcp(s6, c6, 22, 40200, 900, 2, "SA")), False, "tcp")
    add(ipv6(c6, s6, 60, ext6(6) + tcp(c6, s6, 40200, 22, 2, 901, "A")), True, "tcp")
    dg = udp(c6, d6, 5300, 53, b"\x01\x02\x01\x00" + b"\0" * 8)
    add(
        ipv6(c6, d6, 0, ext6(60) + ext6(44) + frag6(17, 0, False, 0xA1) + dg), True, "udp"
    )  # atomic
    add(ipv6(d6, c6, 17, udp(d6, c6, 53, 5300, b"\x01\x02\x81\x80" + b"\0" * 8)), False, "udp")
    big6 = udp(c6, d6, 5301, 5353, bytes(range(200)) * 10)  # 2008 bytes
    add(ipv6(c6, d6, 0, ext6(44) + frag6(17, 0, True, 0xABCD) + big6[:1232]), True, "udp2")
    add(ipv6(c6, d6, 44, frag6(17, 1232, False, 0xABCD) + big6[1232:]), True, "udp2")
    add(ipv6(d6, c6, 17, udp(d6, c6, 5353, 5301, b"ack")), False, "udp2")
    add(ipv6(c6, s6, 60, ext6(58) + icmp6(c6, s6, 128, 0, 3, 1, b"hi")), True, "icmp")
    add(ipv6(s6, c6, 58, icmp6(s6, c6, 129, 0, 3, 1, b"hi")), False, "icmp")
    specs = {
        "tcp": FlowSpec("2001:db8:31::1", 40200, "2001:db8:31::2", 22, 6),
        "udp": FlowSpec("2001:db8:31::1", 5300, "2001:db8:31::3", 53, 17),
        "udp2": FlowSpec("2001:db8:31::1", 5301, "2001:db8:31::3", 5353, 17),
        "icmp": FlowSpec("2001:db8:31::1", None, "2001:db8:31::2", None, 58),
    }
    write("ipv6_ext.pcap", pcap_bytes(recs_of(pkts, frame_eth), 1))
    fixture(
        "ipv6_ext.pcap",
        "hand-made: IPv6 hop-by-hop + destination options + TCP; HBH + dstopts + "
        "atomic fragment header + UDP; first + non-first fragment of a UDP datagram (HBH on the "
        "first); ICMPv6 echo behind destination options",
        construction=count_specs(specs, pkts),
        construction_packets=len(pkts),
    )

    # ICMP pairing and protocols without ports
    a, b = ip4("10.32.0.1"), ip4("10.32.0.2")
    a6, b6 = ip6("2001:db8:32::1"), ip6("2001:db8:32::2")
    t0 = (BASE_S + 3200) * 10**9
    pkts = []
    for sq in (1, 2):
        add(ipv4(a, b, 1, icmp4(8, 0, 99, sq, b"abcd"), 10 + sq), True, "icmp")
        add(ipv4(b, a, 1, icmp4(0, 0, 99, sq, b"abcd"), 20 + sq), False, "icmp")
    add(ipv6(a6, b6, 58, icmp6(a6, b6, 128, 0, 5, 1, b"v6")), True, "icmp6")
    add(ipv6(b6, a6, 58, icmp6(b6, a6, 129, 0, 5, 1, b"v6")), False, "icmp6")
    esp = struct.pack("!II", 0x1001, 1) + b"\xaa" * 32
    add(ipv4(a, b, 50, esp, 30), True, "esp")
    add(ipv4(b, a, 50, struct.pack("!II", 0x2002, 1) + b"\xbb" * 32, 31), False, "esp")
    add(ipv4(a, b, 50, struct.pack("!II", 0x1001, 2) + b"\xaa" * 32, 32), True, "esp")
    add(ipv4(a, ip4("224.0.0.5"), 89, b"\x02\x01\x00\x2c" + b"\0" * 40, 33), True, "ospf")
    add(ipv6(a6, b6, 50, esp), True, "esp6")
    add(ipv6(b6, a6, 50, esp), False, "esp6")
    add(ipv4(a, b, 253, b"experimental", 34), True, "p253")
    specs = {
        "icmp": FlowSpec("10.32.0.1", None, "10.32.0.2", None, 1),
        "icmp6": FlowSpec("2001:db8:32::1", None, "2001:db8:32::2", None, 58),
        "esp": FlowSpec("10.32.0.1", 0, "10.32.0.2", 0, 50),
        "ospf": FlowSpec("10.32.0.1", 0, "224.0.0.5", 0, 89),
        "esp6": FlowSpec("2001:db8:32::1", 0, "2001:db8:32::2", 0, 50),
        "p253": FlowSpec("10.32.0.1", 0, "10.32.0.2", 0, 253),
    }
    write("icmp_other.pcap", pcap_bytes(recs_of(pkts, frame_eth), 1))
    fixture(
        "icmp_other.pcap",
        "hand-made: two ICMP echo exchanges (one flow), an ICMPv6 echo pair, ESP "
        "over IPv4 and IPv6, OSPF to 224.0.0.5, IP protocol 253",
        construction=count_specs(specs, pkts),
        construction_packets=len(pkts),
    )


# ---- hand-made pcapng variants -----------------------------------------------------------------


def make_pcapng_fixtures() -> None:
    # several interfaces with their own link types and time bases, both byte orders
    net = 40
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    ifaces = [
        Iface(1, 0, None, None, "eth0"),  # default 10^-6
        Iface(101, 65535, 9, BASE_S, "raw0"),  # 10^-9 s, offset
        Iface(276, 262144, 0x80 | 20, None, "any"),  # 2^-20 s
        Iface(0, 0, 0x80 | 10, BASE_S - 86400, "lo0"),  # 2^-10 s, offset a day earlier
    ]
    framers: list[Callable[[Pkt], bytes]] = [frame_eth, lambda p: p.ip, frame_sll2, frame_null("<")]
    where = {
        "tcp4": (0, 1),
        "udp4": (1, 1),
        "icmp4": (2, 2),
        "tcp6": (3, 3),
        "udp6": (2, 0),
        "icmp6": (0, 3),
    }
    for endian, name in (("<", "ng_multi_if.pcapng"), (">", "ng_multi_if.be.pcapng")):
        w = NgWriter(endian).shb([w_opt(endian, 4, b"flowsense fixtures")])
        for i in ifaces:
            w.idb(i)
        framers[3] = frame_null(endian)
        for p in pk:
            k = where[p.flow][0 if p.c2s else 1]
            fr = framers[k](p)
            w.epb(Rec(p.ts_ns, fr, len(fr), k))
        write(name, w.bytes())
        fixture(
            name,
            f"hand-made: pcapng ({'big' if endian == '>' else 'little'}-endian), 4 IDBs: Ethernet "
            "(default us), RAW 101 (if_tsresol 9, if_tsoffset), SLL2 (if_tsresol 2^-20), "
            "NULL (if_tsresol "
            "2^-10, if_tsoffset); tcp4 client on Ethernet and server on RAW",
            group="ng-multi-if",
            construction=mini_specs(net, pk),
            construction_packets=len(pk),
        )

    # SPB only (no timestamps), snaplen 80 so that the longer frames are cut
    net = 41
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    w = NgWriter().shb()
    w.idb(Iface(1, 80))
    for p in pk:
        fr = frame_eth(p)
        w.spb(Rec(0, fr, len(fr)))
    write("ng_spb.pcapng", w.bytes())
    specs = mini_specs(net, pk)
    for sp in specs.values():
        sp.first_ns = sp.last_ns = None
    fixture(
        "ng_spb.pcapng",
        "hand-made: pcapng, one Ethernet IDB with snaplen 80, every packet a Simple "
        "Packet Block (no timestamps; frames longer than 80 bytes cut)",
        construction=specs,
        construction_packets=len(pk),
        ts_known=False,
    )

    # legacy Packet Blocks (type 2) mixed with EPBs, two interfaces
    net = 42
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    w = NgWriter().shb()
    w.idb(Iface(1))
    w.idb(Iface(101, 0, 9))
    for i, p in enumerate(pk):
        if i % 2:
            w.pb(Rec(p.ts_ns, frame_eth(p), len(frame_eth(p)), 0), drops=i)
        else:
            w.epb(Rec(p.ts_ns, p.ip, len(p.ip), 1))
    write("ng_legacy_pb.pcapng", w.bytes())
    fixture(
        "ng_legacy_pb.pcapng",
        "hand-made: pcapng, odd packets as obsolete Packet Blocks (type 2) on an "
        "Ethernet IDB, even packets as EPBs on a RAW IDB with if_tsresol 9",
        construction=mini_specs(net, pk),
        construction_packets=len(pk),
    )

    # blocks a reader must skip: unknown, custom, NRB, ISB, DSB, options everywhere
    net = 43
    pk = mini(net, (BASE_S + net * 100) * 10**9)
    w = NgWriter()
    w.shb([w.opt(1, b"a comment"), w.opt(2, b"hw"), w.opt(3, b"os"), w.opt(4, b"userappl")])
    w.block(0x0000ABCD, b"unknown block body")
    w.block(0x80000001, b"local use")
    w.idb(Iface(1, 262144, 6, 0, "eth0"), [w.opt(1, b"idb comment"), w.opt(3, b"desc")])
    nrb = (
        struct.pack("<HH", 1, 4 + 8)
        + ip4(f"10.{net}.0.2")
        + b"srv\0\0\0\0\0"
        + struct.pack("<HH", 0, 0)
    )
    w.block(4, nrb)
    for i, p in enumerate(pk):
        if i == 5:
            w.block(0x00000BAD, struct.pack("<I", 32473) + b"custom, may be copied")
            w.block(0x40000BAD, struct.pack("<I", 32473) + b"custom, do not copy")
            w.block(0x0000000A, struct.pack("<II", 0x544C534B, 8) + b"CLIENT_R")  # DSB, TLS key log
        if i == 9:
            w.block(
                5,
                struct.pack("<III", 0, p.ts_ns // 1000 >> 32, p.ts_ns // 1000 & 0xFFFFFFFF)
                + w.opts([w.opt(4, struct.pack("<Q", 18)), w.opt(5, struct.pack("<Q", 0))]),
            )
        fr = frame_eth(p)
        opts = (
            [w.opt(2, struct.pack("<I", 1 if p.c2s else 2)), w.opt(1, b"epb comment")]
            if i % 3 == 0
            else []
        )
        w.epb(Rec(p.ts_ns, fr, len(fr)), opts)
    w.block(0x00000BAD, struct.pack("<I", 32473))
    write("ng_unknown_blocks.pcapng", w.bytes())
    fixture(
        "ng_unknown_blocks.pcapng",
        "hand-made: pcapng with blocks to skip (unknown 0xABCD, local-use "
        "0x80000001, NRB, custom 0xBAD and 0x40000BAD, DSB, ISB) and options on SHB, IDB and EPBs",
        construction=mini_specs(net, pk),
        construction_packets=len(pk),
    )

    # two sections (three, in fact): editcap's LE section, a hand-made BE section whose IDB 0 is
    # raw IPv4, a hand-made LE section whose IDB 0 is raw IPv6: interface ids and byte order restart
    net = 44
    pk4 = mini(net, (BASE_S + net * 100) * 10**9, v6=False)
    w2 = NgWriter(">").shb()
    w2.idb(Iface(228, 0, 9))
    for p in pk4:
        w2.epb(Rec(p.ts_ns, p.ip, len(p.ip), 0))
    pk6 = mini(net + 1, (BASE_S + (net + 1) * 100) * 10**9, v4=False)
    w3 = NgWriter("<").shb()
    w3.idb(Iface(229, 0, 0x80 | 20))
    for p in pk6:
        w3.epb(Rec(p.ts_ns, p.ip, len(p.ip), 0))
    write("ng_sections.pcapng", (OUT / "hassh.pcapng").read_bytes() + w2.bytes() + w3.bytes())
    fixture(
        "ng_sections.pcapng",
        "cat of hassh.pcapng (editcap, LE, Ethernet IDB 0) + a hand-made "
        "big-endian section (IDB 0 = LINKTYPE_IPV4 228, if_tsresol 9) + a hand-made little-endian "
        "section (IDB 0 = LINKTYPE_IPV6 229, if_tsresol 2^-20)",
        derives_from=HASSH_SRC,
        construction=None,
    )


def w_opt(endian: str, code: int, value: bytes) -> bytes:
    return NgWriter(endian).opt(code, value)


# ---- merged with mergecap ----------------------------------------------------------------------


def make_merged() -> None:
    cmd = [
        "mergecap",
        "-F",
        "pcapng",
        "-w",
        str(OUT / "merged.pcapng"),
        str(OUT / "hassh.pcap"),
        str(OUT / "sll2.pcap"),
        str(OUT / "null_le.pcap"),
    ]
    run(cmd)
    fixture(
        "merged.pcapng",
        tool_string(cmd) + " (three IDBs: Ethernet, SLL2, NULL)",
        derives_from=HASSH_SRC,
    )


# ---- live loopback captures (--live) -------------------------------------------------------------

LIVE = [
    ("lo_any_sll2.pcap", ["-i", "any", "-y", "LINUX_SLL2"]),
    ("lo_any_sll.pcap", ["-i", "any", "-y", "LINUX_SLL"]),
    ("lo_nano.pcap", ["-i", "lo", "--time-stamp-precision=nano"]),
]
LIVE_FILTER = "host 127.0.0.1 or host ::1"


def loopback_traffic() -> None:
    """TCP over 127.0.0.1 and ::1, a UDP exchange, an ICMP echo to 127.0.0.1: loopback only."""
    for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        srv = socket.socket(fam, socket.SOCK_STREAM)
        srv.bind((host, 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def serve(s: socket.socket = srv) -> None:
            conn, _ = s.accept()
            conn.sendall(b"SSH-2.0-loopback\r\n")
            conn.recv(100)
            conn.close()

        th = threading.Thread(target=serve)
        th.start()
        cli = socket.create_connection((host, port))
        cli.recv(100)
        cli.sendall(b"SSH-2.0-client\r\n")
        time.sleep(0.05)
        cli.close()
        th.join()
        srv.close()
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.bind(("127.0.0.1", 0))
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2.bind(("127.0.0.1", 0))
    u1.sendto(b"query", u2.getsockname())
    data, addr = u2.recvfrom(100)
    u2.sendto(b"answer", addr)
    u1.recvfrom(100)
    u1.close()
    u2.close()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    raw.sendto(icmp4(8, 0, os.getpid() & 0xFFFF, 1, b"flowsense"), ("127.0.0.1", 0))
    raw.settimeout(1)
    raw.recv(200)  # our own request
    raw.recv(200)  # the kernel's reply
    raw.close()


def make_live() -> None:
    procs = []
    for name, args in LIVE:
        cmd = ["tcpdump", *args, "-U", "-w", str(OUT / name), LIVE_FILTER]
        procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE))
    time.sleep(1.5)
    loopback_traffic()
    time.sleep(1.0)
    for p in procs:
        p.terminate()
        p.wait()


def register_live() -> None:
    for name, args in LIVE:
        if not (OUT / name).exists():
            sys.exit(f"{name} is missing: run with --live (as root) to capture it")
        fixture(
            name,
            f"tcpdump {' '.join(args)} -U -w {name} '{LIVE_FILTER}' while "
            "make_format_captures.loopback_traffic() ran (TCP over 127.0.0.1 and ::1, UDP, "
            "ICMP echo)",
            notes="live capture: not reproducible byte for byte; recaptured only with --live",
        )


# =============================================================================================
# Expected values, checks, README table
# =============================================================================================


def specs_key(s: FlowSpec) -> tuple[Any, ...]:
    return (s.protocol, *sorted([(s.src_ip, s.src_port or 0), (s.dst_ip, s.dst_port or 0)]))


def compare(
    construction: dict[str, FlowSpec], ref: list[FlowSpec], name: str, ts_known: bool
) -> None:
    want = sorted((s.as_json() for s in construction.values()), key=lambda d: json.dumps(d))
    got = [s.as_json() for s in ref]
    if not ts_known:
        for d in got:
            d["first_seen_ns"] = d["last_seen_ns"] = None
    got = sorted(got, key=lambda d: json.dumps(d))
    if want != got:
        raise SystemExit(
            f"{name}: tshark reference disagrees with the construction:\n"
            f"  construction {want}\n  tshark       {got}"
        )


def build_expected() -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for fx in FIXTURES:
        path = OUT / fx.name
        print(f"checking {fx.name}", file=sys.stderr)
        packets, flows, attributed = reference_flows(path)
        records = capinfos_count(path)
        assert records == packets, f"{fx.name}: capinfos {records} vs tshark {packets}"
        if fx.construction is not None:
            assert fx.construction_packets == packets, f"{fx.name}: {packets} packets"
            compare(fx.construction, flows, fx.name, fx.ts_known)
        if not fx.ts_known:
            for s in flows:
                s.first_ns = s.last_ns = None
        entries[fx.name] = {
            "packets": packets,
            "ip_packets": attributed,
            "flows": len(flows),
            "group": fx.group,
            "how": fx.how,
            "derives_from": fx.derives_from,
            "flow_facts": [s.as_json() for s in flows],
        }
    return entries


def dump_expected(doc: dict[str, Any]) -> str:
    """JSON with one line per flow fact: small and readable in a diff."""
    out = ["{", f' "about": {json.dumps(doc["about"])},', ' "fixtures": {']
    names = list(doc["fixtures"])
    for i, name in enumerate(names):
        e = doc["fixtures"][name]
        head = {k: v for k, v in e.items() if k != "flow_facts"}
        out.append(f'  {json.dumps(name)}: {json.dumps(head)[:-1]}, "flow_facts": [')
        facts = [f"   {json.dumps(f)}" for f in e["flow_facts"]]
        out.append(",\n".join(facts))
        out.append("  ]}" + ("," if i < len(names) - 1 else ""))
    out += [" }", "}"]
    text = "\n".join(out) + "\n"
    assert json.loads(text) == doc
    return text


def licence_note(src: str | None, how: str = "") -> str:
    if not src:
        return "none (captured on loopback)" if how.startswith("tcpdump -i") else "none (made here)"
    return f"corpus/{src} ({LICENCES[src.split('/')[0]]})"


def write_readme_table(entries: dict[str, Any]) -> None:
    readme = OUT / "README.md"
    text = readme.read_text() if readme.exists() else "<!-- BEGIN TABLE -->\n<!-- END TABLE -->\n"
    lines = [
        "| file | bytes | packets | IP packets | flows | group | made by "
        "| derives from (licence) |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for name, e in entries.items():
        how = e["how"].replace("|", "\\|")
        licence = licence_note(e["derives_from"], e["how"])
        lines.append(
            f"| `{name}` | {(OUT / name).stat().st_size} | {e['packets']} | {e['ip_packets']} | "
            f"{e['flows']} | {e['group'] or ''} | {how} | {licence} |"
        )
    head, _, rest = text.partition("<!-- BEGIN TABLE -->")
    _, _, tail = rest.partition("<!-- END TABLE -->")
    readme.write_text(
        head + "<!-- BEGIN TABLE -->\n" + "\n".join(lines) + "\n<!-- END TABLE -->" + tail
    )


def main(argv: Sequence[str] | None = None) -> int:
    global CORPUS
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--live", action="store_true", help="recapture the loopback fixtures (root)")
    args = ap.parse_args(argv)
    CORPUS = args.corpus
    for tool in ("editcap", "mergecap", "tcpdump", "tshark", "capinfos", "gzip"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install tshark tcpdump)")
    if not (CORPUS / HASSH_SRC).exists():
        sys.exit(f"corpus not found at {CORPUS}")
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["TZ"] = "UTC"
    make_tool_fixtures()
    make_link_fixtures()
    make_tunnel_fixtures()
    make_ip_fixtures()
    make_pcapng_fixtures()
    make_merged()
    if args.live:
        make_live()
    register_live()
    entries = build_expected()
    total = sum((OUT / n).stat().st_size for n in entries)
    doc = {
        "about": "Expected packets and bidirectional flows per fixture, from tshark's "
        "dissection grouped by "
        "tests/make_format_captures.py (never by flowsense). flow_facts: src is the client (SYN "
        "sender, else first sender); ports null for ICMP (not asserted), 0 for port-less "
        "protocols; "
        "first_seen_ns null where the container has no timestamps.",
        "fixtures": entries,
    }
    (OUT / "expected.json").write_text(dump_expected(doc))
    write_readme_table(entries)
    print(f"{len(entries)} fixtures, {total} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
