"""The naive twin of the flow aggregator: plain Python, dpkt containers, dicts for the flow table.

Written from docs/flows.md alone, as an independent oracle for the numba path
(flowsense/capture/decode_kernels.py + flowsense/flows/kernels.py); tests/test_twin.py holds the
two equal. Nothing here is fast or clever on purpose: every packet is decoded afresh with
``struct`` slices, every flow is a plain object in a dict, every statistic is computed from the
full list of values at export (two-pass, ``math.fsum``), never incrementally.

What dpkt does here: the containers. pcap file and record headers are dpkt.pcap's
``FileHdr``/``PktHdr`` classes (and its magic table); pcapng blocks are dpkt.pcapng's
``InterfaceDescriptionBlock``/``EnhancedPacketBlock``/``PacketBlock`` (LE and BE). dpkt's
auto-decoding packet classes (``dpkt.ethernet.Ethernet`` and below) are deliberately *not* used
for the layers: they stop at two VLAN tags, take MPLS only before ``0x45``, parse TCP options
strictly (a bad option would lose the packet) and decode IPv6 fragments' payloads, so they do
not implement the page. The layer headers are read with ``struct`` from the page instead.

Where docs/flows.md is silent the choices are marked ``SPEC-GAP`` below; test_twin.py's module
docstring lists them.
"""

from __future__ import annotations

import gzip
import math
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import numpy as np

from flowsense.flows.ids import community_id, flow_ids

NS = 1_000_000_000
NS_PER_MS = 1_000_000

# link types (tcpdump.org/linktypes.html)
LT_NULL, LT_EN10MB, LT_RAW_BSD12, LT_RAW_OBSD14, LT_LOOP = 0, 1, 12, 14, 108
LT_RAW, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2 = 101, 113, 228, 229, 276

ETH_IP4, ETH_IP6 = 0x0800, 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad, legacy QinQ
ETH_MPLS = (0x8847, 0x8848)
ETH_PPPOE = 0x8864
ETH_TEB = 0x6558
GRE_ERSPAN2, GRE_ERSPAN3 = 0x88BE, 0x22EB

# IPv6 extension headers that can be walked over (ESP, 50, cannot: its payload is encrypted)
IP6_EXT = (0, 43, 44, 51, 60, 135, 139, 140)

# ICMP pairs (Community ID): type -> counterpart
ICMP4_PAIR = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
# ICMPv6 also pairs 139/140 (node information query/reply), as Community ID does (pycommunityid,
# Zeek); docs/flows.md's list omits it but says "as Community ID does"
ICMP6_PAIR = {128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133, 135: 136, 136: 135,
              139: 140, 140: 139, 144: 145, 145: 144}
ICMP4_REPLY = {0, 14, 16, 18, 9}  # echo reply, timestamp reply, info reply, mask reply, router adv
ICMP6_REPLY = {129, 131, 134, 136, 140, 145}

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK, TH_URG, TH_ECE, TH_CWR = 1, 2, 4, 8, 16, 32, 64, 128
FLAG_NAMES = (("syn", TH_SYN), ("cwr", TH_CWR), ("ece", TH_ECE), ("urg", TH_URG),
              ("ack", TH_ACK), ("psh", TH_PSH), ("rst", TH_RST), ("fin", TH_FIN))

STATUS = ("ok", "not_ip", "truncated", "bad_ip", "unknown_linktype", "too_deep")


@dataclass(frozen=True)
class NaiveConfig:
    idle_timeout_s: float = 120.0
    established_idle_timeout_s: float = 3600.0
    active_timeout_s: float = 1800.0
    close_delay_s: float = 5.0
    splt_packets: int = 32
    head_bytes: int = 512
    frag_timeout_s: float = 30.0
    max_encap_depth: int = 4

    @classmethod
    def of(cls, config: Any = None) -> NaiveConfig:
        """From a flowsense ``Config`` (or ``FlowConfig``), or defaults for None."""
        if config is None:
            return cls()
        if isinstance(config, NaiveConfig):
            return config
        flows = getattr(config, "flows", config)
        capture = getattr(config, "capture", None)
        return cls(
            idle_timeout_s=flows.idle_timeout_s,
            established_idle_timeout_s=flows.established_idle_timeout_s,
            active_timeout_s=flows.active_timeout_s,
            close_delay_s=flows.close_delay_s,
            splt_packets=flows.splt_packets,
            head_bytes=flows.head_bytes,
            frag_timeout_s=capture.frag_timeout_s if capture else cls.frag_timeout_s,
            max_encap_depth=capture.max_encap_depth if capture else cls.max_encap_depth,
        )


