"""SSH binary packet sizes on the wire, from the framing rules (not from a table of sizes).

RFC 4253 section 6: ``uint32 packet_length, byte padding_length, payload, padding, MAC``; at
least 4 bytes of padding, and the padded part a multiple of the cipher's block size (at least 8).
What the alignment covers depends on the mode:

* MAC-then-encrypt (``hmac-sha1``, ``hmac-sha2-256``, ``umac-64@openssh.com``…, RFC 4253 6.4):
  the length field is encrypted and counts in the aligned part; the MAC follows.
* encrypt-then-MAC (``*-etm@openssh.com``, OpenSSH PROTOCOL 1.7): the length stays in the clear
  and out of the aligned part; the MAC follows.
* AEAD: ``aes*-gcm@openssh.com`` (RFC 5647 7.2, OpenSSH PROTOCOL 1.6) and
  ``chacha20-poly1305@openssh.com`` (OpenSSH PROTOCOL.chacha20poly1305): the length is outside the
  aligned part (additional data, or encrypted under its own key), then a 16-byte tag; the
  negotiated MAC is ignored.

OpenSSH's ``packet.c`` (``ssh_packet_send2_wrapped``) pads the same way: ``aadlen`` of 4 for
AEAD and EtM, then the smallest padding of at least 4 that aligns the rest.

A keystroke is ``SSH_MSG_CHANNEL_DATA`` (RFC 4254 5.2: byte 94, uint32 channel, string data) with
one byte of data. A keystroke tunnelled through a second session (``ssh -R`` into sshd, or a
``-J`` jump) is the inner session's whole keystroke packet carried as the outer session's
channel data. OpenSSH 9.5's chaff (``SSH2_MSG_PING`` with ``"PING!"``) has a 10-byte payload, the
keystroke's, on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

CHANNEL_DATA_OVERHEAD = 9  # byte 94, uint32 recipient channel, uint32 data length
MIN_PADDING = 4
MIN_PACKET = 16  # RFC 4253 6: length, padding length, payload and padding together

_AEAD = {"chacha20-poly1305@openssh.com": 8, "aes128-gcm@openssh.com": 16,
         "aes256-gcm@openssh.com": 16}
_BLOCK = {"aes128-ctr": 16, "aes192-ctr": 16, "aes256-ctr": 16, "aes128-cbc": 16,
          "aes192-cbc": 16, "aes256-cbc": 16, "rijndael-cbc@lysator.liu.se": 16,
          "3des-cbc": 8, "3des-ctr": 8, "blowfish-cbc": 8, "blowfish-ctr": 8, "cast128-cbc": 8,
          "twofish-cbc": 16, "twofish128-cbc": 16, "twofish256-cbc": 16, "twofish128-ctr": 16,
          "twofish256-ctr": 16, "arcfour": 8, "arcfour128": 8, "arcfour256": 8, "none": 8}
_MAC = {"hmac-md5": 16, "hmac-md5-96": 12, "hmac-sha1": 20, "hmac-sha1-96": 12,
        "hmac-sha2-256": 32, "hmac-sha2-512": 64, "hmac-ripemd160": 20,
        "hmac-ripemd160@openssh.com": 20, "umac-64@openssh.com": 8,
        "umac-128@openssh.com": 16, "none": 0}
AEAD_TAG = 16


@dataclass(frozen=True)
class Suite:
    """One direction's framing: block size, whether the length is outside the aligned part
    (AEAD, EtM), MAC or tag length, and delayed compression (``zlib@openssh.com``)."""

    cipher: str
    mac: str
    block: int
    length_outside: bool
    mac_len: int
    compressed: bool = False

    def packet_size(self, payload: int) -> int:
        """Bytes on the wire (TCP payload) of one packet carrying ``payload`` bytes."""
        head = 1 if self.length_outside else 5  # padding_length (+ packet_length)
        aligned = head + payload + MIN_PADDING
        aligned += -aligned % self.block
        return aligned + (4 if self.length_outside else 0) + self.mac_len

    def packet_sizes(self, payload: int) -> set[int]:
        """OpenSSH's size and the RFC's: RFC 4253 6 also asks for at least 16 bytes before the
        MAC counting the length field, which Dropbear applies and OpenSSH does not (it shows
        on one-byte messages such as USERAUTH_SUCCESS: 28 or 36 bytes under chacha20)."""
        size = self.packet_size(payload)
        framed = size - self.mac_len
        return {size, size + self.block} if framed < MIN_PACKET else {size}

    def channel_data(self, n: int) -> int:
        """Wire size of a CHANNEL_DATA carrying ``n`` bytes (uncompressed)."""
        return self.packet_size(CHANNEL_DATA_OVERHEAD + n)


def suite(cipher: str, mac: str, compression: str = "none") -> Suite | None:
    """The framing of a negotiated cipher and MAC; None for an unknown cipher or MAC."""
    block = _AEAD.get(cipher)
    compressed = compression not in ("none", "")
    if block is not None:
        return Suite(cipher, "", block, True, AEAD_TAG, compressed)
    block = _BLOCK.get(cipher)
    if block is None:
        return None
    etm = mac.endswith("-etm@openssh.com")
    base = mac[: -len("-etm@openssh.com")] if etm else mac
    mac_len = _MAC.get(base, _MAC.get(base + "@openssh.com", -1))
    if mac_len < 0:
        return None
    return Suite(cipher, mac, max(block, 8), etm, mac_len, compressed)


# inner sessions the tunnel may carry: what OpenSSH and Dropbear pick or offer by default
COMMON_SUITES = tuple(s for s in (
    suite("chacha20-poly1305@openssh.com", ""),
    suite("aes128-gcm@openssh.com", ""),
    suite("aes256-gcm@openssh.com", ""),
    *(suite(c, m) for c in ("aes128-ctr", "aes256-ctr") for m in (
        "umac-64-etm@openssh.com", "umac-128-etm@openssh.com", "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512-etm@openssh.com", "hmac-sha1-etm@openssh.com", "umac-64@openssh.com",
        "umac-128@openssh.com", "hmac-sha2-256", "hmac-sha2-512", "hmac-sha1", "hmac-md5")),
) if s is not None)

# a compressed keystroke: zlib with a partial flush turns the 10-byte payload into roughly
# 8 to 20 bytes depending on the dictionary; any of these payload sizes may show up
COMPRESSED_PAYLOADS = range(6, 24)


def keystroke_sizes(s: Suite) -> set[int]:
    """Wire sizes a one-byte keystroke (or OpenSSH 9.5 chaff) may have under ``s``."""
    if s.compressed:
        return {s.packet_size(p) for p in COMPRESSED_PAYLOADS}
    return {s.channel_data(1)}


def tunnelled_sizes(outer: Suite, inner: Suite) -> set[int]:
    """Wire sizes of ``inner``'s keystroke carried as ``outer``'s channel data."""
    out: set[int] = set()
    for k in keystroke_sizes(inner):
        if outer.compressed:  # compressed random-looking bytes grow by a few bytes
            out |= {outer.packet_size(CHANNEL_DATA_OVERHEAD + k + extra) for extra in range(0, 12)}
        else:
            out.add(outer.channel_data(k))
    return out


@dataclass(frozen=True)
class KeystrokeModel:
    """Sizes a keystroke may have in each direction of one outer session: ``pairs`` holds the
    (responder to initiator, initiator to responder) sizes of a keystroke and its echo, plain
    and tunnelled through every common inner suite; ``kind`` names each pair's origins
    (``plain``, or the inner suites ``cipher/mac`` that give it)."""

    pairs: frozenset[tuple[int, int]]
    kind: dict[tuple[int, int], tuple[str, ...]]
    r_sizes: frozenset[int]
    i_sizes: frozenset[int]
    compressed: bool


def keystroke_model(c2s: Suite, s2c: Suite, inner: tuple[Suite, ...] = COMMON_SUITES
                    ) -> KeystrokeModel:
    """Keystroke and echo sizes for an outer session framed ``c2s`` (initiator to responder)
    and ``s2c``; inner and outer may differ, so every inner suite is a candidate."""
    kind: dict[tuple[int, int], tuple[str, ...]] = {}
    for r in keystroke_sizes(s2c):
        for i in keystroke_sizes(c2s):
            kind[(r, i)] = ("plain",)
    for s in inner:
        for r in tunnelled_sizes(s2c, s):
            for i in tunnelled_sizes(c2s, s):
                kind[(r, i)] = (*kind.get((r, i), ()), f"{s.cipher}/{s.mac or 'aead'}")
    pairs = frozenset(kind)
    return KeystrokeModel(pairs, kind, frozenset(r for r, _ in pairs),
                          frozenset(i for _, i in pairs), c2s.compressed or s2c.compressed)


def message_size(s: Suite, payload: int) -> int:
    """Wire size of a packet with a ``payload``-byte SSH message (uncompressed)."""
    return s.packet_size(payload)


# payload sizes of the messages the detector recognises by size (RFC 4254 4, 5.1, 5.4; OpenSSH
# PROTOCOL 2.5 and 2.6)
KEEPALIVE_GLOBAL = 1 + 4 + len("keepalive@openssh.com") + 1  # byte 80, name, want_reply
KEEPALIVE_CHANNEL = 1 + 4 + 4 + len("keepalive@openssh.com") + 1  # byte 98, channel, name, bool
REQUEST_REPLY = (1, 5)  # REQUEST_SUCCESS/FAILURE, the former with a uint32 port when it was 0
CHANNEL_REPLY = 5  # CHANNEL_SUCCESS/FAILURE: byte, uint32 channel
TCPIP_FORWARD_BASE = 1 + 4 + len("tcpip-forward") + 1 + 4 + 4  # + the bind address's length
MAX_BIND_ADDRESS = 45  # an IPv6 address in text
OPEN_CONFIRMATION = 17  # byte 91, recipient, sender, window, max packet
FORWARDED_OPEN_BASE = 1 + 4 + len("forwarded-tcpip") + 12 + 4 + 4 + 4 + 4  # + two addresses


@dataclass(frozen=True)
class Sizes:
    """Wire sizes of the messages recognised by size in one outer session (shared by every flow
    with the same suites: built once)."""

    model: KeystrokeModel
    ka_req: tuple[frozenset[int], frozenset[int]]  # keepalive requests, by direction
    ka_rep: tuple[frozenset[int], frozenset[int]]  # their replies
    auth_ok: frozenset[int]  # USERAUTH_SUCCESS, responder to initiator
    fwd_req: frozenset[int]  # tcpip-forward with a 0-44 byte bind address
    fwd_rep: frozenset[int]  # REQUEST_SUCCESS
    rs_conf: frozenset[int]  # CHANNEL_OPEN_CONFIRMATION, alone or with a banner behind it
    rs_opens: frozenset[int]  # CHANNEL_OPEN forwarded-tcpip with two addresses


@lru_cache(maxsize=256)
def sizes_for(i2r: Suite, r2i: Suite) -> Sizes:
    s = (i2r, r2i)
    model = keystroke_model(i2r, r2i)
    if model.compressed:
        # delayed compression (zlib@openssh.com) after login: a message's size no longer names
        # it. Keystrokes are matched over a widened set; a keepalive is any small request (its
        # name compresses to a back-reference) a second or more after the last, answered small;
        # remote-forward and reverse-setup are not judged
        none: frozenset[int] = frozenset()
        small = [frozenset(range(1, x.packet_size(KEEPALIVE_CHANNEL + 8) + 1)) for x in s]
        tiny = [frozenset(range(1, x.packet_size(CHANNEL_REPLY + 12) + 1)) for x in s]
        return Sizes(model, (small[0], small[1]), (tiny[0], tiny[1]),
                     frozenset(r2i.packet_sizes(1)), none, none, none, none)
    replies = (*REQUEST_REPLY, CHANNEL_REPLY)
    ka_rep = [frozenset().union(*(x.packet_sizes(p) for p in replies)) for x in s]
    conf = i2r.packet_size(OPEN_CONFIRMATION)
    return Sizes(
        model,
        (frozenset({i2r.packet_size(KEEPALIVE_GLOBAL)}),
         frozenset({r2i.packet_size(KEEPALIVE_GLOBAL), r2i.packet_size(KEEPALIVE_CHANNEL)})),
        (ka_rep[0], ka_rep[1]),
        frozenset(r2i.packet_sizes(1)),
        frozenset(i2r.packet_size(TCPIP_FORWARD_BASE + n) for n in range(MAX_BIND_ADDRESS)),
        frozenset().union(*(r2i.packet_sizes(p) for p in REQUEST_REPLY)),
        frozenset({conf} | {conf + i2r.channel_data(n) for n in range(10, 121)}),
        frozenset(r2i.packet_size(FORWARDED_OPEN_BASE + n) for n in range(3, 2 * MAX_BIND_ADDRESS)),
    )
