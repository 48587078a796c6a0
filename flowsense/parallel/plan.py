"""What a parallel run reads, in which pieces, and where a decoded piece waits for the workers.

The inputs (already in time order) are cut into pieces: a classic pcap file larger than
``chunk_bytes`` into byte ranges on a fixed grid, a smaller regular file whole, and a ``.gz``
file (or a large pcapng, whose sections and interfaces cannot be picked up mid-file) as a
stream of batches that one worker reads in order. Rounds take up to N pieces, one a worker; a
stream's batch is a round of its own. Every worker computes the same rounds.

A range's first record is found by ``pcap_resync`` (a guess from the bytes); the worker that
aggregates checks it against the previous range's walk, which knows the true boundary, and
reads the range itself when they disagree. Pieces holding IP fragments are read again by every
worker with a decoder that has seen every earlier fragment (the fragment table is the decoder's
only state across pieces), so decoding in pieces changes nothing.
"""

from __future__ import annotations

import functools
import mmap
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from flowsense.capture.reader import (
    PCAP_MAGICS,
    Decoder,
    PacketBatch,
    ReaderStats,
    Span,
    iter_batches,
)
from flowsense.capture.source import GZIP_MAGIC, BufferSource
from flowsense.config import Config
from flowsense.errors import CaptureError, InputMissingError
from flowsense.parallel.kernels import partition_ids, pcap_resync
from flowsense.pipeline import tally_counts
from flowsense.schema import N_STATUS, PACKET_COLUMNS, PF_FIRST_FRAGMENT, PF_FRAGMENT

RESYNC_CHAIN = 16  # record headers that must chain for a guessed boundary


@dataclass(frozen=True)
class InputFile:
    path: str
    kind: str  # "ranges", "whole" or "stream"
    size: int
    swapped: bool = False
    frac_limit: int = 0  # a pcap record's fraction of a second stays below this
    mapped: bool = True  # read through a memory map (not .gz): payload offsets are file offsets


@dataclass(frozen=True)
class Piece:
    file: int
    kind: str  # "range", "whole" or "stream"
    start: int = 0
    stop: int = 0
    first: bool = True  # the file's first piece