# ------------------------------------------------------------------------------------------------
# containers


@dataclass
class Frame:
    ts_ns: int
    linktype: int
    data: bytes
    wirelen: int
    order: str  # byte order of the file/section: "<" or ">" (DLT_NULL's family)


class ContainerError(Exception):
    """The capture is damaged here; frames before it were yielded."""


def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        return gzip.decompress(raw)
    return raw


def iter_frames(path: str) -> Iterator[Frame]:
    """Every readable frame of a pcap or pcapng file (gzip or not), then ContainerError if the
    container is damaged."""
    data = _read_all(path)
    if len(data) < 24:
        raise ContainerError("empty or truncated file")
    try:
        if data[:4] == b"\x0a\x0d\x0d\x0a":
            yield from _pcapng_frames(data)
        else:
            yield from _pcap_frames(data)
    except (dpkt.NeedData, dpkt.UnpackError, struct.error) as exc:
        raise ContainerError(f"damaged: {exc}") from None


def _pcap_frames(data: bytes) -> Iterator[Frame]:
    fh = dpkt.pcap.FileHdr(data[:24])
    magic = fh.magic
    if magic in (dpkt.pcap.PMUDPCT_MAGIC, dpkt.pcap.PMUDPCT_MAGIC_NANO, dpkt.pcap.PACPDOM_MAGIC):
        fh = dpkt.pcap.LEFileHdr(data[:24])
        order = "<"
    else:
        order = ">"
    if magic not in dpkt.pcap.MAGIC_TO_PKT_HDR:
        raise ContainerError("not a pcap file")
    nano = magic in (dpkt.pcap.TCPDUMP_MAGIC_NANO, dpkt.pcap.PMUDPCT_MAGIC_NANO)
    hdr_cls = dpkt.pcap.MAGIC_TO_PKT_HDR[magic]
    hlen = hdr_cls.__hdr_len__
    linktype = fh.linktype & 0x03FFFFFF  # upper bits: FCS length (LINKTYPE_LT_MASK)
    pos = 24
    while pos < len(data):
        if len(data) - pos < hlen:
            raise ContainerError(f"truncated record header at {pos}")
        ph = hdr_cls(data[pos:pos + hlen])
        start = pos + hlen
        if len(data) - start < ph.caplen:
            raise ContainerError(f"truncated record at {pos}")
        frac = ph.tv_usec * (1 if nano else 1000)
        yield Frame(ph.tv_sec * NS + frac, linktype, data[start:start + ph.caplen],
                    max(ph.len, ph.caplen), order)
        pos = start + ph.caplen


@dataclass
class _Iface:
    linktype: int
    snaplen: int
    units_per_s: int  # timestamp units per second
    offset_s: int


def _pcapng_frames(data: bytes) -> Iterator[Frame]:
    pos = 0
    order = "<"
    ifaces: list[_Iface] = []
    last_ts = 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise ContainerError(f"truncated block at {pos}")
        if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            bom = data[pos + 8:pos + 12]
            order = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
        btype, blen = struct.unpack(order + "II", data[pos:pos + 8])
        if blen < 12 or blen % 4 or len(data) - pos < blen:
            raise ContainerError(f"bad or truncated block at {pos}")
        block = data[pos:pos + blen]
        le = order == "<"
        if btype == dpkt.pcapng.PCAPNG_BT_IDB:
            idb = (dpkt.pcapng.InterfaceDescriptionBlockLE if le
                   else dpkt.pcapng.InterfaceDescriptionBlock)(block)
            units, off = 10**6, 0
            for opt in idb.opts:
                if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and opt.data:
                    v = opt.data[0]
                    units = 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
                elif opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) == 8:
                    off = struct.unpack(order + "q", opt.data)[0]
            ifaces.append(_Iface(idb.linktype, idb.snaplen, units, off))
        elif btype in (dpkt.pcapng.PCAPNG_BT_EPB, dpkt.pcapng.PCAPNG_BT_PB):
            if btype == dpkt.pcapng.PCAPNG_BT_EPB:
                blk = (dpkt.pcapng.EnhancedPacketBlockLE if le
                       else dpkt.pcapng.EnhancedPacketBlock)(block)
            else:
                blk = (dpkt.pcapng.PacketBlockLE if le else dpkt.pcapng.PacketBlock)(block)
            if blk.iface_id >= len(ifaces):
                raise ContainerError(f"unknown interface at {pos}")
            itf = ifaces[blk.iface_id]
            raw = (blk.ts_high << 32) | blk.ts_low
            ts = raw * NS // itf.units_per_s + itf.offset_s * NS
            last_ts = ts
            yield Frame(ts, itf.linktype, bytes(blk.pkt_data)[:blk.caplen],
                        max(blk.pkt_len, blk.caplen), order)
        elif btype == dpkt.pcapng.PCAPNG_BT_SPB:
            if not ifaces:
                raise ContainerError(f"simple packet block before any interface at {pos}")
            (olen,) = struct.unpack(order + "I", block[8:12])
            cap = min(olen, blen - 16)
            if ifaces[0].snaplen:
                cap = min(cap, ifaces[0].snaplen)
            # no timestamp in an SPB: the time of the packet before it
            yield Frame(last_ts, ifaces[0].linktype, block[12:12 + cap], max(olen, cap), order)
        pos += blen


