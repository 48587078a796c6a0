"""Live packet sources for ``flowsense watch``: each yields decoded batches until told to stop.

* ``RingSource``: AF_PACKET TPACKET_V3 rings on one or more interfaces (Linux; no Python per
  packet).
* ``StreamSource``: a pcap or pcapng stream on stdin (``tcpdump -U -w - | flowsense watch
  --read -``), walked by the same readers ``analyze`` uses, returning from a read with whatever
  the pipe holds so packets are not kept waiting for a full buffer.
* ``ScapySource``: the portable fallback where AF_PACKET is missing (Python per packet: slow).

``batches(idle)`` calls ``idle()`` after every batch and whenever nothing arrived within the
poll interval; ``idle()`` returning False makes the source hand out what is already captured
and end. Every batch is valid until the next one is requested.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from flowsense.capture.reader import (
    Decoder,
    PacketBatch,
    ReaderStats,
    RecordBatch,
    _alloc,
    iter_records,
)
from flowsense.capture.source import StreamSource as _ReaderStream
from flowsense.config import CaptureConfig
from flowsense.errors import CaptureError, ConfigError, FlowsenseError
from flowsense.schema import RECORD_COLUMNS
from flowsense.sidecar import ring_kernels as RK

if TYPE_CHECKING:
    from flowsense.sidecar.ring import RingConfig

log = logging.getLogger(__name__)
Idle = Callable[[], bool]


class InterfaceGone(FlowsenseError):
    """A captured interface was removed: what was captured is flushed, then exit 1."""

    exit_code = 1
POLL_S = 0.2


class LiveSource:
    name = "live"

    def batches(self, decoder: Decoder, idle: Idle) -> Iterator[PacketBatch]:
        raise NotImplementedError

    def kernel_drops(self) -> int:
        """Packets the capture layer dropped (kernel ring full, pcapng ISB), since the start."""
        return 0

    def close(self) -> None:
        pass


class RingSource(LiveSource):
    def __init__(self, ifaces: list[str], ring_cfg: RingConfig, cap: CaptureConfig,
                 bpf: str | None = None) -> None:
        from flowsense.sidecar.ring import PacketRing

        self.name = ",".join(ifaces)
        self.rings: list[PacketRing] = []
        try:
            for iface in ifaces:
                self.rings.append(PacketRing(iface, ring_cfg, bpf))
        except BaseException:
            self.close()
            raise
        self.retire_s = ring_cfg.retire_ms / 1000
        need = max(r.max_frames for r in self.rings)  # a whole block always fits
        if cap.batch_packets < need:
            raise ConfigError(f"batch_packets must be at least {need} for this ring block size")
        self.max_n = max(min(ring_cfg.batch_packets, cap.batch_packets), need)
        self.rec = _alloc(RECORD_COLUMNS, self.max_n)
        self.vlan_tci = np.zeros(self.max_n, dtype=np.uint16)
        self._poll = select.poll()
        for r in self.rings:
            self._poll.register(r.fileno(), select.POLLIN | select.POLLERR)

    def _drain(self, decoder: Decoder, idle: Idle | None) -> Iterator[PacketBatch]:
        """Batches of the ready blocks, each block handed back once its batch is consumed;
        ``idle`` runs after each block (ticks on a busy link) and may stop the walk. Without
        ``idle`` (the last drain at a stop) one lap of the ring at most."""
        r = self.rec
        for ring in self.rings:
            laps = 0
            while idle is not None or laps < ring.n_blocks:
                n, blocks = ring.walk(self.max_n, r["data_off"], r["caplen"], r["wirelen"],
                                      r["ts_ns"], r["linktype"], r["rec_off"], self.vlan_tci)
                if blocks == 0:
                    break
                laps += blocks
                if n:
                    decoder.decode(RecordBatch(ring.ring, n, {k: v[:n] for k, v in r.items()}), 0)
                    RK.restore_vlan(decoder.out["vlan"], self.vlan_tci, n)
                    yield decoder.batch(n, ring.ring, ring.iface)
                ring.release(blocks)
                if idle is not None and not idle():
                    self._stopping = True
                    return

    def batches(self, decoder: Decoder, idle: Idle) -> Iterator[PacketBatch]:
        self._stopping = False
        while not self._stopping:
            got = False
            for batch in self._drain(decoder, idle):
                got = True
                yield batch
            if not got and not self._stopping:
                for fd, ev in self._poll.poll(int(POLL_S * 1000)):
                    if ev & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                        self._socket_error(fd)
                self._stopping = not idle()
        # stopping: the block being filled is handed up within the retire timeout
        time.sleep(self.retire_s * 2)
        yield from self._drain(decoder, None)

    def _socket_error(self, fd: int) -> None:
        """A ring's socket reports an error: its interface went down (capture resumes when it
        comes back up) or away (the end: a CaptureError, after what was captured)."""
        ring = next(r for r in self.rings if r.fileno() == fd)
        err = ring.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # reading clears it
        try:
            socket.if_nametoindex(ring.iface)
        except OSError:
            raise InterfaceGone(f"{ring.iface}: the interface went away") from None
        log.warning("%s: %s (capture resumes when the interface is up)", ring.iface,
                    os.strerror(err) if err else "socket error")
        time.sleep(POLL_S)  # an error that stays set must not make the loop spin

    def kernel_drops(self) -> int:
        return sum(r.read_stats()[1] for r in self.rings)

    def close(self) -> None:
        for r in self.rings:
            r.close()
        self.rings = []


class _PipeStream(_ReaderStream):
    """stdin as the reader's stream, but a read returns what the pipe holds (never waits for a
    full chunk) and, while nothing comes, calls ``idle``; ``idle()`` False ends the input."""

    def __init__(self, fd: int, cap: CaptureConfig, idle: Idle) -> None:
        self._fd = fd
        self._idle = idle
        super().__init__("<stdin>", sys.stdin.buffer, cap)

    def _read(self, n: int) -> bytes:
        while True:
            ready, _, _ = select.select([self._fd], [], [], POLL_S)
            if ready:
                return os.read(self._fd, n)
            if not self._idle():
                return b""

    def close(self) -> None:
        pass


class StreamSource(LiveSource):
    name = "<stdin>"

    def __init__(self, cap: CaptureConfig) -> None:
        self.cap = cap
        self.stats = ReaderStats()
        self.stopped = False

    def batches(self, decoder: Decoder, idle: Idle) -> Iterator[PacketBatch]:
        def idle_or_stop() -> bool:
            if not idle():
                self.stopped = True
            return not self.stopped

        src = _PipeStream(sys.stdin.fileno(), self.cap, idle_or_stop)
        try:
            for rb in iter_records("-", self.cap, self.stats, src):
                decoder.decode(rb, 0)
                yield decoder.batch(rb.n, rb.buf, self.name)
                idle_or_stop()  # the busy path's chance to tick; a stop ends at the next read
        except CaptureError:
            if not self.stopped:  # a stop mid-record is not damage
                raise

    def kernel_drops(self) -> int:
        return self.stats.interface_drops


class ScapySource(LiveSource):
    """Python per packet through scapy's L2 listen socket (libpcap/BPF off Linux)."""

    def __init__(self, ifaces: list[str], cap: CaptureConfig, bpf: str | None = None) -> None:
        try:
            from scapy.all import conf  # the arch layer sets conf.L2listen
        except ImportError:
            raise ConfigError("no AF_PACKET here and scapy is not installed") from None
        self.name = ",".join(ifaces)
        self.max_n = min(cap.batch_packets, 4096)
        self.socks = []
        for iface in ifaces:
            try:
                self.socks.append(conf.L2listen(iface=iface, filter=bpf))
            except Exception as exc:  # noqa: BLE001 - scapy raises many kinds
                self.close()
                raise ConfigError(f"cannot capture on {iface}: {exc}") from None
        self.rec = _alloc(RECORD_COLUMNS, self.max_n)

    def _take(self, decoder: Decoder) -> PacketBatch | None:
        frames: list[tuple[bytes, int, int]] = []
        ready, _, _ = select.select(self.socks, [], [], POLL_S)
        for s in ready:
            while len(frames) < self.max_n:
                cls, raw, ts = s.recv_raw()
                if raw is None:
                    break
                lt = RK.LINKTYPE_ETHERNET if getattr(cls, "__name__", "") == "Ether" else \
                    RK.LINKTYPE_RAW
                frames.append((raw, int((ts or time.time()) * 1e9), lt))
                if not select.select([s], [], [], 0)[0]:
                    break
        if not frames:
            return None
        n = len(frames)
        lens = np.fromiter((len(f[0]) for f in frames), dtype=np.int64, count=n)
        buf = np.frombuffer(b"".join(f[0] for f in frames), dtype=np.uint8)
        r = self.rec
        r["data_off"][:n] = np.concatenate(([0], np.cumsum(lens)[:-1]))
        r["caplen"][:n] = lens
        r["wirelen"][:n] = lens
        r["ts_ns"][:n] = [f[1] for f in frames]
        r["linktype"][:n] = [f[2] for f in frames]
        r["rec_off"][:n] = r["data_off"][:n]
        decoder.decode(RecordBatch(buf, n, {k: v[:n] for k, v in r.items()}), 0)
        return decoder.batch(n, buf, self.name)

    def batches(self, decoder: Decoder, idle: Idle) -> Iterator[PacketBatch]:
        while True:
            batch = self._take(decoder)
            if batch is not None:
                yield batch
            if not idle():
                return

    def close(self) -> None:
        for s in self.socks:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass
        self.socks = []


def has_af_packet() -> bool:
    import socket

    return sys.platform.startswith("linux") and hasattr(socket, "AF_PACKET")
