"""netlab: little test networks of two network namespaces, with a wide-area round trip.

The one mechanism the capture generators and the live-capture tests use to get real traffic
between two hosts (see ``/work/netlab-api.md``). Root only.

``Lab(prefix, rtt_ms)`` makes two namespaces, ``{prefix}-in`` and ``{prefix}-out``, joined by

- ``rtt_ms > 0``: two TAP devices, one in each namespace, whose frames a relay process copies
  across, holding each frame ``rtt_ms / 2`` in each direction. This is how the path gets a
  round trip without ``tc netem`` (missing on this kernel). The delay is on the frames, so the
  TCP handshake and the bare ACKs carry it as they would on a wide-area path; a TCP relay would
  have answered the handshake itself.
- ``rtt_ms == 0``: a veth pair.

Offloads (TSO, GSO, GRO, checksumming) are off on both ends, so a capture shows the segments
as they went on the wire with valid checksums. IPv6 is off in both namespaces and the two
neighbours are static, so captures hold only the traffic the caller made. Everything the lab
creates carries the prefix and is removed on exit, also on an error, Ctrl-C or SIGTERM.

``rewrite_addresses`` maps the lab's addresses to the ones a capture should show (a private
inside host, a documentation-range outside host) and fixes the IPv4 and TCP/UDP checksums.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
_OFFLOADS = ("tso", "gso", "gro", "lro", "tx", "rx", "sg", "ufo")
_labs_made = 0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _open_tap(name: str) -> int:
    """A non-persistent TAP device ``name`` in the current namespace; it dies with the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Lab:
    """Two namespaces joined by a delayed TAP relay (``rtt_ms > 0``) or a veth pair."""

    def __init__(self, prefix: str, rtt_ms: float = 0.0) -> None:
        if not prefix or len(prefix) > 9 or not prefix.replace("-", "").isalnum():
            raise ValueError("prefix: 1-9 letters, digits or '-' (device names are <= 15 bytes)")
        if rtt_ms < 0:
            raise ValueError("rtt_ms must be >= 0")
        global _labs_made
        _labs_made += 1
        self.prefix = prefix
        self.rtt_ms = float(rtt_ms)
        self.inside = f"{prefix}-in"
        self.outside = f"{prefix}-out"
        self.inside_if = f"{prefix}-i"
        self.outside_if = f"{prefix}-o"
        # distinct per Lab (in a process, and most likely across prefixes): 10.77.N.0/30
        net = (zlib.crc32(prefix.encode()) + _labs_made) % 250 + 1
        self.inside_ip = f"10.77.{net}.2"
        self.outside_ip = f"10.77.{net}.1"
        self._fds: list[int] = []
        self._relay: subprocess.Popen[bytes] | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._old_sigterm: Any = None

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        if os.geteuid() != 0:
            raise PermissionError("netlab needs root (namespaces, TAP devices)")
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        self._remove_namespaces()  # leftovers of a run that was killed hard
        for ns in (self.inside, self.outside):
            _ip("netns", "add", ns)
        if self.rtt_ms > 0:
            for name, ns in ((self.inside_if, self.inside), (self.outside_if, self.outside)):
                self._fds.append(_open_tap(name))
                _ip("link", "set", name, "netns", ns)
            self._start_relay()
        else:
            _ip("link", "add", self.inside_if, "type", "veth", "peer", "name", self.outside_if)
            _ip("link", "set", self.inside_if, "netns", self.inside)
            _ip("link", "set", self.outside_if, "netns", self.outside)
        ends = ((self.inside, self.inside_if, self.inside_ip),
                (self.outside, self.outside_if, self.outside_ip))
        for ns, dev, addr in ends:
            for key in ("all", "default", "lo"):
                self.run(ns, ["sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1"])
            self.run(ns, ["ip", "link", "set", "lo", "up"], check=True)
            self.run(ns, ["ip", "addr", "add", f"{addr}/30", "dev", dev], check=True)
            for feature in _OFFLOADS:  # one at a time: a TAP lacks some of them
                self.run(ns, ["ethtool", "-K", dev, feature, "off"])
            self.run(ns, ["ip", "link", "set", dev, "up"], check=True)
        macs = {ns: self._mac(ns, dev) for ns, dev, _ in ends}
        for (ns, dev, _), (peer, _, peer_ip) in zip(ends, reversed(ends)):
            self.run(ns, ["ip", "neigh", "replace", peer_ip, "lladdr", macs[peer], "dev", dev,
                          "nud", "permanent"], check=True)

    def _mac(self, ns: str, dev: str) -> str:
        out = self.run(ns, ["cat", f"/sys/class/net/{dev}/address"], check=True)
        return out.stdout.strip()

    def _start_relay(self) -> None:
        self._relay = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--relay",
             str(self._fds[0]), str(self._fds[1]), repr(self.rtt_ms / 2000.0)],
            stdin=subprocess.PIPE, pass_fds=tuple(self._fds), close_fds=True)

    def close(self) -> None:
        """Stop every process and remove every device and namespace of the lab (idempotent)."""
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()
        for ns in (self.inside, self.outside):
            self._kill_namespace_pids(ns)
        if self._relay is not None:
            stop_process(self._relay)
            self._relay = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._remove_namespaces()
        if self._old_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def _kill_namespace_pids(self, ns: str) -> None:
        res = _ip("netns", "pids", ns, check=False)
        for word in res.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(word), signal.SIGKILL)

    def _remove_namespaces(self) -> None:
        for ns in (self.inside, self.outside):
            if Path("/run/netns", ns).exists():
                self._kill_namespace_pids(ns)
                _ip("netns", "del", ns, check=False)

    # -- running things ---------------------------------------------------------------------
    def argv(self, ns: str, cmd: Sequence[str]) -> list[str]:
        """``cmd`` wrapped to run in namespace ``ns`` (for pexpect and the like)."""
        if ns not in (self.inside, self.outside):
            raise ValueError(f"{ns!r} is not a namespace of this lab")
        return ["ip", "netns", "exec", ns, *cmd]

    def popen(self, ns: str, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` in namespace ``ns``; stopped when the lab closes."""
        proc = subprocess.Popen(self.argv(ns, cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def run(self, ns: str, cmd: Sequence[str], check: bool = False, timeout: float = 60.0,
            **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` in namespace ``ns`` (output captured as text unless overridden)."""
        kwargs.setdefault("capture_output", "stdout" not in kwargs and "stderr" not in kwargs)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(ns, cmd), check=check, timeout=timeout, **kwargs)

    @contextlib.contextmanager
    def tcpdump(self, ns: str, path: str | os.PathLike[str], iface: str | None = None,
                snaplen: int = 0, bpf: str | None = None) -> Iterator[Path]:
        """Capture on ``iface`` (the lab's interface in ``ns`` by default) into ``path``.

        tcpdump is listening before the body runs; after it, the capture waits one round trip
        for frames in flight, then tcpdump is stopped and the file flushed.
        """
        if iface is None:
            iface = self.inside_if if ns == self.inside else self.outside_if
        out = Path(path)
        cmd = ["tcpdump", "-i", iface, "-s", str(snaplen), "-n", "-U", "--immediate-mode",
               "-Z", "root", "-w", str(out)]
        if bpf:
            cmd.append(bpf)
        proc = self.popen(ns, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_listening(proc)
            yield out
            time.sleep(0.2 + self.rtt_ms / 1000.0)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if proc in self._procs:
                self._procs.remove(proc)


def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """End ``proc``: its stdin closed, SIGTERM, SIGKILL after 5 s; reaped."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _wait_listening(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Block until tcpdump says it is listening (its stderr); raise if it dies or hangs."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    while b"listening on" not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("tcpdump did not start listening")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait(timeout=5)
                raise RuntimeError(f"tcpdump failed: {seen.decode(errors='replace').strip()}")
            seen += chunk
    # keep draining stderr so tcpdump never blocks on a full pipe
    threading.Thread(target=_drain, args=(fd,), daemon=True).start()


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass


# -- the relay (a process of its own: the GIL of the caller must not add jitter) -------------
def relay(fd_a: int, fd_b: int, delay_s: float, control: int) -> None:
    """Copy frames between TAP fds ``fd_a`` and ``fd_b``, each held ``delay_s``.

    Runs until ``control`` (the parent's pipe) reaches EOF. The delay is the same for every
    frame, so each direction is a FIFO of (due time, frame) and the order is kept.
    """
    for fd in (fd_a, fd_b):
        os.set_blocking(fd, False)
    queues: dict[int, deque[tuple[float, bytes]]] = {fd_a: deque(), fd_b: deque()}
    peer = {fd_a: fd_b, fd_b: fd_a}
    while True:
        now = time.monotonic()
        for dst, queue in queues.items():
            while queue and queue[0][0] <= now:
                _, frame = queue.popleft()
                with contextlib.suppress(OSError):  # a full queue drops, as a wire would
                    os.write(dst, frame)
        due = [q[0][0] for q in queues.values() if q]
        wait = max(0.0, min(due) - time.monotonic()) if due else None
        ready, _, _ = select.select([fd_a, fd_b, control], [], [], wait)
        now = time.monotonic()
        for src in ready:
            if src == control:
                if not os.read(control, 4096):
                    return
                continue
            while True:
                try:
                    frame = os.read(src, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    return  # the device went away
                queues[peer[src]].append((now + delay_s, frame))


# -- address rewriting -------------------------------------------------------------------------
_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
                b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}


def csum(data: bytes) -> int:
    """RFC 1071 Internet checksum (the test captures' builder uses it too)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _csum_update(old_sum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 incremental update of a checksum for 16-bit words ``old`` replaced by ``new``."""
    total = ~old_sum & 0xFFFF
    for (o,), (n,) in zip(struct.iter_unpack("!H", old), struct.iter_unpack("!H", new)):
        total += (~o & 0xFFFF) + n
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _rewrite_frame(frame: bytearray, wire_len: int, table: Mapping[bytes, bytes]) -> None:
    """Rewrite IPv4 and ARP addresses of an Ethernet frame in place, checksums fixed."""
    if len(frame) < 14:
        return
    eth_type = struct.unpack_from("!H", frame, 12)[0]
    if eth_type == 0x0806 and len(frame) >= 42:  # ARP: sender and target protocol address
        for off in (28, 38):
            frame[off:off + 4] = table.get(bytes(frame[off:off + 4]), frame[off:off + 4])
        return
    if eth_type != 0x0800 or len(frame) < 34:
        return
    ip = 14
    ihl = (frame[ip] & 0x0F) * 4
    old = bytes(frame[ip + 12:ip + 20])
    new = table.get(old[:4], old[:4]) + table.get(old[4:], old[4:])
    if new == old:
        return
    frame[ip + 12:ip + 20] = new
    frame[ip + 10:ip + 12] = b"\0\0"
    frame[ip + 10:ip + 12] = struct.pack("!H", csum(bytes(frame[ip:ip + ihl])))
    proto = frame[ip + 9]
    total_len = struct.unpack_from("!H", frame, ip + 2)[0]
    frag = struct.unpack_from("!H", frame, ip + 6)[0]
    l4 = ip + ihl
    sum_off = {6: 16, 17: 6}.get(proto)
    if sum_off is None or frag & 0x1FFF or len(frame) < l4 + sum_off + 2:
        return  # ICMP's checksum does not cover addresses; later fragments have no header
    old_sum = struct.unpack_from("!H", frame, l4 + sum_off)[0]
    if proto == 17 and old_sum == 0:
        return  # UDP without a checksum
    seg_len = total_len - ihl
    whole = not frag & 0x2000 and len(frame) >= ip + total_len and wire_len == len(frame)
    if whole:  # recompute from scratch: fixes whatever was wrong
        frame[l4 + sum_off:l4 + sum_off + 2] = b"\0\0"
        pseudo = new + struct.pack("!BBH", 0, proto, seg_len)
        value = csum(pseudo + bytes(frame[l4:ip + total_len]))
        if proto == 17 and value == 0:
            value = 0xFFFF
    else:  # truncated by the snap length or fragmented: update for the changed words
        value = _csum_update(old_sum, old, new)
    frame[l4 + sum_off:l4 + sum_off + 2] = struct.pack("!H", value)


def rewrite_addresses(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                      mapping: Mapping[str, str]) -> int:
    """Copy pcap ``src`` to ``dst`` with IPv4 addresses mapped (IP and ARP), checksums fixed.

    Record headers (timestamps, lengths) are kept byte for byte. Returns the packet count.
    Classic pcap with Ethernet frames only (what ``Lab.tcpdump`` writes).
    """
    table = {bytes(map(int, a.split("."))): bytes(map(int, b.split(".")))
             for a, b in mapping.items()}
    data = Path(src).read_bytes()
    endian = _PCAP_MAGICS.get(data[:4])
    if endian is None or len(data) < 24:
        raise ValueError(f"{src}: not a classic pcap file")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    if linktype != 1:
        raise ValueError(f"{src}: link type {linktype}, only Ethernet (1) is rewritten")
    out = bytearray(data[:24])
    pos, count = 24, 0
    while pos + 16 <= len(data):
        caplen, wire_len = struct.unpack_from(endian + "II", data, pos + 8)
        frame = bytearray(data[pos + 16:pos + 16 + caplen])
        if len(frame) < caplen:
            raise ValueError(f"{src}: truncated record at byte {pos}")
        _rewrite_frame(frame, wire_len, table)
        out += data[pos:pos + 16]
        out += frame
        pos += 16 + caplen
        count += 1
    Path(dst).write_bytes(bytes(out))
    return count


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--relay":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the relay (stdin EOF/TERM)
    relay(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.stdin.fileno())
