"""Flow identities: addresses as text, Community ID v1, and the stable ``flow_id``.

Community ID (https://github.com/corelight/community-id-spec): SHA-1 over seed (2 bytes, big
endian), the ordered endpoint addresses (IPv4 in its 4-byte form), protocol, a zero pad byte and
the ordered ports (ICMP: type and counterpart or code), base64, prefixed ``1:``.
"""

from __future__ import annotations

import base64
import hashlib
import struct

import numpy as np

from flowsense.flows import export_kernels as EK
from flowsense.flows import text_kernels as TK

_ICMP = {1, 58}
_ICMP_PAIRED = {
    1: {0, 8, 9, 10, 13, 14, 15, 16, 17, 18},
    58: {128, 129, 130, 131, 133, 134, 135, 136, 139, 140, 144, 145},
}


def addr_rows(fam: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Addresses as ASCII rows (uint8[n, ADDR_WIDTH], NUL padded): dotted quad for IPv4,
    inet_ntop's form for IPv6."""
    out = np.zeros((len(fam), TK.ADDR_WIDTH), dtype=np.uint8)
    TK.format_addrs(np.ascontiguousarray(fam), np.ascontiguousarray(hi),
                    np.ascontiguousarray(lo), out, TK._HEX)
    return out


def addr_text(fam: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """``addr_rows`` as text (object array of str)."""
    return rows_text(addr_rows(fam, hi, lo))


def rows_text(out: np.ndarray) -> np.ndarray:
    """NUL-padded ASCII rows to an object array of str."""
    text = np.empty(len(out), dtype=object)
    if len(out):
        # the rows joined by newlines, decoded and split at once: each str made in C (twice as
        # fast as a bytes object a row decoded in turn, and numpy's "U" round trip is slower)
        buf = np.empty(out.shape[0] * (out.shape[1] + 1), dtype=np.uint8)
        k = TK.join_rows(np.ascontiguousarray(out), buf)
        text[:] = buf[:k - 1].tobytes().decode("ascii").split("\n")
    return text


def _addr_bytes(f: int, h: int, low: int) -> bytes:
    if f == 4:
        return struct.pack(">I", low)
    return struct.pack(">QQ", h, low)


def community_id(
    fam: int, proto: int, s_hi: int, s_lo: int, d_hi: int, d_lo: int, sport: int, dport: int,
    seed: int = 0,
) -> str:
    """Community ID v1 of one flow (ports as carried in the flow key)."""
    src = _addr_bytes(fam, s_hi, s_lo)
    dst = _addr_bytes(fam, d_hi, d_lo)
    has_ports = proto in (6, 17, 132) or proto in _ICMP
    # the key's ports already hold (type, counterpart-or-code); a one-way ICMP type keeps the
    # observed order (the spec's is_one_way), everything else is ordered by (address, port)
    one_way = proto in _ICMP and sport not in _ICMP_PAIRED[proto]
    if not one_way and (src, sport) > (dst, dport):
        src, dst, sport, dport = dst, src, dport, sport
    data = struct.pack(">H", seed) + src + dst + struct.pack(">BB", proto, 0)
    if has_ports:
        data += struct.pack(">HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")


def community_id_rows(
    fam: np.ndarray, proto: np.ndarray, s_hi: np.ndarray, s_lo: np.ndarray, d_hi: np.ndarray,
    d_lo: np.ndarray, sport: np.ndarray, dport: np.ndarray, seed: int = 0,
) -> np.ndarray:
    """Community ID v1 of many flows as ASCII rows (uint8[n, CID_WIDTH]); ``community_id`` is
    its one-flow twin."""
    out = np.zeros((len(fam), TK.CID_WIDTH), dtype=np.uint8)
    c = np.ascontiguousarray
    TK.community_ids(c(fam), c(proto), c(s_hi), c(s_lo), c(d_hi), c(d_lo), c(sport), c(dport),
                     seed, out, TK._B64)
    return out


def community_ids(
    fam: np.ndarray, proto: np.ndarray, s_hi: np.ndarray, s_lo: np.ndarray, d_hi: np.ndarray,
    d_lo: np.ndarray, sport: np.ndarray, dport: np.ndarray, seed: int = 0,
) -> np.ndarray:
    """``community_id_rows`` as text (object array of str)."""
    return rows_text(community_id_rows(fam, proto, s_hi, s_lo, d_hi, d_lo, sport, dport, seed))


def flow_ids(
    fam: np.ndarray, proto: np.ndarray, a_hi: np.ndarray, a_lo: np.ndarray, b_hi: np.ndarray,
    b_lo: np.ndarray, pa: np.ndarray, pb: np.ndarray, first_ts: np.ndarray,
) -> np.ndarray:
    """``export_kernels.flow_id_of`` of each flow (canonical key and first packet time)."""
    k0 = (fam.astype(np.uint64) | (proto.astype(np.uint64) << np.uint64(8))
          | (pa.astype(np.uint64) << np.uint64(16)) | (pb.astype(np.uint64) << np.uint64(32)))
    out = np.empty(len(k0), dtype=np.int64)
    EK.flow_id_rows(k0, *(np.ascontiguousarray(a, dtype=np.uint64)
                          for a in (a_hi, a_lo, b_hi, b_lo)),
                    np.ascontiguousarray(first_ts, dtype=np.int64), out)
    return out
