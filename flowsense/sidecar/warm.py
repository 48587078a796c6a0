"""Compile (or load from the cache) every kernel the sidecar will call, before dropping root.

numba compiles a kernel at its first call for the argument types it sees. After ``--user`` the
process may not read or write root's compile cache, and a compile in the middle of a traffic
burst costs seconds, so the sidecar runs a tiny synthetic capture through the same paths first:
a memory-mapped file and a stream (read-only and writable buffers are different types to numba),
the ring walker, snapshots, ticks, eviction and the end-of-input flush.
"""

from __future__ import annotations

import dataclasses
import io
import os
import socket
import tempfile

import dpkt
import numpy as np

from flowsense.capture.reader import ReaderStats, iter_records
from flowsense.capture.source import StreamSource
from flowsense.config import Config
from flowsense.detect.base import Resources
from flowsense.detect.kernels import may_name_suffix
from flowsense.detect.registry import DETECTORS
from flowsense.flows.features import FeatureFrame
from flowsense.flows.table import NameSuffixes
from flowsense.pipeline import Pipeline
from flowsense.sidecar import ring_kernels as RK
from flowsense.signatures import HASH_WEIGHTS


def _frame(src: str, dst: str, sport: int, dport: int, flags: int, seq: int,
           data: bytes = b"", vlan: int = 0) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=flags, data=data)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip,
                                 type=dpkt.ethernet.ETH_TYPE_IP)
    if vlan:
        eth.vlan_tags = [dpkt.ethernet.VLANtag8021Q(pri=0, cfi=0, id=vlan)]
        eth.type = dpkt.ethernet.ETH_TYPE_8021Q
    return bytes(eth)


def synthetic_pcap(flows: int = 40) -> bytes:
    """An SSH-looking session, a JSON line, and ``flows`` one-packet flows (for eviction)."""
    out = io.BytesIO()
    w = dpkt.pcap.Writer(out, linktype=1)
    t = 1_700_000_000.0
    c, s = "10.0.0.2", "198.51.100.7"
    S, A, PA, FA = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK, \
        dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK
    for port, talk in ((22, (b"SSH-2.0-OpenSSH_9.2\r\n", b"SSH-2.0-OpenSSH_9.2\r\n")),
                       (3333, (b'{"id":1,"method":"login","params":{}}\n', b'{"id":1}\n'))):
        seq = [1000, 5000]
        pkts = [(c, s, port, S, 0, b""), (s, c, port, S | A, 1, b""), (c, s, port, A, 0, b"")]
        pkts += [(c, s, port, PA, 0, talk[0]), (s, c, port, PA, 1, talk[1])]
        pkts += [(c, s, port, FA, 0, b""), (s, c, port, FA, 1, b"")]
        for src, dst, p, fl, d, data in pkts:
            sp, dp = (40000 + p, p) if d == 0 else (p, 40000 + p)
            w.writepkt(_frame(src, dst, sp, dp, fl, seq[d], data, vlan=7 if d else 0), t)
            seq[d] += len(data) + (1 if fl & (S | 1) else 0)
            t += 0.001
    for k in range(flows):
        w.writepkt(_frame(f"10.1.{k // 250}.{k % 250 + 1}", s, 1024 + k, 80, S, 1), t)
        t += 0.001
    return out.getvalue()


def warm(config: Config) -> None:
    """Run the synthetic capture through every path the sidecar uses, with fresh detectors
    (results thrown away)."""
    flows = dataclasses.replace(config.flows, max_flows=16, initial_flows=16, watch_quota=4)
    cfg = dataclasses.replace(config, flows=flows)
    data = synthetic_pcap()
    detectors = [cls(Resources()) for cls in DETECTORS.values()]
    rules = [r for d in detectors for r in d.watch_rules()]

    def sink(frame: FeatureFrame) -> None:
        for d in detectors:
            d.on_frame(frame)

    def snapshot(frame: FeatureFrame) -> None:
        for d in detectors:
            d.on_snapshot(frame)

    pipe = Pipeline(cfg, sink, rules, snapshot)
    fd, path = tempfile.mkstemp(suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        pipe.run_file(path)  # a memory map: read-only buffers
    finally:
        os.unlink(path)
    src = StreamSource("<warm>", io.BytesIO(data), cfg.capture)
    for rb in iter_records("-", cfg.capture, ReaderStats(), src):  # writable buffers
        pipe.decoder.decode(rb, 0)
        pipe.feed(pipe.decoder.batch(rb.n, rb.buf, "<warm>"))
        pipe.tick(pipe.table.clock_ns + 10**9)
    pipe.tick(pipe.table.clock_ns + 10**12)
    pipe.finish()
    ring = np.zeros(2 * 4096, dtype=np.uint8)
    rec = {k: np.zeros(16, dtype=v.dtype) for k, v in pipe.decoder.out.items()}
    tci = np.zeros(16, dtype=np.uint16)
    RK.walk_ring(ring, 4096, 2, 0, 16, rec["pay_off"], np.zeros(16, np.uint32),
                 np.zeros(16, np.uint32), rec["ts_ns"], np.zeros(16, np.uint16),
                 rec["rec_off"], tci)
    RK.release_blocks(ring, 4096, 2, 0, 0)
    RK.restore_vlan(rec["vlan"], tci, 0)
    # the pool detector's DNS name kernel runs only with listed domains (none here)
    # (its first look at a frame, ``pool_picks``, ran with the detectors above)
    names = NameSuffixes(np.ones(1, np.int64), np.zeros(1, np.uint64), HASH_WEIGHTS)
    may_name_suffix(np.zeros((1, 2, 16), np.uint8), np.zeros((1, 2), np.int64),
                    np.zeros(1, np.int64), names.lengths, names.hashes, names.weights,
                    names.bits, np.zeros(1, dtype=bool))
