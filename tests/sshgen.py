"""Synthetic SSH sessions for tests: a real cleartext handshake (banners, KEXINITs naming the
algorithms, ECDH, NEWKEYS), then encrypted packets as random bytes of the sizes the framing rules
give, with the timing of a capture on the initiator's host (a round trip ``rtt`` away from the
responder). Written with tests.pcapgen (dpkt)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from flowsense.detect.ssh_framing import Suite, suite
from tests.pcapgen import ACK, FIN, PSH, SYN, tcp, write_pcap

CHACHA = ("chacha20-poly1305@openssh.com", "hmac-sha2-256-etm@openssh.com")
GCM = ("aes128-gcm@openssh.com", "hmac-sha2-256-etm@openssh.com")
CTR_MD5 = ("aes128-ctr", "hmac-md5")
CTR_ETM = ("aes128-ctr", "hmac-sha2-256-etm@openssh.com")


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def clear_packet(payload: bytes) -> bytes:
    pad = 4 + (-(5 + len(payload) + 4) % 8)
    return struct.pack(">IB", 1 + len(payload) + pad, pad) + payload + b"\0" * pad


def kexinit(cipher: str, mac: str, comp: str = "none") -> bytes:
    lists = ["curve25519-sha256", "ssh-ed25519", cipher, cipher, mac, mac, comp, comp, "", ""]
    body = b"\x14" + os.urandom(16) + b"".join(_string(x.encode()) for x in lists)
    return clear_packet(body + b"\0" + b"\0\0\0\0")


@dataclass
class Session:
    """One TCP connection from ``client`` (the initiator, where the capture is made) to
    ``server``; times in seconds. ``i``/``r``: packets from the initiator/the responder."""

    cipher: tuple[str, str] = CHACHA
    rtt: float = 0.06
    client: str = "10.0.0.5"
    server: str = "203.0.113.7"
    cport: int = 40000
    sport: int = 22
    t: float = 1_700_000_000.0
    comp: str = "none"
    pkts: list[tuple[float, bytes]] = field(default_factory=list)
    seq: list[int] = field(default_factory=lambda: [1000, 5000])
    server_first: bool = False  # the server's banner goes first (OpenSSH's sshd does that)

    @property
    def suite(self) -> Suite:
        s = suite(*self.cipher, self.comp)
        assert s is not None
        return s

    def _send(self, d: int, data: bytes, at: float, flags: int = PSH | ACK) -> None:
        src, dst, sp, dp = ((self.client, self.server, self.cport, self.sport) if d == 0 else
                            (self.server, self.client, self.sport, self.cport))
        self.pkts.append((at, tcp(src, dst, sp, dp, flags, self.seq[d], data,
                                  ack=self.seq[1 - d])))
        self.seq[d] += len(data) + (1 if flags & (SYN | FIN) else 0)

    def i(self, data: bytes | int, at: float | None = None) -> None:
        self._send(0, os.urandom(data) if isinstance(data, int) else data,
                   self.t if at is None else at)

    def r(self, data: bytes | int, at: float | None = None) -> None:
        self._send(1, os.urandom(data) if isinstance(data, int) else data,
                   self.t if at is None else at)

    def ack(self, d: int, at: float) -> None:
        self._send(d, b"", at, ACK)

    def handshake(self) -> None:
        """TCP handshake, banners, key exchange, NEWKEYS, then a login (service request and
        accept, a user-auth request and USERAUTH_SUCCESS)."""
        self._send(0, b"", self.t, SYN)
        self._send(1, b"", self.t + self.rtt, SYN | ACK)
        self.t += self.rtt + 0.0002
        self.ack(0, self.t)
        cb, sb = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", b"SSH-2.0-OpenSSH_9.2p1\r\n"
        ck, sk = kexinit(*self.cipher, self.comp), kexinit(*self.cipher, self.comp)
        cx = clear_packet(b"\x1e" + _string(os.urandom(32)))
        sx = clear_packet(b"\x1f" + _string(os.urandom(51)) + _string(os.urandom(32))
                          + _string(os.urandom(83)))
        nk = clear_packet(b"\x15")
        first = 1 if self.server_first else 0
        self._send(first, (cb, sb)[first], self.t + 0.001)
        self.t += self.rtt
        self._send(1 - first, (cb, sb)[1 - first], self.t)
        self.i(ck, self.t + 0.001)
        self.r(sk, self.t + 0.002)
        self.i(cx, self.t + 0.003)
        self.t += self.rtt
        self.r(sx + nk)
        self.i(nk, self.t + 0.001)
        s = self.suite
        self.t += 0.01
        self.i(s.packet_size(17))  # SERVICE_REQUEST ssh-userauth
        self.t += self.rtt
        self.r(s.packet_size(17))
        self.t += 0.002
        self.i(s.packet_size(120))  # USERAUTH_REQUEST publickey with a signature
        self.t += self.rtt
        self.r(s.packet_size(1))  # USERAUTH_SUCCESS
        self.t += 0.002

    def session_channel(self) -> None:
        """Open a session channel, pty and shell, as every interactive client does."""
        s = self.suite
        self.i(s.packet_size(24))
        self.t += self.rtt
        self.r(s.packet_size(17))  # OPEN_CONFIRMATION
        self.t += 0.001
        self.i(s.packet_size(300))  # pty-req
        self.i(s.packet_size(15), self.t + 0.0005)  # shell
        self.t += self.rtt
        self.r(s.packet_size(5))  # CHANNEL_SUCCESS
        self.r(s.channel_data(400), self.t + 0.01)  # motd and prompt
        self.t += 0.5
        self.ack(0, self.t)

    def forward_keys(self, n: int, size: int, gap: float = 0.2) -> None:
        """The initiator types: each key echoed a round trip later; its bare ACK follows."""
        for _ in range(n):
            self.t += gap
            self.i(size)
            self.r(size, self.t + self.rtt)
            self.ack(0, self.t + self.rtt + 0.04)

    def reverse_keys(self, n: int, size: int, gap: float = 0.2, echo: float = 0.0008) -> None:
        """The responder types (seen from the initiator's host): the initiator echoes at once;
        the responder's bare ACK arrives a round trip later."""
        for _ in range(n):
            self.t += gap
            self.r(size)
            self.i(size, self.t + echo)
            self.ack(1, self.t + echo + self.rtt)

    def chaff(self, d: int, seconds: float, size: int, answer: float) -> None:
        """OpenSSH 9.5+ keystroke obfuscation: side ``d`` sends a keystroke-sized packet every
        20 ms and the other side answers each after ``answer`` seconds."""
        k = 0
        while k * 0.02 < seconds:
            at = self.t + k * 0.02
            self._send(d, os.urandom(size), at)
            self._send(1 - d, os.urandom(size), at + answer)
            k += 1
        self.t += seconds + answer

    def bulk(self, d: int, n: int, gap: float = 0.001, size: int = 1448) -> None:
        """``n`` full segments from side ``d``, ``gap`` seconds apart (scp, cat, output)."""
        for _ in range(n):
            self.t += gap
            self._send(d, os.urandom(size), self.t)

    def close(self) -> None:
        self.t += 0.05
        self._send(0, b"", self.t, FIN | ACK)
        self._send(1, b"", self.t + self.rtt, FIN | ACK)
        self.ack(0, self.t + self.rtt + 0.0002)

    def write(self, path: Path, skip: int = 0) -> Path:
        """The capture, without its first ``skip`` packets (a capture that began late)."""
        return write_pcap(path, sorted(self.pkts, key=lambda p: p[0])[skip:])
