"""The sealing primitives shared by the log writer (``alertlog``) and its verifier (``verify``).

A record is one EVE JSON object on one line. Its seal is appended as the object's last member,
``"seal": {"seq": n, "prev": hex, "mac": hex}``, and the MAC covers the exact bytes of the line
without that member (``body``), so any edited byte is seen, whitespace and duplicate keys
included::

    k_0     = HMAC-SHA256(seed, "flowsense-seal/1 k0")
    k_{i+1} = SHA-256("flowsense-seal/1 evolve" || k_i)
    mac_i   = HMAC-SHA256(k_i, "flowsense-seal/1 mac" || seq_i (8 bytes, big-endian)
                                || prev_i || body_i)
    prev_i  = mac_{i-1}  (32 zero bytes for record 0)

The key evolution is the forward-secure sequential key scheme of Bellare and Yee (2003) and
Schneier and Kelsey (1999), the idea behind journald's forward-secure sealing (Marson and
Poettering's FSPRG there; a hash ratchet here). See ``alertlog``'s docstring for what it buys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from typing import Any

from flowsense.errors import ConfigError

SEED_BYTES = 32
ZERO = bytes(32)
_TAG_K0 = b"flowsense-seal/1 k0"
_TAG_EVOLVE = b"flowsense-seal/1 evolve"
_TAG_MAC = b"flowsense-seal/1 mac"
_SUFFIX = re.compile(
    rb'(, )?"seal": \{"seq": (\d{1,19}), "prev": "([0-9a-f]{64})", "mac": "([0-9a-f]{64})"\}\}\Z'
)


def first_key(seed: bytes) -> bytes:
    return hmac.new(seed, _TAG_K0, hashlib.sha256).digest()


def next_key(key: bytes | bytearray) -> bytes:
    return hashlib.sha256(_TAG_EVOLVE + bytes(key)).digest()


def key_at(seed: bytes, seq: int) -> bytes:
    """k_seq, evolved from the seed (the verifier's way; about a million steps a second)."""
    key = first_key(seed)
    for _ in range(seq):
        key = next_key(key)
    return key


def record_mac(key: bytes | bytearray, seq: int, prev: bytes, body: bytes) -> bytes:
    return hmac.new(bytes(key), _TAG_MAC + seq.to_bytes(8, "big") + prev + body,
                    hashlib.sha256).digest()


def body_of(record: dict[str, Any]) -> bytes:
    """The line's bytes without the seal: compact-spaced JSON, UTF-8, members in the caller's
    order (EVE readers expect ``timestamp`` and ``event_type`` first)."""
    if "seal" in record:
        raise ValueError("a record to seal must not hold a 'seal' member")
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def seal_line(body: bytes, seq: int, prev: bytes, mac: bytes) -> bytes:
    """The full line (with its newline) for ``body`` and its seal."""
    seal = b'"seal": {"seq": %d, "prev": "%s", "mac": "%s"}}\n' % (
        seq, prev.hex().encode(), mac.hex().encode())
    if body == b"{}":
        return b"{" + seal
    return body[:-1] + b", " + seal


def split_line(line: bytes) -> tuple[bytes, int, bytes, bytes] | None:
    """(body, seq, prev, mac) of a sealed line (without its newline), or None if it is not one."""
    if not line.startswith(b"{"):
        return None
    m = _SUFFIX.search(line)
    if m is None:
        return None
    head = line[: m.start()]
    if (m.group(1) is None) != (head == b"{"):
        return None
    body = b"{}" if head == b"{" else head + b"}"
    return body, int(m.group(2)), bytes.fromhex(m.group(3).decode()), bytes.fromhex(
        m.group(4).decode())


def read_seed(path: str) -> bytes:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(4 * SEED_BYTES).strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not a seed file"
        raise ConfigError(f"{path}: cannot read the seal seed: {why}") from None
    if not re.fullmatch(f"[0-9a-f]{{{2 * SEED_BYTES}}}", text):
        raise ConfigError(f"{path}: not a flowsense seal seed ({2 * SEED_BYTES} hex digits)")
    return bytes.fromhex(text)


def create_seed(path: str) -> bytes:
    """A new random seed in ``path``, created 0600 and never overwritten."""
    seed = os.urandom(SEED_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the seal seed: {exc.strerror}") from None
    try:
        os.write(fd, seed.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return seed
