"""Live capture on Linux: an AF_PACKET socket with a memory-mapped TPACKET_V3 receive ring.

Setup follows packet(7) and the kernel's Documentation/networking/packet_mmap.rst: the socket is
made with protocol 0 (it receives nothing yet), switched to TPACKET_V3, given its ring
(PACKET_RX_RING with a ``tpacket_req3``) and its BPF filter, and only then bound to the interface
with ETH_P_ALL, so no packet slips in before the filter. Blocks are retired by the kernel when
full or after ``retire_blk_tov`` ms, so a quiet link still delivers. The walk over ready blocks
is in numba (``ring_kernels.walk_ring``); Python only polls and hands blocks back.
"""

from __future__ import annotations

import ctypes
import mmap
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass

import numpy as np

from flowsense.errors import ConfigError
from flowsense.sidecar import ring_kernels as RK

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_MR_PROMISC = 1
TPACKET_V3 = 2
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
# tcpdump -y names for the link types a ring hands up
DLT_NAMES = {RK.LINKTYPE_ETHERNET: "EN10MB", RK.LINKTYPE_RAW: "RAW"}


@dataclass(frozen=True)
class RingConfig:
    block_bytes: int = 256 << 10
    """Ring block size (a power-of-two number of pages); the largest frame must fit in one.
    Small blocks, many of them: on a moderate link blocks are retired by the timeout, part
    full, so the ring absorbs a stall of about blocks x ``retire_ms``, not of its bytes."""
    buffer_bytes: int = 64 << 20
    """Whole ring per interface (block_bytes x blocks); what absorbs bursts."""
    retire_ms: int = 50
    """A block is handed up after this long even if not full (a quiet link still delivers)."""
    promisc: bool = True
    """Put the interface in promiscuous mode (mirror ports, bridges)."""
    batch_packets: int = 8192
    """Records walked into one batch. The batch's blocks stay out of the kernel's hands until
    it is fed (no copy of the frames), so a batch must be a small part of the ring: 65,536
    packets of 700 B held two thirds of a 64 MiB ring, and the kernel dropped meanwhile."""


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def compile_bpf(expr: str, linktype: int = RK.LINKTYPE_ETHERNET) -> list[tuple[int, int, int, int]]:
    """Classic BPF for ``expr``, compiled by tcpdump (``-ddd``: decimal, one insn a line).

    Python has no BPF compiler; tcpdump's (libpcap's) is the well-kept one."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        raise ConfigError("--bpf needs tcpdump to compile the filter, and it is not installed")
    try:
        out = subprocess.run(
            [tcpdump, "-ddd", "-y", DLT_NAMES.get(linktype, "EN10MB"), expr],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"--bpf: cannot run tcpdump: {exc}") from None
    if out.returncode != 0:
        msg = (out.stderr.strip().splitlines() or ["compile failed"])[-1]
        raise ConfigError(f"--bpf {expr!r}: {msg.removeprefix('tcpdump: ')}")
    try:
        lines = out.stdout.split("\n")
        count = int(lines[0])
        insns = [tuple(int(x) for x in line.split()) for line in lines[1:1 + count]]
    except ValueError:
        raise ConfigError(f"--bpf {expr!r}: unexpected tcpdump output") from None
    if len(insns) != count or any(len(i) != 4 for i in insns):
        raise ConfigError(f"--bpf {expr!r}: unexpected tcpdump output")
    return insns  # type: ignore[return-value]


def attach_bpf(sock: socket.socket, insns: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER through ctypes (the option takes a pointer, which Python cannot pack)."""
    prog = (_SockFilter * len(insns))(*[_SockFilter(*i) for i in insns])
    fprog = _SockFprog(len(insns), ctypes.cast(prog, ctypes.POINTER(_SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.setsockopt(sock.fileno(), socket.SOL_SOCKET, SO_ATTACH_FILTER,
                         ctypes.byref(fprog), ctypes.sizeof(fprog))
    if rc != 0:
        err = ctypes.get_errno()
        raise ConfigError(f"cannot attach the BPF filter: {socket.errno.errorcode.get(err, err)}")


def link_type_of(iface: str) -> int:
    """The link type the ring hands up for ``iface`` (from its ARPHRD type in sysfs)."""
    try:
        with open(f"/sys/class/net/{iface}/type", encoding="ascii") as f:
            hatype = int(f.read().strip())
    except (OSError, ValueError):
        return RK.LINKTYPE_ETHERNET
    ether = hatype in (RK.ARPHRD_ETHER, RK.ARPHRD_LOOPBACK)
    return RK.LINKTYPE_ETHERNET if ether else RK.LINKTYPE_RAW


class PacketRing:
    """One interface's TPACKET_V3 ring. ``walk`` fills record columns from the ready blocks;
    ``release`` hands them back once their packets have been aggregated."""

    def __init__(self, iface: str, cfg: RingConfig, bpf: str | None = None) -> None:
        self.iface = iface
        self.block_size = cfg.block_bytes
        self.n_blocks = max(2, cfg.buffer_bytes // cfg.block_bytes)
        self.next_block = 0
        self.skipped = 0
        self.kernel_packets = 0
        self.kernel_drops = 0
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as exc:
            raise ConfigError(f"cannot capture on {iface}: {exc.strerror} (capturing needs "
                              "root or CAP_NET_RAW)") from None
        try:
            self._setup(iface, cfg, bpf)
        except OSError as exc:
            self.sock.close()
            raise ConfigError(f"cannot capture on {iface}: {exc.strerror or exc}") from None
        except ConfigError:
            self.sock.close()
            raise
        self.max_frames = self.block_size // (RK.TPACKET3_HDRLEN + 32)

    def _setup(self, iface: str, cfg: RingConfig, bpf: str | None) -> None:
        s = self.sock
        ifindex = socket.if_nametoindex(iface)
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frame = 2048
        req = struct.pack("7I", self.block_size, self.n_blocks, frame,
                          self.block_size // frame * self.n_blocks, cfg.retire_ms, 0, 0)
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        size = self.block_size * self.n_blocks
        self._mm = mmap.mmap(s.fileno(), size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.ring = np.frombuffer(self._mm, dtype=np.uint8)
        if bpf:
            attach_bpf(s, compile_bpf(bpf, link_type_of(iface)))
        if cfg.promisc:
            mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        s.bind((iface, ETH_P_ALL))
        s.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def walk(self, max_n: int, data_off: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray,
             ts_ns: np.ndarray, lt: np.ndarray, rec_off: np.ndarray,
             vlan_tci: np.ndarray) -> tuple[int, int]:
        """Records of the ready blocks from the next one on: (records, blocks taken)."""
        n, blocks, bad = RK.walk_ring(
            self.ring, self.block_size, self.n_blocks, self.next_block, max_n,
            data_off, caplen, wirelen, ts_ns, lt, rec_off, vlan_tci,
        )
        self.skipped += bad
        return n, blocks

    def release(self, blocks: int) -> None:
        if blocks:
            RK.release_blocks(self.ring, self.block_size, self.n_blocks, self.next_block, blocks)
            self.next_block = (self.next_block + blocks) % self.n_blocks

    def read_stats(self) -> tuple[int, int]:
        """Kernel counters since the last read (PACKET_STATISTICS resets them when read),
        accumulated: (packets seen, packets dropped) since the ring opened."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, _freeze = struct.unpack("3I", raw)
        self.kernel_packets += packets
        self.kernel_drops += drops
        return self.kernel_packets, self.kernel_drops

    def close(self) -> None:
        self.ring = np.empty(0, dtype=np.uint8)
        try:
            self._mm.close()
        except (BufferError, AttributeError):
            pass
        self.sock.close()