def classify(paths: list[str], config: Config) -> list[InputFile]:
    """How each input is read (regular files only: the caller keeps stdin and pipes serial)."""
    out = []
    chunk = config.capture.chunk_bytes
    for path in paths:
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(4)
        except OSError as exc:  # as the serial reader says it (exit 2)
            raise InputMissingError(f"{path}: cannot open: {exc.strerror}") from None
        if head[:2] == GZIP_MAGIC:
            out.append(InputFile(path, "stream", size, mapped=False))
        elif head in PCAP_MAGICS and size > chunk:
            swapped, frac_ns = PCAP_MAGICS[head]
            out.append(InputFile(path, "ranges", size, swapped, 1_000_000_000 // frac_ns))
        elif size <= chunk:
            out.append(InputFile(path, "whole", size))
        else:
            out.append(InputFile(path, "stream", size))
    return out


class Rounds:
    """The sequence of rounds, the same in every worker. ``next(stream_ended)``: the round after
    the current one; ``stream_ended`` tells whether the current round's stream batch was the
    stream's last (a stream's length is known only by reading it)."""

    def __init__(self, files: list[InputFile], n: int, chunk: int) -> None:
        self.files = files
        self.n = n
        self.chunk = chunk
        self.f = 0
        self.r = 0
        self.in_stream = False

    def next(self, stream_ended: bool = True) -> list[Piece]:
        if self.in_stream:
            if not stream_ended:
                return [Piece(self.f, "stream", first=False)]
            self.in_stream = False
            self.f += 1
        pieces: list[Piece] = []
        while len(pieces) < self.n and self.f < len(self.files):
            inp = self.files[self.f]
            if inp.kind == "stream":
                if pieces:
                    break
                self.in_stream = True
                return [Piece(self.f, "stream")]
            if inp.kind == "whole":
                pieces.append(Piece(self.f, "whole", 0, inp.size))
                self.f += 1
                continue
            start = 24 if self.r == 0 else self.r * self.chunk
            stop = min((self.r + 1) * self.chunk, inp.size)
            pieces.append(Piece(self.f, "range", start, stop, self.r == 0))
            self.r += 1
            if stop >= inp.size:
                self.f += 1
                self.r = 0
        return pieces


# header words of a region
H_N, H_START, H_NEXT, H_FRAG, H_ENDED, H_ERR_OFF, H_INLINE, H_DROPS, H_ERR_LEN = range(9)
H_WORDS = 16
ERR_BYTES = 1024
SETTLE_PACKETS = 8192  # a region gives back the pages of this many packets or more (settle)


class Region:
    """One decoded piece, read by every worker thread: a header, the packet columns, each
    packet's partition, and (for a stream's batch) the payload bytes it points into. Pages are
    touched only as far as a piece fills them."""

    def __init__(self, packets: int, inline_bytes: int) -> None:
        layout = [("hdr", np.dtype(np.int64), H_WORDS), ("err", np.dtype(np.uint8), ERR_BYTES),
                  ("tally", np.dtype(np.int64), 2 + N_STATUS),
                  ("part", np.dtype(np.uint8), packets), ("hash", np.dtype(np.uint64), packets)]
        layout += [(k, dt, packets) for k, dt in PACKET_COLUMNS.items()]
        layout.append(("inline", np.dtype(np.uint8), inline_bytes))
        offsets = []
        total = 0
        for _, dt, count in layout:
            offsets.append(total)
            total += (dt.itemsize * count + 63) // 64 * 64
        # a plain map, not ``flows.memory.zeros``: on huge pages each column's filled prefix
        # would hold a whole 2 MiB page
        self._mm = mmap.mmap(-1, max(total, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        arrays = {name: np.frombuffer(self._mm, dtype=dt, count=count, offset=off)
                  for (name, dt, count), off in zip(layout, offsets)}
        self.hdr = arrays.pop("hdr")
        self.err = arrays.pop("err")
        self.tally = arrays.pop("tally")  # the piece's counters (``pipeline.tally_counts``)
        self.part = arrays.pop("part")
        self.hash = arrays.pop("hash")  # each packet's flow hash (``assign_partitions``)
        self.inline = arrays.pop("inline")
        self.cols = arrays
        self.capacity = packets
        # each per-packet array's place in the map and its item size (``settle``)
        at = {name: off for (name, _, _), off in zip(layout, offsets)}
        self._spans = [(at[k], a.itemsize, at[k] + a.nbytes)
                       for k, a in (("part", self.part), ("hash", self.hash), *arrays.items())]
        self.filled = 0  # packets the per-packet arrays hold pages for, at most

    def settle(self, n: int) -> None:
        """A piece of ``n`` packets was decoded here: if the pieces before it left pages for
        many more, give those back. Each region would otherwise keep pages for the most packets
        any piece decoded into it ever held (a piece is a byte range: 46-84 thousand packets in
        the 2M capture), and a longer capture's regions each see its densest piece: 18 MB more
        over the six of a ``--jobs 2`` run ten times longer than the original. A piece a few
        thousand packets larger than the last faults a few pages back in; small differences
        are left alone."""
        if self.filled - n < SETTLE_PACKETS:
            self.filled = max(self.filled, n)
            return
        page = mmap.PAGESIZE
        for off, size, end in self._spans:
            lo = -(-(off + n * size) // page) * page
            hi = -(-(off + self.filled * size) // page) * page  # the array's own last page
            if hi > end:  # not one the next array shares
                hi -= page
            if hi > lo:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        self.filled = n

    def error(self, path: str) -> CaptureError | None:
        if self.hdr[H_ERR_OFF] < 0:
            return None
        msg = bytes(self.err[: self.hdr[H_ERR_LEN]]).decode("utf-8", "replace")
        return CaptureError(path, int(self.hdr[H_ERR_OFF]), msg)

    def batch(self, buf: np.ndarray, source: str) -> PacketBatch:
        n = int(self.hdr[H_N])
        if self.hdr[H_INLINE] >= 0:
            buf = self.inline[: self.hdr[H_INLINE]]
        return PacketBatch(buf, n, {k: v[:n] for k, v in self.cols.items()}, source)


def file_map(path: str) -> mmap.mmap | None:
    """``path`` mapped whole, read-only (pages come in as they are read); None when empty."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return None
        return mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)


class FileMaps:
    """Each input mapped once for a run, shared by every worker thread: the walk and decode of
    its ranges, the resync and the partitions' payload reads. A map a worker, with each range
    populated at once, had cost each worker a page-table pass over the whole capture: 0.08 s
    of a 2M-packet run. Maps of inputs the run has left behind (two files back) are dropped; a
    view still in use keeps its map alive."""

    def __init__(self, files: list[InputFile]) -> None:
        self.files = files
        self._views: dict[int, np.ndarray] = {}
        self._maps: dict[int, mmap.mmap | None] = {}
        self._lock = threading.Lock()

    def get(self, f: int) -> np.ndarray:
        with self._lock:
            buf = self._views.get(f)
            if buf is None:
                mm = self._maps[f] = file_map(self.files[f].path)
                buf = np.zeros(0, dtype=np.uint8) if mm is None else np.frombuffer(mm, np.uint8)
                self._views[f] = buf
                for old in [k for k in self._views if k < f - 1]:
                    del self._views[old], self._maps[old]
            return buf

    def release(self, piece: Piece) -> None:
        """Unmap the pages of a range no worker reads again (they stay in the page cache; a
        read would map them again). Each worker releases the range it walked, once every
        worker has aggregated it, so unmapping the capture is spread over the run and the
        cores: at the end, one thread unmapping a 1 GB capture's map took 25-30 ms."""
        with self._lock:
            mm = self._maps.get(piece.file)
        if mm is None:
            return
        lo = -(-piece.start // mmap.PAGESIZE) * mmap.PAGESIZE
        hi = min(piece.stop, len(mm)) // mmap.PAGESIZE * mmap.PAGESIZE
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def assign_partitions(batch: PacketBatch, out: np.ndarray, n_parts: int, key: int,
                      hashes: np.ndarray | None = None) -> np.ndarray:
    """Each packet's partition into ``out`` (returned, cut to the batch), and its flow's hash
    into ``hashes`` (``partition_ids``; ``table_key(key)`` keys both)."""
    c = batch.cols
    if hashes is None:
        hashes = np.empty(batch.n, dtype=np.uint64)
    partition_ids(c["status"], c["fam"], c["proto"], c["src_hi"], c["src_lo"], c["dst_hi"],
                  c["dst_lo"], c["sport"], c["dport"], batch.n, n_parts, table_key(key), out,
                  hashes)
    return out[: batch.n]


@functools.lru_cache(maxsize=8)
def table_key(key: int) -> np.ndarray:
    """The hash key of a run's ``key`` (two words, made once: a generator costs 80 µs): the
    partitioning hash's and every partition table's, so a table looks a flow up by the hash
    its packet was partitioned by (``PacketBatch.cols["hash"]``), not hashing it again."""
    words = np.random.default_rng(key).integers(0, 2**63, size=2, dtype=np.int64)
    words = words.astype(np.uint64)
    words.flags.writeable = False
    return words


def has_fragments(batch: PacketBatch) -> bool:
    return bool(np.any(batch.cols["pflags"] & (PF_FRAGMENT | PF_FIRST_FRAGMENT)))


class Producer:
    """Decodes a worker's pieces into regions (ranges and whole files with a decoder of its
    own; a stream with the worker's fragment-faithful decoder, in order)."""

    def __init__(self, files: list[InputFile], config: Config, n_parts: int, key: int,
                 stream_decoder: Decoder, maps: FileMaps) -> None:
        self.files = files
        self.maps = maps
        self.config = config
        self.n_parts = n_parts
        self.key = key
        self.decoder = Decoder(config.capture)
        self.stream_decoder = stream_decoder
        self._stream: Iterator[PacketBatch] | None = None
        self._stream_stats = ReaderStats(interface_drops=-1)

    def produce(self, piece: Piece, region: Region) -> None:
        h = region.hdr
        h[:] = 0
        h[H_ERR_OFF] = -1
        h[H_INLINE] = -1
        h[H_DROPS] = -1
        inp = self.files[piece.file]
        n = 0
        try:
            if piece.kind == "stream":
                n = self._produce_stream(piece, region)
            else:
                span = src = None
                stats = ReaderStats(interface_drops=-1)
                if piece.kind == "range":
                    # walked in the run's map (a map of its own was made and unmapped for
                    # every range)
                    buf = self.maps.get(piece.file)
                    src = BufferSource(inp.path, buf)
                    start = piece.start
                    if not piece.first:
                        start = int(pcap_resync(buf, piece.start, len(buf), inp.swapped,
                                                inp.frac_limit,
                                                self.config.capture.max_record_bytes,
                                                RESYNC_CHAIN))
                        if start < 0:
                            start = piece.stop  # nothing found: the aggregating worker reads it
                    span = Span(start, piece.stop, start)
                    h[H_START] = start
                # decoded straight into the region: the decoder's arrays are views of it
                self.decoder.out = dict(region.cols)
                try:
                    for batch in iter_batches(inp.path, self.config.capture, stats,
                                              self.decoder, span, src):
                        n += batch.n
                        self.decoder.out = {k: v[n:] for k, v in region.cols.items()}
                finally:
                    if span is not None:
                        h[H_NEXT] = span.next_pos
                    h[H_DROPS] = stats.interface_drops
        except CaptureError as exc:
            msg = exc.reason.encode("utf-8")[:ERR_BYTES]
            region.err[: len(msg)] = np.frombuffer(msg, dtype=np.uint8)
            h[H_ERR_LEN] = len(msg)
            h[H_ERR_OFF] = exc.offset
            h[H_ENDED] = 1
        h[H_N] = n
        region.settle(n)
        view = region.batch(region.inline, inp.path)
        h[H_FRAG] = has_fragments(view)
        assign_partitions(view, region.part, self.n_parts, self.key, region.hash)
        tally_counts(view, region.tally)  # counted here, not by partition 0 alone

    def _put(self, region: Region, batch: PacketBatch, at: int) -> int:
        if at + batch.n > region.capacity:
            raise RuntimeError("a piece outgrew its region")
        for k, v in batch.cols.items():
            region.cols[k][at:at + batch.n] = v
        return at + batch.n

    def _produce_stream(self, piece: Piece, region: Region) -> int:
        inp = self.files[piece.file]
        if piece.first:
            self._stream_stats = ReaderStats(interface_drops=-1)
            self._stream = iter_batches(inp.path, self.config.capture, self._stream_stats,
                                        self.stream_decoder)
        assert self._stream is not None
        try:
            batch = next(self._stream)
        except StopIteration:
            region.hdr[H_ENDED] = 1
            region.hdr[H_INLINE] = 0
            return 0
        finally:
            region.hdr[H_DROPS] = self._stream_stats.interface_drops
        n = self._put(region, batch, 0)
        if inp.mapped:
            return n
        # the payload bytes this batch points into, copied beside it
        c = region.cols
        cap = c["pay_cap"][:n]
        used = cap > 0
        lo = int(c["pay_off"][:n][used].min()) if used.any() else 0
        hi = int((c["pay_off"][:n][used] + cap[used]).max()) if used.any() else 0
        if hi - lo > len(region.inline):
            raise RuntimeError("a stream batch outgrew its region")
        region.inline[: hi - lo] = batch.buf[lo:hi]
        c["pay_off"][:n] -= lo
        region.hdr[H_INLINE] = hi - lo
        return n


def warm_kernels(config: Config) -> None:
    """Load this module's kernels (and their callees) before the worker threads start, so they
    do not wait on each other compiling or loading them."""
    from flowsense.parallel.kernels import tick_statuses

    z8 = np.zeros(1, dtype=np.uint8)
    z64 = np.zeros(1, dtype=np.uint64)
    z16 = np.zeros(1, dtype=np.uint16)
    partition_ids(z8, z8, z8, z64, z64, z64, z64, z16, z16, 1, 2, table_key(1), z8.copy(),
                  z64.copy())
    tick_statuses(z8, z8, 1, 0, z8.copy())
    pcap_resync(np.zeros(64, dtype=np.uint8), 0, 64, False, 1_000_000,
                config.capture.max_record_bytes, RESYNC_CHAIN)