# ------------------------------------------------------------------------------------------------
# packets


@dataclass
class Pkt:
    ts: int
    fam: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int
    flags: int
    size: int
    payload_len: int
    payload: bytes  # the captured part of the payload
    seq: int
    vlan: int
    tunnel: str
    nonfirst_frag: bool


class _Drop(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _be16(b: bytes, p: int) -> int:
    return (b[p] << 8) | b[p + 1]


class Decoder:
    """Frames to packets; holds the fragment table (one stream: kept across files)."""

    def __init__(self, cfg: NaiveConfig) -> None:
        self.cfg = cfg
        self.frags: dict[tuple[int, int, int, int, int], tuple[int, int, int]] = {}
        self.orphans = 0

    def decode(self, fr: Frame) -> Pkt | str:
        """A packet of a flow, or the status name of a frame that is not part of any flow."""
        try:
            return self._decode(fr)
        except _Drop as d:
            return d.status

    def _link(self, fr: Frame) -> tuple[str, int, int]:
        """(kind, ethertype, offset): kind 'eth' for an Ethernet header at offset."""
        b = fr.data
        lt = fr.linktype
        if lt == LT_EN10MB:
            return "eth", 0, 0
        if lt == LT_SLL:
            if len(b) < 16:
                raise _Drop("truncated")
            return "etype", _be16(b, 14), 16
        if lt == LT_SLL2:
            if len(b) < 20:
                raise _Drop("truncated")
            return "etype", _be16(b, 0), 20
        if lt in (LT_RAW, LT_RAW_BSD12, LT_RAW_OBSD14):
            if len(b) < 1:
                raise _Drop("truncated")
            v = b[0] >> 4
            return "etype", ETH_IP4 if v == 4 else ETH_IP6 if v == 6 else -1, 0
        if lt == LT_IPV4:
            return "etype", ETH_IP4, 0
        if lt == LT_IPV6:
            return "etype", ETH_IP6, 0
        if lt in (LT_NULL, LT_LOOP):
            if len(b) < 4:
                raise _Drop("truncated")
            # DLT_NULL: host order of the writer (the file's); swap if that looks wrong (as
            # Wireshark does). DLT_LOOP: network order.
            af = struct.unpack((">" if lt == LT_LOOP else fr.order) + "I", b[:4])[0]
            if af & 0xFFFF0000:
                af = struct.unpack("<I", struct.pack(">I", af))[0]
            return "etype", ETH_IP4 if af == 2 else ETH_IP6 if af in (24, 28, 30) else -1, 4
        raise _Drop("unknown_linktype")

    def _decode(self, fr: Frame) -> Pkt:
        b = fr.data
        kind, etype, off = self._link(fr)
        end = len(b)  # captured end of the current layer
        wire_end = fr.wirelen  # its end on the wire
        vlan: int | None = None
        tunnel = ""
        layers = 0  # encapsulations removed

        def deeper() -> None:
            nonlocal layers
            layers += 1
            if layers > self.cfg.max_encap_depth:
                raise _Drop("too_deep")

        while True:
            if kind == "eth":
                if end - off < 14:
                    raise _Drop("truncated")
                etype = _be16(b, off + 12)
                off += 14
                kind = "etype"
            # below Ethernet: tags and labels, then IP
            if etype in ETH_VLAN:
                if end - off < 4:
                    raise _Drop("truncated")
                if vlan is None:
                    vlan = _be16(b, off) & 0x0FFF
                etype = _be16(b, off + 2)
                off += 4
                deeper()
                continue
            if etype in ETH_MPLS:
                while True:
                    if end - off < 4:
                        raise _Drop("truncated")
                    bottom = b[off + 2] & 1
                    off += 4
                    if bottom:
                        break
                if end - off < 1:
                    raise _Drop("truncated")
                v = b[off] >> 4
                if v not in (4, 6):
                    raise _Drop("not_ip")
                etype = ETH_IP4 if v == 4 else ETH_IP6
                deeper()
                continue
            if etype == ETH_PPPOE:
                if end - off < 8:
                    raise _Drop("truncated")
                ppp = _be16(b, off + 6)
                off += 8
                if ppp not in (0x0021, 0x0057):
                    raise _Drop("not_ip")
                etype = ETH_IP4 if ppp == 0x0021 else ETH_IP6
                deeper()
                continue
            if etype not in (ETH_IP4, ETH_IP6):
                raise _Drop("not_ip")
            ip = self._ip(b, off, end, wire_end, etype, fr.ts_ns)
            if isinstance(ip, tuple):  # a tunnel to open: (kind, etype, off, end, wire_end, name)
                kind, etype, off, end, wire_end, name = ip
                tunnel = tunnel or name
                deeper()
                continue
            ip.vlan = vlan or 0
            ip.tunnel = tunnel
            return ip

    def _ip(self, b: bytes, off: int, end: int, wire_end: int, etype: int,
            ts: int) -> Pkt | tuple[str, int, int, int, int, str]:
        nonfirst = False
        first_frag = False
        if etype == ETH_IP4:
            if end - off < 20:
                raise _Drop("truncated")
            if b[off] >> 4 != 4:
                raise _Drop("bad_ip")
            ihl = (b[off] & 15) * 4
            tot = _be16(b, off + 2)
            if tot == 0:  # segmentation offload: what the frame holds
                tot = wire_end - off
            if ihl < 20 or tot < ihl:
                raise _Drop("bad_ip")
            if end - off < ihl:
                raise _Drop("truncated")
            fragw = _be16(b, off + 6)
            foff = fragw & 0x1FFF
            more = bool(fragw & 0x2000)
            nonfirst = foff != 0
            first_frag = foff == 0 and more
            ipid = _be16(b, off + 4)
            proto = b[off + 9]
            fam = 4
            src = struct.unpack(">I", b[off + 12:off + 16])[0]
            dst = struct.unpack(">I", b[off + 16:off + 20])[0]
            size = tot
            l4 = off + ihl
            l4_end = off + tot  # where the IP lengths say the datagram ends
        else:
            if end - off < 40:
                raise _Drop("truncated")
            if b[off] >> 4 != 6:
                raise _Drop("bad_ip")
            plen = _be16(b, off + 4)
            if plen == 0:  # jumbogram or offload: what the frame holds
                plen = wire_end - off - 40
                if plen < 0:
                    raise _Drop("bad_ip")
            fam = 6
            hi_src = b[off + 8:off + 24]
            hi_dst = b[off + 24:off + 40]
            src = int.from_bytes(hi_src, "big")
            dst = int.from_bytes(hi_dst, "big")
            size = 40 + plen
            l4_end = off + 40 + plen
            nh = b[off + 6]
            q = off + 40
            ipid = 0
            while nh in IP6_EXT:
                if end - q < 8:
                    raise _Drop("truncated")
                if l4_end - q < 8:
                    raise _Drop("bad_ip")
                nxt = b[q]
                if nh == 44:
                    fo = _be16(b, q + 2) >> 3
                    m = b[q + 3] & 1
                    ipid = struct.unpack(">I", b[q + 4:q + 8])[0]
                    nonfirst = fo != 0
                    first_frag = fo == 0 and bool(m)
                    q += 8
                elif nh == 51:
                    q += (b[q + 1] + 2) * 4
                else:
                    q += (b[q + 1] + 1) * 8
                nh = nxt
                if q > l4_end:
                    raise _Drop("bad_ip")
            proto = nh
            l4 = q
        l4len = l4_end - l4
        cap_end = min(end, l4_end)  # captured bytes of this datagram

        pkt = Pkt(ts, fam, proto, src, dst, 0, 0, 0, size, 0, b"", 0, 0, "", nonfirst)
        fkey = (fam, src, dst, ipid, proto)
        if nonfirst:
            first = self.frags.get(fkey)
            if first is not None and ts - first[2] <= int(round(self.cfg.frag_timeout_s * NS)):
                pkt.sport, pkt.dport = first[0], first[1]
            else:
                self.orphans += 1
            pkt.payload_len = l4len  # no L4 header in a later fragment
            return pkt

        hdr = 0
        if proto == 6:
            if l4len < 20:
                raise _Drop("bad_ip")  # the data offset (>= 5 words) lies past the IP length
            if cap_end - l4 >= 20:
                doff = (b[l4 + 12] >> 4) * 4
                if doff < 20 or doff > l4len:
                    raise _Drop("bad_ip")
                pkt.sport, pkt.dport = _be16(b, l4), _be16(b, l4 + 2)
                pkt.seq = struct.unpack(">I", b[l4 + 4:l4 + 8])[0]
                pkt.flags = b[l4 + 13]
                hdr = doff
            else:
                hdr = -1  # SPEC-GAP: L4 header cut by the snap length: ports 0, no payload
        elif proto in (17, 136):  # UDP and UDP-Lite share the 8-byte port header
            if l4len < 8:
                raise _Drop("bad_ip")  # SPEC-GAP: a UDP header longer than the IP payload
            if cap_end - l4 >= 8:
                pkt.sport, pkt.dport = _be16(b, l4), _be16(b, l4 + 2)
                hdr = 8
            else:
                hdr = -1
        elif (proto == 1 and fam == 4) or (proto == 58 and fam == 6):
            if cap_end - l4 >= 2 and l4len >= 2:
                t, code = b[l4], b[l4 + 1]
                pairs = ICMP4_PAIR if fam == 4 else ICMP6_PAIR
                pkt.sport = t
                pkt.dport = pairs.get(t, code)
                hdr = 8
            else:
                hdr = -1
        if hdr >= 0:
            pkt.payload_len = max(0, l4len - hdr)
            pkt.payload = b[l4 + hdr:cap_end] if cap_end > l4 + hdr else b""
        if first_frag:
            self.frags[fkey] = (pkt.sport, pkt.dport, ts)
            return pkt
        if nonfirst or first_frag or hdr < 0:
            return pkt

        # tunnels
        pay_off = l4 + hdr
        pay = pkt.payload
        if proto == 17 and pkt.dport == 4789 and len(pay) >= 8 and pay[0] & 0x08:
            return ("eth", 0, pay_off + 8, cap_end, l4_end, "vxlan")
        if proto == 17 and pkt.dport == 6081 and len(pay) >= 8:
            optlen = (pay[0] & 0x3F) * 4
            gproto = _be16(pay, 2)
            if len(pay) >= 8 + optlen and gproto in (ETH_TEB, ETH_IP4, ETH_IP6):
                k = "eth" if gproto == ETH_TEB else "etype"
                return (k, gproto, pay_off + 8 + optlen, cap_end, l4_end, "geneve")
        if proto in (4, 41):
            return ("etype", ETH_IP4 if proto == 4 else ETH_IP6, l4, cap_end, l4_end, "ipip")
        if proto == 47 and cap_end - l4 >= 4:
            gflags = _be16(b, l4)
            gproto = _be16(b, l4 + 2)
            if gflags & 7 == 0:  # GRE version 0
                g = l4 + 4
                g += 4 if gflags & 0x8000 else 0  # checksum (+ reserved)
                g += 4 if gflags & 0x2000 else 0  # key
                g += 4 if gflags & 0x1000 else 0  # sequence number
                name = "gre"
                if gproto == GRE_ERSPAN2:
                    g += 8
                    name, gproto = "erspan", ETH_TEB
                elif gproto == GRE_ERSPAN3 and cap_end - g >= 12:
                    g += 12 + (8 if b[g + 11] & 1 else 0)
                    name, gproto = "erspan", ETH_TEB
                if gproto in (ETH_TEB, ETH_IP4, ETH_IP6) and g <= cap_end:
                    k = "eth" if gproto == ETH_TEB else "etype"
                    return (k, gproto, g, cap_end, l4_end, name)
        return pkt


# ------------------------------------------------------------------------------------------------
# flows


class Dir:
    """One direction's packets, kept whole."""

    def __init__(self) -> None:
        self.times: list[int] = []  # capture order
        self.sizes: list[int] = []
        self.payload = 0
        self.flags = dict.fromkeys((n for n, _ in FLAG_NAMES), 0)
        self.base: int | None = None  # sequence number of payload byte 0
        self.high = 0  # highest relative sequence end seen
        self.retrans = 0
        self.head = bytearray()
        self.head_len = 0
        self.fin = False


class Flow:
    def __init__(self, key: tuple, client: tuple[int, int], server: tuple[int, int],
                 orientation: str, p: Pkt, seq: int) -> None:
        self.key = key
        self.fam = p.fam
        self.proto = p.proto
        self.client = client
        self.server = server
        self.orientation = orientation
        self.first = p.ts
        self.last = p.ts
        self.vlan = p.vlan
        self.tunnel = p.tunnel
        self.seq = seq
        self.mark = p.ts  # start of the current active-timeout period
        self.dirs = (Dir(), Dir())
        self.times: list[int] = []
        self.sizes: list[int] = []
        self.splt: list[tuple[int, float]] = []
        self.fragments = 0
        self.rst = False

    def state(self) -> str:
        """'closing', 'established' or 'short' (which timeout applies)."""
        if self.proto == 6:
            if self.rst or (self.dirs[0].fin and self.dirs[1].fin):
                return "closing"
            if self.dirs[0].times and self.dirs[1].times:
                return "established"
        return "short"


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    m = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _stats(times: list[int], sizes: list[int], prefix: str, out: dict[str, Any]) -> None:
    n = len(sizes)
    first = times[0] if n else 0
    last = max(times) if n else 0
    out[f"{prefix}_first_seen_ms"] = first // NS_PER_MS
    out[f"{prefix}_last_seen_ms"] = last // NS_PER_MS
    out[f"{prefix}_duration_ms"] = (last - first) // NS_PER_MS
    out[f"{prefix}_packets"] = n
    out[f"{prefix}_bytes"] = sum(sizes)
    mean, sd = _mean_sd(sizes)
    out[f"{prefix}_min_ps"] = min(sizes) if n else 0
    out[f"{prefix}_mean_ps"] = mean
    out[f"{prefix}_stddev_ps"] = sd
    out[f"{prefix}_max_ps"] = max(sizes) if n else 0
    gaps = [(t1 - t0) for t0, t1 in zip(times, times[1:])]  # capture order, may be negative
    gmean, gsd = _mean_sd([g / NS_PER_MS for g in gaps])
    out[f"{prefix}_min_piat_ms"] = min(gaps) / NS_PER_MS if gaps else 0.0
    out[f"{prefix}_mean_piat_ms"] = gmean
    out[f"{prefix}_stddev_piat_ms"] = gsd
    out[f"{prefix}_max_piat_ms"] = max(gaps) / NS_PER_MS if gaps else 0.0


def _addr_text(fam: int, a: int) -> str:
    if fam == 4:
        return socket.inet_ntop(socket.AF_INET, a.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, a.to_bytes(16, "big"))


def _hi_lo(fam: int, a: int) -> tuple[int, int]:
    return (0, a) if fam == 4 else (a >> 64, a & 0xFFFFFFFFFFFFFFFF)


def record(fl: Flow, expiration: str, interim: bool, cfg: NaiveConfig) -> dict[str, Any]:
    """The flow record as flowsense's FLOW_COLUMNS, plus head/head_len/splt."""
    r: dict[str, Any] = {}
    (cip, cport), (sip, sport) = fl.client, fl.server
    a, bb = sorted([fl.client, fl.server])
    ah, al = _hi_lo(fl.fam, a[0])
    bh, bl = _hi_lo(fl.fam, bb[0])
    u64 = np.uint64
    r["flow_id"] = int(flow_ids(
        np.array([fl.fam], np.uint8), np.array([fl.proto], np.uint8), np.array([ah], u64),
        np.array([al], u64), np.array([bh], u64), np.array([bl], u64),
        np.array([a[1]], np.uint16), np.array([bb[1]], np.uint16), np.array([fl.first], np.int64),
    )[0])
    ch, cl = _hi_lo(fl.fam, cip)
    sh, sl = _hi_lo(fl.fam, sip)
    r["community_id"] = community_id(fl.fam, fl.proto, ch, cl, sh, sl, cport, sport)
    r["src_ip"] = _addr_text(fl.fam, cip)
    r["src_port"] = cport
    r["dst_ip"] = _addr_text(fl.fam, sip)
    r["dst_port"] = sport
    r["protocol"] = fl.proto
    r["ip_version"] = fl.fam
    r["vlan_id"] = fl.vlan
    r["tunnel"] = fl.tunnel
    r["orientation"] = fl.orientation
    r["app_proto"] = ""
    r["expiration"] = expiration
    r["interim"] = interim
    _stats(fl.times, fl.sizes, "bidirectional", r)
    # bidirectional first/last are the flow's (first packet; latest packet time)
    r["bidirectional_first_seen_ms"] = fl.first // NS_PER_MS
    r["bidirectional_last_seen_ms"] = fl.last // NS_PER_MS
    r["bidirectional_duration_ms"] = (fl.last - fl.first) // NS_PER_MS
    r["bidirectional_payload_bytes"] = fl.dirs[0].payload + fl.dirs[1].payload
    for prefix, d in (("src2dst", fl.dirs[0]), ("dst2src", fl.dirs[1])):
        _stats(d.times, d.sizes, prefix, r)
        r[f"{prefix}_payload_bytes"] = d.payload
        for name, _ in FLAG_NAMES:
            r[f"{prefix}_{name}_packets"] = d.flags[name]
    for name, _ in FLAG_NAMES:
        r[f"bidirectional_{name}_packets"] = fl.dirs[0].flags[name] + fl.dirs[1].flags[name]
    r["src2dst_retransmissions"] = fl.dirs[0].retrans
    r["dst2src_retransmissions"] = fl.dirs[1].retrans
    r["fragments"] = fl.fragments
    hb = cfg.head_bytes
    r["head"] = [bytes(d.head[:hb]).ljust(hb, b"\0") for d in fl.dirs]
    r["head_len"] = [d.head_len for d in fl.dirs]
    r["splt_ps"] = [s for s, _ in fl.splt]
    r["splt_t_ms"] = [t for _, t in fl.splt]
    r["_seq"] = fl.seq
    return r


def _place(d: Dir, rel: int, data: bytes, limit: int) -> None:
    """Write ``data`` at offset ``rel`` of the head (bytes outside [0, limit) are dropped)."""
    lo = max(rel, 0)
    hi = min(rel + len(data), limit)
    if hi <= lo:
        return
    if len(d.head) < hi:
        d.head.extend(b"\0" * (hi - len(d.head)))
    d.head[lo:hi] = data[lo - rel:hi - rel]
    d.head_len = max(d.head_len, hi)


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


@dataclass
class NaiveResult:
    records: list[dict[str, Any]]
    packets: int = 0
    status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUS, 0))
    fragment_orphans: int = 0
    errors: list[str] = field(default_factory=list)


