"""The sidecar's pieces that need no root: the TPACKET_V3 block walker on a ring laid out by
hand (packet_mmap.rst's structures, written with ``struct``), the BPF compiler's errors, and the
warm-up capture."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from flowsense.capture.reader import Decoder, RecordBatch, _alloc, iter_batches
from flowsense.config import CaptureConfig
from flowsense.errors import ConfigError
from flowsense.schema import RECORD_COLUMNS
from flowsense.sidecar import ring_kernels as RK
from flowsense.sidecar.ring import compile_bpf
from flowsense.sidecar.warm import synthetic_pcap
from tests.conftest import require_tool

BLOCK = 4096


def _frames(pcap: bytes) -> list[tuple[int, bytes]]:
    """(ts_ns, frame) of a little-endian µs pcap."""
    out, pos = [], 24
    while pos < len(pcap):
        sec, usec, cl, _ = struct.unpack("<IIII", pcap[pos:pos + 16])
        out.append((sec * 10**9 + usec * 1000, pcap[pos + 16:pos + 16 + cl]))
        pos += 16 + cl
    return out


def _strip_vlan(frame: bytes) -> tuple[bytes, int]:
    """What the kernel hands up: the outer 802.1Q tag taken out into tp_vlan_tci."""
    if frame[12:14] == b"\x81\x00":
        return frame[:12] + frame[16:], struct.unpack(">H", frame[14:16])[0]
    return frame, -1


def _ring(blocks: list[list[tuple[int, bytes]]], user: list[bool]) -> np.ndarray:
    ring = bytearray(BLOCK * len(blocks))
    for b, frames in enumerate(blocks):
        base = b * BLOCK
        first = 48
        struct.pack_into("<III", ring, base + 8, 1 if user[b] else 0, len(frames), first)
        p = base + first
        for k, (ts, frame) in enumerate(frames):
            data, tci = _strip_vlan(frame)
            mac = 48 + 32  # tpacket3_hdr, sockaddr_ll, alignment
            size = (mac + len(data) + 15) & ~15
            nxt = size if k + 1 < len(frames) else 0
            status = 1 | (RK.TP_STATUS_VLAN_VALID if tci >= 0 else 0)
            struct.pack_into("<IIIIIIHH", ring, p, nxt, ts // 10**9, ts % 10**9, len(data),
                             len(data), status, mac, mac + 14)
            struct.pack_into("<I", ring, p + 32, max(tci, 0))
            struct.pack_into("<H", ring, p + 56, RK.ARPHRD_ETHER)
            ring[p + mac:p + mac + len(data)] = data
            p += size
            assert p <= base + BLOCK
    return np.frombuffer(bytes(ring), dtype=np.uint8).copy()


def test_ring_walker_matches_the_pcap_reader(tmp_path: Path) -> None:
    """Frames laid out in ring blocks (VLAN tags stripped as the kernel does) decode to the
    same packets as the same frames read from a pcap; a kernel-owned block is not read."""
    pcap = synthetic_pcap(flows=6)
    frames = _frames(pcap)
    split = [frames[:9], frames[9:], frames[:3]]
    ring = _ring(split, [True, True, False])
    rec = _alloc(RECORD_COLUMNS, 64)
    tci = np.zeros(64, dtype=np.uint16)
    n, blocks, bad = RK.walk_ring(ring, BLOCK, 3, 0, 64, rec["data_off"], rec["caplen"],
                                  rec["wirelen"], rec["ts_ns"], rec["linktype"], rec["rec_off"],
                                  tci)
    assert (n, blocks, bad) == (len(frames), 2, 0)
    cap = CaptureConfig()
    dec = Decoder(cap)
    dec.decode(RecordBatch(ring, n, {k: v[:n] for k, v in rec.items()}), 0)
    RK.restore_vlan(dec.out["vlan"], tci, n)
    got = dec.batch(n, ring, "ring").cols
    path = tmp_path / "same.pcap"
    path.write_bytes(pcap)
    want = next(iter(iter_batches(str(path), cap))).cols
    for col in ("ts_ns", "status", "fam", "proto", "src_lo", "dst_lo", "sport", "dport",
                "tcp_flags", "ip_len", "payload_len", "vlan", "wirelen"):
        assert np.array_equal(got[col], want[col]), col
    assert int(np.count_nonzero(got["vlan"] == 7)) == 6
    # a block given back is the kernel's again: nothing more to walk from it
    RK.release_blocks(ring, BLOCK, 3, 0, 2)
    n2, blocks2, _ = RK.walk_ring(ring, BLOCK, 3, 0, 64, rec["data_off"], rec["caplen"],
                                  rec["wirelen"], rec["ts_ns"], rec["linktype"], rec["rec_off"],
                                  tci)
    assert (n2, blocks2) == (0, 0)


def test_ring_walker_skips_a_frame_that_leaves_its_block() -> None:
    frames = _frames(synthetic_pcap(flows=1))[:2]
    ring = _ring([frames], [True])
    struct.pack_into("<I", ring, 48 + 12, BLOCK)  # first frame's snaplen past the block
    rec = _alloc(RECORD_COLUMNS, 8)
    tci = np.zeros(8, dtype=np.uint16)
    n, blocks, bad = RK.walk_ring(ring, BLOCK, 1, 0, 8, rec["data_off"], rec["caplen"],
                                  rec["wirelen"], rec["ts_ns"], rec["linktype"], rec["rec_off"],
                                  tci)
    assert (n, blocks, bad) == (1, 1, 1)


def test_bpf_needs_tcpdump_and_names_a_bad_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    require_tool("tcpdump")
    prog = compile_bpf("tcp port 22")
    assert prog[-1][0] == 6 and all(len(i) == 4 for i in prog)  # ends in BPF_RET
    with pytest.raises(ConfigError, match=r"--bpf 'tcp port': .*syntax error"):
        compile_bpf("tcp port")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="needs tcpdump"):
        compile_bpf("tcp")
