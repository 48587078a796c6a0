"""From a path to packet batches: format detection, container headers, walking and decoding.

Python parses the few headers (pcap global header, pcapng SHB/IDB/ISB); numba walks the records
and decodes the frames. ``iter_batches`` yields everything readable and then, if the container
was damaged, raises ``CaptureError`` naming the byte offset, so nothing before the damage is lost.
Batches reuse their arrays: a batch is valid until the next one is requested.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from flowsense.capture import kernels as K
from flowsense.capture.decode_kernels import decode_batch, walk_decode_pcap
from flowsense.capture.source import ByteSource, open_source
from flowsense.config import CaptureConfig
from flowsense.errors import CaptureError
from flowsense.schema import PACKET_COLUMNS, RECORD_COLUMNS

log = logging.getLogger(__name__)

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": (False, 1000),  # little-endian, µs
    b"\xa1\xb2\xc3\xd4": (True, 1000),  # big-endian, µs
    b"\x4d\x3c\xb2\xa1": (False, 1),  # little-endian, ns
    b"\xa1\xb2\x3c\x4d": (True, 1),  # big-endian, ns
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
SUPPORTED_LINKTYPES = frozenset({0, 1, 12, 14, 101, 108, 113, 228, 229, 276})
MAX_PCAPNG_BLOCK = 16 << 20


def is_capture_magic(head: bytes) -> bool:
    return head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_MAGIC or head[:2] == b"\x1f\x8b"


@dataclass
class ReaderStats:
    interface_drops: int = 0  # pcapng ISB isb_ifdrop, summed over interfaces


@dataclass
class Span:
    """A byte range of a classic pcap file to walk: the records that start in [start, stop).
    ``start`` must be a record boundary; the walk sets ``next_pos``, the first record past it
    (parallel engines read a capture in such ranges, ``flowsense.parallel``)."""

    start: int
    stop: int
    next_pos: int = -1


@dataclass
class RecordBatch:
    buf: np.ndarray
    n: int
    cols: dict[str, np.ndarray]


@dataclass
class PacketBatch:
    """Decoded packets: ``cols`` are views of length ``n``; payload offsets index ``buf``."""

    buf: np.ndarray
    n: int
    cols: dict[str, np.ndarray]
    source: str


def _alloc(columns: dict[str, np.dtype], n: int) -> dict[str, np.ndarray]:
    return {name: np.empty(n, dtype=dt) for name, dt in columns.items()}


class _Walker:
    """Shared record-walking loop over a ByteSource."""

    def __init__(self, src: ByteSource, cfg: CaptureConfig, stats: ReaderStats) -> None:
        self.src = src
        self.cfg = cfg
        self.stats = stats
        self.chunk = max(1, min(cfg.walk_packets, cfg.batch_packets))
        self.rec = _alloc(RECORD_COLUMNS, self.chunk)
        self.last_ts = 0

    def need(self, pos: int, nbytes: int) -> int:
        """Make ``nbytes`` available at window offset ``pos``; returns the (new) offset."""
        while len(self.src.window) - pos < nbytes:
            if not self.src.refill(pos):
                break
            pos = 0
        return pos

    def error(self, pos: int, message: str) -> CaptureError:
        return CaptureError(self.src.name, self.src.base + pos, message)

    def batch(self, n: int) -> RecordBatch:
        cols = {k: v[:n] for k, v in self.rec.items()}
        return RecordBatch(self.src.window, n, cols)


# ``step(window, pos, stop, swapped, frac_ns, linktype)``: walk (and maybe decode) from ``pos``
PcapStep = Callable[[np.ndarray, int, int, bool, int, int], tuple[int, int, int]]


def _walk_pcap(w: _Walker, span: Span | None, step: PcapStep) -> Iterator[int]:
    """The classic pcap walk: checks the file header, calls ``step`` until the records end
    (refilling a stream's window), yields each step's count once the step is done, and raises
    on damage after what was readable. With ``span``, the records that start in it."""
    pos = w.need(0, 24)
    win = w.src.window
    if len(win) < 24:
        raise w.error(len(win), "truncated pcap header")
    swapped, frac_ns = PCAP_MAGICS[bytes(win[:4])]
    e = ">" if swapped else "<"
    # the snap length is not enforced: real files hold longer records (up to the hard cap)
    network = struct.unpack(e + "I", bytes(win[20:24]))[0]
    linktype = network & 0x0FFFFFFF  # the upper bits carry the FCS length
    if linktype not in SUPPORTED_LINKTYPES:
        raise w.error(20, f"unsupported link type {linktype}")
    pos = 24 if span is None else max(24, span.start)
    stop = K.NO_STOP if span is None else span.stop
    while True:
        win = w.src.window
        n, pos, st = step(win, pos, stop, swapped, frac_ns, linktype)
        if span is not None:
            span.next_pos = pos
        if n:
            yield n
        if st == K.W_STOP:
            return
        if st == K.W_FULL:
            continue
        if st in (K.W_END, K.W_SHORT):
            if w.src.refill(pos):
                pos = 0
                continue
            if st == K.W_END:
                return
            left = len(w.src.window) - pos
            raise w.error(pos, f"truncated record ({left} bytes left of a record)")
        caplen = struct.unpack(e + "I", bytes(win[pos + 8:pos + 12]))[0]
        raise w.error(pos, f"record length {caplen} beyond the cap of {w.cfg.max_record_bytes} "
                      "bytes")


def _records_pcap(w: _Walker, span: Span | None = None) -> Iterator[RecordBatch]:
    r = w.rec
    cap = w.cfg.max_record_bytes

    def step(win: np.ndarray, pos: int, stop: int, swapped: bool, frac_ns: int,
             linktype: int) -> tuple[int, int, int]:
        return K.walk_pcap(win, pos, len(win), stop, swapped, frac_ns, cap, linktype,
                           r["data_off"], r["caplen"], r["wirelen"], r["ts_ns"], r["linktype"],
                           r["rec_off"], w.chunk)

    for n in _walk_pcap(w, span, step):
        yield w.batch(n)


@dataclass
class _Section:
    swapped: bool
    lt: list[int] = field(default_factory=list)
    snap: list[int] = field(default_factory=list)
    mode: list[int] = field(default_factory=list)
    exp: list[int] = field(default_factory=list)
    off_ns: list[int] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (
            np.array(self.lt or [0], dtype=np.int64),
            np.array(self.snap or [0], dtype=np.int64),
            np.array(self.mode or [0], dtype=np.int64),
            np.array(self.exp or [6], dtype=np.int64),
            np.array(self.off_ns or [0], dtype=np.int64),
        )


def _options(body: bytes, e: str) -> Iterator[tuple[int, bytes]]:
    p = 0
    while p + 4 <= len(body):
        code, length = struct.unpack(e + "HH", body[p:p + 4])
        if code == 0:
            return
        value = body[p + 4:p + 4 + length]
        if len(value) < length:
            return
        yield code, value
        p += 4 + ((length + 3) & ~3)


def _records_pcapng(w: _Walker) -> Iterator[RecordBatch]:
    pos = 0
    section: _Section | None = None
    arrays: tuple[np.ndarray, ...] = ()
    deferred: CaptureError | None = None
    drops: dict[tuple[int, int], int] = {}
    n_sections = 0
    r = w.rec
    while True:
        # a block Python parses (or the very first one) starts at pos
        pos = w.need(pos, 12)
        win = w.src.window
        if len(win) - pos == 0:
            break
        if len(win) - pos < 12:
            raise w.error(pos, "truncated block header")
        btype_le = struct.unpack("<I", bytes(win[pos:pos + 4]))[0]
        if btype_le == 0x0A0D0D0A:
            bom = bytes(win[pos + 8:pos + 12])
            if bom == b"\x4d\x3c\x2b\x1a":
                swapped = False
            elif bom == b"\x1a\x2b\x3c\x4d":
                swapped = True
            else:
                raise w.error(pos, "pcapng section header with a bad byte-order magic")
            section = _Section(swapped)
            arrays = section.arrays()
            n_sections += 1
        elif section is None:
            raise w.error(pos, "not a pcapng section header")
        e = ">" if section.swapped else "<"
        btype, blen = struct.unpack(e + "II", bytes(win[pos:pos + 8]))
        if blen < 12 or blen % 4 or blen > MAX_PCAPNG_BLOCK:
            raise w.error(pos, f"pcapng block length {blen} is invalid")
        pos = w.need(pos, blen)
        win = w.src.window
        if len(win) - pos < blen:
            raise w.error(pos, f"truncated pcapng block (length {blen})")
        block = bytes(win[pos:pos + blen])
        if struct.unpack(e + "I", block[-4:])[0] != blen:
            raise w.error(pos, "pcapng block trailing length does not match")
        if btype == K.PCAPNG_SHB:
            if blen < 28:
                raise w.error(pos, "pcapng section header too short")
        elif btype == K.PCAPNG_IDB:
            if blen < 20:
                raise w.error(pos, "pcapng interface block too short")
            if len(section.lt) >= w.cfg.max_interfaces:
                raise w.error(pos, f"more than {w.cfg.max_interfaces} interfaces in a section")
            lt, _, snap = struct.unpack(e + "HHI", block[8:16])
            mode, exp, off_ns = 0, 6, 0
            for code, value in _options(block[16:-4], e):
                if code == 9 and value:
                    mode, exp = (1, value[0] & 0x7F) if value[0] & 0x80 else (0, value[0])
                    if (mode == 0 and exp > 18) or (mode == 1 and exp > 62):
                        raise w.error(pos, f"if_tsresol {value[0]:#x} is out of range")
                elif code == 14 and len(value) == 8:
                    off_ns = struct.unpack(e + "q", value)[0] * 1_000_000_000
                    if abs(off_ns) >= 1 << 62:
                        raise w.error(pos, "if_tsoffset is out of range")
            if lt not in SUPPORTED_LINKTYPES and deferred is None:
                deferred = w.error(pos, f"unsupported link type {lt} (its packets are not decoded)")
            section.lt.append(lt)
            section.snap.append(snap)
            section.mode.append(mode)
            section.exp.append(exp)
            section.off_ns.append(off_ns)
            arrays = section.arrays()
        elif btype == K.PCAPNG_ISB and blen >= 24:
            iface = struct.unpack(e + "I", block[8:12])[0]
            for code, value in _options(block[20:-4], e):
                if code == 5 and len(value) == 8:
                    drops[(n_sections, iface)] = struct.unpack(e + "Q", value)[0]
            w.stats.interface_drops = sum(drops.values())
        pos += blen
        # then the walker takes the packet blocks until the next block Python must parse
        while True:
            win = w.src.window
            n, pos, st = K.walk_pcapng(
                win, pos, len(win), section.swapped, MAX_PCAPNG_BLOCK, *arrays, len(section.lt),
                r["data_off"], r["caplen"], r["wirelen"], r["ts_ns"], r["linktype"], r["rec_off"],
                w.chunk,
            )
            if n:
                w.last_ts = K.fill_missing_ts(r["ts_ns"], n, w.last_ts)
                yield w.batch(n)
            if st == K.W_FULL:
                continue
            if st == K.W_BLOCK:
                break
            if st in (K.W_END, K.W_SHORT):
                if w.src.refill(pos):
                    pos = 0
                    continue
                if st == K.W_END:
                    if deferred is not None:
                        raise deferred
                    return
                raise w.error(pos, "truncated pcapng block")
            if st == K.W_BAD_IFACE:
                raise w.error(pos, "packet block names an interface that was not described")
            raise w.error(pos, "pcapng block length is invalid")
    if deferred is not None:
        raise deferred


def iter_records(path: str, cfg: CaptureConfig, stats: ReaderStats,
                 src: ByteSource | None = None,
                 span: Span | None = None) -> Iterator[RecordBatch]:
    """Record batches of ``path`` (or of an already open ``src``, e.g. a live stream), or of
    the byte range ``span`` of it."""
    src = src or open_source(path, cfg)
    try:
        w = _Walker(src, cfg, stats)
        if _is_pcap(w):
            yield from _records_pcap(w, span)
        else:
            yield from _records_pcapng(w)
    finally:
        src.close()


def _is_pcap(w: _Walker) -> bool:
    """True for a classic pcap, False for pcapng, by the first four bytes; raises CaptureError
    for anything else."""
    w.need(0, 4)
    head = bytes(w.src.window[:4])
    if head in PCAP_MAGICS:
        return True
    if head == PCAPNG_MAGIC:
        return False
    if len(head) < 4:
        raise CaptureError(w.src.name, 0, "empty or truncated file")
    raise CaptureError(w.src.name, 0, "not a pcap or pcapng capture (unknown magic)")


class Decoder:
    """Owns the decoded-packet arrays and the fragment table (kept across batches and files)."""

    def __init__(self, cfg: CaptureConfig) -> None:
        self.cfg = cfg
        self.out = _alloc(PACKET_COLUMNS, cfg.batch_packets)
        size = 1 << max(4, (cfg.frag_table_size - 1).bit_length())
        self.fr = (
            np.zeros(size, np.uint64), np.zeros(size, np.uint64),
            np.zeros(size, np.uint64), np.zeros(size, np.uint64),
            np.zeros(size, np.int64), np.zeros(size, np.int64),
            np.zeros(size, np.uint16), np.zeros(size, np.uint16),
            np.full(size, -1, np.int64),
        )
        self.counters = np.zeros(8, dtype=np.int64)
        self._frag_timeout_ns = int(cfg.frag_timeout_s * 1e9)

    @property
    def out(self) -> dict[str, np.ndarray]:
        """The packet arrays decoding writes (a parallel plan points them at its regions)."""
        return self._out

    @out.setter
    def out(self, cols: dict[str, np.ndarray]) -> None:
        self._out = cols
        self._outs = tuple(cols[k] for k in (
            "ts_ns", "status", "pflags", "fam", "proto", "src_hi", "src_lo", "dst_hi", "dst_lo",
            "sport", "dport", "tcp_flags", "ip_len", "payload_len", "pay_off", "pay_cap", "seq",
            "vlan", "tunnel", "rec_off", "wirelen"))

    def decode(self, rb: RecordBatch, at: int) -> None:
        """Decode a record batch into the packet arrays from index ``at`` on."""
        rc = rb.cols
        decode_batch(
            rb.buf, rb.n, rc["data_off"], rc["caplen"], rc["wirelen"], rc["ts_ns"],
            rc["linktype"], rc["rec_off"], *self._outs, *self.fr, self._frag_timeout_ns,
            self.cfg.max_encap_depth, self.counters, at,
        )

    def walk_decode(self, w: _Walker, win: np.ndarray, pos: int, stop: int, swapped: bool,
                    frac_ns: int, linktype: int) -> tuple[int, int, int]:
        """Walk classic pcap records from ``pos`` and decode them into the packet arrays from
        index 0, up to ``batch_packets`` of them, in one kernel call (``walk_decode_pcap``)."""
        r = w.rec
        return walk_decode_pcap(
            win, pos, len(win), stop, swapped, frac_ns, self.cfg.max_record_bytes, linktype,
            r["data_off"], r["caplen"], r["wirelen"], r["ts_ns"], r["linktype"], r["rec_off"],
            w.chunk, *self._outs, *self.fr, self._frag_timeout_ns, self.cfg.max_encap_depth,
            self.counters, self.cfg.batch_packets,
        )

    def batch(self, n: int, buf: np.ndarray, source: str) -> PacketBatch:
        return PacketBatch(buf, n, {k: v[:n] for k, v in self.out.items()}, source)


def iter_batches(
    path: str, cfg: CaptureConfig | None = None, stats: ReaderStats | None = None,
    decoder: Decoder | None = None, span: Span | None = None, src: ByteSource | None = None,
) -> Iterator[PacketBatch]:
    """Decoded packet batches of one capture; raises CaptureError after the readable part.
    With ``span`` (a classic pcap only), the records that start in that byte range; with
    ``src``, read from that source rather than opening ``path``.

    Records are walked and decoded a few thousand at a time (the frames are still in cache) and
    handed on in batches of up to ``batch_packets``; a batch never spans two stream windows.
    A classic pcap is walked and decoded in one kernel call a batch (``Decoder.walk_decode``).
    """
    cfg = cfg or CaptureConfig()
    stats = stats if stats is not None else ReaderStats()
    decoder = decoder or Decoder(cfg)
    src = src or open_source(path, cfg)
    try:
        w = _Walker(src, cfg, stats)
        if not _is_pcap(w):
            yield from _decoded(_records_pcapng(w), decoder, cfg, path)
            return

        def step(win: np.ndarray, pos: int, stop: int, swapped: bool, frac_ns: int,
                 linktype: int) -> tuple[int, int, int]:
            return decoder.walk_decode(w, win, pos, stop, swapped, frac_ns, linktype)

        for n in _walk_pcap(w, span, step):
            yield decoder.batch(n, w.src.window, path)
    finally:
        src.close()


def _decoded(records: Iterator[RecordBatch], decoder: Decoder, cfg: CaptureConfig,
             path: str) -> Iterator[PacketBatch]:
    """Record batches decoded and gathered into packet batches (pcapng)."""
    acc = 0
    buf = np.empty(0, dtype=np.uint8)
    try:
        for rb in records:
            if acc and (rb.buf is not buf or acc + rb.n > cfg.batch_packets):
                yield decoder.batch(acc, buf, path)
                acc = 0
            buf = rb.buf
            decoder.decode(rb, acc)
            acc += rb.n
    except CaptureError:
        if acc:  # what was read before the damage still goes out
            yield decoder.batch(acc, buf, path)
        raise
    if acc:
        yield decoder.batch(acc, buf, path)


def first_timestamp(path: str, cfg: CaptureConfig | None = None) -> int | None:
    """Capture time of the first record (ns), or None when there is none, it is unreadable, or
    the input is a stream (reading it would consume it)."""
    if path == "-" or not os.path.isfile(path):
        return None
    try:
        for rb in iter_records(path, cfg or CaptureConfig(), ReaderStats()):
            if rb.n:
                return int(rb.cols["ts_ns"][0])
    except CaptureError:
        return None
    return None