class Aggregator:
    def __init__(self, cfg: NaiveConfig) -> None:
        self.cfg = cfg
        self.flows: dict[tuple, Flow] = {}
        self.out: list[dict[str, Any]] = []
        self.now: int | None = None
        self.created = 0
        ns = lambda s: int(round(s * NS))  # noqa: E731
        self.tmo = {"short": ns(cfg.idle_timeout_s),
                    "established": ns(cfg.established_idle_timeout_s),
                    "closing": ns(cfg.close_delay_s)}
        self.active = ns(cfg.active_timeout_s)

    def _end(self, key: tuple, why: str) -> None:
        fl = self.flows.pop(key)
        self.out.append(record(fl, why, False, self.cfg))

    def _expire(self) -> None:
        now = self.now
        assert now is not None
        for key, fl in list(self.flows.items()):
            st = fl.state()
            if now - fl.last >= self.tmo[st]:
                if st == "closing":
                    self._end(key, "rst" if fl.rst else "fin")
                else:
                    self._end(key, "idle")
        for fl in self.flows.values():
            if now - fl.mark >= self.active:
                self.out.append(record(fl, "active", True, self.cfg))
                fl.mark = now

    def feed(self, p: Pkt) -> None:
        if self.now is not None and p.ts < self.now - self.tmo["short"]:
            # time went back by more than the idle timeout: the flows so far end (flows.md)
            self.finish()
            self.now = None
        if self.now is None or p.ts > self.now:
            self.now = p.ts
        self._expire()
        ea, eb = (p.src, p.sport), (p.dst, p.dport)
        key = (p.fam, p.proto, *sorted([ea, eb]))
        fl = self.flows.get(key)
        syn_only = p.proto == 6 and p.flags & (TH_SYN | TH_ACK) == TH_SYN
        if fl is not None and syn_only and fl.state() == "closing":
            self._end(key, "reuse")
            fl = None
        if fl is None:
            client, server, orient = ea, eb, "guessed"
            if p.proto == 6 and p.flags & TH_SYN:
                if p.flags & TH_ACK:
                    client, server, orient = eb, ea, "syn-ack"
                else:
                    orient = "syn"
            elif (p.proto == 1 and p.fam == 4 and p.sport in ICMP4_REPLY) or (
                    p.proto == 58 and p.fam == 6 and p.sport in ICMP6_REPLY):
                client, server = eb, ea
            fl = Flow(key, client, server, orient, p, self.created)
            self.created += 1
            self.flows[key] = fl
        di = 0 if ea == fl.client and eb == fl.server else 1
        d = fl.dirs[di]
        fl.last = max(fl.last, p.ts)
        fl.times.append(p.ts)
        fl.sizes.append(p.size)
        d.times.append(p.ts)
        d.sizes.append(p.size)
        d.payload += p.payload_len
        if p.nonfirst_frag:
            fl.fragments += 1
        if len(fl.splt) < self.cfg.splt_packets:
            fl.splt.append((p.size if di == 0 else -p.size, (p.ts - fl.first) / NS_PER_MS))
        if p.proto == 6:
            for name, bit in FLAG_NAMES:
                if p.flags & bit:
                    d.flags[name] += 1
            if p.flags & TH_RST:
                fl.rst = True
            if p.flags & TH_FIN:
                d.fin = True
            if p.flags & TH_SYN:
                d.base = (p.seq + 1) & 0xFFFFFFFF
        if p.payload_len > 0 and not p.nonfirst_frag:
            if p.proto == 6:
                start = (p.seq + (1 if p.flags & TH_SYN else 0)) & 0xFFFFFFFF  # SYN data: +1
                if d.base is None:
                    d.base = start
                rel = _signed32(start - d.base)
                end = rel + p.payload_len
                if end <= d.high:
                    d.retrans += 1
                else:
                    d.high = end
                _place(d, rel, p.payload, self.cfg.head_bytes)
            else:
                _place(d, d.head_len, p.payload, self.cfg.head_bytes)

    def finish(self) -> None:
        # a flow already closed by FIN or RST ends for that reason; the rest because input ended
        for key, fl in list(self.flows.items()):
            if fl.state() == "closing":
                self._end(key, "rst" if fl.rst else "fin")
            else:
                self._end(key, "end")


