"""A flow flood for the bounded-table tests: one-packet UDP flows, built with numpy (no Python
per packet), with the packets of a real capture spread evenly through it."""

from __future__ import annotations

from pathlib import Path

import dpkt
import numpy as np

FRAME = 60  # Ethernet + IPv4 + UDP, padded to the Ethernet minimum


def _flood_records(n: int, t0: float) -> np.ndarray:
    """``n`` pcap records (16-byte header + 60-byte frame), flow i from 10.0.0.0 + i."""
    rec = np.zeros((n, 16 + FRAME), dtype=np.uint8)
    i = np.arange(n, dtype=np.uint64)
    ts_us = (np.uint64(int(t0 * 1e6)) + i * np.uint64(10)).astype(np.uint64)
    hdr = rec[:, :16].view("<u4")
    hdr[:, 0] = (ts_us // np.uint64(1_000_000)).astype(np.uint32)
    hdr[:, 1] = (ts_us % np.uint64(1_000_000)).astype(np.uint32)
    hdr[:, 2] = FRAME
    hdr[:, 3] = FRAME
    f = rec[:, 16:]
    f[:, 0:6] = (2, 0, 0, 0, 0, 2)
    f[:, 6:12] = (2, 0, 0, 0, 0, 1)
    f[:, 12:14] = (0x08, 0x00)
    ip = f[:, 14:34]
    ip[:, 0] = 0x45
    ip[:, 3] = 28  # total length
    ip[:, 8] = 64
    ip[:, 9] = 17
    src = (np.uint64(10 << 24) + i).astype(np.uint32)
    for k in range(4):
        ip[:, 12 + k] = (src >> np.uint32(8 * (3 - k))) & np.uint32(0xFF)
    ip[:, 16:20] = (198, 51, 100, 9)
    words = ip.reshape(n, 10, 2).astype(np.uint32)
    s = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    csum = ~s & 0xFFFF
    ip[:, 10] = csum >> 8
    ip[:, 11] = csum & 0xFF
    udp = f[:, 34:42]
    sport = 1024 + (i % np.uint64(60000)).astype(np.uint32)
    udp[:, 0] = sport >> 8
    udp[:, 1] = sport & 0xFF
    udp[:, 3] = 9  # discard
    udp[:, 5] = 8
    return rec


def write_flood(path: Path, n_flows: int, spread: Path, t0: float = 1_700_000_000.0) -> int:
    """Write ``n_flows`` one-packet flows with every packet of capture ``spread`` placed at
    even intervals through them (its order kept); returns the packet count."""
    with open(spread, "rb") as f:
        extra = [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(f)]
    flood = _flood_records(n_flows, t0)
    cuts = np.linspace(0, n_flows, len(extra) + 1, dtype=np.int64)[1:-1]
    pieces = np.split(flood, cuts)
    with open(path, "wb") as out:
        w = dpkt.pcap.Writer(out, snaplen=65535, linktype=1)
        w.writepkt(extra[0][1], t0)  # the first packet (the SYN) before the flood
        for k, piece in enumerate(pieces):
            out.write(piece.tobytes())
            if k + 1 < len(extra):
                w.writepkt(extra[k + 1][1], t0)
    return n_flows + len(extra)
