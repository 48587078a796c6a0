"""Tiny capture builder for unit tests: dpkt frames written with dpkt's pcap writer."""

from __future__ import annotations

import socket
from pathlib import Path

import dpkt


def tcp(src: str, dst: str, sport: int, dport: int, flags: int, seq: int = 0,
        payload: bytes = b"", ack: int = 0) -> bytes:
    """An Ethernet frame carrying one TCP segment (IPv4 or IPv6 by address)."""
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, data=payload)
    return _ip_frame(src, dst, dpkt.ip.IP_PROTO_TCP, seg)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    dg = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    dg.ulen = 8 + len(payload)
    return _ip_frame(src, dst, dpkt.ip.IP_PROTO_UDP, dg)


def _ip_frame(src: str, dst: str, proto: int, l4: dpkt.Packet) -> bytes:
    if ":" in src:
        ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src),
                           dst=socket.inet_pton(socket.AF_INET6, dst), nxt=proto, hlim=64,
                           data=l4)
        ip6.plen = len(bytes(l4))
        eth = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP6, data=ip6)
    else:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, data=l4)
        ip.len = 20 + len(bytes(l4))
        eth = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    eth.src = b"\x02\x00\x00\x00\x00\x01"
    eth.dst = b"\x02\x00\x00\x00\x00\x02"
    return bytes(eth)


def write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> Path:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for ts, frame in packets:
            w.writepkt(frame, ts=ts)
    return path


SYN, ACK, PSH, FIN, RST = (dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN,
                           dpkt.tcp.TH_RST)


def tcp_session(c: str, s: str, cport: int, sport: int, t0: float,
                exchanges: list[tuple[int, bytes]], close: bool = True,
                gap_s: float = 0.01) -> list[tuple[float, bytes]]:
    """A handshake, then (direction 0: client->server, 1: back) payloads, then FINs."""
    out: list[tuple[float, bytes]] = []
    t = t0
    cseq, sseq = 1000, 5000
    out.append((t, tcp(c, s, cport, sport, SYN, cseq)))
    t += gap_s
    out.append((t, tcp(s, c, sport, cport, SYN | ACK, sseq, ack=cseq + 1)))
    t += gap_s
    cseq += 1
    sseq += 1
    out.append((t, tcp(c, s, cport, sport, ACK, cseq, ack=sseq)))
    for direction, data in exchanges:
        t += gap_s
        if direction == 0:
            out.append((t, tcp(c, s, cport, sport, PSH | ACK, cseq, data, ack=sseq)))
            cseq += len(data)
        else:
            out.append((t, tcp(s, c, sport, cport, PSH | ACK, sseq, data, ack=cseq)))
            sseq += len(data)
    if close:
        t += gap_s
        out.append((t, tcp(c, s, cport, sport, FIN | ACK, cseq, ack=sseq)))
        t += gap_s
        out.append((t, tcp(s, c, sport, cport, FIN | ACK, sseq, ack=cseq + 1)))
        t += gap_s
        out.append((t, tcp(c, s, cport, sport, ACK, cseq + 1, ack=sseq + 1)))
    return out