def first_time(path: str | Path) -> int | None:
    """Time of a capture's first frame, None when it has none or cannot be read."""
    try:
        for fr in iter_frames(str(path)):
            return fr.ts_ns
    except (ContainerError, OSError, ValueError):
        return None
    return None


def naive_flows(paths: Sequence[str | Path], config: Any = None) -> NaiveResult:
    """Flow records of ``paths`` (one stream), sorted as flowsense sorts them: by first packet
    (ms), then creation order; a flow's interim records precede its final one.

    Inputs are taken in the order of their first frame's time (ties and unreadable files keep
    their given order, unreadable ones last); a frame older than ``now`` by more than the idle
    timeout ends every live flow and restarts the clock (docs/flows.md), at a file boundary or
    inside a file alike.
    """
    cfg = NaiveConfig.of(config)
    dec = Decoder(cfg)
    agg = Aggregator(cfg)
    res = NaiveResult([])
    keyed = [(first_time(p), i, p) for i, p in enumerate(paths)]
    ordered = [p for t, _, p in sorted(k for k in keyed if k[0] is not None)]
    ordered += [p for t, _, p in keyed if t is None]
    for path in ordered:
        try:
            for fr in iter_frames(str(path)):
                res.packets += 1
                p = dec.decode(fr)
                if isinstance(p, str):
                    res.status[p] += 1
                    continue
                res.status["ok"] += 1
                agg.feed(p)
        except ContainerError as exc:
            res.errors.append(f"{path}: {exc}")
    agg.finish()
    res.fragment_orphans = dec.orphans
    order = sorted(range(len(agg.out)),
                   key=lambda i: (agg.out[i]["bidirectional_first_seen_ms"], agg.out[i]["_seq"], i))
    res.records = [agg.out[i] for i in order]
    return res


def may_name_suffix(head: bytes, kept: int, lengths: Sequence[int], listed: set[int],
                    weights: Sequence[int]) -> bool:
    """Twin of ``flowsense.detect.kernels.may_name_suffix`` for one DNS message: does the first
    question's name (from byte 12 to its terminating zero, within 256 bytes and the ``kept``
    bytes) end, zero included, in a suffix of one of ``lengths`` bytes whose hash is
    ``listed``? The hash: the suffix read last byte first, ASCII letters lowered, each byte
    times its position's weight, summed modulo 2**64."""
    window = head[12:12 + 256]
    if 0 not in window:
        return False
    end = 12 + window.index(0)
    if end >= kept:
        return False
    for size in lengths:
        if end - size + 1 < 12:
            return False
        suffix = head[end - size + 1:end + 1].lower()
        h = sum(b * w for b, w in zip(reversed(suffix), weights)) % 2**64
        if h in listed:
            return True
    return False
